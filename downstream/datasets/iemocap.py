"""IEMOCAP emotion recognition (``iemocap``, ER): ``EmoEvaluation`` labels, exc -> hap, leave-one-session-out,
dev = 20 % of train (s3prl ``downstream/emotion/{IEMOCAP_preprocess.py,expert.py}``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .clips import Clip, DatasetLayoutError
from .layout import check_fold, require_dir
from .taskdata import TaskData

__all__ = ["iemocap", "IEMOCAP_CLASSES"]

IEMOCAP_CLASSES = ["neu", "hap", "ang", "sad"]
_IEMOCAP_MERGE = {"exc": "hap"}  # s3prl IEMOCAP_preprocess.py: excited is merged into happy


def _read_iemocap_session(root: Path, session: int, skip_missing: bool) -> list[Clip]:
    base = root / f"Session{session}"
    hint = "expected IEMOCAP_full_release/Session1..Session5 with sentences/wav/ and dialog/EmoEvaluation/"
    wav_root = require_dir(
        base / "sentences" / "wav", f"IEMOCAP root '{root}' has no Session{session}/sentences/wav/; {hint}"
    )
    label_dir = require_dir(
        base / "dialog" / "EmoEvaluation",
        f"IEMOCAP root '{root}' has no Session{session}/dialog/EmoEvaluation/; {hint}",
    )
    wavs = {p.stem: p for p in wav_root.rglob("*.wav") if not p.name.startswith(".")}
    index = {c: i for i, c in enumerate(IEMOCAP_CLASSES)}
    clips = []
    for label_file in sorted(p for p in label_dir.glob("*.txt") if not p.name.startswith(".")):
        text = label_file.read_text(encoding="utf-8", errors="replace")
        for line_no, line in enumerate(text.splitlines(), start=1):
            # Only "[start - end]<TAB>utterance<TAB>emotion<TAB>[V, A, D]" lines carry the consensus label.
            if not line.startswith("["):
                continue
            fields = [f for f in line.split("\t") if f.strip()]
            if len(fields) < 3:
                raise DatasetLayoutError(
                    f"'{label_file}' line {line_no}: expected '[start - end]<TAB>utterance<TAB>emotion<TAB>"
                    f"[V, A, D]', got {line!r}"
                )
            utt, emotion = fields[1].strip(), fields[2].strip()
            emotion = _IEMOCAP_MERGE.get(emotion, emotion)
            if emotion not in index:
                continue
            if utt not in wavs:
                if skip_missing:  # s3prl's preprocessing silently drops these
                    continue
                raise DatasetLayoutError(f"'{label_file}' line {line_no}: no {utt}.wav under '{wav_root}'")
            clips.append(Clip(wavs[utt], index[emotion], "", uid=utt, fold=session))
    return clips


def iemocap(
    root: str | Path, fold: int, valid_ratio: float = 0.2, seed: int = 0, skip_missing: bool = False
) -> TaskData:
    """IEMOCAP 4-class emotion recognition, leave-one-session-out, as s3prl's SUPERB ER task.

    Labels come from ``Session*/dialog/EmoEvaluation/*.txt`` lines such as
    ``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``; only neu, hap, ang,
    sad and exc (merged into hap) are kept: neu 0, hap 1, ang 2, sad 3. Audio is
    ``Session*/sentences/wav/<dialog>/<utterance>.wav``.

    Fold k tests on Session k. The other sessions are split into train and dev as s3prl does: a permutation
    from a generator seeded with ``seed``, the first ``int((1 - valid_ratio) * n)`` for train (s3prl:
    ``torch.manual_seed(0)`` then ``random_split``). Utterances are ordered by session, label file and line.

    Args:
        root: the ``IEMOCAP_full_release`` folder.
        fold: held-out session, 1..5.
        valid_ratio: dev fraction of the training sessions (s3prl ``valid_ratio: 0.2``).
        seed: seed of the train/dev permutation.
        skip_missing: drop labelled utterances whose wav is absent, as s3prl's preprocessing does, instead of
            raising.
    """
    fold = check_fold("IEMOCAP", fold, 5)
    if not 0.0 <= valid_ratio < 1.0:
        raise ValueError(f"valid_ratio must be in [0, 1), got {valid_ratio}")
    root = Path(root)
    require_dir(root, f"IEMOCAP root '{root}' is not a folder (expected IEMOCAP_full_release)")
    sessions = {s: _read_iemocap_session(root, s, skip_missing) for s in range(1, 6)}
    for s, clips in sessions.items():
        if not clips:
            raise DatasetLayoutError(f"IEMOCAP Session{s} under '{root}' has no neu/hap/ang/sad/exc label")
    pool = [c for s in range(1, 6) if s != fold for c in sessions[s]]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = int((1 - valid_ratio) * len(pool))
    splits = {
        "train": [replace(pool[i], split="train") for i in order[:n_train]],
        "dev": [replace(pool[i], split="dev") for i in order[n_train:]],
        "test": [replace(c, split="test") for c in sessions[fold]],
    }
    return TaskData("iemocap", list(IEMOCAP_CLASSES), False, splits, sample_rate_hint=16000)
