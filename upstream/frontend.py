"""The front end: audio I/O, and model inputs from waveforms in each checkpoint's own pipeline.

:class:`Fbank` wraps the batched Kaldi filterbank (:func:`upstream.kaldi.kaldi_fbank_batch`, a drop-in
``torchaudio.compliance.kaldi.fbank``) in the exact pre- and post-processing each checkpoint's own data
pipeline applies (YuanGongND/ssast src/dataloader.py, s3prl upstream/ssast/audio.py,
AlanBaade/MAE-AST-Public mae_ast/data/mae_ast_dataset.py, Sara-Ahmed/ASiT data_transformations.py):

============  ======  ======================  ============  ==================================
preset        rate    kaldi window            mean removal  pad / normalise
============  ======  ======================  ============  ==================================
ssast         16 kHz  hanning, htk_compat     yes           pad/cut, then (x - m) / (2 s)
ssast_psla    16 kHz  hanning, htk_compat     yes           as ssast, with a task's statistics
ssast_superb  16 kHz  hanning, htk_compat     no            (x - m) / (2 s), then zero-pad/cut
ssast_s3prl   16 kHz  hanning, htk_compat     no            as ssast_superb (s3prl's port of it)
mae_ast       16 kHz  povey (kaldi defaults)  no            none (the model has a BatchNorm)
asit          32 kHz  hanning, htk_compat     yes           pad/cut to 592, then normalise
============  ======  ======================  ============  ==================================

``ssast`` / ``ssast_psla`` are SSAST's own data loader (pretraining and the PSLA fine-tuning recipes),
``ssast_superb`` the audio code of SSAST's own SUPERB upstream
(``src/finetune/superb/upstream/ast/audio.py``), which s3prl's ``ssast`` expert copies.
:data:`DATASET_STATS` holds the fbank statistics the recipes use.

All models expect float waveforms in [-1, 1): int16-valued samples add 2*ln(32768) ~ 20.79 to every
log-mel value.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kaldi import WINDOW_TYPES, kaldi_fbank_batch

__all__ = ["AudioError", "AudioInfo", "DATASET_STATS", "Fbank", "FbankConfig", "load_audio", "pad_waveforms",
           "probe_audio", "resample", "validate_waveform"]

AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974  # SSAST src/pretrain/run_mask_*.sh
# Fbank (mean, std) per dataset as SSAST's recipes pass them (--dataset_mean / --dataset_std), normalising
# (x - mean) / (2 std). AudioSet's are also those of every released SSAST / ASiT model's pretraining.
DATASET_STATS: dict[str, tuple[float, float]] = {
    "audioset": (AUDIOSET_MEAN, AUDIOSET_STD),  # src/finetune/audioset/run_as.sh, src/pretrain/run_mask_*.sh
    "esc50": (-6.6268077, 5.358466),  # src/finetune/esc50/run_esc_{patch,frame}.sh
    "speechcommands": (-6.845978, 5.5654526),  # src/finetune/speechcommands_v2_35/run_sc.sh
}


class AudioError(ValueError):
    """An audio file or waveform that cannot be used; the message names it and the problem.

    ``reason`` is a short code that callers count skipped files by: ``missing``, ``empty`` (0 bytes or 0
    samples), ``unreadable`` (no audio header libsndfile knows: random bytes, a truncated header), ``text`` (a
    text file under an audio name), ``non_finite`` (NaN or inf samples), ``channels``, or ``unusable``;
    ``detail`` says what is wrong without the path, for summaries that name the file themselves.
    """

    def __init__(self, message: str, reason: str = "unusable", detail: str = ""):
        super().__init__(message)
        self.reason = reason
        self.detail = detail or message


def _unreadable(path: Path, exc: Exception) -> AudioError:
    """The AudioError for a file libsndfile cannot open: text under an audio name, or no known header."""
    if _looks_like_text(path):
        return AudioError(f"cannot read audio file {path} (unreadable or corrupt): it holds text, not audio",
                          "text", "text, not audio")
    why = str(exc).rsplit("': ", 1)[-1]  # libsndfile: "Error opening '<path>': Format not recognised."
    return AudioError(f"cannot read audio file {path} (unreadable or corrupt): {exc}", "unreadable",
                      f"unreadable: {why}")



# ----------------------------------------------------------------------------- audio I/O
def validate_waveform(wav: Tensor, name: str = "waveform") -> Tensor:
    """Return ``wav`` if it is a usable mono waveform ``(N,)``; else raise :class:`AudioError` naming it."""
    if not isinstance(wav, Tensor) or wav.dim() != 1:
        shape = tuple(wav.shape) if isinstance(wav, Tensor) else type(wav).__name__
        raise AudioError(f"{name}: expected a 1-D (N,) waveform tensor, got {shape}")
    if wav.numel() == 0:
        raise AudioError(f"{name}: waveform is empty (0 samples)")
    if not bool(torch.isfinite(wav).all()):
        raise AudioError(f"{name}: waveform contains non-finite samples (NaN or inf)")
    return wav


def resample(wave: Tensor, orig_sr: int, target_sr: int) -> Tensor:
    """Resample ``(N,)`` or ``(channels, N)`` with soxr 'HQ'; returns the input's dtype and device."""
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if wave.dim() not in (1, 2):
        raise ValueError(f"expected (N,) or (channels, N), got shape {tuple(wave.shape)}")
    if orig_sr == target_sr:
        return wave
    x = wave.detach().cpu().numpy()
    x = x if x.dtype == np.float64 else x.astype(np.float32)
    y = soxr.resample(x.T, orig_sr, target_sr, quality="HQ").T  # soxr wants (frames, channels)
    return torch.from_numpy(np.ascontiguousarray(y)).to(device=wave.device, dtype=wave.dtype)


