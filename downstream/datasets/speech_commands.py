"""Speech Commands: v0.02 as SSAST's KS2 (``speech_commands_v2``) and v0.01 as SUPERB's KS1
(``speech_commands_v1``).

* KS2: train = all - (validation_list + testing_list), ``_background_noise_`` excluded (SSAST
  ``src/finetune/speechcommands_v2_35/prep_sc.py``).
* KS1: sha1 hash split, 12 classes, ``_silence_`` from background noise, separate test set (s3prl
  ``downstream/speech_commands/{dataset.py,expert.py}``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .clips import SPLITS, Clip, DatasetLayoutError
from .layout import require_dir, require_file
from .splits import require_splits
from .taskdata import TaskData

__all__ = ["speech_commands_v2", "speech_commands_v1", "speech_commands_hash_percentage", "KS1_KEYWORDS",
           "KS1_CLASSES"]


def _speech_commands_words(root: Path) -> list[str]:
    return sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and d.name != "_background_noise_" and not d.name.startswith(".")
    )


def speech_commands_v2(root: str | Path) -> TaskData:
    """Speech Commands v0.02, 35 words, as SSAST's KS2 recipe splits it.

    Layout as distributed (``speech_commands_v0.02.tar.gz``): one folder per word, ``_background_noise_/``
    (excluded), ``validation_list.txt`` and ``testing_list.txt`` holding paths like
    ``right/xxx_nohash_0.wav``. dev = validation list, test = testing list, train = every other word clip.
    Classes are the sorted word folders (35 in the real set).

    Args:
        root: the extracted ``speech_commands_v0.02`` folder.
    """
    root = Path(root)
    hint = "expected the speech_commands_v0.02 layout (word folders, validation_list.txt, testing_list.txt)"
    require_dir(root, f"Speech Commands root '{root}' is not a folder; {hint}")
    lists = {
        split: require_file(root / name, f"Speech Commands root '{root}' has no {name}; {hint}")
        for split, name in (("dev", "validation_list.txt"), ("test", "testing_list.txt"))
    }
    classes = _speech_commands_words(root)
    if not classes:
        raise DatasetLayoutError(f"Speech Commands root '{root}' has no word folders; {hint}")
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[Clip]] = {}
    held_out: set[str] = set()
    for split, list_path in lists.items():
        clips = []
        for line_no, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), start=1):
            rel = line.strip()
            if not rel:
                continue
            word = rel.split("/")[0]
            if word not in index or not (root / rel).is_file():
                raise DatasetLayoutError(f"'{list_path}' line {line_no}: '{root / rel}' does not exist")
            held_out.add(rel)
            clips.append(Clip(root / rel, index[word], split, uid=rel))
        splits[split] = clips
    splits["train"] = [
        Clip(p, index[word], "train", uid=f"{word}/{p.name}")
        for word in classes
        for p in sorted((root / word).glob("*.wav"))
        if f"{word}/{p.name}" not in held_out
    ]
    splits = {s: splits[s] for s in SPLITS}
    require_splits("Speech Commands v2", splits, root)
    return TaskData("speech_commands_v2", classes, False, splits, sample_rate_hint=16000)


KS1_KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
KS1_CLASSES = KS1_KEYWORDS + ["_unknown_", "_silence_"]  # s3prl CLASSES, in its index order
# MAX_NUM_WAVS_PER_CLASS of the Speech Commands reference split, which s3prl's split_dataset reuses.
_KS1_MAX_UTTERANCES = 2**27 - 1
_KS1_GAIN_DB = -3.0  # s3prl EFFECTS: channels 1, rate 16000, gain -3.0


def speech_commands_hash_percentage(filename: str) -> float:
    """s3prl's stable hash of a Speech Commands file name, in [0, 100].

    The speaker part (the name before ``_nohash_``) is sha1-hashed so that all clips of a speaker land in the
    same split (s3prl ``downstream/speech_commands/expert.py`` ``split_dataset``).
    """
    speaker = re.sub(r"_nohash_.*$", "", Path(filename).name)
    digest = int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16)
    return (digest % (_KS1_MAX_UTTERANCES + 1)) * (100.0 / _KS1_MAX_UTTERANCES)


def speech_commands_v1(root: str | Path, test_root: str | Path) -> TaskData:
    """Speech Commands v0.01 in SUPERB's 12-class KS1 setting, exactly as s3prl builds it.

    * train/dev: every word folder of ``root``; hash percentage < 10 -> dev, < 20 -> dropped (the v0.01
      testing portion), else train. ``validation_list.txt``/``testing_list.txt`` are not read. Words outside
      the ten keywords become ``_unknown_``.
    * ``_silence_``: every ``root/_background_noise_/*.wav``, added to **both** train and dev (s3prl builds
      both from the same folder), each served as a random 1 s crop when loaded.
    * test: ``test_root`` (``speech_commands_test_set_v0.01``), one folder per class including ``_silence_``
      and ``_unknown_``.
    * every clip gets s3prl's -3 dB gain. Train and dev are sampled class-balanced
      (``class_balanced_weights``).

    Args:
        root: the extracted ``speech_commands_v0.01`` folder.
        test_root: the extracted ``speech_commands_test_set_v0.01`` folder.
    """
    root, test_root = Path(root), Path(test_root)
    require_dir(root, f"Speech Commands v0.01 root '{root}' is not a folder")
    noise_dir = require_dir(
        root / "_background_noise_",
        f"Speech Commands v0.01 root '{root}' has no _background_noise_/ folder (source of _silence_ clips)",
    )
    require_dir(
        test_root,
        f"Speech Commands test root '{test_root}' is not a folder (expected speech_commands_test_set_v0.01)",
    )
    index = {c: i for i, c in enumerate(KS1_CLASSES)}
    unknown, silence = index["_unknown_"], index["_silence_"]
    splits: dict[str, list[Clip]] = {"train": [], "dev": [], "test": []}
    for word in _speech_commands_words(root):
        label = index[word] if word in KS1_KEYWORDS else unknown
        for path in sorted((root / word).glob("*.wav")):
            pct = speech_commands_hash_percentage(path.name)
            split = "dev" if pct < 10 else None if pct < 20 else "train"
            if split is not None:
                uid = f"{word}/{path.name}"
                splits[split].append(Clip(path, label, split, uid=uid, gain_db=_KS1_GAIN_DB))
    if not splits["train"] or not splits["dev"]:
        raise DatasetLayoutError(f"Speech Commands v0.01 root '{root}' gives no word clips to train or dev")
    noises = sorted(noise_dir.glob("*.wav"))
    if not noises:
        raise DatasetLayoutError(f"'{noise_dir}' has no .wav files; KS1 draws its _silence_ clips from them")
    for split in ("train", "dev"):
        for p in noises:
            uid = f"_background_noise_/{p.name}"
            splits[split].append(
                Clip(p, silence, split, uid, crop_secs=1.0, random_crop=True, gain_db=_KS1_GAIN_DB)
            )
    for class_dir in sorted(d for d in test_root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if class_dir.name not in index:
            raise DatasetLayoutError(
                f"test folder '{class_dir}' is not one of the 12 KS1 classes {KS1_CLASSES}"
            )
        splits["test"] += [
            Clip(p, index[class_dir.name], "test", uid=f"{class_dir.name}/{p.name}", gain_db=_KS1_GAIN_DB)
            for p in sorted(class_dir.glob("*.wav"))
        ]
    if not splits["test"]:
        raise DatasetLayoutError(f"Speech Commands test root '{test_root}' has no class folders with .wav")
    return TaskData("speech_commands_v1", list(KS1_CLASSES), False, splits, sample_rate_hint=16000)
