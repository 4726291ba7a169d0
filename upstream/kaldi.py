"""Kaldi-compatible log-mel filterbanks, batched, without torchaudio.

SSAST, MAE-AST and ASiT were all trained on ``torchaudio.compliance.kaldi.fbank`` features, which
re-implement Kaldi's ``compute-fbank-feats`` (kaldi-asr/kaldi @ src/feat/feature-window.cc,
mel-computations.cc, feature-fbank.cc). :func:`kaldi_fbank` is a drop-in replacement for it, with
the same argument names, defaults and semantics, so that the project needs no torchaudio.
:func:`kaldi_fbank_batch` computes the same features for a padded batch on the input's device in one
pass (on a CPU, in cache-sized blocks of frames, bit-identical to one pass); :class:`upstream.frontend.Fbank`
wraps it in each checkpoint's own pre- and post-processing.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["WINDOW_TYPES", "fbank_chunk_frames", "kaldi_fbank", "kaldi_fbank_batch", "num_frames"]

# Kaldi and torchaudio floor energies at float32 epsilon whatever the compute dtype.
EPSILON = torch.finfo(torch.float32).eps
WINDOW_TYPES = ("hamming", "hanning", "povey", "rectangular", "blackman")


# ----------------------------------------------------------------------------- frame geometry
def _window_sizes(sample_frequency: float, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int]:
    # Same float expression and truncation as kaldi/torchaudio, so inexact products round the same way.
    win = int(sample_frequency * frame_length_ms * 0.001)
    shift = int(sample_frequency * frame_shift_ms * 0.001)
    if win < 2 or shift < 1:
        raise ValueError(f"frame_length={frame_length_ms} ms / frame_shift={frame_shift_ms} ms at "
                         f"{sample_frequency} Hz give window {win} / shift {shift} samples; need >= 2 / >= 1")
    return win, shift


def num_frames(num_samples: int | Tensor, frame_length_ms: float, frame_shift_ms: float,
               sample_rate: float, snip_edges: bool = True) -> int | Tensor:
    """Number of frames kaldi gives for ``num_samples`` samples (``NumFrames`` in feature-window.cc).

    Args:
        num_samples: int, or a long tensor of any shape (e.g. clip lengths ``(B,)``).
        frame_length_ms, frame_shift_ms, sample_rate: as kaldi's ``frame_length``, ``frame_shift``,
            ``sample_frequency``.
        snip_edges: True: only frames that fit, ``1 + (L - win) // shift`` (0 if ``L < win``);
            False: ``(L + shift // 2) // shift`` frames centred on multiples of the shift.
    """
    win, shift = _window_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    if not snip_edges:
        return (num_samples + shift // 2) // shift
    if isinstance(num_samples, Tensor):
        return torch.where(num_samples >= win, 1 + (num_samples - win) // shift, 0)
    return 1 + (num_samples - win) // shift if num_samples >= win else 0


# ----------------------------------------------------------------------------- cached constants
# Built once per (settings, device, dtype). inference_mode(False): a constant first built inside
# inference_mode must stay usable later by code that records autograd.
@functools.lru_cache(maxsize=64)
def _feature_window(window_type: str, size: int, blackman_coeff: float, device: torch.device,
                    dtype: torch.dtype) -> Tensor:
    """Kaldi ``FeatureWindowFunction``: symmetric windows (denominator ``size - 1``), ``(size,)``.

    Evaluated in the target dtype (on the CPU) as torchaudio does: float32 rounding of the window is
    visible in the lowest mel bins, where pre-emphasis leaves little energy.
    """
    with torch.inference_mode(False):
        a = 2 * math.pi / (size - 1)
        n = torch.arange(size, dtype=dtype)
        if window_type == "hanning":
            w = 0.5 - 0.5 * torch.cos(a * n)
        elif window_type == "povey":  # "like hanning but goes to zero at edges": hann ** 0.85
            w = (0.5 - 0.5 * torch.cos(a * n)).pow(0.85)
        elif window_type == "hamming":
            w = 0.54 - 0.46 * torch.cos(a * n)
        elif window_type == "rectangular":
            w = torch.ones(size, dtype=dtype)
        elif window_type == "blackman":
            w = blackman_coeff - 0.5 * torch.cos(a * n) + (0.5 - blackman_coeff) * torch.cos(2 * a * n)
        else:
            raise ValueError(f"window_type {window_type!r} is not one of {WINDOW_TYPES}")
        return w.to(device=device)


def _mel(freq: Tensor | float) -> Tensor | float:
    log = torch.log if isinstance(freq, Tensor) else math.log
    return 1127.0 * log(1.0 + freq / 700.0)


def _inverse_mel(mel: Tensor) -> Tensor:
    return 700.0 * (torch.exp(mel / 1127.0) - 1.0)


def _vtln_warp_freq(freq: Tensor, low_freq: float, high_freq: float, vtln_low: float, vtln_high: float,
                    warp: float) -> Tensor:
    """Kaldi ``VtlnWarpFreq``: piecewise-linear warp, scaled by 1/warp between the cutoffs ``lo, hi``
    (Kaldi's ``l, h``)."""
    lo, hi = vtln_low * max(1.0, warp), vtln_high * min(1.0, warp)
    if not (lo > low_freq and hi < high_freq):
        raise ValueError(f"vtln_warp={warp} moves the VTLN cutoffs ({lo}, {hi}) outside "
                         f"({low_freq}, {high_freq})")
    scale = 1.0 / warp
    scale_left = (scale * lo - low_freq) / (lo - low_freq)
    scale_right = (high_freq - scale * hi) / (high_freq - hi)
    warped = torch.where(freq < lo, low_freq + scale_left * (freq - low_freq),
                         torch.where(freq < hi, scale * freq, high_freq + scale_right * (freq - high_freq)))
    return torch.where((freq < low_freq) | (freq > high_freq), freq, warped)


@functools.lru_cache(maxsize=64)
def _mel_bank(num_bins: int, padded_window: int, sample_freq: float, low_freq: float, high_freq: float,
              vtln_low: float, vtln_high: float, vtln_warp: float, device: torch.device,
              dtype: torch.dtype) -> Tensor:
    """Kaldi ``MelBanks`` as a matrix ``(padded_window // 2 + 1, num_bins)`` for ``power @ bank``.

    Built in float32 like Kaldi's ``BaseFloat``: FFT bins that sit on a triangle's edge then get the
    same (zero) weight as in the reference, which matters for bins whose only content is that edge.
    The Nyquist row is zero (kaldi only uses bins ``0 .. padded_window/2 - 1``).
    """
    if num_bins <= 3:
        raise ValueError(f"num_mel_bins must be > 3, got {num_bins}")
    nyquist = 0.5 * sample_freq
    high_freq = high_freq + nyquist if high_freq <= 0.0 else high_freq  # <= 0 is an offset from nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"bad mel range low_freq={low_freq}, high_freq={high_freq} for nyquist {nyquist}")
    vtln_high = vtln_high + nyquist if vtln_high < 0.0 else vtln_high
    if vtln_warp != 1.0 and not (low_freq < vtln_low < high_freq and 0.0 < vtln_high < high_freq
                                 and vtln_low < vtln_high):
        raise ValueError(f"bad VTLN cutoffs vtln_low={vtln_low}, vtln_high={vtln_high} for mel range "
                         f"({low_freq}, {high_freq})")
    with torch.inference_mode(False):
        mel_low, mel_high = _mel(low_freq), _mel(high_freq)
        delta = (mel_high - mel_low) / (num_bins + 1)
        edges = mel_low + torch.arange(num_bins + 2, dtype=torch.float32) * delta  # (M+2,) shared corners
        if vtln_warp != 1.0:
            freqs = _vtln_warp_freq(_inverse_mel(edges), low_freq, high_freq, vtln_low, vtln_high, vtln_warp)
            edges = _mel(freqs)
        left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (M, 1) each
        fft_mel = _mel(sample_freq / padded_window * torch.arange(padded_window // 2, dtype=torch.float32))
        up = (fft_mel - left) / (center - left)  # (M, K)
        down = (right - fft_mel) / (right - center)
        inside = (fft_mel > left) & (fft_mel < right)
        weights = torch.where(inside, torch.where(fft_mel <= center, up, down), 0.0)
        return F.pad(weights, (0, 1)).T.contiguous().to(device=device, dtype=dtype)  # (K+1, M)


# ----------------------------------------------------------------------------- batched kaldi fbank
def _log_energy(frames: Tensor, energy_floor: float) -> Tensor:
    log_energy = frames.pow(2).sum(-1).clamp_min(EPSILON).log()
    return log_energy.clamp_min(math.log(energy_floor)) if energy_floor > 0.0 else log_energy


# FFT-buffer bytes per pass on CPU: 512 frames of a 512-point FFT (1 MiB of float32), so that the buffer and
# its spectrum stay near a core's L2 cache. Larger blocks are memory-bound: on one core, one pass over 32
# ten-second clips (a 65 MB buffer) took 2.7x as long as 1 MiB blocks, 8 MiB blocks 1.2x, and a per-clip loop
# 1.1x.
CPU_FBANK_BLOCK_BYTES = 2**20
# Elsewhere (GPU) one pass is fastest; a block is only bounded so that very long audio cannot exhaust memory.
DEVICE_FBANK_BLOCK_BYTES = 2**30


def fbank_chunk_frames(device: torch.device, padded_win: int, dtype: torch.dtype) -> int:
    """Frames processed per pass by :func:`kaldi_fbank_batch` on ``device`` (the results do not depend on
    it)."""
    budget = CPU_FBANK_BLOCK_BYTES if device.type == "cpu" else DEVICE_FBANK_BLOCK_BYTES
    return max(1, budget // (padded_win * torch.empty((), dtype=dtype).element_size()))


def _blocks(total: int, most: int) -> list[slice]:
    """``range(total)`` cut into as few blocks of at most ``most`` as possible, sizes differing by at most
    1."""
    n = -(-total // most)
    return [slice(i * total // n, (i + 1) * total // n) for i in range(n)]


def _frames_to_fbank(frames: Tensor, noise: Tensor | None, window: Tensor, bank: Tensor, *, padded_win: int,
                     remove_dc_offset: bool, use_energy: bool, raw_energy: bool, energy_floor: float,
                     preemphasis_coefficient: float, use_power: bool, use_log_fbank: bool,
                     htk_compat: bool) -> Tensor:
    """Kaldi's per-frame processing of ``frames`` ``(B, T, win)`` -> log-mels ``(B, T, M [+1])``.

    Kaldi ProcessWindow order. The frames are copied once into a ``(B, T, padded_win)`` FFT buffer and edited
    in place there: at these sizes memory traffic dominates.
    """
    win = frames.shape[-1]
    buffer = frames.new_empty(*frames.shape[:-1], padded_win)
    buffer[..., win:] = 0.0  # zero-padding up to the FFT size
    x = buffer[..., :win].copy_(frames)  # (B, T, win) view of the buffer
    if noise is not None:
        x.add_(noise)
    if remove_dc_offset:
        x.sub_(x.mean(-1, keepdim=True))
    if use_energy and raw_energy:  # energy of the frame before pre-emphasis and windowing
        log_energy = _log_energy(x, energy_floor)
    if preemphasis_coefficient != 0.0:  # x[j] -= c*x[j-1] for j > 0 (rhs is evaluated first), x[0] -= c*x[0]
        x[..., 1:].sub_(preemphasis_coefficient * x[..., :-1])
        x[..., 0].sub_(preemphasis_coefficient * x[..., 0])
    x.mul_(window)
    if use_energy and not raw_energy:
        log_energy = _log_energy(x, energy_floor)

    # --- mel filterbank
    spectrum = torch.fft.rfft(buffer).abs()  # (B, T, padded_win // 2 + 1)
    if use_power:
        spectrum.pow_(2)
    feats = spectrum @ bank  # (B, T, M)
    if use_log_fbank:
        feats.clamp_min_(EPSILON).log_()
    if use_energy:  # htk_compat puts energy last, kaldi's own layout puts it first
        parts = [feats, log_energy[..., None]] if htk_compat else [log_energy[..., None], feats]
        feats = torch.cat(parts, dim=-1)
    return feats


def kaldi_fbank_batch(
    waveforms: Tensor, lengths: Tensor | None = None, *, blackman_coeff: float = 0.42, dither: float = 0.0,
    energy_floor: float = 1.0, frame_length: float = 25.0, frame_shift: float = 10.0, high_freq: float = 0.0,
    htk_compat: bool = False, low_freq: float = 20.0, num_mel_bins: int = 23,
    preemphasis_coefficient: float = 0.97, raw_energy: bool = True, remove_dc_offset: bool = True,
    round_to_power_of_two: bool = True, sample_frequency: float = 16000.0, snip_edges: bool = True,
    subtract_mean: bool = False, use_energy: bool = False, use_log_fbank: bool = True, use_power: bool = True,
    vtln_high: float = -500.0, vtln_low: float = 100.0, vtln_warp: float = 1.0, window_type: str = "povey",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Kaldi fbank of every clip of a zero-padded batch at once, on the input's device and dtype.

    Keyword arguments mean exactly what they mean in :func:`kaldi_fbank`.

    Args:
        waveforms: ``(B, N)`` float, clip ``i`` in ``waveforms[i, :lengths[i]]``.
        lengths: ``(B,)`` long valid sample counts; None means all ``N``.
        generator: RNG for ``dither`` (on the waveforms' device); None uses the global one.

    Returns:
        feats ``(B, T, num_mel_bins [+1 if use_energy])`` with ``T`` the largest frame count, zero
        beyond each clip's own count; num_frames ``(B,)`` long, what kaldi gives for ``lengths[i]``.
    """
    if waveforms.dim() != 2 or not waveforms.is_floating_point():
        raise ValueError(f"waveforms must be a float (B, N) tensor, got {tuple(waveforms.shape)} "
                         f"{waveforms.dtype}")
    if window_type not in WINDOW_TYPES:
        raise ValueError(f"window_type {window_type!r} is not one of {WINDOW_TYPES}")
    if not 0.0 <= preemphasis_coefficient <= 1.0:
        raise ValueError(f"preemphasis_coefficient must be in [0, 1], got {preemphasis_coefficient}")
    batch, num_samples = waveforms.shape
    device, dtype = waveforms.device, waveforms.dtype
    if lengths is None:
        lengths = torch.full((batch,), num_samples, dtype=torch.long, device=device)
    lengths = lengths.to(device=device, dtype=torch.long)
    if lengths.shape != (batch,) or bool(((lengths < 0) | (lengths > num_samples)).any()):
        raise ValueError(f"lengths must be ({batch},) values in [0, {num_samples}], got {lengths.tolist()}")

    win, shift = _window_sizes(sample_frequency, frame_length, frame_shift)
    padded_win = 1 << (win - 1).bit_length() if round_to_power_of_two else win
    if padded_win % 2:
        raise ValueError(f"the FFT size must be even, got {padded_win} (set round_to_power_of_two=True)")
    frame_counts = num_frames(lengths, frame_length, frame_shift, sample_frequency, snip_edges)  # (B,)
    num_out = num_mel_bins + int(use_energy)
    max_frames = int(frame_counts.max()) if batch else 0
    if max_frames == 0:
        return waveforms.new_zeros(batch, 0, num_out), frame_counts

    # --- framing: frame t starts at t*shift (snip_edges) or t*shift + shift//2 - win//2 (centred)
    span = (max_frames - 1) * shift + win
    if snip_edges:  # every counted frame lies inside its clip: a strided view of the batch suffices
        frames = waveforms[:, :span].unfold(1, win, shift)  # (B, T, win)
    else:
        # Kaldi mirrors out-of-range samples at the clip's own ends (s < 0 -> -s-1, s >= L -> 2L-1-s,
        # repeated while needed); that mirror is 2L-periodic, so one remainder gives the source index.
        pos = torch.arange(span, device=device) - (win // 2 - shift // 2)  # (S,)
        period = 2 * lengths.clamp_min(1)[:, None]  # (B, 1)
        src = torch.remainder(pos, period)  # (B, S)
        src = torch.where(src >= period // 2, period - 1 - src, src)
        frames = waveforms.gather(1, src).unfold(1, win, shift)  # (B, T, win)
    valid = torch.arange(max_frames, device=device) < frame_counts[:, None]  # (B, T)
    # dither noise is drawn once for the whole batch, so that chunking leaves the random stream unchanged
    noise = (dither * torch.randn(frames.shape, generator=generator, device=device, dtype=dtype)
             if dither != 0.0 else None)
    bank = _mel_bank(num_mel_bins, padded_win, float(sample_frequency), float(low_freq), float(high_freq),
                     float(vtln_low), float(vtln_high), float(vtln_warp), device, dtype)
    window = _feature_window(window_type, win, blackman_coeff, device, dtype)
    opts = dict(padded_win=padded_win, remove_dc_offset=remove_dc_offset, use_energy=use_energy,
                raw_energy=raw_energy, energy_floor=energy_floor,
                preemphasis_coefficient=preemphasis_coefficient, use_power=use_power,
                use_log_fbank=use_log_fbank, htk_compat=htk_compat)
    rows = fbank_chunk_frames(device, padded_win, dtype)
    if batch * max_frames <= rows:  # one pass over the whole batch
        feats = _frames_to_fbank(frames, noise, window, bank, **opts)
    else:  # the same per-frame arithmetic in cache-sized blocks of (clips, frames), balanced so that no block
        # is tiny: matrix products of a few rows take other BLAS code paths, which round differently
        feats = waveforms.new_empty(batch, max_frames, num_out)
        clip_blocks = _blocks(batch, max(1, rows // max_frames))
        frame_blocks = _blocks(max_frames, rows) if len(clip_blocks) == batch else [slice(0, max_frames)]
        for idx in ((b, t) for b in clip_blocks for t in frame_blocks):
            block_noise = None if noise is None else noise[idx]
            feats[idx] = _frames_to_fbank(frames[idx], block_noise, window, bank, **opts)
    if subtract_mean:  # per clip, over its own frames only
        mask = valid[..., None].to(dtype)
        feats = feats - (feats * mask).sum(1, keepdim=True) / frame_counts.clamp_min(1)[:, None, None]
    return feats.masked_fill_(~valid[..., None], 0.0), frame_counts


def kaldi_fbank(
    waveform: Tensor, blackman_coeff: float = 0.42, channel: int = -1, dither: float = 0.0,
    energy_floor: float = 1.0, frame_length: float = 25.0, frame_shift: float = 10.0, high_freq: float = 0.0,
    htk_compat: bool = False, low_freq: float = 20.0, min_duration: float = 0.0, num_mel_bins: int = 23,
    preemphasis_coefficient: float = 0.97, raw_energy: bool = True, remove_dc_offset: bool = True,
    round_to_power_of_two: bool = True, sample_frequency: float = 16000.0, snip_edges: bool = True,
    subtract_mean: bool = False, use_energy: bool = False, use_log_fbank: bool = True, use_power: bool = True,
    vtln_high: float = -500.0, vtln_low: float = 100.0, vtln_warp: float = 1.0, window_type: str = "povey",
    *, generator: torch.Generator | None = None,
) -> Tensor:
    """Drop-in ``torchaudio.compliance.kaldi.fbank``: same arguments, defaults and results.

    Args:
        waveform: ``(channels, N)`` as torchaudio takes it (``channel`` picks one; -1 means 0), or ``(N,)``.
        blackman_coeff: the ``a0`` of the generalised Blackman window.
        dither: std of Gaussian noise added to every frame (0 = deterministic); draws from ``generator``.
        energy_floor: floor on the log energy is ``log(energy_floor)`` when > 0.
        frame_length, frame_shift: in milliseconds.
        high_freq: upper mel cutoff in Hz; <= 0 means offset from Nyquist. low_freq: lower cutoff.
        htk_compat: with ``use_energy``, put the energy last (HTK) instead of first.
        min_duration: shorter waveforms (seconds) give an empty result.
        num_mel_bins: number of triangular mel filters (> 3).
        preemphasis_coefficient: ``x[j] -= c * x[j-1]`` per frame.
        raw_energy: energy before (True) or after pre-emphasis and windowing.
        remove_dc_offset: subtract each frame's mean.
        round_to_power_of_two: zero-pad each frame to the next power of two for the FFT.
        sample_frequency: Hz. snip_edges: see :func:`num_frames`; False mirrors the waveform at its ends.
        subtract_mean: subtract the per-bin mean over frames.
        use_energy: add a log-energy column. use_log_fbank: log of mel energies (floored at float32 eps).
        use_power: power spectrum (True) or magnitude.
        vtln_low, vtln_high, vtln_warp: vocal tract length normalisation cutoffs (Hz; negative
            ``vtln_high`` is an offset from Nyquist) and warp factor (1.0 = off).
        window_type: one of ``hamming, hanning, povey, rectangular, blackman``.

    Returns:
        ``(frames, num_mel_bins [+1 if use_energy])`` in the waveform's dtype and device; 0 frames when the
        waveform is shorter than one window with ``snip_edges`` (torchaudio raises there instead).
    """
    # Every argument except these three passes through unchanged (locals() holds just the arguments here).
    options = {k: v for k, v in locals().items() if k not in ("waveform", "channel", "min_duration")}
    if waveform.dim() == 2:
        waveform = waveform[max(channel, 0)]
    if waveform.dim() != 1:
        raise ValueError(f"waveform must be (channels, N) or (N,), got shape {tuple(waveform.shape)}")
    if waveform.numel() < min_duration * sample_frequency:
        return waveform.new_zeros(0, num_mel_bins + int(use_energy))
    feats, _ = kaldi_fbank_batch(waveform[None], None, **options)
    return feats[0]