def _looks_like_text(path: Path) -> bool:
    """Whether the file starts with printable UTF-8 text (a text file under an audio name)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
        text = head.decode("utf-8")
    except (OSError, UnicodeDecodeError):  # a multi-byte character cut at 512 bytes is rare; binary is usual
        return False
    return bool(text) and all(c.isprintable() or c in "\t\r\n" for c in text)


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file's header says (``probe_audio``)."""

    frames: int  # samples per channel
    sample_rate: int
    channels: int
    subtype: str  # libsndfile's sample format, e.g. PCM_16, FLOAT, VORBIS
    size_bytes: int

    @property
    def duration_secs(self) -> float:
        return self.frames / self.sample_rate


# Sample formats that can store NaN or inf; integer PCM, FLAC and the lossy codecs cannot.
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


def probe_audio(path: str | Path, check_finite: bool = True) -> AudioInfo:
    """Header facts of an audio file, read without decoding it; the same checks as :func:`load_audio`.

    Costs one ``open`` and a header read (~50 us on a local disk). Files stored as floats (WAV/AIFF
    ``FLOAT``/``DOUBLE``), the only formats that can hold NaN or inf, are also decoded block by block with
    ``check_finite``, since that is the only way to find such samples.

    Raises:
        AudioError: naming the file, with ``reason`` missing, empty, unreadable, text or non_finite.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise AudioError(f"audio file {path} not found", "missing", "not found") from None
    if size == 0:
        raise AudioError(f"audio file {path} is empty (0 bytes)", "empty", "empty (0 bytes)")
    try:
        f = sf.SoundFile(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise _unreadable(path, exc) from exc
    with f:
        info = AudioInfo(int(f.frames), int(f.samplerate), int(f.channels), str(f.subtype), size)
        if info.frames == 0:
            raise AudioError(f"audio file {path} is empty (0 samples)", "empty", "empty (0 samples)")
        if check_finite and info.subtype in _FLOAT_SUBTYPES:
            blocks = f.blocks(1 << 16, dtype="float32", always_2d=True)
            bad = sum(int(b.size - np.isfinite(b).sum()) for b in blocks)
            if bad:
                what = f"{bad} non-finite sample{'s' if bad > 1 else ''} (NaN or inf)"
                raise AudioError(f"audio file {path} contains {what}", "non_finite", what)
    return info


def load_audio(path: str | Path, target_sr: int | None = None, mono: bool = True,
               downmix: bool = False) -> tuple[Tensor, int]:
    """Read an audio file as float32 in [-1, 1) (what ``torchaudio.load`` gives), optionally resampled.

    Args:
        path: any format libsndfile reads (wav, flac, ogg, ...).
        target_sr: resample with soxr when the file's rate differs; None keeps the file's rate.
        mono: return ``(N,)``; a multi-channel file is an error unless ``downmix``. False: ``(C, N)``.
        downmix: average the channels of a multi-channel file when ``mono``.

    Returns:
        (waveform, sample_rate) with the rate of the returned waveform.

    Raises:
        AudioError: naming the file and the problem, with ``reason`` set (missing, empty, unreadable, text,
            non_finite, channels): a file that decodes must also be usable, so no NaN reaches a model.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} not found", "missing", "not found")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file {path} is empty (0 bytes)", "empty", "empty (0 bytes)")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise _unreadable(path, exc) from exc
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} is empty (0 samples)", "empty", "empty (0 samples)")
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(finite.size - finite.sum())
        what = f"{bad} non-finite sample{'s' if bad > 1 else ''} (NaN or inf)"
        raise AudioError(f"audio file {path} contains {what}", "non_finite", what)
    wave = torch.from_numpy(np.ascontiguousarray(data.T))  # (C, N)
    if mono:
        if wave.shape[0] > 1 and not downmix:
            raise AudioError(f"audio file {path} has {wave.shape[0]} channels but mono audio is required; "
                             "downmix it (e.g. `sox in.wav -c 1 out.wav`) or pass downmix=True", "channels")
        wave = wave.mean(0)
    if target_sr is not None and target_sr != sr:
        wave, sr = resample(wave, sr, target_sr), target_sr
    return wave, int(sr)


