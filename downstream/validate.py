"""The upstream contract, written down and checked: ``python -m benchmark validate -u pkg.module:builder``.

Any upstream plugs into ``run_downstream.py -u package.module:builder`` (frozen, ``-f`` fine-tuned, ``-l k``)
and into the benchmark tables if it honours this contract, the one every registered upstream
(``upstream/interface.py``) follows:

**Builder.** ``builder(**overrides) -> torch.nn.Module``. It is called as ``builder()`` without ``--ckpt`` and
as ``builder(ckpt="path/given/to/--ckpt")`` with it (``upstream.registry.load``), plus any ``-o
upstream_overrides.KEY=VALUE`` as keyword arguments, so ``def builder(ckpt=None, **overrides)`` takes
everything. Whatever it raises is reported in one line naming it.

**Attributes** (plain Python ints, read before any data is loaded):

* ``sample_rate``: the rate of the waveforms ``forward`` takes, in Hz; clips are resampled to it.
* ``hidden_size``: H, the width of each ``hidden_states`` entry; the frozen probe's head reads it.
* ``num_layers``: how many ``hidden_states`` entries ``forward`` returns; the weighted layer sum has one
  weight per entry and ``-l k`` picks entry ``k``.
* ``clip_size``: D, the width of ``clip``; the fine-tuning head of the PSLA recipes (``-f`` on ``as20k``,
  ``esc50``, ``speech_commands_v2``: ``head.kind: psla``) reads it.
* ``get_downsample_rates(key)``: input samples per output frame (an int) for ``key="hidden_states"``; ``T``
  must be ``ceil(longest input / rate)`` give or take one frame.
* ``set_input_augment(augment)`` (optional): the fine-tuning hook. ``augment`` is None or a callable
  ``augment(features (B, T, F), fill: float) -> (B, T, F)`` that ``forward`` must apply, in ``train()`` mode
  only, to each input its encoder sees (``fill``: the value a silent input bin has there, what SpecAugment
  masks with; 0.0 for unnormalised features). The PSLA fine-tuning configs put SpecAugment and noise
  (``augment.freqm/timem/noise``) there; an upstream without the hook is fine-tuned without them (a warning
  says so) and mixup, which acts on waveforms, still applies.

**Forward.** ``forward(wavs)`` takes a list of B 1-D float tensors (lengths differ; values in [-1, 1) at
``sample_rate``) and returns a dict: ``hidden_states`` (a list of ``num_layers`` tensors ``(B, T, H)``),
``last_hidden_state`` ``(B, T, H)``, ``clip`` ``(B, D)`` and ``lengths`` ``(B,)`` long, each clip's valid
frames (``1..T``, growing with its length). Every value must be finite, and a clip's valid frames should not
change with the padding a longer clip in its batch brings (checked as a warning).

**What ``-f`` adds.** The upstream trains with the head: it must have parameters, and in ``train()`` mode a
loss on ``clip`` and ``hidden_states`` must reach them through ``forward`` (no ``torch.no_grad``, no
``.detach()``). The upstream is moved with ``.to(device)``; ``forward`` must put its outputs on the
parameters' device.

``validate_upstream(model)`` checks a built model (``run_downstream.py`` runs it before a plug-in upstream
trains); :func:`validate_builder` also builds it the way the runner does. Both return problem strings; those
starting with ``'warning:'`` are advisory, every other one is an error.
"""
from __future__ import annotations

import argparse
import inspect
import math
import sys
import time

import torch
from torch import nn

KEYS = ("hidden_states", "last_hidden_state", "clip", "lengths")
INT_ATTRIBUTES = {  # attribute: what reads it (the error says why it is needed)
    "hidden_size": "the frozen probe's head",
    "num_layers": "the weighted layer sum and -l k",
    "clip_size": "the PSLA fine-tuning head (-f on as20k, esc50, speech_commands_v2)",
}
CONTRACT = ("the upstream contract: README 'Plug in your own upstream', or `python -c \"import "
            "downstream.validate as v; help(v)\"`")


