"""Tiny datasets written in each task's public on-disk layout, for tests.

Every builder has the signature ``make_X(root, clips_per_class=2, seed=0, ...) -> dict``: it writes under
``root`` (a fresh ``tmp_path``) and returns the keyword arguments of the reader ``downstream.datasets.X``
(paths, plus the fold for the fold-based tasks), so ``get_task(name).reader(**make_X(tmp_path))`` reads it.
The folder names, file names, CSV/JSON/TXT formats and split rules copy the real releases; only the sizes
shrink: clips are 0.2-0.5 s of noisy sine (16 kHz int16, ESC-50 at 44.1 kHz as distributed) instead of
1-10 s, and most sets keep a few classes. Each builder's docstring says what it keeps and what it shrinks.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000

__all__ = [
    "write_tone",
    "ks1_percentage",
    "make_as20k",
    "make_esc50",
    "make_speech_commands_v2",
    "make_speech_commands_v1",
    "make_voxceleb1",
    "make_iemocap",
    "make_folder",
    "make_manifest",
    "make_messy_folder",
    "write_bad_audio",
    "BAD_AUDIO",
    "BUILDERS",
]


def write_tone(
    path: Path, secs: float = 0.25, sample_rate: int = SAMPLE_RATE, seed: int = 0, amplitude: float = 0.5
) -> Path:
    """Write a sine (frequency set by ``seed``) plus a little noise as 16-bit PCM, in the suffix's format."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(secs * sample_rate))) / sample_rate
    freq = 200.0 + 50.0 * (seed % 30)
    wav = amplitude * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(wav, -1, 1).astype(np.float32), sample_rate, subtype="PCM_16")
    return path


# ----------------------------------------------------------------------------------------------------------
# AS-20K
# ----------------------------------------------------------------------------------------------------------
# Real rows of AudioSet's class_labels_indices.csv; display names hold commas, so the CSV quotes them.
_AS_FIRST_ROWS = [
    ("/m/09x0r", "Speech"),
    ("/m/05zppz", "Male speech, man speaking"),
    ("/m/02zsn", "Female speech, woman speaking"),
    ("/m/0ytgt", "Child speech, kid speaking"),
]


def make_as20k(root: Path, clips_per_class: int = 2, seed: int = 0, num_classes: int = 527) -> dict:
    """AST/SSAST datafiles: ``balanced_train_data_type1_2_mean.json``, ``eval_data.json``,
    ``class_labels_indices.csv``.

    The labels CSV keeps all 527 rows (4 real, the rest placeholders); clips use the first 4 classes,
    ``clips_per_class`` per class and split, 16 kHz flac. The first clip of each class also carries the next
    class (multi-label). Train entries use paths relative to the JSON, eval entries absolute paths (AST's
    style), so both resolutions are exercised.
    """
    data_dir = root / "audioset"
    rows = _AS_FIRST_ROWS[:num_classes] + [(f"/m/tiny{i:03d}", f"Class {i}") for i in range(4, num_classes)]
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "class_labels_indices.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows((i, mid, name) for i, (mid, name) in enumerate(rows))
    used = min(4, num_classes)
    for split, json_name in (("train", "balanced_train_data_type1_2_mean.json"), ("eval", "eval_data.json")):
        entries = []
        for c in range(used):
            for k in range(clips_per_class):
                rel = Path("audio") / split / f"Y{split}{c:02d}{k:02d}_0.000_10.000.flac"
                write_tone(data_dir / rel, 0.25, seed=seed + 100 * c + k)
                mids = [rows[c][0]] + ([rows[(c + 1) % used][0]] if k == 0 else [])
                wav = str(rel) if split == "train" else str((data_dir / rel).resolve())
                entries.append({"wav": wav, "labels": ",".join(mids)})
        (data_dir / json_name).write_text(json.dumps({"data": entries}, indent=1))
    return {"root": data_dir}


