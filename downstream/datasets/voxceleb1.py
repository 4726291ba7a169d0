"""VoxCeleb1 speaker identification (``voxceleb1``, SID): ``iden_split.txt`` over ``*/wav/`` (s3prl
``downstream/voxceleb1/{dataset.py,expert.py}``)."""

from __future__ import annotations

import re
from pathlib import Path

from .clips import SPLITS, Clip, DatasetLayoutError
from .layout import check_files_exist, require_dir, require_file
from .splits import require_splits
from .taskdata import TaskData

__all__ = ["voxceleb1"]

_VOX_NUM_SPEAKERS = 1251
_VOX_FIRST_ID = 10001
_VOX_SPLITS = {"1": "train", "2": "dev", "3": "test"}
_VOX_LINE = re.compile(r"^(id(\d+))/[^/\s]+/[^/\s]+\.wav$")


def voxceleb1(
    root: str | Path, split_file: str | Path | None = None, max_timestep: int | None = 128_000
) -> TaskData:
    """VoxCeleb1 speaker identification with the official ``iden_split.txt``.

    Split lines read ``<1|2|3> idXXXXX/<youtube id>/NNNNN.wav`` (1 train, 2 dev, 3 test). Files are found
    under ``root/*/wav/`` (``dev/wav`` and ``test/wav`` as distributed) or ``root/wav/``. Label =
    ``int(id[2:]) - 10001`` over 1,251 speakers (s3prl ``SpeakerClassifiDataset.build_label``). Train clips
    longer than ``max_timestep`` samples are randomly cropped when loaded; dev and test use full length.

    The split file and the speaker folders are checked up front. With more than ``EAGER_CHECK_LIMIT`` lines
    (the real set has 153,516) single files are left to the header scan of a run (``prepare_task``), which
    opens every file anyway, or to the loader.

    Args:
        root: VoxCeleb1 folder holding ``dev/wav`` and ``test/wav``.
        split_file: identification split; defaults to ``root/iden_split.txt``.
        max_timestep: train crop in samples at the native 16 kHz (s3prl ``max_timestep``); None keeps full
            length.
    """
    root = Path(root)
    require_dir(root, f"VoxCeleb1 root '{root}' is not a folder")
    split_path = Path(split_file) if split_file is not None else root / "iden_split.txt"
    require_file(split_path, f"VoxCeleb1 split file '{split_path}' does not exist (iden_split.txt expected)")
    wav_dirs = sorted(d for d in root.glob("*/wav") if d.is_dir())
    if (root / "wav").is_dir():
        wav_dirs.append(root / "wav")
    if not wav_dirs:
        raise DatasetLayoutError(
            f"VoxCeleb1 root '{root}' has no */wav/ or wav/ folder (expected dev/wav and test/wav)"
        )
    # Speaker folder -> wav dirs holding it: one listdir per wav dir instead of one stat per file.
    speaker_dirs: dict[str, list[Path]] = {}
    for wav_dir in wav_dirs:
        for d in wav_dir.iterdir():
            if d.is_dir():
                speaker_dirs.setdefault(d.name, []).append(wav_dir)
    crop_secs = max_timestep / 16000 if max_timestep else None
    splits: dict[str, list[Clip]] = {s: [] for s in SPLITS}
    for line_no, line in enumerate(split_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        match = _VOX_LINE.match(fields[1]) if len(fields) == 2 else None
        if match is None or fields[0] not in _VOX_SPLITS:
            raise DatasetLayoutError(
                f"'{split_path}' line {line_no}: expected '<1|2|3> idXXXXX/<video>/NNNNN.wav', "
                f"got {line.strip()!r}"
            )
        speaker, rel = match.group(1), fields[1]
        label = int(match.group(2)) - _VOX_FIRST_ID
        if not 0 <= label < _VOX_NUM_SPEAKERS:
            raise DatasetLayoutError(
                f"'{split_path}' line {line_no}: speaker {speaker} outside "
                f"id{_VOX_FIRST_ID}..id{_VOX_FIRST_ID + _VOX_NUM_SPEAKERS - 1}"
            )
        dirs = speaker_dirs.get(speaker)
        if not dirs:
            raise DatasetLayoutError(
                f"'{split_path}' line {line_no}: speaker folder {speaker}/ not found under "
                f"{[str(d) for d in wav_dirs]}"
            )
        path = dirs[0] / rel
        if len(dirs) > 1:  # a speaker split across wav dirs (not the case in the official release)
            path = next((d / rel for d in dirs if (d / rel).is_file()), path)
        split = _VOX_SPLITS[fields[0]]
        uid = "-".join(Path(rel).with_suffix("").parts)  # s3prl path2name: id10001-1zcIwhmdeo4-00001
        # s3prl crops only the training clips; dev and test are scored on whole utterances.
        crop = crop_secs if split == "train" else None
        splits[split].append(Clip(path, label, split, uid=uid, crop_secs=crop, random_crop=crop is not None))
    require_splits("VoxCeleb1 split file", splits, split_path)
    check_files_exist([c for s in SPLITS for c in splits[s]], split_path)
    classes = [f"id{_VOX_FIRST_ID + i}" for i in range(_VOX_NUM_SPEAKERS)]
    return TaskData("voxceleb1", classes, False, splits, sample_rate_hint=16000)