def _waves(sample_rate: int, secs: tuple[float, ...], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(max(1, int(s * sample_rate)), generator=g) for s in secs]


def errors(problems: list[str]) -> list[str]:
    return [p for p in problems if not p.startswith("warning:")]


# ------------------------------------------------------------------------------------------ a built model
@torch.no_grad()
def _check_forward(model, secs: tuple[float, ...], atol: float, device) -> list[str]:
    sr = model.sample_rate
    was_training = model.training
    model.eval()
    try:
        wavs = [w.to(device) for w in _waves(sr, secs)]
        try:
            out = model(wavs)
        except Exception as err:  # noqa: BLE001  (report whatever a plug-in raises)
            return [f"forward(wavs) raised {type(err).__name__}: {_one_line(err)}"]
        if not isinstance(out, dict):
            return [f"forward must return a dict, got {type(out).__name__}"]
        missing = [k for k in KEYS if k not in out]
        if missing:
            return [f"output is missing key(s) {missing}"]
        problems = _check_shapes(model, out, wavs)
        if not errors(problems):
            problems += _check_batch_consistency(model, out, wavs, atol)
        return problems
    finally:
        model.train(was_training)


def validate_upstream(model, secs: tuple[float, ...] = (1.0, 0.5, 1.5), atol: float = 1e-3,
                      finetune: bool = False, device: str | torch.device | None = None) -> list[str]:
    """Problems found checking ``model`` against the contract (module docstring) on generated waves of
    ``secs`` seconds; with ``finetune`` also what ``-f`` needs. ``device``: where to run (default: the
    parameters')."""
    sr = getattr(model, "sample_rate", None)
    if not isinstance(sr, int) or isinstance(sr, bool) or sr <= 0:
        return [f"sample_rate must be a positive int attribute (Hz of the waveforms forward takes), got "
                f"{sr!r}"]
    problems: list[str] = []
    for attr, reader in INT_ATTRIBUTES.items():
        value = getattr(model, attr, None)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            problems.append(f"{attr} must be a positive int attribute (read by {reader}), got {value!r}")
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    problems += _check_forward(model, secs, atol, device)
    if finetune and not errors(problems):
        problems += _check_finetune(model, secs, device)
    return problems


def _check_shapes(model, out: dict, wavs: list[torch.Tensor]) -> list[str]:
    p: list[str] = []
    B = len(wavs)
    hs = out["hidden_states"]
    if not isinstance(hs, (list, tuple)) or not hs or not all(isinstance(h, torch.Tensor) for h in hs):
        return [f"hidden_states must be a non-empty list of (B, T, H) tensors, got {type(hs).__name__}"]
    for key in ("last_hidden_state", "clip", "lengths"):
        if not isinstance(out[key], torch.Tensor):
            return [f"{key} must be a tensor, got {type(out[key]).__name__}"]
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
    elif isinstance(getattr(model, "clip_size", None), int) and clip.shape[1] != model.clip_size:
        p.append(f"clip width {clip.shape[1]} != clip_size {model.clip_size}")
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
    rate = None
    if callable(getattr(model, "get_downsample_rates", None)):
        try:
            rate = model.get_downsample_rates("hidden_states")
        except Exception as err:  # noqa: BLE001
            p.append(f"get_downsample_rates('hidden_states') raised {type(err).__name__}: {_one_line(err)}")
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        if not any(x.startswith("get_downsample_rates") for x in p):
            p.append(f"get_downsample_rates('hidden_states') must return a positive int (input samples per "
                     f"frame), got {rate!r}")
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
        single, batched = alone["last_hidden_state"][0, :n].float(), out["last_hidden_state"][i, :n].float()
        diff = (single - batched).abs().max()
        if diff > atol:
            p.append(f"warning: clip {i} features differ alone vs batched on valid frames (max |diff| "
                     f"{diff:.2e} > {atol:g}); padding leaks into valid frames")
    return p


