"""Check that an upstream (e.g. a user's ``package.module:builder``) honours the contract of
``upstream/interface.py`` before a downstream run spends time on it.

``validate_upstream(model)`` returns a list of problem strings; empty means OK. Strings starting with
``'warning:'`` are advisory (batch inconsistency beyond ``atol``); every other string is an error.
"""
from __future__ import annotations

import math

import torch

KEYS = ("hidden_states", "last_hidden_state", "clip", "lengths")


def _waves(sample_rate: int, secs: tuple[float, ...], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(max(1, int(s * sample_rate)), generator=g) for s in secs]


def errors(problems: list[str]) -> list[str]:
    return [p for p in problems if not p.startswith("warning:")]


@torch.no_grad()
def validate_upstream(model, secs: tuple[float, ...] = (1.0, 0.5, 1.5), atol: float = 1e-3) -> list[str]:
    """Problems found running ``model`` on generated waves of ``secs`` seconds at ``model.sample_rate``."""
    problems: list[str] = []
    sr = getattr(model, "sample_rate", None)
    if not isinstance(sr, int) or isinstance(sr, bool) or sr <= 0:
        return [f"sample_rate must be a positive int attribute, got {sr!r}"]
    for attr in ("hidden_size", "num_layers"):
        if not isinstance(getattr(model, attr, None), int):
            problems.append(f"{attr} must be an int attribute, got {getattr(model, attr, None)!r}")
    was_training = model.training
    model.eval()
    try:
        wavs = _waves(sr, secs)
        try:
            out = model(wavs)
        except Exception as err:  # noqa: BLE001  (report whatever a plug-in raises)
            return problems + [f"forward(wavs) raised {type(err).__name__}: {err}"]
        if not isinstance(out, dict):
            return problems + [f"forward must return a dict, got {type(out).__name__}"]
        missing = [k for k in KEYS if k not in out]
        if missing:
            return problems + [f"output is missing key(s) {missing}"]
        problems += _check_shapes(model, out, wavs)
        if not errors(problems):
            problems += _check_batch_consistency(model, out, wavs, atol)
    finally:
        model.train(was_training)
    return problems


def _check_shapes(model, out: dict, wavs: list[torch.Tensor]) -> list[str]:
    p: list[str] = []
    B = len(wavs)
    hs = out["hidden_states"]
    if not isinstance(hs, (list, tuple)) or not hs:
        return [f"hidden_states must be a non-empty list of (B, T, H) tensors, got {type(hs).__name__}"]
    shapes = {tuple(h.shape) for h in hs}
    if len(shapes) != 1:
        p.append(f"hidden_states have different shapes: {sorted(shapes)}")
    shape = tuple(hs[0].shape)
    if len(shape) != 3 or shape[0] != B:
        return p + [f"hidden_states must be (B={B}, T, H), got {shape}"]
    T = shape[1]
    if isinstance(getattr(model, "num_layers", None), int) and len(hs) != model.num_layers:
        p.append(f"hidden_states has {len(hs)} entries but num_layers = {model.num_layers}")
    if isinstance(getattr(model, "hidden_size", None), int) and shape[2] != model.hidden_size:
        p.append(f"hidden_states width {shape[2]} != hidden_size {model.hidden_size}")
    if tuple(out["last_hidden_state"].shape)[:2] != (B, T) or out["last_hidden_state"].ndim != 3:
        p.append(f"last_hidden_state must be (B={B}, T={T}, H), got {tuple(out['last_hidden_state'].shape)}")
    clip = out["clip"]
    if clip.ndim != 2 or clip.shape[0] != B:
        p.append(f"clip must be (B={B}, D), got {tuple(clip.shape)}")
    lens = out["lengths"]
    if lens.shape != (B,) or lens.dtype != torch.long:
        p.append(f"lengths must be a (B={B},) long tensor, got shape {tuple(lens.shape)} dtype {lens.dtype}")
    else:
        order = sorted(range(B), key=lambda i: wavs[i].numel())
        sorted_lens = [int(lens[i]) for i in order]
        if sorted_lens != sorted(sorted_lens):
            p.append(f"lengths {lens.tolist()} are not monotone in the input lengths "
                     f"{[w.numel() for w in wavs]}")
        if int(lens.max()) > T or int(lens.min()) < 1:
            p.append(f"lengths {lens.tolist()} must lie in 1..T={T}")
    rate = model.get_downsample_rates("hidden_states") if hasattr(model, "get_downsample_rates") else None
    if not isinstance(rate, int) or rate <= 0:
        p.append(f"get_downsample_rates('hidden_states') must return a positive int, got {rate!r}")
    else:
        expect = math.ceil(max(w.numel() for w in wavs) / rate)
        if abs(T - expect) > 1:
            p.append(f"T={T} frames does not match ceil(max_len / downsample_rate {rate}) = {expect} (±1)")
    for key in ("hidden_states", "last_hidden_state", "clip"):
        tensors = hs if key == "hidden_states" else [out[key]]
        if any(not torch.isfinite(t).all() for t in tensors):
            p.append(f"{key} contains NaN or Inf")
    return p


def _check_batch_consistency(model, out: dict, wavs: list[torch.Tensor], atol: float) -> list[str]:
    p: list[str] = []
    for i, w in enumerate(wavs):
        alone = model([w])
        n = int(alone["lengths"][0])
        if n != int(out["lengths"][i]):
            p.append(f"warning: clip {i} has length {n} alone but {int(out['lengths'][i])} in a batch")
            continue
        diff = (alone["last_hidden_state"][0, :n].float() - out["last_hidden_state"][i, :n].float()).abs().max()
        if diff > atol:
            p.append(f"warning: clip {i} features differ alone vs batched on valid frames (max |diff| "
                     f"{diff:.2e} > {atol:g}); padding leaks into valid frames")
    return p
