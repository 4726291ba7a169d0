"""Tests for upstream/kaldi.py and upstream/frontend.py: kaldi fbank parity, batching, per-checkpoint
pipelines, audio I/O.

Parity is checked three ways: against ``torchaudio.compliance.kaldi.fbank`` outputs stored in
``fixtures/fbank``, against the official SSAST / MAE-AST / ASiT dataloader outputs in
``fixtures/official``, and against a literal, loop-per-frame float64 transcription of Kaldi's
feature-window.cc / mel-computations.cc below (which covers the options no fixture exercises).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import fixture_path

from upstream import kaldi
from upstream.frontend import (
    AudioError,
    Fbank,
    FbankConfig,
    load_audio,
    pad_waveforms,
    resample,
    validate_waveform,
)
from upstream.kaldi import kaldi_fbank, kaldi_fbank_batch, num_frames

EPS = float(torch.finfo(torch.float32).eps)
# fixtures/official/README.md "Tolerances", which hold on any x86-64 CPU (the FFT takes other code paths on
# other CPUs and moves log-mel values by up to 3.7e-4): never tighten them to what one machine gives.
FBANK_ATOL = 1e-3  # log-mel values (about -20..10)
INPUT_ATOL = 1e-4  # normalised model inputs: the fbank spread divided by 2 * std


def load(*parts: str) -> dict:
    return torch.load(fixture_path(*parts), weights_only=False)


def assert_fbank_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Float32 log-mel parity across platforms.

    Different float32 FFT libraries round differently, and in the lowest mel bins (a single FFT bin each,
    where pre-emphasis leaves ~1e-3 of the energy) that shows as up to ~2e-3 in a handful of values: a
    float64 evaluation of the same formulas is itself up to 3e-3 away from the torchaudio reference
    there. Everywhere else agreement is ~1e-6, so the bulk is held to fixtures/fbank/README.md's 1e-3 and only
    rare outliers may pass it. That README's "below 1e-3" does not hold for those few values across FFT
    builds: this code, which reproduces torchaudio's kaldi.py bit for bit on the official fixtures, is up to
    1.7e-3 away there from this file (made with a CUDA build of torch 2.11). The official-pipeline fixtures
    are held to their README's plain atol instead.
    """
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs()
    frac_over = (diff > FBANK_ATOL).double().mean().item()
    msg = (f"{what}: max abs diff {diff.max().item():.2e}, mean {diff.mean().item():.2e}, "
           f"{frac_over:.1e} of values above {FBANK_ATOL}")
    assert diff.max() < 5e-3 and frac_over < 2e-4 and diff.mean() < 2e-5, msg


# ----------------------------------------------------------------------------- torchaudio reference
@pytest.fixture(scope="module")
def reference_cases() -> list[dict]:
    return load("fbank", "fbank_reference.pt")["cases"]


@pytest.mark.parametrize("index", range(7))
def test_matches_torchaudio_reference(reference_cases: list[dict], index: int) -> None:
    case = reference_cases[index]
    out = kaldi_fbank(case["waveform"][None], **case["kwargs"])  # (1, N) like torchaudio
    assert_fbank_close(out, case["fbank"], case["name"])
    assert torch.equal(kaldi_fbank(case["waveform"], **case["kwargs"]), out)  # 1-D input, same result


# ----------------------------------------------------------------------------- literal kaldi, float64
# torchaudio.compliance.kaldi.fbank's defaults (torchaudio 2.x), written out independently.
KALDI_DEFAULTS = dict(blackman_coeff=0.42, channel=-1, dither=0.0, energy_floor=1.0, frame_length=25.0,
                      frame_shift=10.0, high_freq=0.0, htk_compat=False, low_freq=20.0, min_duration=0.0,
                      num_mel_bins=23, preemphasis_coefficient=0.97, raw_energy=True, remove_dc_offset=True,
                      round_to_power_of_two=True, sample_frequency=16000.0, snip_edges=True,
                      subtract_mean=False, use_energy=False, use_log_fbank=True, use_power=True,
                      vtln_high=-500.0, vtln_low=100.0, vtln_warp=1.0, window_type="povey")