# ----------------------------------------------------------------------------------------------------------
# ESC-50
# ----------------------------------------------------------------------------------------------------------
_ESC_CLASSES = [(0, "dog", True), (1, "rooster", True), (2, "pig", False)]  # real targets 0-2


def make_esc50(root: Path, clips_per_class: int = 2, seed: int = 0) -> dict:
    """``ESC-50-master/audio/*.wav`` + ``meta/esc50.csv``, 44.1 kHz as distributed.

    Keeps the 5 folds and real file naming (``{fold}-{src}-{take}-{target}.wav``) but only 3 of the 50 classes
    (targets 0-2), ``clips_per_class`` clips per class and fold, 0.5 s instead of 5 s.
    """
    base = root / "ESC-50-master"
    rows = []
    for fold in range(1, 6):
        for target, category, esc10 in _ESC_CLASSES:
            for k in range(clips_per_class):
                src = 100000 + 1000 * fold + 10 * target + k
                take = "ABCDEFGH"[k % 8]
                name = f"{fold}-{src}-{take}-{target}.wav"
                write_tone(base / "audio" / name, 0.5, 44100, seed=seed + src)
                rows.append([name, fold, target, category, esc10, src, take])
    (base / "meta").mkdir(parents=True, exist_ok=True)
    with open(base / "meta" / "esc50.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    return {"root": base, "fold": 1}


# ----------------------------------------------------------------------------------------------------------
# Speech Commands
# ----------------------------------------------------------------------------------------------------------
def ks1_percentage(filename: str) -> float:
    """s3prl's KS1 split hash, written out again here so tests do not trust the code under test."""
    speaker = re.sub(r"_nohash_.*$", "", filename)
    return (int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16) % 2**27) * (100.0 / (2**27 - 1))


def _speakers(seed: int, count: int) -> dict[str, list[str]]:
    """``count`` speaker ids (8 hex digits, like the real set) per KS1 split their hash selects."""
    pools: dict[str, list[str]] = {"dev": [], "dropped": [], "train": []}
    i = seed * 100_003
    while min(len(p) for p in pools.values()) < count:
        speaker = f"{i:08x}"
        pct = ks1_percentage(f"{speaker}_nohash_0.wav")
        pools["dev" if pct < 10 else "dropped" if pct < 20 else "train"].append(speaker)
        i += 1
    return pools


def make_speech_commands_v2(root: Path, clips_per_class: int = 2, seed: int = 0) -> dict:
    """``speech_commands_v0.02``: word folders, ``_background_noise_/``, ``validation_list.txt``,
    ``testing_list.txt``.

    3 of the 35 words, ``clips_per_class`` clips per word in each of train/validation/testing, 0.25 s instead
    of 1 s. The background-noise folder and a top-level LICENSE are present so their exclusion is tested.
    """
    base = root / "speech_commands_v0.02"
    lists: dict[str, list[str]] = {"train": [], "validation": [], "testing": []}
    n = 0
    for word in ["backward", "bed", "yes"]:
        for split in lists:
            for k in range(clips_per_class):
                rel = f"{word}/{seed * 1000 + n:08x}_nohash_{k}.wav"
                write_tone(base / rel, 0.25, seed=seed + n)
                lists[split].append(rel)
                n += 1
    write_tone(base / "_background_noise_" / "white_noise.wav", 1.5, seed=seed)
    (base / "_background_noise_" / "README.md").write_text("noise\n")
    (base / "LICENSE").write_text("CC-BY-4.0\n")
    for split in ("validation", "testing"):
        (base / f"{split}_list.txt").write_text("".join(f"{r}\n" for r in lists[split]))
    return {"root": base}


