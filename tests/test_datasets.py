"""Readers of the public dataset layouts, their error messages, and ``ClipDataset`` loading.

The datasets are tiny copies written by ``tests/layouts.py`` in each release's exact layout.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from downstream import datasets
from downstream.datasets import (
    KS1_CLASSES,
    Clip,
    ClipDataset,
    DatasetLayoutError,
    class_balanced_weights,
    collate,
    layout,
    speech_commands_hash_percentage,
)
from downstream.tasks import TASKS, get_task
from tests.layouts import (
    BUILDERS,
    make_as20k,
    make_esc50,
    make_folder,
    make_iemocap,
    make_manifest,
    make_speech_commands_v1,
    make_speech_commands_v2,
    make_voxceleb1,
    write_tone,
)

# corpus reader name -> reader, one per registered task (each task is named after its reader)
READERS = {spec.reader.__name__: spec.reader for spec in TASKS.values()}


def _labels(clips):
    return [c.label for c in clips]


# ----------------------------------------------------------------------------------------------------------
# Every reader on its layout
# ----------------------------------------------------------------------------------------------------------
def test_builders_cover_the_registry():
    assert set(BUILDERS) == set(READERS) == set(TASKS)


@pytest.mark.parametrize("name", sorted(READERS))
def test_reader_loads_and_collates(tmp_path, name):
    task = READERS[name](**BUILDERS[name](tmp_path))
    assert task.name == name
    assert get_task(name).selection_split in task.splits
    assert {"train", "test"} <= set(task.splits)
    for split, clips in task.splits.items():
        assert clips and all(c.split == split for c in clips)
        assert len({c.uid for c in clips}) == len(clips), "uids must be unique within a split"
        ds = task.dataset(split, sample_rate=16000)
        batch = [ds[i] for i in range(min(3, len(ds)))]
        wavs, labels, uids = collate(batch)
        assert all(w.dtype == torch.float32 and w.ndim == 1 and w.numel() > 0 for w in wavs)
        assert all(float(w.abs().max()) <= 1.0 for w in wavs)
        if task.multilabel:
            assert labels.shape == (len(batch), task.num_classes) and labels.dtype == torch.float32
        else:
            assert labels.shape == (len(batch),) and labels.dtype == torch.long
        assert uids == [c.uid for c in ds.clips[: len(batch)]]


# ----------------------------------------------------------------------------------------------------------
# AS-20K
# ----------------------------------------------------------------------------------------------------------
def test_as20k_reads_json_datafiles(tmp_path):
    kwargs = make_as20k(tmp_path)
    task = datasets.as20k(**kwargs)
    assert task.multilabel and task.num_classes == 527
    assert task.classes[1] == "Male speech, man speaking"  # quoted CSV field with a comma
    assert set(task.splits) == {"train", "test"} and get_task("as20k").selection_split == "test"
    assert len(task.splits["train"]) == len(task.splits["test"]) == 4 * 2
    first = task.splits["train"][0]
    assert first.label == [0, 1]  # "/m/09x0r,/m/05zppz"
    assert first.path == kwargs["root"] / "audio" / "train" / first.path.name  # relative to the JSON's folder
    assert task.splits["test"][0].path.is_absolute()
    _, label, _ = task.dataset("train", 16000)[0]
    assert label.shape == (527,) and label.nonzero().flatten().tolist() == [0, 1]


def test_as20k_unknown_label_names_label_and_file(tmp_path):
    root = make_as20k(tmp_path)["root"]
    eval_json = root / "eval_data.json"
    data = json.loads(eval_json.read_text())
    data["data"][3]["labels"] = "/m/09x0r,foo"
    eval_json.write_text(json.dumps(data))
    expected = r"label 'foo' in '.*eval_data\.json' entry 3 .* is not in class_labels_indices\.csv"
    with pytest.raises(DatasetLayoutError, match=expected):
        datasets.as20k(root)


def test_as20k_missing_datafile_and_audio(tmp_path):
    root = make_as20k(tmp_path)["root"]
    with pytest.raises(DatasetLayoutError, match="no_such.json"):
        datasets.as20k(root, train_json="no_such.json")
    missing = sorted((root / "audio" / "train").iterdir())[0]
    missing.unlink()
    with pytest.raises(DatasetLayoutError, match=re.escape(missing.name)):
        datasets.as20k(root)


# ----------------------------------------------------------------------------------------------------------
# ESC-50
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fold", [1, 4])
def test_esc50_fold_is_test(tmp_path, fold):
    root = make_esc50(tmp_path)["root"]
    task = datasets.esc50(root, fold)
    assert task.classes == ["dog", "rooster", "pig"]  # ordered by target
    assert set(task.splits) == {"train", "test"} and get_task("esc50").selection_split == "test"
    assert len(task.splits["test"]) == 3 * 2 and len(task.splits["train"]) == 4 * 3 * 2
    assert {c.fold for c in task.splits["test"]} == {fold}
    assert fold not in {c.fold for c in task.splits["train"]}
    for clip in task.splits["test"]:  # file names end in -<target>.wav
        assert clip.label == int(clip.path.stem.split("-")[-1])


@pytest.mark.parametrize("fold", [0, 6])
def test_esc50_fold_out_of_range(tmp_path, fold):
    root = make_esc50(tmp_path)["root"]
    with pytest.raises(DatasetLayoutError, match=rf"fold {fold} out of range 1\.\.5"):
        datasets.esc50(root, fold)


def test_esc50_wrong_root_names_meta_file(tmp_path):
    make_esc50(tmp_path)
    with pytest.raises(DatasetLayoutError, match=r"has no meta/esc50\.csv; expected the ESC-50-master"):
        datasets.esc50(tmp_path, 1)  # the parent of ESC-50-master


def test_esc50_resamples_44k_to_16k(tmp_path):
    task = datasets.esc50(**make_esc50(tmp_path))
    clip = task.splits["test"][0]
    assert sf.info(str(clip.path)).samplerate == 44100
    wav, _, _ = task.dataset("test", 16000)[0]
    assert wav.shape == (8000,)  # 0.5 s at 16 kHz
    raw, _ = sf.read(str(clip.path), dtype="float32")
    assert float(wav.pow(2).mean()) == pytest.approx(float(np.mean(raw**2)), rel=0.05)  # same signal energy


# ----------------------------------------------------------------------------------------------------------
# Speech Commands v2 (KS2)
# ----------------------------------------------------------------------------------------------------------
def test_speech_commands_v2_lists(tmp_path):
    root = make_speech_commands_v2(tmp_path)["root"]
    task = datasets.speech_commands_v2(root)
    assert task.classes == ["backward", "bed", "yes"]  # sorted folders, _background_noise_ excluded
    assert {s: len(c) for s, c in task.splits.items()} == {"train": 6, "dev": 6, "test": 6}
    dev_list = (root / "validation_list.txt").read_text().split()
    assert [c.uid for c in task.splits["dev"]] == dev_list
    held_out = set(dev_list) | set((root / "testing_list.txt").read_text().split())
    assert not held_out & {c.uid for c in task.splits["train"]}


def test_speech_commands_v2_errors(tmp_path):
    root = make_speech_commands_v2(tmp_path)["root"]
    with (root / "testing_list.txt").open("a") as f:
        f.write("yes/ghost_nohash_0.wav\n")
    with pytest.raises(DatasetLayoutError, match=r"testing_list\.txt' line 7: .*yes/ghost_nohash_0\.wav"):
        datasets.speech_commands_v2(root)
    (root / "validation_list.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"no validation_list\.txt"):
        datasets.speech_commands_v2(root)


# ----------------------------------------------------------------------------------------------------------
# Speech Commands v1 (KS1, SUPERB)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["0132a06d_nohash_0.wav", "c1d39ce8_nohash_4.wav", "ffd2ba2f_nohash_2.wav"])
def test_ks1_hash_matches_s3prl_formula(name):
    # s3prl split_dataset: sha1 of the name before "_nohash_", mod (2**27 - 1) + 1, times 100 / (2**27 - 1).
    speaker = name.split("_nohash_")[0]
    value = int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16)
    expected = (value % ((2**27 - 1) + 1)) * (100.0 / (2**27 - 1))
    assert speech_commands_hash_percentage(name) == expected
    assert speech_commands_hash_percentage(f"yes/{name}") == expected  # folders are ignored


def test_ks1_split_follows_hash(tmp_path):
    kwargs = make_speech_commands_v1(tmp_path)
    task = datasets.speech_commands_v1(**kwargs)
    assert task.classes == KS1_CLASSES and len(KS1_CLASSES) == 12
    silence = KS1_CLASSES.index("_silence_")
    words = [c for c in task.splits["train"] + task.splits["dev"] if c.label != silence]
    for clip in words:
        # Hash computed here independently: < 10 -> dev, 10..20 -> dropped, >= 20 -> train.
        speaker = clip.path.name.split("_nohash_")[0]
        pct = (int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 2**27) * 100.0 / (2**27 - 1)
        assert pct < 10 if clip.split == "dev" else pct >= 20
    on_disk = {p for d in kwargs["root"].iterdir() if d.name != "_background_noise_" for p in d.glob("*.wav")}
    (dropped,) = on_disk - {c.path for c in words}  # exactly one clip falls in the 10-20 % band
    assert 10 <= speech_commands_hash_percentage(dropped.name) < 20
    assert len(words) == len(on_disk) - 1


def test_ks1_unknown_silence_and_test_set(tmp_path):
    task = datasets.speech_commands_v1(**make_speech_commands_v1(tmp_path))
    unknown, silence = KS1_CLASSES.index("_unknown_"), KS1_CLASSES.index("_silence_")
    for split in ("train", "dev"):
        clips = task.splits[split]
        assert {c.label for c in clips if c.path.parent.name in ("bed", "cat")} == {unknown}
        noise = [c for c in clips if c.label == silence]
        assert len(noise) == 2 and all(c.crop_secs == 1.0 and c.random_crop for c in noise)
    assert collections.Counter(_labels(task.splits["test"])) == {i: 2 for i in range(12)}
    assert all(c.gain_db == -3.0 for s in task.splits.values() for c in s)


def test_ks1_silence_crop_and_gain(tmp_path):
    task = datasets.speech_commands_v1(**make_speech_commands_v1(tmp_path))
    silence = KS1_CLASSES.index("_silence_")
    train = task.dataset("train", 16000)
    index = next(i for i, c in enumerate(train.clips) if c.label == silence)
    assert train[index][0].shape == (16000,)  # 1 s out of the 1.5 s noise
    dev = task.dataset("dev", 16000)
    index = next(i for i, c in enumerate(dev.clips) if c.label == silence)
    assert torch.equal(dev[index][0], dev[index][0])  # evaluation crops are reproducible
    # -3 dB gain, as s3prl's sox "gain -3.0": compare a test clip with the raw file.
    wav, _, _ = task.dataset("test", 16000)[0]
    raw, _ = sf.read(str(task.splits["test"][0].path), dtype="float32")
    assert wav.numpy() == pytest.approx(raw * 10 ** (-3 / 20), abs=1e-6)


def test_class_balanced_weights(tmp_path):
    task = datasets.speech_commands_v1(**make_speech_commands_v1(tmp_path))
    clips = task.splits["train"]
    weights = class_balanced_weights(clips)
    counts = collections.Counter(_labels(clips))
    assert weights.shape == (len(clips),)
    # s3prl: weight = N / count(class), so every class sums to N.
    totals = collections.defaultdict(float)
    for clip, w in zip(clips, weights.tolist(), strict=True):
        assert w == pytest.approx(len(clips) / counts[clip.label])
        totals[clip.label] += w
    assert all(t == pytest.approx(len(clips)) for t in totals.values())
    sampler = torch.utils.data.WeightedRandomSampler(weights, len(weights))
    assert len(list(sampler)) == len(clips)


def test_ks1_errors(tmp_path):
    kwargs = make_speech_commands_v1(tmp_path)
    (kwargs["test_root"] / "marvin").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"test folder '.*marvin' is not one of the 12 KS1 classes"):
        datasets.speech_commands_v1(**kwargs)
    (kwargs["test_root"] / "marvin").rmdir()
    for p in (kwargs["root"] / "_background_noise_").iterdir():
        p.unlink()
    (kwargs["root"] / "_background_noise_").rmdir()
    with pytest.raises(DatasetLayoutError, match="has no _background_noise_/"):
        datasets.speech_commands_v1(**kwargs)


# ----------------------------------------------------------------------------------------------------------
# VoxCeleb1 (SID)
# ----------------------------------------------------------------------------------------------------------
def test_voxceleb1_labels_and_splits(tmp_path):
    root = make_voxceleb1(tmp_path)["root"]
    task = datasets.voxceleb1(root)
    assert task.num_classes == 1251 and task.classes[269] == "id10270"
    assert {s: len(c) for s, c in task.splits.items()} == {"train": 6, "dev": 6, "test": 6}
    # label = int(id[2:]) - 10001; id10270 lives under test/wav, the others under dev/wav.
    assert sorted(set(_labels(task.splits["train"]))) == [0, 1, 269]
    clip = next(c for c in task.splits["test"] if c.label == 269)
    assert clip.path.relative_to(root).parts[:3] == ("test", "wav", "id10270")
    assert re.fullmatch(r"id10270-vid3\d\dabcdE-\d{5}", clip.uid)  # s3prl path2name


def test_voxceleb1_train_crop(tmp_path):
    root = make_voxceleb1(tmp_path)["root"]
    task = datasets.voxceleb1(root, max_timestep=4000)
    assert all(c.crop_secs == 0.25 and c.random_crop for c in task.splits["train"])
    assert all(c.crop_secs is None for c in task.splits["dev"] + task.splits["test"])
    torch.manual_seed(0)
    train = task.dataset("train", 16000)
    crops = [train[0][0] for _ in range(5)]
    assert all(w.shape == (4000,) for w in crops)
    assert any(not torch.equal(crops[0], w) for w in crops[1:])  # a fresh window each time
    assert task.dataset("dev", 16000)[0][0].shape == (8000,)  # dev keeps the whole 0.5 s
    assert task.dataset("train", 32000)[0][0].shape == (8000,)  # the crop is in seconds: 0.25 s at 32 kHz


def test_voxceleb1_layout_errors(tmp_path):
    root = make_voxceleb1(tmp_path)["root"]
    with pytest.raises(DatasetLayoutError, match=r"split file '.*other\.txt' does not exist"):
        datasets.voxceleb1(root, split_file=root / "other.txt")
    split_file = root / "iden_split.txt"
    lines = split_file.read_text().splitlines()
    split_file.write_text("\n".join(lines + ["4 id10001/x/00001.wav"]) + "\n")
    with pytest.raises(DatasetLayoutError, match=r"line 19: expected '<1\|2\|3> idXXXXX"):
        datasets.voxceleb1(root)
    split_file.write_text("\n".join(lines + ["1 id10099/vid/00001.wav"]) + "\n")
    with pytest.raises(DatasetLayoutError, match=r"line 19: speaker folder id10099/ not found"):
        datasets.voxceleb1(root)


def test_voxceleb1_missing_file_eager_and_lazy(tmp_path, monkeypatch):
    root = make_voxceleb1(tmp_path)["root"]
    rel = (root / "iden_split.txt").read_text().split()[1]
    missing = root / "dev" / "wav" / rel
    missing.unlink()
    with pytest.raises(DatasetLayoutError, match=re.escape(str(missing))):
        datasets.voxceleb1(root)
    # Above the eager-check limit the reader trusts the split file and the loader names the file instead.
    monkeypatch.setattr(layout, "EAGER_CHECK_LIMIT", 5)
    task = datasets.voxceleb1(root)
    with pytest.raises(DatasetLayoutError, match=re.escape(str(missing))):
        task.dataset("train", 16000)[0]


# ----------------------------------------------------------------------------------------------------------
# IEMOCAP (ER)
# ----------------------------------------------------------------------------------------------------------
def test_iemocap_labels_and_exc_merge(tmp_path):
    task = datasets.iemocap(**make_iemocap(tmp_path))
    assert task.classes == ["neu", "hap", "ang", "sad"]
    # Per session: 2 clips each of neu, hap, ang, sad, exc (-> hap); fru dropped. 10 per session.
    test = task.splits["test"]
    assert collections.Counter(_labels(test)) == {0: 2, 1: 4, 2: 2, 3: 2}
    assert {c.fold for c in test} == {1} and all(c.uid.startswith("Ses01") for c in test)
    session_dir = test[0].path.parents[3]
    text = (session_dir / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt").read_text()
    exc_utts = re.findall(r"\t(Ses01F_impro01_\w+)\texc\t", text)
    assert exc_utts and all(c.label == 1 for c in test if c.uid in exc_utts)


@pytest.mark.parametrize("fold", [2, 5])
def test_iemocap_fold_sessions_and_dev_split(tmp_path, fold):
    kwargs = make_iemocap(tmp_path)
    task = datasets.iemocap(kwargs["root"], fold)
    assert {c.fold for c in task.splits["test"]} == {fold}
    pool = task.splits["train"] + task.splits["dev"]
    assert {c.fold for c in pool} == set(range(1, 6)) - {fold}
    # 40 training-session clips: int(0.8 * 40) = 32 train, 8 dev (s3prl random_split lengths).
    assert len(task.splits["train"]) == 32 and len(task.splits["dev"]) == 8
    again = datasets.iemocap(kwargs["root"], fold, seed=0)
    assert [c.uid for c in again.splits["dev"]] == [c.uid for c in task.splits["dev"]]
    other = datasets.iemocap(kwargs["root"], fold, seed=1)
    assert [c.uid for c in other.splits["dev"]] != [c.uid for c in task.splits["dev"]]


def test_iemocap_errors(tmp_path):
    root = make_iemocap(tmp_path)["root"]
    for fold in (0, 6):
        with pytest.raises(DatasetLayoutError, match=rf"fold {fold} out of range 1\.\.5"):
            datasets.iemocap(root, fold)
    wav = root / "Session2" / "sentences" / "wav" / "Ses02F_impro01" / "Ses02F_impro01_F000.wav"
    wav.unlink()
    with pytest.raises(DatasetLayoutError, match=r"Ses02F_impro01\.txt' line 3: no Ses02F_impro01_F000\.wav"):
        datasets.iemocap(root, 1)
    task = datasets.iemocap(root, 2, skip_missing=True)  # s3prl's behaviour: drop it
    assert len(task.splits["test"]) == 9
    (root / "Session3" / "dialog" / "EmoEvaluation").rename(root / "moved")
    with pytest.raises(DatasetLayoutError, match=r"has no Session3/dialog/EmoEvaluation/"):
        datasets.iemocap(root, 1, skip_missing=True)


# ----------------------------------------------------------------------------------------------------------
# Generic: folder and manifest
# ----------------------------------------------------------------------------------------------------------
def test_folder_with_split_dirs(tmp_path):
    task = datasets.folder(**make_folder(tmp_path))
    assert task.classes == ["bird", "cat", "dog"]
    assert {s: collections.Counter(_labels(c)) for s, c in task.splits.items()} == {
        s: {0: 2, 1: 2, 2: 2} for s in ("train", "dev", "test")
    }
    assert {c.path.suffix for c in task.splits["train"]} == {".wav", ".flac"}


def test_folder_seeded_split(tmp_path):
    root = make_folder(tmp_path, clips_per_class=10, split_dirs=False)["root"]
    task = datasets.folder(root, seed=3)
    # 10 per class at 80/10/10: round(1.0) = 1 to test, 1 to dev, 8 to train, per class.
    assert {s: len(c) for s, c in task.splits.items()} == {"train": 24, "dev": 3, "test": 3}
    assert collections.Counter(_labels(task.splits["test"])) == {0: 1, 1: 1, 2: 1}
    again = datasets.folder(root, seed=3)
    assert [c.uid for c in again.splits["test"]] == [c.uid for c in task.splits["test"]]


def test_folder_lists_class_files_in_path_order_skipping_hidden_ones(tmp_path):
    root = tmp_path / "ds"
    for split in ("train", "dev", "test"):
        for cls in ("a", "b"):
            for rel in ("x.wav", "x/y.flac", "x-z.wav", ".hidden.wav", ".cache/c.wav", "notes.txt"):
                path = root / split / cls / rel
                if rel.endswith(".txt"):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("not audio")
                else:
                    write_tone(path)
    task = datasets.folder(root)
    # component by component: the folder "x" sorts before "x-z.wav" and "x.wav" (as strings, "x-z.wav" and
    # "x.wav" would come first: '-' and '.' sort before '/'); the seeded split draw depends on this order
    assert [c.uid for c in task.splits["train"]] == [f"train/{cls}/{rel}" for cls in ("a", "b")
                                                     for rel in ("x/y.flac", "x-z.wav", "x.wav")]


def test_folder_errors(tmp_path):
    root = make_folder(tmp_path)["root"]
    for p in (root / "dev").rglob("*.*"):
        p.unlink()
    with pytest.raises(DatasetLayoutError, match=r"class folder '.*dev/bird' has no audio files"):
        datasets.folder(root)
    for d in sorted((root / "dev").iterdir()):
        d.rmdir()
    (root / "dev").rmdir()
    with pytest.raises(DatasetLayoutError, match=r"no \['dev'\]/ split folder"):
        datasets.folder(root)


def test_manifest_csv_and_jsonl(tmp_path):
    task = datasets.manifest(**make_manifest(tmp_path / "a"))
    assert task.classes == ["bird", "cat", "dog"] and not task.multilabel
    assert {s: len(c) for s, c in task.splits.items()} == {"train": 6, "dev": 6, "test": 6}
    assert task.splits["train"][0].path == tmp_path / "a" / "manifest_ds" / "audio" / "bird_train_000.wav"
    path = make_manifest(tmp_path / "b", clips_per_class=10, fmt="jsonl", with_split=False)["path"]
    task = datasets.manifest(path, seed=1)
    assert {s: len(c) for s, c in task.splits.items()} == {"train": 24, "dev": 3, "test": 3}
    # the draw: each of the 30 clips in one split; the same for the same seed, another for another seed
    drawn = {s: [c.uid for c in clips] for s, clips in task.splits.items()}
    assert len(set(sum(drawn.values(), []))) == 30
    assert {s: [c.uid for c in clips] for s, clips in datasets.manifest(path, seed=1).splits.items()} == drawn
    other = {s: [c.uid for c in clips] for s, clips in datasets.manifest(path, seed=2).splits.items()}
    assert {s: len(u) for s, u in other.items()} == {"train": 24, "dev": 3, "test": 3} and other != drawn


def test_manifest_multilabel_jsonl(tmp_path):
    path = make_manifest(tmp_path, fmt="jsonl")["path"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["label"] = ["bird", "dog"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = datasets.manifest(path)
    assert task.multilabel and task.splits["train"][0].label == [0, 2]
    _, label, _ = task.dataset("train", 16000)[0]
    assert label.tolist() == [1.0, 0.0, 1.0]


def test_manifest_errors(tmp_path):
    path = make_manifest(tmp_path)["path"]
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + ["audio/bird_train_000.wav,bird,valid"]) + "\n")
    with pytest.raises(DatasetLayoutError, match=r"line 20: split 'valid' is not one of"):
        datasets.manifest(path)
    path.write_text("\n".join(lines + ["audio/ghost.wav,bird,train"]) + "\n")
    with pytest.raises(DatasetLayoutError, match=r"audio file '.*ghost\.wav' listed in '.*manifest\.csv'"):
        datasets.manifest(path)
    with pytest.raises(DatasetLayoutError, match=r"manifest '.*nope\.csv' does not exist"):
        datasets.manifest(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------------------------------------
# ClipDataset
# ----------------------------------------------------------------------------------------------------------
def test_clip_dataset_names_empty_and_unreadable_files(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really audio")
    ds = ClipDataset([Clip(empty, 0, "test"), Clip(garbage, 0, "test")], 16000, ["a"])
    with pytest.raises(DatasetLayoutError, match=r"empty\.wav"):
        ds[0]
    with pytest.raises(DatasetLayoutError, match=r"garbage\.wav"):
        ds[1]


def test_clip_dataset_checks_labels(tmp_path):
    path = write_tone(tmp_path / "x.wav")
    with pytest.raises(DatasetLayoutError, match=r"label 3; expected one class index in 0\.\.1"):
        ClipDataset([Clip(path, 3, "train")], 16000, ["a", "b"])
    with pytest.raises(DatasetLayoutError, match="a list of class indices"):
        ClipDataset([Clip(path, 1, "train")], 16000, ["a", "b"], multilabel=True)


def test_clip_dataset_crops(tmp_path):
    path = write_tone(tmp_path / "long.wav", secs=1.0)
    clips = [
        Clip(path, 0, "dev", crop_secs=0.25),  # fixed: the first 0.25 s
        Clip(path, 0, "dev", crop_secs=0.25, random_crop=True),
        Clip(path, 0, "dev", crop_secs=2.0, random_crop=True),  # longer than the audio: kept whole
    ]
    full = ClipDataset(clips[:1], 16000, ["a"])[0][0]
    assert full.shape == (4000,)
    raw, _ = sf.read(str(path), dtype="float32")
    assert full.numpy() == pytest.approx(raw[:4000])
    assert ClipDataset(clips, 16000, ["a"])[2][0].shape == (16000,)

    # Outside training a random crop starts where default_rng([seed, index]) puts it (16000 - 4000 + 1
    # positions), so every evaluation, in any process, scores the same audio; another seed moves it.
    def window(seed: int) -> torch.Tensor:
        start = int(np.random.default_rng([seed, 1]).integers(16000 - 4000 + 1))
        return torch.from_numpy(raw[start : start + 4000])

    assert not torch.equal(window(7), window(8))
    for seed in (7, 8):
        first = ClipDataset(clips, 16000, ["a"], train=False, seed=seed)[1][0]
        again = ClipDataset(clips, 16000, ["a"], train=False, seed=seed)[1][0]  # a fresh dataset, same seed
        assert torch.equal(first, window(seed)) and torch.equal(again, window(seed))
    # In training the start is drawn from torch's global generator: it follows torch.manual_seed.
    train = ClipDataset(clips, 16000, ["a"], train=True)
    torch.manual_seed(0)
    start = int(torch.randint(16000 - 4000 + 1, ()).item())
    torch.manual_seed(0)
    assert torch.equal(train[1][0], torch.from_numpy(raw[start : start + 4000]))


def test_read_audio_downmixes_then_resamples(tmp_path):
    """Clips are read by ``upstream.frontend.load_audio``: channels averaged (sox "channels 1"), then soxr
    HQ resampling."""
    path = tmp_path / "stereo.wav"
    left = sf.read(str(write_tone(tmp_path / "l.wav", 0.5, 44100, seed=1)), dtype="float32")[0]
    right = sf.read(str(write_tone(tmp_path / "r.wav", 0.5, 44100, seed=2)), dtype="float32")[0]
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="PCM_16")
    wav = datasets.read_audio(path, 16000)
    assert wav.dtype == torch.float32 and wav.shape == (8000,)
    stored = sf.read(str(path), dtype="float32")[0]  # the PCM_16 samples, as the decoder sees them
    expected = soxr.resample(stored.mean(axis=1), 44100, 16000, quality="HQ")
    assert wav.numpy() == pytest.approx(expected, abs=1e-6)
    (tmp_path / "garbage.wav").write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"garbage\.wav"):
        datasets.read_audio(tmp_path / "garbage.wav", 16000)


# ----------------------------------------------------------------------------------------------------------
# Every task is scanned and prepared for a run (downstream.tasks.TaskSpec.read -> datasets.prepare_task)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(READERS))
def test_every_task_is_scanned_and_prepared(tmp_path, name):
    kw = BUILDERS[name](tmp_path)
    root = kw.get("path") or (kw["root"] if name == "folder" else tmp_path)
    spec = get_task(name)
    lines: list[str] = []
    data = spec.read(root, kw.get("fold"), log=lines.append)
    assert lines == []  # nothing skipped, so nothing to say
    assert data.audio.num_skipped == 0
    assert data.audio.files == len({c.path for s in data.splits.values() for c in s})
    native = 44100 if name == "esc50" else 16000
    assert data.audio.sample_rates == {native: data.audio.files}
    for clips in data.splits.values():
        assert all(c.native_sr == native and c.num_frames > 0 for c in clips)
        secs = [c.loaded_secs for c in clips]
        assert secs == sorted(secs, reverse=True)
    ident = data.identity(16000)
    assert ident["resampled_files"] == (data.audio.files if name == "esc50" else 0)
    assert str(tmp_path) not in json.dumps(ident) and len(ident["files_sha256"]) == 16
    assert data.group_by_length == (name in ("folder", "manifest"))
    assert ident["split"] == {"source": "layout"}
    assert data.selection_split == spec.selection_split in data.splits


def test_folder_and_manifest_record_their_split_draw(tmp_path):
    task = datasets.folder(make_folder(tmp_path / "a", clips_per_class=10, split_dirs=False)["root"], seed=2,
                           ratios=(0.6, 0.2, 0.2))
    assert task.split_rule == {"source": "drawn", "seed": 2, "ratios": [0.6, 0.2, 0.2]}
    assert {s: len(c) for s, c in task.splits.items()} == {"train": 18, "dev": 6, "test": 6}
    assert datasets.folder(make_folder(tmp_path / "b")["root"]).split_rule == {"source": "layout"}
    path = make_manifest(tmp_path / "c", clips_per_class=10, with_split=False)["path"]
    drawn = {"source": "drawn", "seed": 1, "ratios": [0.8, 0.1, 0.1]}
    assert datasets.manifest(path, seed=1).split_rule == drawn
    with pytest.raises(ValueError, match=r"split ratios must be 3 numbers .* got \(0.0, 0.5, 0.5\)"):
        datasets.folder(make_folder(tmp_path / "d", split_dirs=False)["root"], ratios=(0.0, 0.5, 0.5))
