"""One labelled audio file (``Clip``) and how it is loaded for a model (``ClipDataset``, ``collate``).

``ClipDataset`` loads a clip with ``upstream.frontend.load_audio`` (the project's one decoder) as mono
float32 in [-1, 1) at the upstream's sample rate (channels averaged, soxr resampling), applies the clip's crop
(random for training, reproducible otherwise) and gain, and returns ``(wav, label, uid)``; ``collate``
batches these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from upstream.frontend import load_audio

__all__ = ["DatasetLayoutError", "SPLITS", "Clip", "read_audio", "ClipDataset", "collate",
           "class_balanced_weights"]

SPLITS = ("train", "dev", "test")


class DatasetLayoutError(ValueError):
    """A dataset on disk does not match the layout its reader expects; the message names the path or value."""


@dataclass(slots=True)
class Clip:
    """One labelled audio file.

    Attributes:
        path: audio file.
        label: class index, or the sorted list of class indices for multi-label tasks (AS-20K).
        split: ``train``, ``dev`` or ``test``.
        uid: identifier unique within the task, used in prediction files; defaults to ``<parent>/<name>``.
        fold: ESC-50 fold or IEMOCAP session the clip belongs to; None elsewhere.
        crop_secs: if set and the audio is longer, a window of this length is kept (KS1 ``_silence_``: 1 s;
            SID train: ``max_timestep`` = 8 s).
        random_crop: draw the window position at random (else the window starts at 0).
        gain_db: gain applied after loading; KS1 uses -3 dB, as s3prl's sox ``gain -3.0`` effect.
        num_frames: samples per channel at the file's own rate, from the header scan (None before it).
        native_sr: the file's sample rate, from the header scan (None before it).
    """

    path: Path
    label: int | list[int]
    split: str
    uid: str = ""
    fold: int | None = None
    crop_secs: float | None = None
    random_crop: bool = False
    gain_db: float = 0.0
    num_frames: int | None = None
    native_sr: int | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.uid:
            self.uid = "/".join(self.path.parts[-2:])

    @property
    def duration_secs(self) -> float | None:
        """Length of the file in seconds (None before the header scan)."""
        return None if self.num_frames is None or not self.native_sr else self.num_frames / self.native_sr

    @property
    def loaded_secs(self) -> float | None:
        """Seconds the loader returns: the file's length, or its crop when that is shorter."""
        secs = self.duration_secs
        if secs is None or self.crop_secs is None:
            return secs
        return min(secs, self.crop_secs)


def read_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """A clip's waveform as every downstream task reads it: ``upstream.frontend.load_audio`` with the
    channels averaged (sox ``channels 1`` in s3prl) and resampled to ``sample_rate`` (soxr HQ).

    Returns:
        ``(S,)`` float32 tensor in [-1, 1).

    Raises:
        ValueError (``upstream.frontend.AudioError`` among them): the file cannot be decoded, is empty, holds
            NaN/inf, or resamples to no samples (one sample at a higher rate); the message names the file.
    """
    wav, _ = load_audio(path, target_sr=sample_rate, mono=True, downmix=True)
    wav = wav.to(torch.float32).reshape(-1)
    if wav.numel() == 0:
        raise ValueError(f"audio file '{path}' has no samples at {sample_rate} Hz")
    return wav