def make_speech_commands_v1(root: Path, clips_per_class: int = 2, seed: int = 0) -> dict:
    """``speech_commands_v0.01`` (train/dev by hash) + ``speech_commands_test_set_v0.01`` (test).

    Train root: the 10 keywords plus 2 unknown words (``bed``, ``cat``); each folder gets ``clips_per_class``
    clips whose speaker hash selects train and one that selects dev, and ``yes`` one more in the dropped
    10-20 % band. ``_background_noise_`` holds 2 noises of 1.5 s (real ones are about a minute). The test
    root has the 12 class folders, ``clips_per_class`` clips each. Clips are 0.25 s instead of 1 s.
    """
    train_root = root / "speech_commands_v0.01"
    test_root = root / "speech_commands_test_set_v0.01"
    words = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "bed", "cat"]
    pools = _speakers(seed, len(words) * clips_per_class)
    n = 0
    for w, word in enumerate(words):
        picks = [("dev", 0)] + [("train", w * clips_per_class + k) for k in range(clips_per_class)]
        if word == "yes":
            picks.append(("dropped", 0))
        for pool, j in picks:
            write_tone(train_root / word / f"{pools[pool][j]}_nohash_{w % 3}.wav", 0.25, seed=seed + n)
            n += 1
    for k, name in enumerate(["white_noise.wav", "running_tap.wav"]):
        write_tone(train_root / "_background_noise_" / name, 1.5, seed=seed + 900 + k)
    (train_root / "validation_list.txt").write_text("")  # present in the release, ignored by s3prl's split
    (train_root / "testing_list.txt").write_text("")
    for c, name in enumerate(words[:10] + ["_unknown_", "_silence_"]):
        for k in range(clips_per_class):
            speaker = f"{seed * 1000 + 50 * c + k:08x}"
            write_tone(test_root / name / f"{speaker}_nohash_{k}.wav", 0.25, seed=seed + n)
            n += 1
    return {"root": train_root, "test_root": test_root}


# ----------------------------------------------------------------------------------------------------------
# VoxCeleb1
# ----------------------------------------------------------------------------------------------------------
# id10001/id10002 are dev-part speakers, id10270 a test-part one, as in the release.
_VOX_SPEAKERS = [("dev", "id10001"), ("dev", "id10002"), ("test", "id10270")]


def make_voxceleb1(root: Path, clips_per_class: int = 2, seed: int = 0) -> dict:
    """``VoxCeleb1/{dev,test}/wav/idXXXXX/<video>/NNNNN.wav`` + ``iden_split.txt``.

    3 of the 1,251 speakers (labels 0, 1 and 269), ``clips_per_class`` utterances per speaker in each of the
    three identification splits, 0.5 s instead of ~8 s.
    """
    base = root / "VoxCeleb1"
    lines = []
    n = 0
    for part, speaker in _VOX_SPEAKERS:
        for split in ("1", "2", "3"):
            for _ in range(clips_per_class):
                rel = f"{speaker}/vid{split}{seed:02d}abcdE/{n + 1:05d}.wav"
                write_tone(base / part / "wav" / rel, 0.5, seed=seed + n)
                lines.append(f"{split} {rel}\n")
                n += 1
    (base / "iden_split.txt").write_text("".join(lines))
    return {"root": base}


# ----------------------------------------------------------------------------------------------------------
# IEMOCAP
# ----------------------------------------------------------------------------------------------------------
_IEMOCAP_EMOTIONS = ["neu", "hap", "ang", "sad", "exc", "fru"]  # exc -> hap, fru dropped by the reader
_IEMOCAP_WORDS = {
    "neu": "Neutral",
    "hap": "Happiness",
    "ang": "Anger",
    "sad": "Sadness",
    "exc": "Excited",
    "fru": "Frustration",
}