# ------------------------------------------------------------------------------------------ what -f adds
def _check_finetune(model: nn.Module, secs: tuple[float, ...], device) -> list[str]:
    """Gradients reach the parameters in train mode; outputs on the parameters' device; the augmentation hook
    (if any) is called by forward, so SpecAugment given to it acts."""
    params = [p for p in model.parameters()]
    if not params:
        return ["(-f) the upstream has no parameters: fine-tuning would train only the head"]
    problems: list[str] = []
    was_training, flags = model.training, [p.requires_grad for p in params]
    model.requires_grad_(True)  # what DownstreamModel does for -f
    model.train()
    try:
        wavs = [w.to(device) for w in _waves(model.sample_rate, secs, seed=1)]
        try:
            with torch.enable_grad():
                out = model(wavs)
                loss = out["clip"].float().pow(2).mean() + sum(h.float().pow(2).mean()
                                                               for h in out["hidden_states"])
                model.zero_grad(set_to_none=True)
                if loss.requires_grad:  # else nothing reaches the parameters: reported below
                    loss.backward()
        except Exception as err:  # noqa: BLE001
            return [f"(-f) forward + backward in train() mode raised {type(err).__name__}: {_one_line(err)}"]
        reached = [p for p in params if p.grad is not None and p.grad.abs().sum() > 0]
        if not reached:
            problems.append("(-f) no gradient reaches the upstream's parameters from clip / hidden_states in "
                            "train() mode: forward must not run under torch.no_grad() or detach its outputs")
        elif any(not torch.isfinite(p.grad).all() for p in reached):
            problems.append("(-f) the gradients of the upstream's parameters contain NaN or Inf")
        pdev = params[0].device
        if out["clip"].device != pdev or out["hidden_states"][0].device != pdev:
            problems.append(f"(-f) outputs are on {out['clip'].device} but the parameters on {pdev}: forward "
                            f"must follow .to(device)")
        model.zero_grad(set_to_none=True)
        problems += _check_augment_hook(model, wavs)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return problems


@torch.no_grad()
def _check_augment_hook(model: nn.Module, wavs: list[torch.Tensor]) -> list[str]:
    """``set_input_augment``: optional; when present, ``forward`` in ``train()`` mode must call what it was
    given with ``(features (B, T, F), fill)`` and use what that returns."""
    hook = getattr(model, "set_input_augment", None)
    if hook is None:
        return ["warning: (-f) no set_input_augment hook: the PSLA fine-tuning configs' SpecAugment and "
                "noise (augment.freqm/timem/noise) will be skipped for this upstream (mixup still applies)"]
    if not callable(hook):
        return [f"(-f) set_input_augment must be a method taking the augmentation, got {type(hook).__name__}"]
    calls: list[tuple] = []

    def shifted(feats: torch.Tensor, fill: float) -> torch.Tensor:  # visibly changes the input
        calls.append((tuple(feats.shape), fill))
        return feats + 1.0

    # the hook acts in train mode only; these passes leave no trace: the caller's RNG state (a run seeds
    # before it checks a plug-in) and the model's buffers (batch-norm statistics) are as they were
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    devices = [wavs[0].device] if wavs[0].is_cuda else []
    with torch.random.fork_rng(devices=devices):
        model.train()
        try:
            torch.manual_seed(0)
            plain = model(wavs)["last_hidden_state"]
            hook(shifted)
            torch.manual_seed(0)  # the same dropout draws as the plain pass
            shifted_out = model(wavs)["last_hidden_state"]
        except Exception as err:  # noqa: BLE001
            return [f"(-f) forward with an input augmentation set by set_input_augment raised "
                    f"{type(err).__name__}: {_one_line(err)}"]
        finally:
            hook(None)
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    if not calls:
        return ["(-f) forward in train() mode never calls the augmentation given to set_input_augment: "
                "SpecAugment and noise would be silently skipped"]
    if any(len(shape) != 3 or not isinstance(fill, (int, float)) for shape, fill in calls):
        return [f"(-f) set_input_augment's augmentation must be called as augment(features (B, T, F), "
                f"fill: float), got shapes/fill {calls[:2]}"]
    if shifted_out.shape == plain.shape and torch.equal(shifted_out, plain):
        return ["(-f) forward ignores what the augmentation given to set_input_augment returns: it must feed "
                "that to its encoder"]
    return []