def pad_waveforms(waves: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Zero-pad 1-D waveforms into ``(B, N_max)``; returns it with the lengths ``(B,)`` long."""
    if not waves:
        raise ValueError("pad_waveforms needs at least one waveform")
    for i, wav in enumerate(waves):
        if wav.dim() != 1:
            raise AudioError(f"waveform {i}: expected shape (N,), got {tuple(wav.shape)}")
    lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long, device=waves[0].device)
    return nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths


# ----------------------------------------------------------------------------- per-checkpoint pipelines
@dataclass
class FbankConfig:
    """Everything between a waveform and a model input; the defaults are kaldi's at 16 kHz, 128 bins."""

    sample_rate: int = 16000  # the checkpoint's rate; ASiT is 32 kHz
    num_mel_bins: int = 128
    window_type: str = "povey"  # kaldi default (MAE-AST); SSAST/ASiT use "hanning"
    htk_compat: bool = False  # only changes anything with use_energy, kept for parity with the callers
    use_energy: bool = False
    dither: float = 0.0  # every checkpoint was trained without dither
    frame_shift_ms: float = 10.0
    frame_length_ms: float = 25.0
    remove_mean_first: bool = False  # waveform - waveform.mean() per clip (SSAST/ASiT dataloaders)
    norm_mean: float | None = None  # (fbank - norm_mean) / (2 * norm_std), SSAST/ASiT dataset stats
    norm_std: float | None = None
    target_length: int | None = None  # pad with zero rows / cut to exactly this many frames
    pad_then_normalise: bool = True  # official dataloaders: padded rows become -mean/(2 std); s3prl: 0

    def __post_init__(self) -> None:
        if self.window_type not in WINDOW_TYPES:
            raise ValueError(f"window_type {self.window_type!r} is not one of {WINDOW_TYPES}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError(f"set both norm_mean and norm_std or neither, got norm_mean={self.norm_mean}, "
                             f"norm_std={self.norm_std}")
        if self.norm_std is not None and self.norm_std <= 0:
            raise ValueError(f"norm_std must be positive, got {self.norm_std}")
        if self.target_length is not None and self.target_length <= 0:
            raise ValueError(f"target_length must be positive or None, got {self.target_length}")

    @classmethod
    def ssast(cls, target_length: int = 1024, mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD,
              remove_mean_first: bool = True, pad_then_normalise: bool = True) -> FbankConfig:
        """SSAST ``src/dataloader.py``; fine-tuning recipes pass their own stats and target_length."""
        return cls(sample_rate=16000, window_type="hanning", htk_compat=True,
                   remove_mean_first=remove_mean_first, norm_mean=mean, norm_std=std,
                   target_length=target_length, pad_then_normalise=pad_then_normalise)

    @classmethod
    def ssast_psla(cls, dataset: str, target_length: int) -> FbankConfig:
        """SSAST's PSLA fine-tuning input (``src/dataloader.py`` with a recipe's ``--dataset_mean/std`` and
        ``--target_length``): mean removal, fbank padded/cut to ``target_length``, then normalised with
        the statistics of ``dataset`` (a key of :data:`DATASET_STATS`)."""
        if dataset not in DATASET_STATS:
            raise ValueError(f"no fbank statistics for dataset {dataset!r}; known: {sorted(DATASET_STATS)}")
        mean, std = DATASET_STATS[dataset]
        return cls.ssast(target_length, mean, std)

    @classmethod
    def ssast_superb(cls, target_length: int) -> FbankConfig:
        """SSAST's own SUPERB upstream (``src/finetune/superb/upstream/ast/audio.py``): no mean removal,
        AudioSet stats hard-coded, normalise, then zero-pad/cut the whole utterance to ``target_length``."""
        return cls.ssast(target_length, remove_mean_first=False, pad_then_normalise=False)

    @classmethod
    def ssast_s3prl(cls, target_length: int) -> FbankConfig:
        """s3prl ``ssast/audio.py`` (a copy of SSAST's SUPERB ``audio.py``), applied to each window."""
        return cls.ssast_superb(target_length)

    @classmethod
    def mae_ast(cls) -> FbankConfig:
        """MAE-AST ``postprocess_spec``: kaldi defaults, variable length; the model normalises."""
        return cls(sample_rate=16000, window_type="povey", htk_compat=False)

    @classmethod
    def asit(cls, target_length: int = 592) -> FbankConfig:
        """ASiT ``DataAugmentation._wav2fbank`` at 32 kHz, pad/cut to ``target_length`` (its ``num_frames``)
        then normalise."""
        return cls(sample_rate=32000, window_type="hanning", htk_compat=True, remove_mean_first=True,
                   norm_mean=AUDIOSET_MEAN, norm_std=AUDIOSET_STD, target_length=target_length)

    def kaldi_kwargs(self) -> dict:
        """Keyword arguments for :func:`upstream.kaldi.kaldi_fbank` (``torchaudio...kaldi.fbank``'s)."""
        return dict(sample_frequency=float(self.sample_rate), num_mel_bins=self.num_mel_bins,
                    window_type=self.window_type, htk_compat=self.htk_compat, use_energy=self.use_energy,
                    dither=self.dither, frame_shift=self.frame_shift_ms, frame_length=self.frame_length_ms)

    @property
    def frame_rate_hz(self) -> float:
        return 1000.0 / self.frame_shift_ms


class Fbank(nn.Module):
    """Padded waveforms ``(B, N)`` + lengths -> model-ready log-mels ``(B, T, M)`` + valid frame counts.

    One batched pass: per-clip mean removal over valid samples, :func:`kaldi_fbank_batch`, pad/cut to
    ``target_length``, normalisation in the configured order. Without ``target_length``, ``T`` is the
    longest clip's frame count and rows past a clip's end are exactly 0 (``pad_sequence`` style, as
    MAE-AST batches); the normalised value of padding only applies to target-length padding.
    Parameter-free; constants are cached per device and dtype.
    """

    def __init__(self, config: FbankConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Compute model inputs for a zero-padded batch.

        Args:
            waveforms: ``(B, N)`` float in [-1, 1), clip ``i`` in ``waveforms[i, :lengths[i]]``.
            lengths: ``(B,)`` valid sample counts; None means all ``N``.
            generator: RNG for ``dither`` (unused at the presets' dither 0).

        Returns:
            feats ``(B, T, num_mel_bins)`` and num_frames ``(B,)`` long: rows holding audio (<= T).
        """
        cfg = self.config
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be (B, N), got shape {tuple(waveforms.shape)}")
        batch, num_samples = waveforms.shape
        if lengths is None:
            lengths = torch.full((batch,), num_samples, dtype=torch.long, device=waveforms.device)
        lengths = lengths.to(device=waveforms.device, dtype=torch.long)
        if cfg.remove_mean_first:  # the mean of the clip itself, not of the clip plus its padding
            inside = torch.arange(num_samples, device=waveforms.device) < lengths[:, None]  # (B, N)
            mean = (waveforms * inside).sum(1, keepdim=True) / lengths.clamp_min(1)[:, None]
            waveforms = (waveforms - mean) * inside
        feats, frames = kaldi_fbank_batch(waveforms, lengths, generator=generator, **cfg.kaldi_kwargs())
        if cfg.target_length is not None:
            extra = cfg.target_length - feats.shape[1]
            feats = F.pad(feats, (0, 0, 0, extra)) if extra > 0 else feats[:, : cfg.target_length]
            frames = frames.clamp(max=cfg.target_length)
        if cfg.norm_mean is not None:
            normed = (feats - cfg.norm_mean) / (2.0 * cfg.norm_std)
            if cfg.pad_then_normalise and cfg.target_length is not None:
                feats = normed
            else:
                valid = torch.arange(feats.shape[1], device=feats.device) < frames[:, None]  # (B, T)
                feats = normed.masked_fill(~valid[..., None], 0.0)
        return feats, frames

    def extra_repr(self) -> str:
        return repr(self.config)