def make_iemocap(root: Path, clips_per_class: int = 2, seed: int = 0) -> dict:
    """``IEMOCAP_full_release/Session{1..5}/{sentences/wav/<dialog>/*.wav, dialog/EmoEvaluation/*.txt}``.

    Each session has one dialog with ``clips_per_class`` utterances of each of neu, hap, ang, sad, exc and
    fru, 0.2 s each. Evaluation files copy the release: a header line, then
    ``[start - end]<TAB>utt<TAB>emo<TAB>[V, A, D]`` lines each followed by per-annotator lines, and a
    ``Categorical/`` sub-folder the reader must ignore.
    """
    base = root / "IEMOCAP_full_release"
    for s in range(1, 6):
        dialog = f"Ses0{s}F_impro01"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n", "\n"]
        k = 0
        for emotion in _IEMOCAP_EMOTIONS:
            for _ in range(clips_per_class):
                utt = f"{dialog}_{'FM'[k % 2]}{k:03d}"
                write_tone(
                    base / f"Session{s}" / "sentences" / "wav" / dialog / f"{utt}.wav",
                    0.2,
                    seed=seed + 100 * s + k,
                )
                start = 1.5 * k
                lines += [
                    f"[{start:.4f} - {start + 1.2:.4f}]\t{utt}\t{emotion}\t[2.5000, 3.0000, 2.5000]\n",
                    f"C-E1:\t{_IEMOCAP_WORDS[emotion]};\t()\n",
                    "A-E1:\tval 3; act 3; dom  2;\t()\n",
                    "\n",
                ]
                k += 1
        label_dir = base / f"Session{s}" / "dialog" / "EmoEvaluation"
        (label_dir / "Categorical").mkdir(parents=True, exist_ok=True)
        (label_dir / f"{dialog}.txt").write_text("".join(lines))
        (label_dir / "Categorical" / f"{dialog}_e1_cat.txt").write_text(f"{dialog}_F000 :Neutral state; ()\n")
    return {"root": base, "fold": 1}


# ----------------------------------------------------------------------------------------------------------
# Generic layouts
# ----------------------------------------------------------------------------------------------------------
_GENERIC_CLASSES = ["bird", "cat", "dog"]


def make_folder(root: Path, clips_per_class: int = 2, seed: int = 0, split_dirs: bool = True) -> dict:
    """Class folders: ``folder_ds/{train,dev,test}/<class>/`` (or ``folder_ds/<class>/`` with
    ``split_dirs=False``).

    3 classes, ``clips_per_class`` clips per class (and split), alternating .wav and .flac.
    """
    base = root / "folder_ds"
    n = 0
    for split in ("train", "dev", "test") if split_dirs else ("",):
        for cls in _GENERIC_CLASSES:
            for k in range(clips_per_class):
                ext = ".wav" if k % 2 == 0 else ".flac"
                write_tone(base / split / cls / f"{cls}_{split or 'all'}_{k:03d}{ext}", 0.2, seed=seed + n)
                n += 1
    (base / "README.txt").write_text("not a class folder\n")
    return {"root": base}


