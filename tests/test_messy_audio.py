"""Real recordings are messy: unusable files, very long clips among short ones, other sample rates, odd
labels.

The dataset is ``tests.layouts.make_messy_folder``: 8 kHz clips of 0.2-0.4 s, a few of 4-6 s, and one file of
each unusable kind (``BAD_AUDIO``). Every case must end in a documented behaviour, never a traceback or a
silently wrong number: unusable files are skipped and counted (or refused with ``--strict-audio``), cost
follows each clip's own length, and records say which data they scored.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

import run_downstream
from common.distributed import DistContext, StepBatchSampler
from downstream import results
from downstream.batching import LengthGroupedSampler, length_batches, padded_secs
from downstream.config import RunnerConfig
from downstream.datasets import (
    Clip,
    DataConfig,
    DatasetLayoutError,
    TaskData,
    check_labels,
    folder,
    scan_task,
)
from downstream.engine import build_loader, train_loader
from downstream.tasks import data_overrides, get_task
from tests.layouts import BAD_AUDIO, make_folder, make_messy_folder, write_bad_audio, write_tone
from upstream.frontend import AudioError, load_audio, probe_audio

TINY = ["-o", "runner.total_steps=2", "-o", "runner.eval_step=1", "-o", "runner.batch_size=4",
        "-o", "runner.eval_batch_size=8"]
# make_messy_folder's bad files by reason: 2 empty (0 bytes, 0 samples), 2 unreadable (random bytes, truncated
# header), 1 text, 2 non-finite (NaN, inf)
MESSY_SKIPPED = {"empty": 2, "unreadable": 2, "text": 1, "non_finite": 2}


@pytest.fixture(autouse=True)
def _feature_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTBENCH_CACHE", str(tmp_path / "feature_cache"))


def _read(root, **cfg):
    lines: list[str] = []
    data = get_task("folder").read(root, data_cfg=DataConfig(**cfg), log=lines.append)
    return data, lines


# ---------------------------------------------------------------------------------- one file at a time
@pytest.mark.parametrize("kind", sorted(BAD_AUDIO))
def test_every_bad_kind_gets_its_reason_from_header_and_decoder(tmp_path, kind):
    """The header scan and the decoder agree on what is wrong, and both name the file."""
    path = write_bad_audio(tmp_path / f"x_{kind}.wav", kind)
    with pytest.raises(AudioError, match=f"x_{kind}.wav") as scanned:
        probe_audio(path)
    with pytest.raises(AudioError, match=f"x_{kind}.wav") as decoded:
        load_audio(path)
    assert scanned.value.reason == decoded.value.reason == BAD_AUDIO[kind]
    assert str(path) not in scanned.value.detail  # the summary line names the file once


def test_probe_reads_the_header_only_and_checks_float_files_for_nan(tmp_path):
    pcm = write_tone(tmp_path / "pcm.wav", 0.5, 8000)
    info = probe_audio(pcm)
    assert (info.frames, info.sample_rate, info.channels, info.subtype) == (4000, 8000, 1, "PCM_16")
    assert info.duration_secs == 0.5 and info.size_bytes == pcm.stat().st_size
    ok = np.zeros(100_000, dtype=np.float32)  # spans two decode blocks of 65,536
    sf.write(tmp_path / "float.wav", ok, 8000, subtype="FLOAT")
    assert probe_audio(tmp_path / "float.wav").subtype == "FLOAT"
    ok[-1] = np.nan  # in the second block
    sf.write(tmp_path / "float.wav", ok, 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match="1 non-finite"):
        probe_audio(tmp_path / "float.wav")
    assert probe_audio(tmp_path / "float.wav", check_finite=False).frames == 100_000
    with pytest.raises(AudioError, match="not found") as err:
        probe_audio(tmp_path / "absent.wav")
    assert err.value.reason == "missing"


# ------------------------------------------------------------------------------------------ the scan
def test_scan_skips_and_counts_unusable_files_in_one_line(tmp_path):
    kw = make_messy_folder(tmp_path)
    data, lines = _read(kw["root"])
    assert data.audio.skipped == MESSY_SKIPPED and data.audio.files == 40
    assert len(lines) == 1
    assert lines[0].startswith("folder: skipped 7 of 40 files: 2 empty, 2 non-finite, 1 text, 2 unreadable; "
                               "first: ")
    # listing order is train before dev/test, classes and files sorted: train/no/bad_random.wav comes first
    assert f"first: {kw['bad']['random']} (unreadable: " in lines[0]
    used = {c.path for clips in data.splits.values() for c in clips}
    assert not used & set(kw["bad"].values())
    assert {s: len(c) for s, c in data.splits.items()} == {"train": 16, "dev": 4, "test": 13}
    assert all(c.native_sr == 8000 and c.num_frames > 0 for clips in data.splits.values() for c in clips)
    ident = data.identity(16000)
    assert ident["skipped"] == MESSY_SKIPPED and ident["num_skipped"] == 7
    assert ident["first_skipped"] == "train/no/bad_random.wav (unreadable: Format not recognised.)"
    assert ident["native_sample_rates"] == {"8000": 33} and ident["resampled_files"] == 33
    assert ident["root"] == "messy_ds"  # an absolute root is reduced to its name: no machine path in records
    assert str(tmp_path) not in json.dumps(ident)


def test_strict_audio_refuses_naming_the_first_bad_file(tmp_path):
    kw = make_messy_folder(tmp_path)
    with pytest.raises(DatasetLayoutError,
                       match=r"bad_random\.wav cannot be used \(unreadable: .*\(6 more unusable"):
        _read(kw["root"], on_bad_audio="error")
    clean = make_folder(tmp_path / "clean")["root"]
    data, lines = _read(clean, on_bad_audio="error")  # nothing to refuse: nothing logged
    assert data.audio.num_skipped == 0 and lines == []


def test_a_listed_file_that_does_not_exist_is_always_an_error(tmp_path):
    """Unlike an unusable file, a missing one means the listing and the audio disagree: never skipped."""
    task = folder(make_messy_folder(tmp_path)["root"])
    gone = task.splits["test"][0]
    gone.path.unlink()
    with pytest.raises(DatasetLayoutError,
                       match=f"audio file '{gone.path}' \\(test clip {gone.uid}\\) does not exist"):
        scan_task(task, "skip")


def test_a_file_spoilt_after_the_scan_fails_naming_it_not_with_nan(tmp_path):
    kw = make_messy_folder(tmp_path)
    data, _ = _read(kw["root"])
    clip = data.splits["test"][-1]
    write_bad_audio(clip.path, "nan", 8000)
    ds = data.dataset("test", 16000)
    with pytest.raises(DatasetLayoutError, match=f"cannot load clip {clip.uid} .*non-finite"):
        ds[len(ds) - 1]


def test_resampling_is_reported_once_per_dataset(tmp_path, capsys):
    kw = make_messy_folder(tmp_path)
    data, _ = _read(kw["root"])
    assert data.resampling_note(8000) is None  # nothing to resample
    note = data.resampling_note(32000)
    assert note == ("folder: resampling 33 of 33 files (33 at 8000 Hz) to the upstream's 32000 Hz; "
                    "above 4000 Hz (the files' Nyquist frequency) the features see no signal")
    rc = RunnerConfig(batch_size=4, eval_batch_size=8, total_steps=2)
    for _ in range(2):
        build_loader(data, get_task("folder"), "dev", 16000, rc, 0)
    train_loader(data, get_task("folder"), 16000, rc, 0, 0, DistContext())
    assert capsys.readouterr().out.count("resampling 33 of 33 files") == 1


def test_files_hash_is_the_datasets_identity_on_any_machine(tmp_path):
    root = make_messy_folder(tmp_path / "a")["root"]
    copy = tmp_path / "elsewhere" / "messy_ds"
    shutil.copytree(root, copy)
    first, _ = _read(root)
    moved, _ = _read(copy)
    assert first.audio.files_sha256 == moved.audio.files_sha256
    assert first.identity()["splits_sha256"] == moved.identity()["splits_sha256"]
    write_tone(copy / "train" / "no" / "no_000.wav", 0.5, 8000)  # same name, other content length
    changed, _ = _read(copy)
    assert changed.audio.files_sha256 != first.audio.files_sha256


# ------------------------------------------------------------------------------------------ labels
def test_single_class_and_test_only_class_are_refused(tmp_path):
    root = make_folder(tmp_path / "one", clips_per_class=10, split_dirs=False)["root"]
    for cls in ("cat", "dog"):
        shutil.rmtree(root / cls)
    with pytest.raises(DatasetLayoutError, match=r"train split has only 1 class \('bird'\); .*at least 2"):
        _read(root)
    root = make_folder(tmp_path / "only_test")["root"]
    write_tone(root / "test" / "frog" / "frog_0.wav")
    with pytest.raises(DatasetLayoutError,
                       match=r"class\(es\) 'frog' appear in the test split but never in train"):
        _read(root)


def test_a_class_lost_to_skipped_files_is_named(tmp_path):
    root = make_folder(tmp_path)["root"]
    for path in (root / "train" / "dog").iterdir():
        write_bad_audio(path, "empty")
    with pytest.raises(DatasetLayoutError,
                       match=r"'dog' appear in the dev split .*\(2 unusable files were skipped\)"):
        _read(root)


def test_multilabel_labels_are_checked_per_label(tmp_path):
    path = write_tone(tmp_path / "x.wav")
    train = [Clip(path, [0, 1], "train"), Clip(path, [1], "train")]
    task = TaskData("x", ["a", "b", "c"], True, {"train": train, "test": [Clip(path, [1, 0], "test")]})
    check_labels(task)
    task.splits["test"].append(Clip(path, [0, 2], "test"))
    with pytest.raises(DatasetLayoutError, match=r"class\(es\) 'c' appear in the test split"):
        check_labels(task)
    task.splits["train"] = [Clip(path, [1], "train")]
    with pytest.raises(DatasetLayoutError, match=r"only 1 class \('b'\)"):
        check_labels(task)


# ------------------------------------------------------------------------------------------ crops and order
def test_long_training_clips_are_cropped_and_splits_sorted_longest_first(tmp_path):
    kw = make_messy_folder(tmp_path)
    data, _ = _read(kw["root"], max_train_secs=1.0)
    train = data.splits["train"]
    long = [c for c in train if c.duration_secs > 1.0]
    assert len(long) == 4 and all(c.crop_secs == 1.0 and c.random_crop for c in long)
    assert all(c.crop_secs is None for c in train if c.duration_secs <= 1.0)  # nothing to cut: cacheable
    assert data.identity()["cropped_train_clips"] == 4 and data.identity()["max_train_secs"] == 1.0
    test = data.splits["test"]
    assert test[0].duration_secs == 6.0 and test[0].crop_secs is None  # evaluation keeps whole clips
    for clips in data.splits.values():
        secs = [c.loaded_secs for c in clips]
        assert secs == sorted(secs, reverse=True)
    wavs = [data.dataset("train", 16000, train=True)[i][0] for i in range(len(train))]
    assert max(w.numel() for w in wavs) == 16000  # 1 s at the upstream's rate
    default, _ = _read(kw["root"])
    assert default.max_train_secs == 10.0 and default.identity()["cropped_train_clips"] == 0
    none, _ = _read(kw["root"], max_train_secs=0)
    assert none.max_train_secs is None


def test_paper_tasks_keep_their_crops_unless_asked(tmp_path):
    from tests.layouts import make_voxceleb1

    root = make_voxceleb1(tmp_path)["root"].parent
    spec = get_task("voxceleb1")
    data = spec.read(root, log=lambda _: None)
    assert not data.group_by_length and data.max_train_secs is None
    assert all(c.crop_secs is None for c in data.splits["train"])  # 0.5 s clips under the 8 s crop: uncropped
    cropped = spec.read(root, data_cfg=DataConfig(max_train_secs=0.25), log=lambda _: None)
    assert all(c.crop_secs == 0.25 for c in cropped.splits["train"])


# ------------------------------------------------------------------------------------------ batching
def _messy_secs(n_short=300, n_long=3, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(1, 4, n_short), np.full(n_long, 85.0)])


def test_eval_batches_cost_follows_each_clips_length():
    secs = _messy_secs()
    order = np.argsort(-secs, kind="stable")
    batches = length_batches(secs, order, 32)
    assert [i for b in batches for i in b] == order.tolist()
    budget = 32 * float(np.median(secs))
    assert all(len(b) <= 32 and (len(b) == 1 or len(b) * max(secs[b]) <= budget) for b in batches)
    after = padded_secs(batches, secs)
    rng = np.random.default_rng(1)
    # fixed batches of 32, in any order
    before = padded_secs(np.array_split(rng.permutation(len(secs)), len(secs) // 32), secs)
    assert after <= 1.05 * secs.sum() < before / 4, (after, secs.sum(), before)
    assert length_batches([None, 1.0, 2.0], [0, 1, 2], 2) == [[0, 1], [2]]  # unknown lengths: plain chunks


def test_length_grouped_training_batches():
    secs = _messy_secs()
    n, batch = len(secs), 16
    grouped = LengthGroupedSampler(secs, batch, seed=5, start=0, stop=40, window=20)
    plain = StepBatchSampler(n, batch, seed=5, start=0, stop=40)
    ratio = lambda batches: np.median([max(secs[b]) / min(secs[b]) for b in batches])  # noqa: E731
    g, p = list(grouped), list(plain)
    assert ratio(g) < 1.2 < 2.0 < ratio(p)
    # same clips per window as the plain stream (every clip once per epoch), only regrouped
    for w in range(2):
        window = slice(20 * w, 20 * (w + 1))
        assert sorted(i for b in g[window] for i in b) == sorted(i for b in p[window] for i in b)
    # resume: a sampler started at micro-batch 13 draws what the uninterrupted one drew from there
    assert list(LengthGroupedSampler(secs, batch, seed=5, start=13, stop=40, window=20)) == g[13:]
    assert list(LengthGroupedSampler(secs, batch, seed=6, start=0, stop=40, window=20)) != g
    # two ranks take the two halves of each global batch
    halves = [list(LengthGroupedSampler(secs, batch, 5, 0, 40, rank=r, world_size=2, window=20))
              for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == g
    # window 1: StepBatchSampler's batches, each sorted
    one = list(LengthGroupedSampler(secs, batch, seed=5, start=0, stop=40, window=1))
    assert [sorted(b) for b in one] == [sorted(b) for b in p]


def test_train_loader_groups_by_length_only_where_the_task_says(tmp_path):
    kw = make_messy_folder(tmp_path)
    rc = RunnerConfig(batch_size=4, total_steps=4)
    data, _ = _read(kw["root"])
    loader = train_loader(data, get_task("folder"), 16000, rc, 0, 0, DistContext())
    assert isinstance(loader.batch_sampler, LengthGroupedSampler)
    plain, _ = _read(kw["root"], group_by_length=False)
    assert type(train_loader(plain, get_task("folder"), 16000, rc, 0, 0, DistContext()).batch_sampler) \
        is StepBatchSampler


# --------------------------------------------------------------------------------- the CLI, end to end
def _cli(tmp_path, root, *extra):
    out = tmp_path / "results.jsonl"
    rc = run_downstream.main(["-u", "ssast_patch_mini", "-d", "folder", "--data-root", str(root), "--expdir",
                              str(tmp_path / "exp"), "--results", str(out), *TINY, *extra])
    return rc, results.load(out)


@pytest.mark.parametrize("mode", [[], ["-f"]], ids=["frozen", "finetune"])
def test_messy_folder_runs_to_the_end_and_records_what_it_skipped(tmp_path, capsys, mode):
    kw = make_messy_folder(tmp_path / "data")
    rc, recs = _cli(tmp_path, kw["root"], *mode, "-o", "data.max_train_secs=1")
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert out.out.count("folder: skipped 7 of 40 files") == 1
    assert out.out.count("resampling 33 of 33 files (33 at 8000 Hz) to the upstream's 16000 Hz") == 1
    assert {r.split for r in recs} == {"test", "dev"}
    for r in recs:
        assert r.dataset["skipped"] == MESSY_SKIPPED and r.dataset["native_sample_rates"] == {"8000": 33}
        assert r.dataset["clips"] == {"train": 16, "dev": 4, "test": 13}
        assert r.dataset["cropped_train_clips"] == 4
        assert r.config["data"]["max_train_secs"] == 1.0
    rc, _ = _cli(tmp_path, kw["root"], *mode, "--strict-audio", "-n", "strict")
    assert rc == 2 and "bad_random.wav" in capsys.readouterr().err


def test_cli_single_class_and_test_only_class(tmp_path, capsys):
    root = make_folder(tmp_path / "d")["root"]
    write_tone(root / "test" / "frog" / "frog_0.wav")
    rc, recs = _cli(tmp_path, root)
    err = capsys.readouterr().err
    assert rc == 2 and not recs
    assert "error: folder: class(es) 'frog' appear in the test split but never" in err


def test_split_seed_and_ratios_on_the_cli(tmp_path, capsys):
    root = make_folder(tmp_path / "d", clips_per_class=10, split_dirs=False)["root"]
    rc, recs = _cli(tmp_path, root, "-n", "default")
    assert rc == 0
    default = recs[-1].dataset
    assert default["split"] == {"source": "drawn", "seed": 0, "ratios": [0.8, 0.1, 0.1]}
    assert default["clips"] == {"train": 24, "dev": 3, "test": 3}
    rc, recs = _cli(tmp_path, root, "-n", "seeded", "--split-seed", "4", "--split-ratios", "0.6,0.2,0.2")
    assert rc == 0
    seeded = recs[-1].dataset
    assert seeded["split"] == {"source": "drawn", "seed": 4, "ratios": [0.6, 0.2, 0.2]}
    assert seeded["clips"] == {"train": 18, "dev": 6, "test": 6}
    assert seeded["splits_sha256"] != default["splits_sha256"]
    assert seeded["files_sha256"] == default["files_sha256"]
    assert recs[-1].config["data"]["split_seed"] == 4
    capsys.readouterr()
    assert _cli(tmp_path, root, "--split-ratios", "0.5,0.5,0.5")[0] == 2
    assert "--split-ratios '0.5,0.5,0.5': split_ratios must be 3 numbers" in capsys.readouterr().err
    rc = run_downstream.main(["-u", "ssast_patch_mini", "-d", "voxceleb1", "--data-root", str(tmp_path),
                              "--split-seed", "3"])
    assert rc == 2 and "fixed splits" in capsys.readouterr().err


def test_data_overrides_map_flags_to_config_keys():
    assert data_overrides() == []
    assert data_overrides(3, "0.7,0.2,0.1", True) == [
        "data.split_seed=3", "data.split_ratios=[0.7, 0.2, 0.1]", "data.on_bad_audio=error"]
    with pytest.raises(ValueError, match="--split-ratios 'a,b,c': expected numbers"):
        data_overrides(split_ratios="a,b,c")
    with pytest.raises(ValueError, match="group_window must be >= 1"):
        DataConfig(group_window=0)
    with pytest.raises(ValueError, match="max_train_secs must be >= 0"):
        DataConfig(max_train_secs=-1.0)


def test_nan_the_scan_cannot_see_stops_the_run_with_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """Where NaN appears only when decoding (here: the scan's float check turned off), the loader's AudioError
    ends the run with one ``error:`` line naming the file, never a NaN score or a traceback."""
    from downstream.datasets import scanning

    kw = make_folder(tmp_path / "d")
    spoilt = write_bad_audio(kw["root"] / "test" / "cat" / "late_nan.wav", "nan")
    monkeypatch.setattr(scanning, "probe_audio", lambda path: probe_audio(path, check_finite=False))
    rc, recs = _cli(tmp_path, kw["root"], "-f")
    err = capsys.readouterr().err
    assert rc == 2 and not [r for r in recs if r.split == "test"]
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"{spoilt}" in err and "non-finite" in err


def test_split_settings_on_a_layout_with_splits_are_reported_unused(tmp_path):
    data, lines = _read(make_folder(tmp_path)["root"], split_seed=3)
    assert data.split_rule == {"source": "layout"}
    assert lines == ["folder: the layout gives the train/dev/test splits; "
                     "data.split_seed / data.split_ratios are not used"]
