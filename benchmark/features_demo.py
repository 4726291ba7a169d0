"""Feature extraction with every registered upstream on a generated clip, as one summary table.

Official checkpoints are used when found in ``$ASTBENCH_CHECKPOINTS``; otherwise the model is built with
random weights and the table says so (shapes, rates and timings are real, the features are untrained).
"""
from __future__ import annotations

import math
import time

import torch

import upstream
from upstream.frontend import resample


def demo_clip(seconds: float, sample_rate: int = 16000, seed: int = 0) -> torch.Tensor:
    """A speech-like test signal: a gliding harmonic tone with a syllable envelope, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 140 + 40 * torch.sin(2 * math.pi * 0.7 * t)  # Hz, slow glide
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sample_rate
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 9))
    envelope = 0.5 * (1 + torch.sin(2 * math.pi * 4 * t)).pow(2)
    wav = 0.2 * voiced * envelope + 0.01 * torch.randn(len(t), generator=g)
    return (wav / wav.abs().max() * 0.5).float()


def run(seconds: float, device: str, names: list[str] | None) -> int:
    names = names or upstream.list_upstreams()
    clip16 = demo_clip(seconds)
    rows = []
    for name in names:
        try:
            model = upstream.load(name)
            weights = "checkpoint" if getattr(model, "checkpoint_sha256", None) else "random init"
        except FileNotFoundError:
            model = upstream.load(name, random_init=True)
            weights = "random init (no checkpoint)"
        model = model.to(device).eval()
        wav = clip16 if model.sample_rate == 16000 else resample(clip16, 16000, model.sample_rate)
        with torch.inference_mode():
            model([wav.to(device)])  # warm-up
            start = time.perf_counter()
            out = model([wav.to(device)])
            ms = (time.perf_counter() - start) * 1000
        T = int(out["lengths"][0])
        rate = model.sample_rate / model.get_downsample_rates()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows.append((name, weights, f"{model.sample_rate // 1000} kHz", str(len(out["hidden_states"])),
                     f"{T} x {out['hidden_states'][0].shape[-1]}", f"{rate:.2f}", str(out["clip"].shape[-1]),
                     f"{params:.1f}", f"{ms:.0f}"))
    header = ("upstream", "weights", "input", "layers", "frames x dim", "frames/s", "clip dim", "params (M)",
              f"ms / {seconds:g} s clip ({device})")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    return 0