def make_manifest(
    root: Path, clips_per_class: int = 2, seed: int = 0, fmt: str = "csv", with_split: bool = True
) -> dict:
    """``manifest_ds/manifest.{csv,jsonl}`` listing ``audio/<file>.wav`` by relative path.

    3 classes, ``clips_per_class`` clips per class and split when ``with_split`` (else per class, no split
    column, so the reader draws the split).
    """
    base = root / "manifest_ds"
    rows = []
    n = 0
    for split in ("train", "dev", "test") if with_split else (None,):
        for cls in _GENERIC_CLASSES:
            for k in range(clips_per_class):
                rel = f"audio/{cls}_{split or 'all'}_{k:03d}.wav"
                write_tone(base / rel, 0.2, seed=seed + n)
                rows.append({"path": rel, "label": cls, **({"split": split} if split else {})})
                n += 1
    if fmt == "csv":
        with open(base / "manifest.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "label"] + (["split"] if with_split else []))
            writer.writeheader()
            writer.writerows(rows)
        return {"path": base / "manifest.csv"}
    if fmt == "jsonl":
        (base / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"path": base / "manifest.jsonl"}
    raise ValueError(f"fmt must be 'csv' or 'jsonl', got {fmt!r}")


# ----------------------------------------------------------------------------------------------------------
# Messy recordings: unusable files and very long clips among short ones
# ----------------------------------------------------------------------------------------------------------
# kind of unusable file -> the AudioError.reason the header scan counts it under
BAD_AUDIO = {
    "empty": "empty",  # 0 bytes
    "zero_samples": "empty",  # a valid WAV header with no samples
    "random": "unreadable",  # random bytes under a .wav name
    "truncated_header": "unreadable",  # the first 30 bytes of a WAV file
    "text": "text",  # a text file under a .wav name
    "nan": "non_finite",  # float32 WAV holding a NaN sample
    "inf": "non_finite",  # float32 WAV holding an inf sample
}


def write_bad_audio(path: Path, kind: str, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write an unusable audio file of ``kind`` (a key of ``BAD_AUDIO``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "zero_samples":
        sf.write(path, np.zeros(0, dtype=np.float32), sample_rate, subtype="PCM_16")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "truncated_header":
        write_tone(path, 0.1, sample_rate)
        path.write_bytes(path.read_bytes()[:30])
    elif kind == "text":
        path.write_text("speaker,transcript\n1,this is not audio\n")
    elif kind in ("nan", "inf"):
        wav = np.zeros(sample_rate // 4, dtype=np.float32)
        wav[100] = np.nan if kind == "nan" else np.inf
        sf.write(path, wav, sample_rate, subtype="FLOAT")
    else:
        raise ValueError(f"kind must be one of {sorted(BAD_AUDIO)}, got {kind!r}")
    return path


# where make_messy_folder puts each bad file: (split, class)
_MESSY_BAD_PLACES = {
    "empty": ("train", "yes"), "nan": ("train", "yes"), "random": ("train", "no"), "text": ("train", "no"),
    "zero_samples": ("dev", "no"), "truncated_header": ("test", "yes"), "inf": ("test", "yes"),
}


def make_messy_folder(root: Path, short_per_class: int = 6, long_secs: tuple[float, ...] = (6.0, 4.0),
                      sample_rate: int = 8000, seed: int = 0) -> dict:
    """``messy_ds/{train,dev,test}/{no,yes}/``: telephone-band (8 kHz) recordings as they come.

    Per split and class ``short_per_class`` short clips (0.2-0.4 s; 2 in dev); train holds ``long_secs`` clips
    in both classes and test one of the first length (yes), so a few very long clips sit among short ones; one
    file of every ``BAD_AUDIO`` kind is placed as ``_MESSY_BAD_PLACES`` says (train, dev and test each get
    some).
    Returns the reader's keyword arguments plus ``bad`` (kind -> path) and ``long`` (paths of the long clips).
    """
    base = root / "messy_ds"
    n = 0
    long_paths = []
    for split in ("train", "dev", "test"):
        for cls in ("no", "yes"):
            for k in range(short_per_class if split != "dev" else 2):
                secs = 0.2 + 0.2 * (k % 3) / 2
                write_tone(base / split / cls / f"{cls}_{k:03d}.wav", secs, sample_rate, seed + n)
                n += 1
            longs: Sequence[float] = ()  # every train class gets all the long clips; test gets one, in "yes"
            if split == "train":
                longs = long_secs
            elif (split, cls) == ("test", "yes"):
                longs = long_secs[:1]
            for k, secs in enumerate(longs):
                path = base / split / cls / f"{cls}_long{k}.wav"
                long_paths.append(write_tone(path, secs, sample_rate, seed + n))
                n += 1
    bad = {kind: write_bad_audio(base / split / cls / f"bad_{kind}.wav", kind, sample_rate)
           for kind, (split, cls) in _MESSY_BAD_PLACES.items()}
    return {"root": base, "bad": bad, "long": long_paths}


BUILDERS = {
    "as20k": make_as20k,
    "esc50": make_esc50,
    "speech_commands_v2": make_speech_commands_v2,
    "speech_commands_v1": make_speech_commands_v1,
    "voxceleb1": make_voxceleb1,
    "iemocap": make_iemocap,
    "folder": make_folder,
    "manifest": make_manifest,
}
