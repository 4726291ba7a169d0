"""A procedurally generated demo corpus in the public dataset layouts, for the CPU quick start.

``generate(root)`` writes, deterministically from a seed, three parts that the project's readers load:

* ``unlabeled/``: 16 kHz clips for pretraining: babble of synthetic words from many speakers,
  environmental scenes of overlapping events, and modulated coloured noise.
* ``speech_commands_v0.02/``: the Speech Commands v0.02 layout, split by the dataset's sha1 speaker hash.
  A word is a fixed sequence of 2-4 phones from one small inventory (formant-synthesised vowels and nasals,
  fricative noise, plosive closures and bursts), so words share phones, but no word is an anagram of another
  (a time-averaged feature can tell every pair apart). Speakers differ in pitch, vocal-tract length, rate and
  accent; takes in timing, onset, level, noise and room: what a self-supervised encoder can learn to ignore.
  The test split holds many speakers (``DemoSize.test_speakers``), so that a 95 % interval on its accuracy is
  about +-3 points.
* ``ESC-50-master/``: the ESC-50 layout (44.1 kHz, ``meta/esc50.csv``, 5 folds balanced per class; the five
  held-out folds together score every clip) with
  synthetic classes that overlap in structure (periodic vs irregular clicks, sweeps vs steady tones, noises),
  at a random SNR and sometimes with a quieter distractor from another class.

The sounds are synthesised by :mod:`benchmark.demo_audio`. Each clip draws from its own generator seeded by
``(seed, part, index)``, so the output does not depend on the number of worker processes. None of this is
recorded audio: the corpus runs the pipeline end to end in minutes, and its scores say nothing about the
real benchmarks.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import demo_audio
from .demo_audio import ESC_CATEGORIES

__all__ = ["DemoSize", "SIZES", "VERSION", "ESC_CATEGORIES", "generate", "add_arguments", "run"]

VERSION = 2  # bump whenever the generated audio changes, so that old corpora are regenerated
BACKGROUND_SECS = 30.0  # each _background_noise_ file (about 60 s in the real set)
_ESC10 = {"dog", "rain", "crackling_fire", "clock_tick"}  # ours that the real file marks esc10=True
_BACKGROUNDS = ["white_noise", "pink_noise", "running_tap", "doing_the_dishes"]


@dataclass(frozen=True)
class DemoSize:
    """How much to generate; recorded in ``demo.json``, so a change regenerates the corpus.

    ``n_speakers``: ``valid_speakers`` and ``test_speakers`` of them hash into validation and testing (None:
    10 % each, at least one), the rest into train. ``esc_classes``: the first ``esc_classes`` of
    ``ESC_CATEGORIES``. ``esc_clips_per_class``: a multiple of 5, one fifth per fold.
    """

    name: str
    n_unlabeled: int
    unlabeled_secs: float
    n_words: int
    n_speakers: int
    takes_per_speaker: int  # takes of every word by every speaker: _nohash_0, _nohash_1, ...
    esc_classes: int
    esc_clips_per_class: int
    esc_secs: float  # 5 s in the real set
    valid_speakers: int | None = None
    test_speakers: int | None = None

    def quota(self) -> dict[str, int]:
        """Speakers per split: ``{"validation", "testing", "train"}``."""
        tenth = max(1, round(0.1 * self.n_speakers))
        valid = tenth if self.valid_speakers is None else self.valid_speakers
        test = tenth if self.test_speakers is None else self.test_speakers
        return {"validation": valid, "testing": test, "train": self.n_speakers - valid - test}

    def __post_init__(self) -> None:
        if not 1 <= self.esc_classes <= len(ESC_CATEGORIES):
            raise ValueError(f"esc_classes must be 1..{len(ESC_CATEGORIES)}, got {self.esc_classes}")
        if self.esc_clips_per_class <= 0 or self.esc_clips_per_class % 5:
            raise ValueError(f"esc_clips_per_class must be a multiple of 5, got {self.esc_clips_per_class}")
        if self.n_speakers < 3 or self.n_words < 2 or self.takes_per_speaker < 1 or self.n_unlabeled < 0:
            raise ValueError(f"need n_speakers >= 3, n_words >= 2, takes_per_speaker >= 1; got {self}")
        if min(self.quota().values()) < 1:
            raise ValueError(f"every split needs a speaker: valid_speakers and test_speakers must be >= 1 "
                             f"and leave train one of n_speakers; got {self}")


SIZES = {  # test sets of about 1,000 clips per task (a 95 % interval of about +-3 points);
    # small: 800 s of unlabeled audio for a 2-core CPU; large: 10x, 12 words and classes, ESC at full length
    "small": DemoSize("small", 400, 2.0, 10, 60, 4, 10, 100, 2.0, valid_speakers=5, test_speakers=25),
    "large": DemoSize("large", 2000, 4.0, 12, 200, 3, 12, 100, 5.0, valid_speakers=20, test_speakers=30),
}


# ----------------------------------------------------------------------------------------------------------
# Layouts and the corpus
# ----------------------------------------------------------------------------------------------------------
def _speaker_ids(rng, quota: dict[str, int]):
    """Distinct 8-hex-digit speaker ids, ``quota[split]`` of them hashing into each split."""
    from downstream.datasets import speech_commands_hash_percentage  # imported here: that module loads torch

    ids: dict[str, list[str]] = {split: [] for split in quota}
    while sum(map(len, ids.values())) < sum(quota.values()):
        sid = f"{int(rng.integers(2**32)):08x}"
        pct = speech_commands_hash_percentage(f"{sid}_nohash_0.wav")  # the dataset's rule, as in s3prl
        split = "validation" if pct < 10 else "testing" if pct < 20 else "train"
        if len(ids[split]) < quota[split] and all(sid not in v for v in ids.values()):
            ids[split].append(sid)
    return ids


def _layouts(out: Path, seed: int, size: DemoSize):
    """Create the folders, lists and CSV under ``out``; return the clip jobs per part and the counts."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, demo_audio.PARTS["layout"]]))
    lexicon, jobs = demo_audio.lexicon(seed, size.n_words), {}
    (out / "unlabeled").mkdir(parents=True)
    args = (size.unlabeled_secs, lexicon)
    jobs["unlabeled"] = [("unlabeled", out / f"unlabeled/{i:05d}.wav", seed, (i,), args)
                         for i in range(size.n_unlabeled)]  # fmt: skip
    sc, speakers = out / "speech_commands_v0.02", _speaker_ids(rng, size.quota())
    order = sorted(s for ids in speakers.values() for s in ids)
    voice_seeds = [np.random.SeedSequence([seed, demo_audio.PARTS["speaker"], s]) for s in range(len(order))]
    voices = [demo_audio.voice(np.random.default_rng(ss)) for ss in voice_seeds]
    jobs[sc.name], lists = [], {"validation": [], "testing": []}
    for w, phones in enumerate(lexicon):
        word = "".join(phones)
        (sc / word).mkdir(parents=True)
        for s, sid in enumerate(order):
            for k in range(size.takes_per_speaker):
                rel = f"{word}/{sid}_nohash_{k}.wav"
                jobs[sc.name].append(("word", sc / rel, seed, (w, s, k), (phones, voices[s])))
                for split in lists:
                    lists[split] += [rel] if sid in speakers[split] else []
    for split, lines in lists.items():
        (sc / f"{split}_list.txt").write_text("".join(f"{line}\n" for line in sorted(lines)))
    (sc / "_background_noise_").mkdir()
    for i, name in enumerate(_BACKGROUNDS):
        path = sc / "_background_noise_" / f"{name}.wav"
        jobs[sc.name].append(("background", path, seed, (i,), (name, BACKGROUND_SECS)))
    # ESC-50: clip j of a class goes to fold j % 5 + 1; clips j and j + 5 are takes A and B of one source.
    esc, per_class = out / "ESC-50-master", size.esc_clips_per_class
    (esc / "audio").mkdir(parents=True)
    (esc / "meta").mkdir()
    src_ids = rng.choice(np.arange(10000, 300000), size.esc_classes * per_class, replace=False)
    rows, jobs[esc.name] = [], []
    for c, category in enumerate(ESC_CATEGORIES[: size.esc_classes]):
        for j in range(per_class):
            src, take, fold = int(src_ids[c * per_class + j // 10 * 5 + j % 5]), "AB"[j // 5 % 2], j % 5 + 1
            name = f"{fold}-{src}-{take}-{c}.wav"
            rows.append([name, fold, c, category, str(category in _ESC10), src, take])
            args = (c, size.esc_classes, size.esc_secs)
            jobs[esc.name].append(("esc", esc / "audio" / name, seed, (c, j), args))
    with open(esc / "meta" / "esc50.csv", "w", newline="", encoding="utf-8") as f:
        header = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
        csv.writer(f, lineterminator="\n").writerows([header, *sorted(rows)])
    per_speaker = size.n_words * size.takes_per_speaker
    counts = {"wav_files": {part: len(part_jobs) for part, part_jobs in jobs.items()},
              "words": ["".join(w) for w in lexicon], "speakers": {s: len(v) for s, v in speakers.items()},
              "speech_clips": {s: len(v) * per_speaker for s, v in speakers.items()},
              "esc50_categories": ESC_CATEGORIES[: size.esc_classes]}  # fmt: skip
    return jobs, counts


def _is_complete(root: Path, want: dict) -> bool:
    """``demo.json`` matches ``want`` (version, seed, size) and every part holds all its wav files."""
    try:
        have = json.loads((root / "demo.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = have.get("counts", {}).get("wav_files", {})
    lists = ["speech_commands_v0.02/validation_list.txt", "speech_commands_v0.02/testing_list.txt",
             "ESC-50-master/meta/esc50.csv"]  # fmt: skip
    return (all(have.get(key) == value for key, value in want.items()) and bool(files)
            and all((root / p).is_file() for p in lists)
            and all(len(list((root / part).rglob("*.wav"))) == n for part, n in files.items()))  # fmt: skip


def is_up_to_date(root, seed: int = 0, size: str | DemoSize = "small") -> bool:
    """Whether ``root`` already holds the complete corpus of this seed and size (so ``generate`` skips)."""
    size = SIZES[size] if isinstance(size, str) else size
    return _is_complete(Path(root).absolute(), {"version": VERSION, "seed": int(seed), "size": asdict(size)})


def generate(
    root, seed: int = 0, size: str | DemoSize = "small", workers: int | None = None, log=print
) -> dict[str, Path]:
    """Write the demo corpus under ``root``, or return at once if the same one is already there.

    Clips are written to a hidden sibling folder renamed into place at the end, so an interrupted run leaves
    no corpus. An existing ``root`` is replaced only if it is empty or holds a ``demo.json``.

    Args:
        root: output folder, e.g. ``data/demo``.
        seed: non-negative; the same seed gives byte-identical audio whatever ``workers`` is.
        size: a key of ``SIZES`` or a ``DemoSize``.
        workers: processes; default ``min(4, os.cpu_count())``; 1 generates in this process.
        log: receives one-line progress messages.

    Returns:
        ``{"root", "unlabeled", "speech_commands_v2", "esc50"}``: the last two are the folders the
        ``downstream.datasets`` readers of those names take.
    """
    if isinstance(size, str) and size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; choose from {sorted(SIZES)} or pass a DemoSize")
    size = SIZES[size] if isinstance(size, str) else size
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(root).absolute()
    paths = {"root": root, "unlabeled": root / "unlabeled",
             "speech_commands_v2": root / "speech_commands_v0.02", "esc50": root / "ESC-50-master"}
    want = {"version": VERSION, "seed": int(seed), "size": asdict(size)}
    if _is_complete(root, want):
        log(f"demo corpus '{root}' is up to date (seed {seed}, size {size.name}); nothing to do")
        return paths
    if root.exists() and not (root / "demo.json").is_file() and any(root.iterdir()):
        raise FileExistsError(f"'{root}' exists and is not a demo corpus (no demo.json); pick another folder")
    start, tmp = time.perf_counter(), root.with_name(f".{root.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    try:
        jobs, counts = _layouts(tmp, int(seed), size)
        log(f"generating the {size.name} demo corpus (seed {seed}) in '{root}' with {workers} worker(s)")
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        try:
            for part, todo in jobs.items():
                t0, chunk = time.perf_counter(), max(1, len(todo) // (8 * workers))
                write = demo_audio.write_clip
                list(pool.map(write, todo, chunksize=chunk) if pool else map(write, todo))
                log(f"  {part}: {len(todo)} wav files in {time.perf_counter() - t0:.1f} s")
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
        manifest = {**want, "counts": counts, "generation_secs": round(time.perf_counter() - start, 2)}
        (tmp / "demo.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if root.exists():  # an outdated corpus (or an empty folder): swap it out, then delete it
            old = root.with_name(f".{root.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            root.rename(old)
            tmp.rename(root)
            shutil.rmtree(old)
        else:
            tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return paths


# ----------------------------------------------------------------------------------------------------------
# CLI: python -m benchmark demo-data
# ----------------------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    """Options of ``python -m benchmark demo-data``."""
    parser.add_argument("--out", default="data/demo", help="output folder (default: data/demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole corpus (default: 0)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="small: CPU demo; large: GPU")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: min(4, CPU count))")


def run(args) -> int:
    """Generate the corpus, then print where each part is, its size on disk and the time taken."""
    start = time.perf_counter()
    paths = generate(args.out, seed=args.seed, size=args.size, workers=args.workers)
    counts = json.loads((paths["root"] / "demo.json").read_text(encoding="utf-8"))["counts"]
    disk = sum(f.stat().st_size for f in paths["root"].rglob("*") if f.is_file())
    print(f"unlabeled           {paths['unlabeled']}  ({counts['wav_files']['unlabeled']} clips)")
    print(f"speech_commands_v2  {paths['speech_commands_v2']}  ({len(counts['words'])} words, "
          f"{sum(counts['speakers'].values())} speakers; clips {counts['speech_clips']})")  # fmt: skip
    print(f"esc50               {paths['esc50']}  ({len(counts['esc50_categories'])} classes, "
          f"{counts['wav_files']['ESC-50-master']} clips)")  # fmt: skip
    print(f"{disk / 1e6:.1f} MB on disk; {time.perf_counter() - start:.1f} s")
    return 0