def test_signature_is_torchaudios() -> None:
    params = list(inspect.signature(kaldi_fbank).parameters.values())[1:]  # after the waveform
    positional = {p.name: p.default for p in params if p.kind is p.POSITIONAL_OR_KEYWORD}
    assert positional == KALDI_DEFAULTS and list(positional) == sorted(KALDI_DEFAULTS)  # torchaudio's order


def literal_kaldi_fbank(x: np.ndarray, **options) -> np.ndarray:
    """Kaldi's ExtractWindow / ProcessWindow / MelBanks written out sample by sample (slow, small inputs)."""
    o = SimpleNamespace(**{**KALDI_DEFAULTS, **options})
    n, sr = len(x), o.sample_frequency
    win, shift = int(sr * o.frame_length * 0.001), int(sr * o.frame_shift * 0.001)
    fft_size = 2 ** math.ceil(math.log2(win)) if o.round_to_power_of_two else win
    frames = (0 if n < win else 1 + (n - win) // shift) if o.snip_edges else (n + shift // 2) // shift
    a, c = 2 * math.pi / (win - 1), o.blackman_coeff
    window = {"hanning": lambda i: 0.5 - 0.5 * math.cos(a * i),
              "hamming": lambda i: 0.54 - 0.46 * math.cos(a * i),
              "povey": lambda i: (0.5 - 0.5 * math.cos(a * i)) ** 0.85,
              "rectangular": lambda i: 1.0,
              "blackman": lambda i: c - 0.5 * math.cos(a * i) + (0.5 - c) * math.cos(2 * a * i),
              }[o.window_type]

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    low, high = o.low_freq, o.high_freq if o.high_freq > 0 else sr / 2 + o.high_freq
    v_low, v_high, w = o.vtln_low, o.vtln_high if o.vtln_high > 0 else sr / 2 + o.vtln_high, o.vtln_warp

    def warp(f):  # VtlnWarpFreq
        if f < low or f > high:
            return f
        lo, hi = v_low * max(1.0, w), v_high * min(1.0, w)
        if f < lo:
            return low + (lo / w - low) / (lo - low) * (f - low)
        return f / w if f < hi else high + (high - hi / w) / (high - hi) * (f - high)

    delta = (mel(high) - mel(low)) / (o.num_mel_bins + 1)
    fft_mel = mel(np.arange(fft_size // 2) * sr / fft_size)
    bank = np.zeros((o.num_mel_bins, fft_size // 2 + 1))
    for m in range(o.num_mel_bins):
        left, center, right = (mel(warp(700 * (math.exp((mel(low) + k * delta) / 1127) - 1)))
                               for k in (m, m + 1, m + 2))
        for i, f in enumerate(fft_mel):
            if left < f < right:
                bank[m, i] = (f - left) / (center - left) if f <= center else (right - f) / (right - center)

    rows = []
    for t in range(frames):
        start = t * shift if o.snip_edges else t * shift + shift // 2 - win // 2
        frame = np.empty(win)
        for j in range(win):
            s = start + j
            while s < 0 or s >= n:
                s = -s - 1 if s < 0 else 2 * n - 1 - s
            frame[j] = x[s]
        if o.remove_dc_offset:
            frame -= frame.mean()
        energy = frame @ frame
        for i in range(win - 1, 0, -1):
            frame[i] -= o.preemphasis_coefficient * frame[i - 1]
        frame[0] -= o.preemphasis_coefficient * frame[0]
        frame *= np.array([window(i) for i in range(win)])
        frame = np.concatenate([frame, np.zeros(fft_size - win)])
        energy = math.log(max(energy if o.raw_energy else frame @ frame, EPS))
        if o.energy_floor > 0:
            energy = max(energy, math.log(o.energy_floor))
        spectrum = np.abs(np.fft.rfft(frame)) ** (2 if o.use_power else 1)
        feats = bank @ spectrum
        feats = np.log(np.maximum(feats, EPS)) if o.use_log_fbank else feats
        if o.use_energy:
            feats = np.append(feats, energy) if o.htk_compat else np.insert(feats, 0, energy)
        rows.append(feats)
    out = np.array(rows).reshape(frames, o.num_mel_bins + int(o.use_energy))
    return out - out.mean(0) if o.subtract_mean else out


OPTION_SETS = {
    "defaults": dict(),
    "hamming_energy_first": dict(window_type="hamming", use_energy=True, energy_floor=0.0, num_mel_bins=40),
    "blackman_energy_last_windowed": dict(window_type="blackman", use_energy=True, htk_compat=True,
                                          raw_energy=False, blackman_coeff=0.38),
    "rect_centered_no_pow2": dict(window_type="rectangular", snip_edges=False, round_to_power_of_two=False),
    "hanning_magnitude_mean": dict(window_type="hanning", use_power=False, subtract_mean=True,
                                   num_mel_bins=64),
    "vtln_band_limited": dict(vtln_warp=0.9, low_freq=60.0, high_freq=-400.0, frame_shift=12.5),
    "linear_raw": dict(use_log_fbank=False, preemphasis_coefficient=0.0, remove_dc_offset=False,
                       snip_edges=False, frame_length=20.0),
}


@pytest.mark.parametrize("name", OPTION_SETS)
def test_matches_literal_kaldi_float64(name: str) -> None:
    g = torch.Generator().manual_seed(1)
    t = torch.arange(3000, dtype=torch.float64) / 16000
    wave = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(3000, generator=g, dtype=torch.float64)
    opts = OPTION_SETS[name]
    ours = kaldi_fbank(wave, **opts)
    assert ours.dtype == torch.float64
    expected = torch.from_numpy(literal_kaldi_fbank(wave.numpy(), **opts))
    scale = 1.0 if opts.get("use_log_fbank", True) else expected.abs().max().item()
    # the mel bank is built in float32 (as Kaldi's BaseFloat), hence 1e-5 rather than 1e-12
    torch.testing.assert_close(ours, expected, atol=1e-5 * scale, rtol=1e-5)


def test_clip_shorter_than_half_a_window_mirrors_repeatedly() -> None:
    # 100 samples, snip_edges=False: one frame spanning samples -120..279, mirrored back and forth
    wave = torch.randn(100, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = torch.from_numpy(literal_kaldi_fbank(wave.numpy(), snip_edges=False))
    torch.testing.assert_close(kaldi_fbank(wave, snip_edges=False), expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- batching
@pytest.mark.parametrize("snip_edges", [True, False])
def test_batch_matches_single_clips(snip_edges: bool, rng: torch.Generator) -> None:
    lengths = torch.tensor([16000, 300, 4321, 0, 401, 9999])  # 300 < one 400-sample window, 0 = empty
    waves = torch.randn(len(lengths), int(lengths.max()), generator=rng) * 0.1
    waves = waves * (torch.arange(waves.shape[1]) < lengths[:, None])
    opts = dict(num_mel_bins=40, use_energy=True, subtract_mean=True, snip_edges=snip_edges,
                window_type="hanning")
    feats, counts = kaldi_fbank_batch(waves, lengths, **opts)
    assert counts.tolist() == [num_frames(int(n), 25.0, 10.0, 16000, snip_edges) for n in lengths]
    assert feats.shape == (len(lengths), int(counts.max()), 41)
    for i, n in enumerate(lengths.tolist()):
        single = kaldi_fbank(waves[i, :n], **opts)
        assert single.shape[0] == counts[i]
        torch.testing.assert_close(feats[i, : counts[i]], single, atol=1e-4, rtol=0)
        assert torch.all(feats[i, counts[i]:] == 0)  # rows past the clip are exactly zero
    if snip_edges:
        assert counts[1] == 0


def test_batch_reuses_cached_constants() -> None:
    waves = torch.randn(2, 4000) * 0.1
    kaldi_fbank_batch(waves, num_mel_bins=31, window_type="blackman")
    banks, windows = kaldi._mel_bank.cache_info(), kaldi._feature_window.cache_info()
    kaldi_fbank_batch(waves, num_mel_bins=31, window_type="blackman")
    assert kaldi._mel_bank.cache_info().hits == banks.hits + 1
    assert kaldi._feature_window.cache_info().hits == windows.hits + 1


@pytest.mark.parametrize("snip_edges", [True, False])
@pytest.mark.parametrize("block_rows", [40, 250])  # 40: blocks of frames within a clip; 250: whole clips
def test_blocked_passes_are_bit_identical_to_one_pass(snip_edges: bool, block_rows: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU batches are cut into cache-sized blocks; every value must equal the one-pass result exactly."""
    lengths = torch.tensor([16000, 300, 4321, 0, 401, 9999])  # up to 99 frames: several blocks either way
    waves = torch.randn(len(lengths), 16000, generator=torch.Generator().manual_seed(1)) * 0.1
    opts = dict(num_mel_bins=40, use_energy=True, raw_energy=False, subtract_mean=True, snip_edges=snip_edges,
                dither=0.5)
    monkeypatch.setattr(kaldi, "CPU_FBANK_BLOCK_BYTES", 2**40)
    whole, counts = kaldi_fbank_batch(waves, lengths, generator=torch.Generator().manual_seed(2), **opts)
    monkeypatch.setattr(kaldi, "CPU_FBANK_BLOCK_BYTES", block_rows * 512 * 4)  # 512-point FFT, float32
    assert kaldi.fbank_chunk_frames(torch.device("cpu"), 512, torch.float32) == block_rows
    blocked, counts2 = kaldi_fbank_batch(waves, lengths, generator=torch.Generator().manual_seed(2), **opts)
    assert torch.equal(counts, counts2) and blocked.shape == whole.shape == (6, int(counts.max()), 41)
    assert torch.equal(blocked, whole)  # dither included: the noise is drawn once for the whole batch


def test_block_size_by_device() -> None:
    # CPU: a 1 MiB FFT buffer (a 512-point float32 frame is 2 KiB); elsewhere one pass up to 1 GiB
    assert kaldi.fbank_chunk_frames(torch.device("cpu"), 512, torch.float32) == 512
    assert kaldi.fbank_chunk_frames(torch.device("cpu"), 1024, torch.float64) == 128
    assert kaldi.fbank_chunk_frames(torch.device("cuda"), 512, torch.float32) == 2**19


def test_dither_is_random_but_seeded() -> None:
    silence = torch.zeros(2, 8000)
    quiet, _ = kaldi_fbank_batch(silence)
    assert torch.all(quiet == math.log(EPS))  # digital silence sits on the log floor
    a, _ = kaldi_fbank_batch(silence, dither=1.0, generator=torch.Generator().manual_seed(3))
    b, _ = kaldi_fbank_batch(silence, dither=1.0, generator=torch.Generator().manual_seed(3))
    assert a.shape == quiet.shape and torch.isfinite(a).all() and torch.equal(a, b)
    assert (a > quiet + 1.0).float().mean() > 0.9  # dither lifts everything off the floor


# ----------------------------------------------------------------------------- hand-checkable facts
def test_frame_counts_by_hand() -> None:
    assert num_frames(16000, 25, 10, 16000) == 98  # 1 + (16000 - 400) // 160
    assert num_frames(400, 25, 10, 16000) == 1 and num_frames(399, 25, 10, 16000) == 0
    assert num_frames(16000, 25, 10, 16000, snip_edges=False) == 100  # (16000 + 80) // 160
    assert num_frames(192000, 25, 10, 32000) == 598  # ASiT 6 s at 32 kHz: 800-sample window, 320 shift
    assert num_frames(torch.tensor([0, 399, 400, 16000]), 25, 10, 16000).tolist() == [0, 0, 1, 98]


def test_tone_peaks_in_its_mel_bin() -> None:
    t = torch.arange(16000) / 16000
    feats = kaldi_fbank(0.5 * torch.sin(2 * math.pi * 1000 * t), num_mel_bins=128, window_type="hanning")
    mel_lo, mel_hi = 1127 * math.log(1 + 20 / 700), 1127 * math.log(1 + 8000 / 700)
    centre_mel = mel_lo + (torch.arange(128) + 1) * (mel_hi - mel_lo) / 129  # filter m peaks at edge m+1
    expected = int((centre_mel - 1127 * math.log(1 + 1000 / 700)).abs().argmin())
    assert set(feats.argmax(1).tolist()) <= {expected - 1, expected, expected + 1}
    assert feats.mean(0).argmax() == expected


def test_windows_are_kaldis() -> None:
    cpu = torch.device("cpu")
    hann = kaldi._feature_window("hanning", 400, 0.42, cpu, torch.float64)
    povey = kaldi._feature_window("povey", 400, 0.42, cpu, torch.float64)
    assert hann[0] == 0 and torch.allclose(hann, hann.flip(0))  # symmetric, denominator N-1
    torch.testing.assert_close(povey, hann.pow(0.85))
    torch.testing.assert_close(hann, torch.hann_window(400, periodic=False, dtype=torch.float64))


def test_bad_options_fail_by_name() -> None:
    with pytest.raises(ValueError, match="window_type"):
        kaldi_fbank(torch.zeros(1000), window_type="kaiser")
    with pytest.raises(ValueError, match="num_mel_bins"):
        kaldi_fbank(torch.zeros(1000), num_mel_bins=3)
    with pytest.raises(ValueError, match="high_freq"):
        kaldi_fbank(torch.zeros(1000), high_freq=9000.0)
    with pytest.raises(ValueError, match="lengths"):
        kaldi_fbank_batch(torch.zeros(2, 1000), torch.tensor([1000, 1001]))


# ----------------------------------------------------------------------------- official pipelines
def test_ssast_pipeline_matches_official_dataloader() -> None:
    ref = load("official", "ssast_patch_reference.pt")
    waves, lengths = pad_waveforms([w.float() for w in ref["wave_float32"]])
    config = FbankConfig.ssast(target_length=128)
    feats, frames = Fbank(config)(waves, lengths)
    torch.testing.assert_close(feats, ref["ft_main"]["input"], atol=INPUT_ATOL, rtol=0)
    raw, _ = Fbank(dataclasses.replace(config, norm_mean=None, norm_std=None))(waves, lengths)
    torch.testing.assert_close(raw, ref["ft_main"]["fbank_padded_unnormalised"], atol=FBANK_ATOL, rtol=0)
    assert frames.tolist() == [128, 91]  # 20800 samples fill exactly 128 frames, 14880 give 91
    pad_value = -config.norm_mean / (2 * config.norm_std)
    assert torch.allclose(feats[1, 91:], torch.tensor(pad_value))  # pad, then normalise: 0.467


def test_ssast_s3prl_order_leaves_padding_at_zero() -> None:
    waves, lengths = pad_waveforms([torch.randn(8000) * 0.1, torch.randn(16000) * 0.1])
    s3prl, frames = Fbank(FbankConfig.ssast_s3prl(target_length=100))(waves, lengths)
    official, _ = Fbank(FbankConfig.ssast(target_length=100, remove_mean_first=False))(waves, lengths)
    assert frames.tolist() == [48, 98] and s3prl.shape == (2, 100, 128)
    assert torch.all(s3prl[0, 48:] == 0) and torch.all(s3prl[1, 98:] == 0)
    torch.testing.assert_close(s3prl[0, :48], official[0, :48])


def test_mae_ast_pipeline_matches_official() -> None:
    ref = load("official", "maeast_patch_reference.pt")
    waves, lengths = pad_waveforms([w.float() for w in ref["wave_float32"]])
    feats, frames = Fbank(FbankConfig.mae_ast())(waves, lengths)
    # MAE-AST normalises in-model
    torch.testing.assert_close(feats, ref["fbank_padded"], atol=FBANK_ATOL, rtol=0)
    for i, clip in enumerate(ref["fbank"]):
        torch.testing.assert_close(feats[i, : frames[i]], clip, atol=FBANK_ATOL, rtol=0)
    padding_mask = torch.arange(feats.shape[1]) >= frames[:, None]  # True = pad, as MAE-AST
    assert torch.equal(padding_mask, ref["frame_padding_mask"])
    assert torch.all(feats[padding_mask] == 0)


def test_asit_pipeline_matches_official() -> None:
    ref = load("official", "asit_a_reference.pt")
    waves, lengths = pad_waveforms([w.float() / 32768 for w in ref["wave_int16"]])
    config = FbankConfig.asit()
    feats, frames = Fbank(config)(waves, lengths)
    # model takes (B, 1, T, F)
    torch.testing.assert_close(feats[:, None], ref["input"], atol=INPUT_ATOL, rtol=0)
    raw, _ = Fbank(dataclasses.replace(config, norm_mean=None, norm_std=None))(waves, lengths)
    torch.testing.assert_close(raw, ref["fbank_padded_unnormalised"], atol=FBANK_ATOL, rtol=0)
    assert frames.tolist() == [248, 592]


def test_fbank_module_is_parameter_free_and_validates_config() -> None:
    module = Fbank(FbankConfig.mae_ast())
    assert list(module.parameters()) == [] and module.state_dict() == {}
    with pytest.raises(ValueError, match="norm_std"):
        FbankConfig(norm_mean=-4.0)
    with pytest.raises(ValueError, match="window_type"):
        FbankConfig(window_type="hann")


# ----------------------------------------------------------------------------- audio I/O
def test_load_audio_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(AudioError, match="missing.wav.*not found"):
        load_audio(tmp_path / "missing.wav")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"definitely not audio" * 20)
    with pytest.raises(AudioError, match="garbage.wav.*corrupt"):
        load_audio(garbage)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0,), dtype=np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="empty.wav.*0 samples"):
        load_audio(empty)
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([np.full(800, 0.5), np.zeros(800)], axis=1), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="stereo.wav has 2 channels.*downmix"):
        load_audio(stereo)
    mixed, sr = load_audio(stereo, downmix=True)
    assert sr == 16000 and mixed.shape == (800,) and torch.allclose(mixed, torch.tensor(0.25))
    both, _ = load_audio(stereo, mono=False)
    assert both.shape == (2, 800)


def test_validate_waveform() -> None:
    wave = torch.zeros(10)
    assert validate_waveform(wave, "clip") is wave
    with pytest.raises(AudioError, match="clip.*non-finite"):
        validate_waveform(torch.tensor([0.0, float("nan")]), "clip")
    with pytest.raises(AudioError, match="empty"):
        validate_waveform(torch.zeros(0), "clip")
    with pytest.raises(AudioError, match="1-D"):
        validate_waveform(torch.zeros(2, 10), "clip")


def test_resampling_keeps_duration_and_pitch(tmp_path) -> None:
    t = np.arange(44100) / 44100
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = resample(torch.from_numpy(tone), 44100, 16000)
    assert out.shape == (16000,) and out.dtype == torch.float32
    peak_hz = np.abs(np.fft.rfft(out.numpy())).argmax() * 16000 / len(out)  # 1 Hz bins
    assert abs(peak_hz - 440) <= 1
    path = tmp_path / "tone.wav"
    sf.write(path, tone, 44100, subtype="PCM_16")
    wave, sr = load_audio(path, target_sr=16000)
    assert sr == 16000 and wave.shape == (16000,) and wave.abs().max() < 1


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(rng: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # TF32 would cost ~1e-3
    lengths = torch.tensor([160000, 300, 48000, 12345])
    waves = (torch.randn(4, 160000, generator=rng) * 0.1) * (torch.arange(160000) < lengths[:, None])
    config = FbankConfig.ssast(target_length=1024)
    cpu, cpu_frames = Fbank(config)(waves, lengths)
    gpu, gpu_frames = Fbank(config)(waves.cuda(), lengths.cuda())
    assert torch.equal(cpu_frames, gpu_frames.cpu())
    assert_fbank_close(gpu.cpu() * (2 * config.norm_std), cpu * (2 * config.norm_std), "cuda vs cpu")