# ------------------------------------------------------------------------------------------ building
def validate_builder(name: str, ckpt: str | None = None, finetune: bool = True, device: str = "cpu",
                     overrides: dict | None = None) -> tuple[nn.Module | None, list[str]]:
    """Build ``name`` as ``run_downstream.py`` does (``builder()`` or ``builder(ckpt=...)``) and check it.

    Returns:
        (the model, or None when it could not be built; the problems, as :func:`validate_upstream`).
    """
    from upstream.registry import load, resolve_builder

    try:
        builder = resolve_builder(name)
    except ValueError as err:
        return None, [str(err)]
    problems = []
    if ckpt is None:
        try:
            sig = inspect.signature(builder)
        except (TypeError, ValueError):
            sig = None
        takes = sig is None or "ckpt" in sig.parameters or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        if not takes:
            problems.append(f"warning: the builder's signature {sig} takes no 'ckpt' keyword: --ckpt will "
                            "fail (write def builder(ckpt=None, **overrides))")
    try:
        model = load(name, ckpt, **(overrides or {}))
    except (ValueError, FileNotFoundError, OSError) as err:
        return None, problems + [_one_line(err)]
    # a registered name always builds one; a plug-in is checked by load()
    if not isinstance(model, nn.Module):
        return None, problems + [f"the builder returned {type(model).__name__}, not a torch.nn.Module"]
    try:
        model.to(device)
    except Exception as err:  # noqa: BLE001
        return model, problems + [f"model.to({device!r}) raised {type(err).__name__}: {_one_line(err)}"]
    return model, problems + validate_upstream(model, finetune=finetune, device=torch.device(device))


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or "(no message)"


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m benchmark validate``."""
    p.add_argument("-u", "--upstream", required=True, help="registered name or package.module:builder")
    p.add_argument("--ckpt", default=None,
                   help="build as builder(ckpt=CKPT), as run_downstream.py --ckpt does")
    p.add_argument("--frozen-only", action="store_true",
                   help="skip what only -f needs (gradients, augment hook)")
    p.add_argument("--device", default="cpu", help="where to run the checks (e.g. cuda)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="builder keyword argument (as -o upstream_overrides.KEY=VALUE of run_downstream.py)")


def run(args: argparse.Namespace) -> int:
    """Exit code 0 when the contract holds (warnings allowed), 3 when it does not, 2 for a bad argument."""
    import yaml

    overrides = {}
    for item in args.override:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"error: -o {item!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        overrides[key] = yaml.safe_load(value)
    t0 = time.perf_counter()
    model, problems = validate_builder(args.upstream, args.ckpt, not args.frozen_only, args.device, overrides)
    for prob in problems:
        print(prob if prob.startswith("warning:") else f"error: {prob}", file=sys.stderr)
    errs, warns = errors(problems), len(problems) - len(errors(problems))
    checked = "frozen checks" if args.frozen_only else "frozen and -f checks"
    if errs:
        print(f"{args.upstream}: {len(errs)} error(s), {warns} warning(s) in the {checked}; see {CONTRACT}",
              file=sys.stderr)
        return 3
    m = model
    print(f"{args.upstream}: honours the upstream contract ({checked}, {warns} warning(s), "
          f"{time.perf_counter() - t0:.1f} s): sample_rate {m.sample_rate}, hidden_size {m.hidden_size}, "
          f"num_layers {m.num_layers}, clip_size {m.clip_size}, {m.get_downsample_rates('hidden_states')} "
          f"samples per frame, augment hook "
          f"{'yes' if callable(getattr(m, 'set_input_augment', None)) else 'none'}")
    return 0
