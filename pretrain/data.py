"""Pretraining data: the audio files of a folder or manifest, and the clips' random crops as training views.

``list_audio_files`` names the files (``common.audio`` walks folders and reads manifests; nothing is opened
here). ``UnlabeledAudio`` turns a ``(position, file index)`` key from ``common.distributed.StepBatchSampler``
into ``num_views`` crops of that clip, with every random draw seeded by ``(seed, position)``, so the data a
step sees is a function of ``(seed, step)`` only (see ``pretrain.engine``). ``collate_views`` pads a batch of
them. The precomputed-fbank alternative to decoding every step is ``pretrain.fbank_cache``.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from common.audio import AUDIO_EXTENSIONS, ManifestError, read_manifest
from common.audio import list_audio_files as _list_folder
from upstream.frontend import AudioError, load_audio

from .config import DataConfig

__all__ = ["DataError", "UnlabeledAudio", "collate_views", "list_audio_files"]

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Pretraining data that cannot be used: the message names the path."""


def list_audio_files(path: str | os.PathLike, min_secs: float = 0.0) -> list[str]:
    """Audio files of a folder (recursive, hidden files skipped, sorted) or of a manifest.

    Files are not opened here: unusable ones are found, skipped and counted while training. For millions of
    files on a network disk, a manifest avoids the directory walk; its rows with a ``duration`` below
    ``min_secs`` are left out unopened.

    Raises:
        DataError: no path, a path that does not exist, a folder without audio, an unreadable manifest or one
            that lists no usable file.
    """
    if not str(path):
        raise DataError("no pretraining data given: pass --data DIR_OR_MANIFEST (or data.path=...)")
    p = Path(path)
    if not p.exists():
        raise DataError(f"pretraining data path {p} does not exist")
    if p.is_dir():
        files = [str(f) for f in _list_folder(p)]
        if not files:
            raise DataError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found under {p}")
        return files
    try:
        rows = read_manifest(p)
    except ManifestError as err:
        raise DataError(str(err)) from None
    kept = [str(r.path) for r in rows if r.duration is None or r.duration >= min_secs]
    if len(kept) < len(rows):
        log.info("%d clips of manifest %s are shorter than min_secs=%s and were left out",
                 len(rows) - len(kept), p, min_secs)
    if not kept:
        raise DataError(f"manifest {p} lists no usable audio files")
    return kept


class UnlabeledAudio(Dataset):
    """Clip -> ``num_views`` random crops, keyed by ``(global position, file index)``.

    A file that cannot be used (unreadable, empty, too short, wrong rate without ``resample``) is replaced by
    the next file of the list, deterministically, and reported with the item so the trainer can count it.
    """

    def __init__(self, files: Sequence[str], sample_rate: int, crop_secs: float | None, num_views: int,
                 seed: int, data: DataConfig, min_samples: int = 1):
        self.files, self.sample_rate = list(files), int(sample_rate)
        self.num_views, self.seed = num_views, seed
        self.crop = None if crop_secs is None else round(crop_secs * sample_rate)
        self.cfg = data
        self.min_samples = max(min_samples, math.ceil(data.min_secs * sample_rate))

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: str) -> Tensor:
        wav, sr = load_audio(path, target_sr=self.sample_rate if self.cfg.resample else None, downmix=True)
        if sr != self.sample_rate:
            raise AudioError(f"audio file {path} is at {sr} Hz, not {self.sample_rate} Hz "
                             f"(data.resample=false)")
        if wav.numel() < self.min_samples:
            raise AudioError(f"audio file {path} is too short ({wav.numel()} samples < {self.min_samples})")
        return wav

    def __getitem__(self, key: tuple[int, int]) -> dict:
        position, index = key
        bad = []
        for attempt in range(len(self.files)):
            path = self.files[(index + attempt) % len(self.files)]
            try:
                wav = self._load(path)
                break
            except (AudioError, OSError, RuntimeError, ValueError) as err:
                bad.append((path, str(err)))
        else:
            raise DataError(f"none of the {len(self.files)} audio files could be used, e.g. {bad[0][1]}")
        rng = np.random.default_rng([self.seed, 1, position])  # per (seed, epoch, index): resume-exact
        if self.cfg.roll_prob > 0 and rng.random() < self.cfg.roll_prob:  # ASiT dataloader.py
            wav = torch.roll(wav, int(rng.integers(0, wav.numel() + 1)))
        if self.crop is not None and self.cfg.pad_to_crop and wav.numel() < self.crop:
            wav = F.pad(wav, (0, self.crop - wav.numel()))
        views = []
        for _ in range(self.num_views):
            if self.crop is not None and wav.numel() > self.crop:
                start = int(rng.integers(0, wav.numel() - self.crop + 1))
                views.append(wav[start:start + self.crop])
            else:
                views.append(wav)
        return {"views": views, "bad": bad}


def collate_views(items: list[dict]) -> tuple[Tensor, Tensor, list]:
    """-> zero-padded waveforms (B, V, S), lengths (B, V), [(bad path, reason), ...]."""
    lengths = torch.tensor([[v.numel() for v in it["views"]] for it in items], dtype=torch.long)  # (B, V)
    wavs = torch.zeros(*lengths.shape, int(lengths.max()))
    for b, it in enumerate(items):
        for v, view in enumerate(it["views"]):
            wavs[b, v, : view.numel()] = view
    return wavs, lengths, [x for it in items for x in it["bad"]]