class ClipDataset(Dataset):
    """Audio clips at the upstream's sample rate, with the clip's crop and gain applied.

    Crops (``Clip.crop_secs``) apply only to audio longer than the crop. With ``random_crop`` the window
    position is drawn from torch's global generator in training, which DataLoader seeds per worker from the
    main process, so crops differ every epoch yet follow ``torch.manual_seed``. Outside training (KS1's dev
    ``_silence_`` clips) the position is drawn from ``(seed, index)``, so every evaluation sees the same
    audio; s3prl redraws it each time. A clip without ``random_crop`` keeps its first ``crop_secs``.

    Args:
        clips: records from a reader.
        sample_rate: upstream sample rate in Hz; files are resampled to it.
        classes: class names; labels index this list.
        multilabel: return float multi-hot ``(C,)`` labels instead of an int index.
        train: random crops drawn fresh (training) or reproducibly (evaluation).
        seed: seed of the evaluation crops.
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        sample_rate: int,
        classes: Sequence[str],
        multilabel: bool = False,
        train: bool = False,
        seed: int = 0,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        num_classes = len(classes)
        for clip in clips:
            labels = clip.label if isinstance(clip.label, list) else [clip.label]
            in_range = all(0 <= lab < num_classes for lab in labels)
            if isinstance(clip.label, list) != multilabel or not in_range:
                kind = "a list of class indices" if multilabel else "one class index"
                raise DatasetLayoutError(
                    f"clip '{clip.path}' has label {clip.label!r}; expected {kind} in 0..{num_classes - 1}"
                )
        self.clips = list(clips)
        self.sample_rate = sample_rate
        self.classes = list(classes)
        self.multilabel = multilabel
        self.train = train
        self.seed = seed

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor, str]:
        """Returns ``(wav (S,) float32, label, uid)``; the label is an int or a ``(C,)`` multi-hot vector."""
        clip = self.clips[index]
        if not clip.path.is_file():
            raise DatasetLayoutError(f"audio file '{clip.path}' (clip {clip.uid}) does not exist")
        try:
            wav = read_audio(clip.path, self.sample_rate)
        except (ValueError, RuntimeError, OSError) as err:
            raise DatasetLayoutError(f"cannot load clip {clip.uid} from '{clip.path}': {err}") from err
        wav = self._crop(wav, clip, index)
        if clip.gain_db:
            wav = wav * (10.0 ** (clip.gain_db / 20.0))
        if self.multilabel:
            label: int | torch.Tensor = torch.zeros(len(self.classes), dtype=torch.float32)
            label[clip.label] = 1.0
        else:
            label = int(clip.label)
        return wav, label, clip.uid

    def _crop(self, wav: torch.Tensor, clip: Clip, index: int) -> torch.Tensor:
        if clip.crop_secs is None:
            return wav
        length = max(1, round(clip.crop_secs * self.sample_rate))
        if wav.numel() <= length:
            return wav
        start = 0
        if clip.random_crop:
            span = wav.numel() - length + 1
            if self.train:
                start = int(torch.randint(span, ()).item())
            else:
                start = int(np.random.default_rng([self.seed, index]).integers(span))
        return wav[start : start + length]


def collate(
    batch: Sequence[tuple[torch.Tensor, int | torch.Tensor, str]],
) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """Batch ``ClipDataset`` items without padding (upstreams take lengths).

    Returns:
        ``(wavs, labels, uids)``: a list of ``(S_i,)`` tensors, labels ``(B,)`` int64 or ``(B, C)`` float32,
        and the clip ids.
    """
    wavs, labels, uids = zip(*batch, strict=True)
    if isinstance(labels[0], torch.Tensor):
        label_tensor = torch.stack(labels)
    else:
        label_tensor = torch.tensor(labels, dtype=torch.long)
    return list(wavs), label_tensor, list(uids)


def class_balanced_weights(clips: Sequence[Clip]) -> torch.Tensor:
    """Per-clip weights ``N / count(label)`` for ``WeightedRandomSampler``, as s3prl's KS1 train and dev
    loaders.

    Args:
        clips: single-label clips.

    Returns:
        ``(N,)`` float64 weights; every class gets the same total weight.
    """
    labels = [c.label for c in clips]
    if any(isinstance(lab, list) for lab in labels):
        raise ValueError("class_balanced_weights needs single-label clips")
    counts: dict[int, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    return torch.tensor([len(labels) / counts[lab] for lab in labels], dtype=torch.float64)
