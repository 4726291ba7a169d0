"""The demo corpus's sounds, synthesised: phones, words and speakers, environmental-sound classes, clips.

Everything here is procedural numpy: whole-clip operations, with Python loops only over events, never samples.
Each clip draws from its own generator seeded by ``(seed, part, index)`` (:data:`PARTS`), so a corpus does not
depend on the number of worker processes. :mod:`benchmark.demo_data` lays the clips out in the public dataset
layouts; see its docstring for what the corpus holds. None of this is recorded audio.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["ESC_CATEGORIES", "ESC_RATE", "PARTS", "SPEECH_RATE", "lexicon", "voice", "write_clip"]

SPEECH_RATE, ESC_RATE = 16000, 44100  # as distributed
ESC_CATEGORIES = ["dog", "rain", "siren", "engine", "chirping_birds", "clock_tick", "door_wood_knock", "wind",
                  "keyboard_typing", "water_drops", "crackling_fire", "car_horn"]  # fmt: skip
# the seed of every generator is (corpus seed, PARTS[part], *index): one stream per part and clip
PARTS = {"lexicon": 0, "layout": 1, "speaker": 2, "word": 3, "unlabeled": 4, "esc": 5, "background": 6}


# ----------------------------------------------------------------------------------------------------------
# Signal building blocks (whole-clip numpy operations; Python loops only over events, never samples)
# ----------------------------------------------------------------------------------------------------------
def _noise(rng, n, sr, lo=0.0, hi=None, alpha=0.0):
    """Unit-RMS noise with a 1/f**alpha power spectrum, band-limited to [lo, hi] Hz by smooth skirts."""
    f = np.maximum(np.fft.rfftfreq(n, 1 / sr), 1.0)
    gain = f ** (-alpha / 2) / (1 + (lo / f) ** 4) / (1 + (f / hi) ** 4 if hi else 1)
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * gain, n)
    return x / (x.std() + 1e-12)


def _tone(freq, sr, amps):
    """Harmonic tone on a per-sample fundamental ``freq`` (Hz); harmonics above 0.45 * sr are dropped."""
    phase = 2 * np.pi * np.cumsum(freq) / sr
    twice_cos, prev, cur, out = 2 * np.cos(phase), np.zeros_like(phase), np.sin(phase), np.zeros_like(phase)
    for k, amp in enumerate(amps, start=1):  # sin(k x) by the Chebyshev recurrence: one sin call per tone
        out += amp * cur * (k * freq < 0.45 * sr)
        prev, cur = cur, twice_cos * cur - prev
    return out


def _env(m, sr, attack, decay):
    """Length-``m`` envelope: linear attack over ``attack`` s, then exponential decay (time constant, s)."""
    t = np.arange(m) / sr
    return np.minimum(t / attack, 1.0) * np.exp(-t / decay)


def _fftconv(x, h):
    """Linear convolution of ``x`` with ``h`` by FFT, cut to ``len(x)``."""
    nfft = 1 << (len(x) + len(h) - 2).bit_length()
    return np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(h, nfft), nfft)[: len(x)]


def _pulses(n, starts, amps, kernel):
    """Sum of ``kernel`` copies at ``starts`` (samples; out-of-range parts dropped) scaled by ``amps``."""
    starts = np.asarray(starts, int)
    idx = starts[:, None] + np.arange(len(kernel))  # (events, kernel): cheaper than an FFT for short kernels
    weights = np.broadcast_to(amps, starts.shape)[:, None] * kernel
    keep = (starts[:, None] >= 0) & (idx < n)
    return np.bincount(idx[keep], weights[keep], minlength=n)


def _place(out, event, start):
    """Add ``event`` into ``out`` from sample ``start`` on, cut at the end of ``out``."""
    m = min(len(event), len(out) - int(start))
    if m > 0:
        out[int(start) : int(start) + m] += event[:m]
    return out


def _slow(rng, n, sr, rate, depth=1.0):
    """Random envelope in [1 - depth, 1], piecewise linear with about ``rate`` breakpoints per second."""
    k = int(rate * n / sr) + 2
    return 1 - depth * np.interp(np.arange(n), np.linspace(0, n, k), rng.random(k))


def _smooth(x, k):
    """Moving average over ``k`` frames along axis 0 (same length)."""
    return np.apply_along_axis(np.convolve, 0, x, np.ones(k) / k, mode="same")


def _unit(x):
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _stft(x, n_fft, hop):
    """(n // hop + 1, n_fft // 2 + 1) spectrum of Hann frames centred on multiples of ``hop``."""
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, n_fft // 2), n_fft)[::hop]
    frames = frames[: len(x) // hop + 1]
    return np.fft.rfft(frames * np.hanning(n_fft + 1)[:-1], axis=1)


def _istft(spec, n, n_fft, hop):
    """Weighted overlap-add inverse of ``_stft``, ``n`` samples long (``n_fft`` a multiple of ``hop``)."""
    window, ratio = np.hanning(n_fft + 1)[:-1], n_fft // hop
    frames = np.fft.irfft(spec, n_fft, axis=1) * window
    out, norm = np.zeros(len(frames) * hop + n_fft), np.zeros(len(frames) * hop + n_fft)
    for r in range(ratio):  # frames r, r + ratio, ... tile the signal without overlapping
        part = frames[r::ratio]
        out[r * hop : r * hop + part.size] += part.reshape(-1)
        norm[r * hop : r * hop + part.size] += np.tile(window**2, len(part))
    return (out / np.maximum(norm, 1e-8))[n_fft // 2 : n_fft // 2 + n]


# ----------------------------------------------------------------------------------------------------------
# Speech: phones, words, speakers
# ----------------------------------------------------------------------------------------------------------
# Vowels and nasals: (F1, F2, F3) Hz of adult male speech (Peterson & Barney 1952), scaled per speaker.
# Fricatives and plosive bursts: (centre Hz, bandwidth Hz, level); "s" and "sh" sit ~10 dB under a vowel.
PHONES = {
    "a": ("V", (730, 1090, 2440)), "i": ("V", (270, 2290, 3010)), "u": ("V", (300, 870, 2240)),
    "e": ("V", (530, 1840, 2480)), "o": ("V", (570, 840, 2410)),
    "m": ("N", (280, 1100, 2300)), "n": ("N", (280, 1700, 2600)),
    "s": ("F", (5500, 2500, 0.05)), "sh": ("F", (3000, 1400, 0.07)), "f": ("F", (4500, 6000, 0.02)),
    "p": ("P", (800, 1000, 0.12)), "t": ("P", (4500, 3000, 0.08)), "k": ("P", (2200, 1200, 0.1)),
}  # fmt: skip
_PHONE_SECS = {"V": 0.13, "N": 0.08, "F": 0.11, "P": 0.08, " ": 0.12}  # base durations; " " is a pause
_FORMANT_AMPS, _FORMANT_BW = np.array([1.0, 0.6, 0.3]), np.array([90.0, 110.0, 170.0])
_HOP, _NFFT = 128, 512  # 8 ms hop, 32 ms window at 16 kHz


def _random_word(rng):
    """2-4 phones alternating consonant and vowel, starting with either."""
    vowels = [p for p, (kind, _) in PHONES.items() if kind == "V"]
    consonants = [p for p in PHONES if p not in vowels]
    first_c = rng.random() < 0.7
    pools = [consonants if (i % 2 == 0) == first_c else vowels for i in range(rng.integers(2, 5))]
    return tuple(str(rng.choice(pool)) for pool in pools)


def lexicon(seed, n_words):
    """The task's words as phone tuples, no two of the same phones in another order.

    Words share phones (one small inventory), so telling them apart still takes the phones' formants under
    each speaker's pitch, vocal-tract length, rate and accent; but no word is an anagram of another (e.g. its
    reversal), whose mean spectrum would be the same: a time-averaged feature, which is what the
    benchmark's utterance heads see, could not tell such a pair apart whatever the encoder learned.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, PARTS["lexicon"]]))
    words: list[tuple[str, ...]] = []
    while len(words) < n_words:
        word = _random_word(rng)
        spelt, anagram = "".join(word), sorted(word)  # spellings must be unambiguous, and no anagrams
        if anagram not in [sorted(w) for w in words] and spelt not in {"".join(w) for w in words}:
            words.append(word)
    return words


def voice(rng):
    """A voice: pitch (80-300 Hz), formant scale (vocal-tract length), rate, breathiness, per-phone accent."""
    return {"f0": float(np.exp(rng.uniform(np.log(80), np.log(300)))), "scale": rng.uniform(0.85, 1.2),
            "rate": rng.uniform(0.8, 1.25), "breath": rng.uniform(0.05, 0.3),
            "accent": rng.normal(1.0, 0.05, (len(PHONES), 3))}  # fmt: skip


def _durations(rng, phones, spk):
    """Seconds per phone: the base duration over the speaker's rate, with take-to-take jitter."""
    base = np.array([_PHONE_SECS[PHONES[p][0] if p in PHONES else " "] for p in phones])
    return base / spk["rate"] * rng.lognormal(0.0, 0.15, len(phones))


def _speak(rng, phones, secs, spk, n, onset):
    """Formant-synthesise ``phones`` (durations ``secs``) by ``spk`` into ``n`` samples from ``onset`` on.

    Frame tracks (voicing, formants, frication band) are filled phone by phone, formants interpolated across
    unvoiced stretches and smoothed (coarticulation); they then shape a sawtooth glottal source and white
    noise in the STFT domain.
    """
    n_frames, frames = n // _HOP + 1, np.arange(n // _HOP + 1)
    edges = onset // _HOP + np.concatenate([[0], np.cumsum(np.round(secs * SPEECH_RATE / _HOP))]).astype(int)
    edges = np.minimum(edges, n_frames)
    voice, fric = np.zeros(n_frames), np.zeros(n_frames)
    formants, band = np.full((n_frames, 3), np.nan), np.tile([3000.0, 2000.0], (n_frames, 1))
    for p, a, b in zip(phones, edges[:-1], edges[1:]):
        kind, params = PHONES.get(p, (" ", None))
        if kind in ("V", "N"):
            formants[a:b] = np.array(params) * spk["scale"] * spk["accent"][list(PHONES).index(p)]
            voice[a:b] = 1.0 if kind == "V" else 0.3
        elif kind in ("F", "P"):  # a plosive is a closure (silence), then a 16 ms burst
            a = a if kind == "F" else max(a, b - 2)
            fric[a:b], band[a:b] = params[2], params[:2]
    known = ~np.isnan(formants[:, 0])
    if known.any():
        formants = np.stack([np.interp(frames, frames[known], formants[known, i]) for i in range(3)], 1)
    formants, voice, fric = _smooth(formants, 5), _smooth(voice, 3), _smooth(fric, 2)
    decl = rng.uniform(0.0, 0.12)  # pitch: speaker F0, per-take offset, declination, slow jitter
    f0 = spk["f0"] * rng.lognormal(0, 0.06) * np.linspace(1 + decl, 1 - decl, n_frames)
    f0 *= np.exp(0.05 * _smooth(rng.standard_normal(n_frames), 5))
    phase = np.cumsum(np.interp(np.arange(n), frames * _HOP, f0)) / SPEECH_RATE
    source = 2 * (phase % 1.0) - 1 + spk["breath"] * rng.standard_normal(n)
    freqs = np.fft.rfftfreq(_NFFT, 1 / SPEECH_RATE)
    tract = (_FORMANT_AMPS / (1 + ((freqs[:, None] - formants[:, None]) / (_FORMANT_BW / 2)) ** 2)).sum(-1)
    hiss = np.exp(-0.5 * ((freqs - band[:, :1]) / (band[:, 1:] / 2)) ** 2)
    spec = _stft(source, _NFFT, _HOP) * (voice[:, None] * (tract + 0.01))  # (frames, bins)
    spec += _stft(rng.standard_normal(n), _NFFT, _HOP) * (fric[:, None] * hiss)
    return _istft(spec, n, _NFFT, _HOP)


# ----------------------------------------------------------------------------------------------------------
# Environmental sound families: (rng, n, sr) -> n samples of the class's events
# ----------------------------------------------------------------------------------------------------------
def _dog(rng, n, sr):
    """Barks: 1-4 harmonic bursts whose pitch drops, with a noisy attack."""
    out = np.zeros(n)
    for _ in range(rng.integers(1, 5)):
        m = int(sr * rng.uniform(0.1, 0.25))
        bark = _tone(np.geomspace(rng.uniform(450, 800), rng.uniform(220, 380), m), sr, 0.75 ** np.arange(10))
        bark += 0.5 * rng.standard_normal(m) * _env(m, sr, 0.002, 0.02)
        _place(out, bark * _env(m, sr, 0.01, m / sr / 3), rng.integers(0, max(1, n - m)))
    return out


def _rain(rng, n, sr):
    """Rain: many tiny drop clicks over a high-passed hiss."""
    k, m = rng.poisson(rng.uniform(60, 250) * n / sr), int(0.003 * sr)
    click = _noise(rng, m, sr, lo=2000) * _env(m, sr, 1e-4, 8e-4)
    hiss = _noise(rng, n, sr, lo=rng.uniform(500, 1500), alpha=0.5)
    return _unit(_pulses(n, rng.integers(0, n, k), rng.pareto(3, k), click)) + rng.uniform(0.3, 1.0) * hiss


def _siren(rng, n, sr):
    """Siren: slow (wail) or fast (yelp) FM sweep of a bright tone, its level drifting."""
    fm = rng.uniform(0.2, 0.6) if rng.random() < 0.5 else rng.uniform(2.5, 5.0)
    sweep = np.sin(2 * np.pi * fm * np.arange(n) / sr + rng.uniform(0, 2 * np.pi))
    f = rng.uniform(600, 1000) + rng.uniform(300, 700) * sweep
    return _tone(f, sr, [1.0, 0.5, 0.3, 0.15]) * _slow(rng, n, sr, 0.5, 0.6)


def _engine(rng, n, sr):
    """Engine: low harmonic hum (25-70 Hz, wandering speed), amplitude-modulated at half its fundamental."""
    f0 = rng.uniform(25, 70) * (1.05 - 0.1 * _slow(rng, n, sr, 0.5))
    am = 1 + rng.uniform(0.2, 0.8) * np.sin(np.pi * np.cumsum(f0) / sr)
    return _tone(f0, sr, 0.85 ** np.arange(16)) * am + 0.3 * _noise(rng, n, sr, hi=400, alpha=1)


def _birds(rng, n, sr):
    """Bird song: 1-3 phrases of 2-7 fast upward FM chirps (about 2-7 kHz)."""
    out = np.zeros(n)
    for _ in range(rng.integers(1, 4)):
        start, gap, f1 = rng.integers(0, n), rng.uniform(0.05, 0.15), rng.uniform(1800, 3500)
        for j in range(rng.integers(2, 8)):
            m = int(sr * rng.uniform(0.03, 0.08))
            f = np.minimum(np.geomspace(f1, f1 * rng.uniform(1.4, 2.2), m), 0.45 * sr)
            _place(out, _tone(f, sr, [1.0, 0.2]) * np.hanning(m), start + j * int(gap * sr))
    return out


def _clock_tick(rng, n, sr):
    """Clock: strictly periodic clicks 0.25-1 s apart, alternating tick and (softer) tock."""
    period, m = rng.uniform(0.25, 1.0) * sr, int(0.01 * sr)
    starts = np.arange(rng.uniform(0, period), n, period)
    amps = np.where(np.arange(len(starts)) % 2, 1.0, rng.uniform(0.4, 0.9))
    return _pulses(n, starts, amps, _noise(rng, m, sr, lo=1500, hi=6000) * _env(m, sr, 1e-4, 0.002))


def _knock(rng, n, sr):
    """Door knocks: 1-2 groups of 2-5 damped low thumps (80-200 Hz) 0.1-0.22 s apart."""
    m = int(0.12 * sr)
    thump = np.sin(2 * np.pi * rng.uniform(80, 200) * np.arange(m) / sr) + 0.3 * _noise(rng, m, sr, 300, 3000)
    groups = [rng.uniform(0, 0.7 * n) + np.arange(rng.integers(2, 6)) * rng.uniform(0.1, 0.22) * sr
              for _ in range(rng.integers(1, 3))]  # fmt: skip
    starts, thump = np.concatenate(groups), thump * _env(m, sr, 0.001, rng.uniform(0.015, 0.04))
    return _pulses(n, starts, rng.uniform(0.6, 1.0, len(starts)), thump)


def _wind(rng, n, sr):
    """Wind: low-passed noise swelling slowly, sometimes with a faint whistle."""
    x = _noise(rng, n, sr, hi=rng.uniform(250, 1000), alpha=1) * _slow(rng, n, sr, rng.uniform(0.3, 1.5), 0.9)
    if rng.random() < 0.3:
        whistle = rng.uniform(400, 900) * (1.2 - 0.4 * _slow(rng, n, sr, 1.0))
        x += 0.15 * _tone(whistle, sr, [1.0]) * _slow(rng, n, sr, 1.0)
    return x


def _typing(rng, n, sr):
    """Typing: irregular key clicks (press, then a softer release), 4-12 per second."""
    k, m, gap = rng.poisson(rng.uniform(4, 12) * n / sr), int(0.03 * sr), int(rng.uniform(0.01, 0.02) * sr)
    press = _env(m, sr, 1e-4, 0.003)
    click = (press + 0.5 * np.roll(press, gap) * (np.arange(m) >= gap)) * _noise(rng, m, sr, 1000, 5000)
    return _pulses(n, rng.integers(0, n, k), rng.uniform(0.3, 1.0, k), click)


def _drops(rng, n, sr):
    """Water drops: decaying sinusoid blips whose pitch glides up (from 400-1500 Hz), at random times."""
    out = np.zeros(n)
    for _ in range(max(1, rng.poisson(rng.uniform(2, 6) * n / sr))):
        m, f0 = int(sr * rng.uniform(0.03, 0.08)), rng.uniform(400, 1500)
        blip = _tone(np.geomspace(f0, f0 * rng.uniform(1.3, 2.0), m), sr, [1.0])
        _place(out, rng.uniform(0.3, 1.0) * blip * _env(m, sr, 0.001, m / sr / 4), rng.integers(0, n))
    return out


def _fire(rng, n, sr):
    """Fire: sparse crackles of heavy-tailed size over a low rumble."""
    k, m = rng.poisson(rng.uniform(5, 25) * n / sr), int(0.004 * sr)
    crack = _noise(rng, m, sr, lo=500) * _env(m, sr, 1e-4, 0.001)
    rumble = rng.uniform(0.2, 0.6) * _noise(rng, n, sr, hi=400, alpha=1)
    return _unit(_pulses(n, rng.integers(0, n, k), rng.pareto(1.5, k) + 0.1, crack)) + rumble


def _horn(rng, n, sr):
    """Car horn: 1-3 steady honks of a two-note chord (350-500 Hz) with odd harmonics."""
    out, f, ratio, amps = np.zeros(n), rng.uniform(350, 500), rng.uniform(1.2, 1.3), [1, 0, 1 / 3, 0, 1 / 5]
    for _ in range(rng.integers(1, 4)):
        m = int(sr * rng.uniform(0.2, 0.9))
        gate = np.minimum(1.0, np.minimum(np.arange(m), m - np.arange(m)) / (0.01 * sr))
        honk = _tone(np.full(m, f), sr, amps) + _tone(np.full(m, f * ratio), sr, amps)
        _place(out, honk * gate, rng.integers(0, max(1, n - m)))
    return out


_FAMILIES = dict(zip(ESC_CATEGORIES, [_dog, _rain, _siren, _engine, _birds, _clock_tick, _knock, _wind,
                                      _typing, _drops, _fire, _horn]))  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Clips: (rng, ...) -> (samples, sample rate), one generator per clip
# ----------------------------------------------------------------------------------------------------------
def _degrade(rng, x, sr, snr_db, p_reverb):
    """Maybe a room (decaying-noise impulse response, RT60 0.15-0.6 s), then coloured noise at an SNR."""
    if rng.random() < p_reverb:
        m = int(rng.uniform(0.15, 0.6) * sr)
        tail = rng.standard_normal(m) * np.exp(-6.9 * np.arange(m) / m)
        x = _fftconv(x, np.concatenate([[1.0], tail * rng.uniform(0.3, 1.5) / np.linalg.norm(tail)]))
    noise = _noise(rng, len(x), sr, alpha=rng.uniform(0, 2))
    return x + noise * np.sqrt(np.mean(x**2)) * 10 ** (-rng.uniform(*snr_db) / 20)


def _word_clip(rng, phones, spk):
    """One 1 s take of a word at a random onset."""
    secs = _durations(rng, phones, spk)
    onset = rng.uniform(0.02, max(0.03, 0.98 - secs.sum()))
    x = _speak(rng, phones, secs, spk, SPEECH_RATE, int(onset * SPEECH_RATE))
    return _degrade(rng, x, SPEECH_RATE, (5, 35), 0.3), SPEECH_RATE


def _esc_clip(rng, target, n_classes, secs):
    """The class's events over noise, sometimes with a distractor from another class 6-15 dB lower."""
    n = int(round(secs * ESC_RATE))
    x = _unit(_FAMILIES[ESC_CATEGORIES[target]](rng, n, ESC_RATE))
    if n_classes > 1 and rng.random() < 0.3:
        other = ESC_CATEGORIES[(target + rng.integers(1, n_classes)) % n_classes]
        x += 10 ** (-rng.uniform(6, 15) / 20) * _unit(_FAMILIES[other](rng, n, ESC_RATE))
    return _degrade(rng, x, ESC_RATE, (3, 30), 0.2), ESC_RATE


def _unlabeled_clip(rng, secs, lexicon):
    """Babble (45 %), an environmental scene (40 %) or modulated noise (15 %), at 16 kHz."""
    n, sr, kind = int(round(secs * SPEECH_RATE)), SPEECH_RATE, rng.choice(3, p=[0.45, 0.4, 0.15])
    x, t = np.zeros(n), np.arange(n)
    if kind == 0:  # 1-3 talkers, each saying lexicon words and random phone strings
        for _ in range(rng.integers(1, 4)):
            words = [lexicon[rng.integers(len(lexicon))] if rng.random() < 0.3 else _random_word(rng)
                     for _ in range(6)]  # fmt: skip
            phones, spk = [p for w in words for p in (*w, " ")], voice(rng)
            speech = _speak(rng, phones, _durations(rng, phones, spk), spk, n, rng.integers(0, n // 3))
            x += rng.uniform(0.3, 1.0) * _unit(speech)
    elif kind == 1:  # 2-4 events of any family, each in a random window with 50 ms fades
        for _ in range(rng.integers(2, 5)):
            a, b = np.sort(rng.integers(0, n, 2)) + [0, n // 4]
            event = _FAMILIES[ESC_CATEGORIES[rng.integers(len(ESC_CATEGORIES))]](rng, n, sr)
            x += rng.uniform(0.2, 1.0) * _unit(event) * np.clip(np.minimum(t - a, b - t) / (0.05 * sr), 0, 1)
    else:
        x = _noise(rng, n, sr, rng.uniform(0, 300), alpha=rng.uniform(0, 2))
        x *= _slow(rng, n, sr, rng.uniform(0.5, 4), 0.8)
    return _degrade(rng, x, sr, (10, 40), 0.3), sr


def _background_clip(rng, name, secs):
    """A ``_background_noise_`` file: white or pink noise, rain-like tap, or drops and clatter."""
    n, sr = int(secs * SPEECH_RATE), SPEECH_RATE
    if name in ("white_noise", "pink_noise"):
        return _noise(rng, n, sr, alpha=float(name == "pink_noise")), sr
    if name == "running_tap":
        return _rain(rng, n, sr), sr
    return _unit(_drops(rng, n, sr)) + _unit(_typing(rng, n, sr)), sr


def write_clip(job):
    """Synthesise one clip and write it as peak-normalised 16-bit PCM.

    ``job`` = (maker, path, seed, index, maker args); the clip's generator is seeded by (seed, part, *index).
    """
    maker, path, seed, index, args = job
    rng = np.random.default_rng(np.random.SeedSequence([seed, PARTS[maker], *index]))
    makers = {"unlabeled": _unlabeled_clip, "word": _word_clip, "esc": _esc_clip,
              "background": _background_clip}  # fmt: skip
    x, sr = makers[maker](rng, *args)
    x = x / (np.abs(x).max() + 1e-12) * rng.uniform(0.25, 0.95)
    buffer = io.BytesIO()  # one write per file: libsndfile's many small writes are slow on some disks
    sf.write(buffer, x, sr, subtype="PCM_16", format="WAV")
    Path(path).write_bytes(buffer.getvalue())
