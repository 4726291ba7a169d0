"""The generated demo corpus: layouts the project's readers accept, determinism, idempotence, learnability.

Corpora here use tiny ``DemoSize``s so the whole file runs in seconds; ``SIZES`` itself is only checked for
consistency.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
import time
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from benchmark import demo_audio, demo_data
from benchmark.demo_data import SIZES, DemoSize, generate
from downstream.datasets import esc50, speech_commands_hash_percentage, speech_commands_v2

TINY = DemoSize("tiny", n_unlabeled=4, unlabeled_secs=0.5, n_words=3, n_speakers=10, takes_per_speaker=1,
                esc_classes=3, esc_clips_per_class=5, esc_secs=0.5)  # fmt: skip
PROBE = DemoSize("probe", n_unlabeled=6, unlabeled_secs=1.0, n_words=4, n_speakers=20, takes_per_speaker=2,
                 esc_classes=6, esc_clips_per_class=10, esc_secs=1.0, test_speakers=4)  # fmt: skip


def _quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("demo") / "corpus", seed=0, size=PROBE, workers=1, log=_quiet)


def _sha1s(root):
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*.wav")}


# ----------------------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------------------
def test_sizes_are_consistent():
    assert set(SIZES) == {"small", "large"}
    for size in SIZES.values():
        assert size.esc_clips_per_class % 5 == 0 and size.esc_classes <= len(demo_data.ESC_CATEGORIES)
        assert size.n_speakers >= 40  # every split gets several speakers, so every word
        quota = size.quota()
        assert sum(quota.values()) == size.n_speakers and min(quota.values()) >= 5
        # about 1,000 test clips per task: a 95% interval of about +-3 points
        assert quota["testing"] * size.n_words * size.takes_per_speaker >= 1000
        assert size.esc_classes * size.esc_clips_per_class >= 1000
    assert SIZES["large"].esc_secs == 5.0
    assert DemoSize("x", 1, 1.0, 2, 50, 1, 3, 5, 1.0).quota() == {"validation": 5, "testing": 5, "train": 40}


def test_no_word_is_an_anagram_of_another():
    for seed in range(5):
        words = demo_audio.lexicon(seed, 12)
        assert len({tuple(sorted(w)) for w in words}) == 12, words  # no two share their mean spectrum


def test_layouts_are_read_by_the_project_readers(corpus):
    assert set(corpus) == {"root", "unlabeled", "speech_commands_v2", "esc50"}
    task = speech_commands_v2(corpus["speech_commands_v2"])
    assert len(task.classes) == PROBE.n_words
    for split in ("train", "dev", "test"):
        assert {c.label for c in task.splits[split]} == set(range(PROBE.n_words)), split
    assert sum(len(clips) for clips in task.splits.values()) == PROBE.n_words * PROBE.n_speakers * 2
    for fold in range(1, 6):
        task = esc50(corpus["esc50"], fold=fold)
        assert task.classes == demo_data.ESC_CATEGORIES[: PROBE.esc_classes]
        assert Counter(c.label for c in task.splits["test"]) == {c: 2 for c in range(PROBE.esc_classes)}
        assert len(task.splits["train"]) == 4 * len(task.splits["test"])
    assert len(list(corpus["unlabeled"].glob("*.wav"))) == PROBE.n_unlabeled


@pytest.mark.parametrize(
    "pattern, rate, secs",
    [("unlabeled/*.wav", 16000, PROBE.unlabeled_secs), ("speech_commands_v0.02/*/*_nohash_*.wav", 16000, 1.0),
     ("ESC-50-master/audio/*.wav", 44100, PROBE.esc_secs),
     ("speech_commands_v0.02/_background_noise_/*.wav", 16000, demo_data.BACKGROUND_SECS)],
)  # fmt: skip
def test_clip_formats(corpus, pattern, rate, secs):
    files = sorted(corpus["root"].glob(pattern))
    assert files
    for path in files[:: max(1, len(files) // 8)]:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (rate, 1, "PCM_16", "WAV")
        assert info.frames == round(secs * rate)
        wav, _ = sf.read(path)
        assert 0.1 < np.abs(wav).max() < 1.0  # peak-normalised, not clipped


def test_speech_commands_follow_the_dataset_rules(corpus):
    root = corpus["speech_commands_v2"]
    names = [p.name for p in root.glob("*/*.wav") if p.parent.name != "_background_noise_"]
    assert all(re.fullmatch(r"[0-9a-f]{8}_nohash_[0-9]+\.wav", n) for n in names)
    listed = {}
    for split, low, high in (("validation", 0, 10), ("testing", 10, 20)):
        lines = (root / f"{split}_list.txt").read_text().splitlines()
        assert lines == sorted(lines) and all((root / line).is_file() for line in lines)
        assert all(low <= speech_commands_hash_percentage(line) < high for line in lines)
        listed[split] = {line.split("/")[1].split("_")[0] for line in lines}
    train = {n.split("_")[0] for n in names} - listed["validation"] - listed["testing"]
    assert all(speech_commands_hash_percentage(f"{s}_nohash_0.wav") >= 20 for s in train)
    assert (len(listed["validation"]), len(listed["testing"]), len(train)) == (2, 4, 14)  # 10 % and 4
    assert len(list((root / "_background_noise_").glob("*.wav"))) >= 2


def test_esc50_meta_matches_the_real_file(corpus):
    meta = corpus["esc50"] / "meta" / "esc50.csv"
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f))
    assert meta.read_text().splitlines()[0] == "filename,fold,target,category,esc10,src_file,take"
    assert [r["filename"] for r in rows] == sorted(r["filename"] for r in rows)
    for r in rows:
        assert r["filename"] == f"{r['fold']}-{r['src_file']}-{r['take']}-{r['target']}.wav"
        assert r["esc10"] in ("True", "False") and re.fullmatch(r"[a-z_]+", r["category"])
    assert Counter((r["target"], r["fold"]) for r in rows) == {
        (str(t), str(f)): 2 for t in range(PROBE.esc_classes) for f in range(1, 6)
    }
    folds_of_source = {}
    for r in rows:  # takes of one source stay in one fold, as in the real split
        folds_of_source.setdefault(r["src_file"], set()).add(r["fold"])
    assert all(len(folds) == 1 for folds in folds_of_source.values())
    assert {r["take"] for r in rows} == {"A", "B"}


# ----------------------------------------------------------------------------------------------------------
# Determinism, idempotence, atomicity
# ----------------------------------------------------------------------------------------------------------
def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    one = generate(tmp_path / "one", seed=3, size=TINY, workers=1, log=_quiet)["root"]
    two = generate(tmp_path / "two", seed=3, size=TINY, workers=2, log=_quiet)["root"]
    other = generate(tmp_path / "other", seed=4, size=TINY, workers=1, log=_quiet)["root"]
    assert _sha1s(one) == _sha1s(two)
    for text in ("speech_commands_v0.02/validation_list.txt", "speech_commands_v0.02/testing_list.txt",
                 "ESC-50-master/meta/esc50.csv"):  # fmt: skip
        assert (one / text).read_text() == (two / text).read_text()
    a, b = sorted(_sha1s(one).values()), sorted(_sha1s(other).values())
    assert len(a) == len(b) and not set(a) & set(b)


def test_second_call_returns_at_once(tmp_path):
    paths = generate(tmp_path / "demo", seed=0, size=TINY, workers=1, log=_quiet)
    mtimes = {p: p.stat().st_mtime_ns for p in paths["root"].rglob("*")}
    messages = []
    start = time.perf_counter()
    assert generate(tmp_path / "demo", seed=0, size=TINY, workers=1, log=messages.append) == paths
    assert time.perf_counter() - start < 2.0
    assert len(messages) == 1 and "up to date" in messages[0]
    assert {p: p.stat().st_mtime_ns for p in paths["root"].rglob("*")} == mtimes


def test_changed_seed_or_missing_file_regenerates(tmp_path):
    root = generate(tmp_path / "demo", seed=0, size=TINY, workers=1, log=_quiet)["root"]
    next(root.glob("unlabeled/*.wav")).unlink()
    messages = []
    generate(root, seed=0, size=TINY, workers=1, log=messages.append)
    assert "generating" in messages[0] and len(list(root.glob("unlabeled/*.wav"))) == TINY.n_unlabeled
    before = _sha1s(root)
    generate(root, seed=1, size=TINY, workers=1, log=_quiet)
    assert '"seed": 1' in (root / "demo.json").read_text()
    after = _sha1s(root)  # another seed: another corpus of as many files, none of the old audio left
    assert len(after) == len(before) and not set(after.values()) & set(before.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no .partial or .old left behind


def test_interrupted_generation_leaves_no_corpus(tmp_path, monkeypatch):
    calls = []

    def failing_esc_clip(rng, *args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C midway
        return np.zeros(100), 44100

    monkeypatch.setattr(demo_audio, "_esc_clip", failing_esc_clip)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "demo", seed=0, size=TINY, workers=1, log=_quiet)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_folder_that_is_not_a_corpus(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a demo corpus"):
        generate(tmp_path / "data", size=TINY, workers=1, log=_quiet)
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "make",
    [lambda: DemoSize("x", 1, 1.0, 2, 10, 1, 3, 7, 1.0), lambda: DemoSize("x", 1, 1.0, 2, 10, 1, 99, 5, 1.0),
     lambda: DemoSize("x", 1, 1.0, 2, 2, 1, 3, 5, 1.0), lambda: generate("unused", size="huge"),
     lambda: generate("unused", seed=-1), lambda: generate("unused", size=TINY, workers=0),
     lambda: DemoSize("x", 1, 1.0, 2, 10, 1, 3, 5, 1.0, test_speakers=0),
     lambda: DemoSize("x", 1, 1.0, 2, 10, 1, 3, 5, 1.0, valid_speakers=5, test_speakers=5)],
)  # fmt: skip
def test_bad_arguments_fail_by_name(make):
    with pytest.raises(ValueError):
        make()


# ----------------------------------------------------------------------------------------------------------
# Learnability: something to learn, not trivially
# ----------------------------------------------------------------------------------------------------------
def _mean_log_spectrum(path, n_fft):
    wav, _ = sf.read(path)
    frames = np.lib.stride_tricks.sliding_window_view(wav, n_fft)[:: n_fft // 2] * np.hanning(n_fft)
    return np.log(np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0) + 1e-10)


def _nearest_class_mean(train, test, n_fft):
    """Accuracy of a nearest-class-mean classifier on standardised mean log-spectra."""
    x_train = np.stack([_mean_log_spectrum(c.path, n_fft) for c in train])
    x_test = np.stack([_mean_log_spectrum(c.path, n_fft) for c in test])
    y_train, y_test = np.array([c.label for c in train]), np.array([c.label for c in test])
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    means = np.stack([(x_train[y_train == k] - mu).mean(0) / sd for k in np.unique(y_train)])
    pred = ((((x_test - mu) / sd)[:, None] - means) ** 2).sum(-1).argmin(1)
    return float((pred == y_test).mean())


def test_esc_classes_are_learnable_and_words_not_trivially(corpus):
    task = esc50(corpus["esc50"], fold=1)
    accs = [_nearest_class_mean(t.splits["train"], t.splits["test"], 1024)
            for t in (esc50(corpus["esc50"], fold=k) for k in range(1, 6))]  # fmt: skip
    chance = 1 / len(task.classes)
    assert np.mean(accs) > 2 * chance, accs
    task = speech_commands_v2(corpus["speech_commands_v2"])
    acc = _nearest_class_mean(task.splits["train"], task.splits["dev"] + task.splits["test"], 512)
    assert 2 / len(task.classes) < acc < 0.98, acc  # words differ in their phones, speakers blur them


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def test_cli_arguments_and_summary(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    demo_data.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.out, args.seed, args.size, args.workers) == ("data/demo", 0, "small", None)
    args = parser.parse_args(["--out", str(tmp_path / "demo"), "--seed", "2", "--workers", "1"])
    args.size = TINY  # a custom size, to keep the test fast
    assert demo_data.run(args) == 0
    out = capsys.readouterr().out
    assert "esc50" in out and "MB on disk" in out and (tmp_path / "demo" / "demo.json").is_file()
