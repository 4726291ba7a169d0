"""``common.audio``: the one audio-file listing and the one manifest reader (pretraining and downstream)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.audio import AUDIO_EXTENSIONS, ManifestError, is_audio_file, list_audio_files, read_manifest


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_listing_is_recursive_sorted_by_string_and_skips_hidden_things(tmp_path):
    for rel in ("b.wav", "a-c.flac", "a/b.WAV", "a/.hidden.wav", ".cache/x.wav", "a/.git/y.wav", "notes.txt",
                "a/z.mp3", "a/clip.aifc"):
        _touch(tmp_path / rel)
    (tmp_path / "dir.wav").mkdir()  # a folder named like audio is not a file
    found = [p.relative_to(tmp_path).as_posix() for p in list_audio_files(tmp_path)]
    # string order: "a-c.flac" < "a/..." since '-' (0x2d) sorts before '/' (0x2f)
    assert found == ["a-c.flac", "a/b.WAV", "a/clip.aifc", "a/z.mp3", "b.wav"]
    # hidden only below the folder listed
    assert list_audio_files(tmp_path / "a" / ".git") == [tmp_path / "a" / ".git" / "y.wav"]
    assert list_audio_files(_touch(tmp_path / "empty" / "x.txt").parent) == []


def test_one_extension_list():
    # the union of the two lists pretraining and the downstream readers kept before
    assert set(AUDIO_EXTENSIONS) == {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff",
                                     ".aifc", ".au", ".caf", ".w64", ".rf64"}
    assert is_audio_file(Path("x.FLAC")) and not is_audio_file(Path("x.txt"))


def test_every_manifest_format(tmp_path):
    (tmp_path / "m.csv").write_text("path,label,duration\naudio/a.wav,dog,1.5\n/abs/b.wav,cat,\n")
    rows = read_manifest(tmp_path / "m.csv", columns=("path", "label"))
    assert [(r.line, r.path, r.fields["label"], r.duration) for r in rows] == [
        (2, tmp_path / "audio/a.wav", "dog", 1.5), (3, Path("/abs/b.wav"), "cat", None)]
    (tmp_path / "m.jsonl").write_text('{"path": "a.wav", "label": ["x", "y"]}\n\n'
                                      '{"wav": "b.wav", "duration": 2}\n')
    rows = read_manifest(tmp_path / "m.jsonl")
    assert [(r.line, r.path, r.duration) for r in rows] == [
        (1, tmp_path / "a.wav", None), (3, tmp_path / "b.wav", 2.0)]
    assert rows[0].fields["label"] == ["x", "y"]
    # .json: an SSAST datafile (entries numbered from 0, as in its "data" list), or else JSONL
    entries = [{"wav": "a.flac", "labels": "/m/1"}, {"wav": "/abs/b.flac", "labels": "/m/2"}]
    (tmp_path / "d.json").write_text(json.dumps({"data": entries}, indent=1))
    rows = read_manifest(tmp_path / "d.json", columns=("path", "labels"))
    assert [(r.line, r.path) for r in rows] == [(0, tmp_path / "a.flac"), (1, Path("/abs/b.flac"))]
    (tmp_path / "l.json").write_text('{"path": "a.wav", "label": "x"}\n{"path": "b.wav", "label": "y"}\n')
    assert [r.path.name for r in read_manifest(tmp_path / "l.json")] == ["a.wav", "b.wav"]
    # fairseq .tsv: a root line (relative: to the manifest's folder, once), then 'relative<TAB>samples'
    (tmp_path / "t.tsv").write_text("corpus\nsub/a.flac\t48000\nb.flac\t16000\n")
    rows = read_manifest(tmp_path / "t.tsv")
    assert [(r.line, r.path, r.fields["samples"]) for r in rows] == [
        (2, tmp_path / "corpus/sub/a.flac", "48000"), (3, tmp_path / "corpus/b.flac", "16000")]


@pytest.mark.parametrize("name, text, columns, message", [
    ("m.txt", "a.wav\n", ("path",), r"manifest '.*m\.txt' must end in \.jsonl, \.csv, \.json, \.tsv"),
    ("m.csv", "file,label\na.wav,x\n", ("path", "label"),
     r"needs a header naming the columns path,label; got \['file', 'label'\]"),
    ("m.jsonl", '{"path": "a.wav"}\n{oops\n', ("path",), r"m\.jsonl' line 2: invalid JSON"),
    ("m.jsonl", '["a.wav"]\n', ("path",), r"line 1: expected a JSON object, got \['a\.wav'\]"),
    ("m.jsonl", '{"label": "x"}\n', ("path",), r"line 1: no audio path \('path'\)"),
    ("m.jsonl", '{"path": "a.wav"}\n', ("path", "label"), r"line 1: 'label' required"),
    ("m.csv", "path,duration\na.wav,-1\n", ("path",),
     r"line 2: duration must be a number of seconds >= 0, got '-1'"),
    ("m.json", '{"data": [{"wav": "a.wav"}, 3]}', ("path",),
     r"entry 1: expected an object with 'wav', got 3"),
])
def test_bad_manifests_name_the_file_and_line(tmp_path, name, text, columns, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path / name, columns=columns)
