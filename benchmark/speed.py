"""Speed benchmark: fbank throughput, frozen feature extraction and pretraining steps, with MFU.

    python -m benchmark.speed [--device cuda] [--batch 64] [--peak-tflops 989]        # fbank + features
    python -m benchmark.speed pretrain [--device cuda] [--size base|mini] [--batch-size ssast=24 ...]
        [--steps 20] [--warmup 5] [--amp bf16|fp32] [--compile] [--data DIR] [--peak-tflops 989]
    python -m benchmark.speed all --out DIR [--device cuda] [--size base|mini] [--compile off|on|both]
        # everything at once (benchmark/gpu_check.sh): pretraining steps at the recipe batch and the
        # largest batch that fits, frozen features of every upstream, batched fbank against one CPU
        # core, with and without torch.compile; writes DIR/speed.json and DIR/speed.md

MFU = analytic FLOPs per second / the device's bf16 dense peak. FLOPs count matrix products only (2 per
multiply-add). A transformer block over a sequence of L tokens of width D with MLP ratio r does
``2·(4 + 2r)·D²·L`` in its projections and MLP (``24·L·D²`` at r = 4, i.e. 2 x its matmul parameters x
tokens) and ``4·L²·D`` in attention (QKᵀ and AV), forward. A trained module counts 3x its forward
(backward = 2x forward), giving the usual ``6·params·tokens + 12·depth·L²·D`` per pass; a module run without
gradient (ASiT's teacher) counts 1x. What each pretraining step counts is in :func:`pretrain_step_flops`.
The fbank front end, norms, softmax and the optimizer are not counted. The figures are printed with the
command that made them. This is a benchmark, never a timed test.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch

import upstream
from astbench.resources import config_path
from common.config import temp_path
from upstream.frontend import kaldi_fbank, kaldi_fbank_batch

BASE_UPSTREAMS = ["ssast_patch_400", "ssast_frame_400", "mae_ast_patch", "mae_ast_frame", "asit_base"]
MINI_UPSTREAMS = ["ssast_patch_mini", "ssast_frame_mini", "mae_ast_patch_mini", "mae_ast_frame_mini", "asit_mini"]
FBANK_KW = dict(htk_compat=True, use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0,
                frame_shift=10, sample_frequency=16000.0)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timeit(fn, device: str, min_secs: float = 2.0, warmup: int = 2) -> float:
    """Seconds per call, averaged over at least ``min_secs``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_secs:
            return elapsed / n


def block_flops(tokens: int, dim: int, depth: int) -> float:
    return depth * (24 * tokens * dim**2 + 4 * tokens**2 * dim)


_CORE_SECS: dict[float, float] = {}  # clip length -> seconds of one clip's fbank on one CPU core


def fbank_rows(device: str, batch: int, secs: float = 10.0, compile_modes: tuple[bool, ...] = (False,),
               min_secs: float = 2.0, one_core: bool = True) -> list[dict]:
    """Fbank clips/s: one clip at a time on one CPU core (the row only with ``one_core``; measured once per
    process), and batches of ``batch`` on ``device`` for each compile mode, as a multiple of that core."""
    rows = []
    if secs not in _CORE_SECS:
        wav = 0.1 * torch.randn(int(16000 * secs))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _CORE_SECS[secs] = _timeit(lambda: kaldi_fbank(wav, **FBANK_KW), "cpu", min_secs)
        finally:
            torch.set_num_threads(threads)
    t_core = _CORE_SECS[secs]
    if one_core:
        rows.append({"what": "fbank, one clip at a time", "device": "cpu (1 core)", "compile": False, "batch": 1,
                     "clips/s": 1 / t_core, "x one CPU core": 1.0})
    waves = 0.1 * torch.randn(batch, int(16000 * secs), device=device)
    lens = torch.full((batch,), waves.shape[1], device=device)
    for compiled in compile_modes:
        fn = torch.compile(kaldi_fbank_batch, dynamic=False) if compiled else kaldi_fbank_batch
        t = _timeit(lambda: fn(waves, lens, **FBANK_KW), device, min_secs)
        threads_note = "" if device != "cpu" else f" ({torch.get_num_threads()} threads)"
        rows.append({"what": f"fbank, batched x{batch}", "device": device + threads_note, "compile": compiled,
                     "batch": batch, "clips/s": batch / t, "x one CPU core": (batch / t) * t_core})
    return rows


def bench_fbank(device: str, batch: int, secs: float = 10.0) -> list[tuple]:
    rows = fbank_rows(device, batch, secs, compile_modes=(False,) if device != "cpu" else ())
    return [(r["what"], r["device"], f"{r['clips/s']:.1f}", "" if r["batch"] == 1 else
             f"{r['x one CPU core']:.0f}x cpu core") for r in rows]


def feature_rows(name: str, device: str, batch: int, secs: float, peak: float | None, compiled: bool = False,
                 min_secs: float = 2.0) -> dict:
    """Frozen feature extraction (the upstream's default s3prl settings) of ``batch`` random clips: clips/s, MFU.

    bf16 autocast off CPU, fp32 on CPU; MFU counts the encoder's matrix products (see the module docstring).
    """
    model = upstream.load(name, random_init=True).to(device).eval()
    waves = [0.1 * torch.randn(int(model.sample_rate * secs), device=device) for _ in range(batch)]
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    forward = torch.compile(model) if compiled else model

    def run():
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=device != "cpu"):
            return forward(waves)

    out = run()
    e = model.encoder.cfg
    # sequences per clip and tokens per sequence, as the upstream ran them
    if model.cfg.window_frames is None:
        seqs, tokens = 1, out["hidden_states"][0].shape[1] * model.num_freq_patches
    else:
        n_f, n_t = e.grid
        seqs = -(-out["hidden_states"][0].shape[1] // n_t)
        tokens = n_f * n_t + e.num_prefix_tokens
    flops = batch * seqs * block_flops(tokens, e.embed_dim, e.depth)
    t = _timeit(run, device, min_secs)
    return {"upstream": name, "compile": compiled, "clip s": secs, "batch": batch, "clips/s": batch / t,
            "TFLOP/s": flops / t / 1e12, "MFU %": 100 * flops / t / (peak * 1e12) if peak else math.nan}


def bench_features(names: list[str], device: str, batch: int, secs: float, peak: float | None) -> list[tuple]:
    rows = []
    for name in names:
        r = feature_rows(name, device, batch, secs, peak)
        mfu = "n/a" if math.isnan(r["MFU %"]) else f"{r['MFU %']:.1f}%"
        rows.append((f"{name} features ({secs:g} s clips, x{batch})", device, f"{r['clips/s']:.1f}", f"MFU {mfu}"))
    return rows


# ============================================================================================ pretraining
RECIPES = config_path("pretrain")
PRETRAIN_RECIPES = {  # method: (base recipe, mini recipe); the base ones are each paper's default
    "ssast": ("ssast_patch_400", "ssast_patch_mini"),  # patch, joint, 400 masked, two passes
    "mae_ast": ("mae_ast_patch", "mae_ast_patch_mini"),  # patch, chunk masking 75 %
    "asit": ("asit_base", "asit_mini"),
}
DEFAULT_BATCH = {"base": {"ssast": 24, "mae_ast": 32, "asit": 32},  # the recipes' per-GPU batches
                 "mini": {"ssast": 4, "mae_ast": 4, "asit": 4}}
PRETRAIN_COLUMNS = ("method", "path", "batch", "step ms", "clips/s", "TFLOP/step", "TFLOP/s", "MFU %",
                    "peak mem GiB")


def block_train_flops(tokens: int, dim: int, depth: int, mlp_ratio: float, train: bool = True) -> float:
    """FLOPs of ``depth`` transformer blocks over one sequence of ``tokens`` (see the module docstring)."""
    forward = depth * (2 * (4 + 2 * mlp_ratio) * dim**2 * tokens + 4 * tokens**2 * dim)
    return forward * (3 if train else 1)


def linear_flops(tokens: int, fan_in: int, fan_out: int, train: bool = True) -> float:
    return 2 * tokens * fan_in * fan_out * (3 if train else 1)


def pretrain_step_flops(objective, num_frames: int) -> float:
    """Analytic FLOPs of one training step, per clip, for the three objectives (fbank frames ``num_frames``).

    * SSAST: patch embedding once; the encoder over all N + 2 tokens once per pass (two passes in the
      two-pass joint recipe); per pass a prediction head (Linear D->D, Linear D->256) on the M masked
      tokens and the M x M InfoNCE logits.
    * MAE-AST: patch embedding over N tokens; the encoder over the N_vis = N - M visible tokens; the decoder
      over all N; the reconstruction (and classification) heads and InfoNCE on the M masked tokens.
    * ASiT, per view (2 per clip): the student (patch embedding, encoder over 1 + N tokens, DINO head MLP on
      all tokens and its last layers to K_cls on the class token and K_data on the patch tokens, the
      reconstruction head on N tokens), trained; the teacher encoder and DINO head, forward only.
    """
    from upstream.masking import mae_ast_num_masked

    enc = objective.encoder
    e = enc.cfg
    D, r, patch = e.embed_dim, e.mlp_ratio, e.fshape * e.tshape
    n_f, n_t = enc.grid_for(num_frames)
    N = n_f * n_t
    if objective.family == "ssast":
        c = objective.cfg
        M = c.mask_patch
        passes = 1 + int(c.objective == "joint" and c.two_pass)
        head = linear_flops(M, D, D) + linear_flops(M, D, patch) + 3 * 2 * M * M * patch
        encoder = block_train_flops(N + e.num_prefix_tokens, D, e.depth, r)
        return linear_flops(N, patch, D) + passes * (encoder + head)
    if objective.family == "mae_ast":
        c = objective.cfg
        M = mae_ast_num_masked(N, c.mask_ratio)
        heads = 1 + int(objective.final_proj_classification is not None)
        return (linear_flops(N, patch, D) + block_train_flops(N - M, D, e.depth, r)
                + block_train_flops(N, D, c.decoder_depth, r) + heads * linear_flops(M, D, patch)
                + (heads - 1) * 3 * 2 * M * M * patch)
    if objective.family == "asit":
        L = N + e.num_prefix_tokens
        mlp = objective.head.mlp
        hidden, bottleneck = mlp[0].out_features, mlp[4].out_features
        k_cls, k_data = objective.head.cls_v.shape[0], objective.head.data_v.shape[0]
        rec = objective.rec_head.mlp
        rec_hidden, rec_bottleneck = rec[0].out_features, rec[4].out_features

        def dino_head(train: bool) -> float:
            return (linear_flops(L, D, hidden, train) + linear_flops(L, hidden, hidden, train)
                    + linear_flops(L, hidden, bottleneck, train) + linear_flops(1, bottleneck, k_cls, train)
                    + linear_flops(N, bottleneck, k_data, train))

        student = (linear_flops(N, patch, D) + block_train_flops(L, D, e.depth, r) + dino_head(True)
                   + linear_flops(N, D, rec_hidden) + linear_flops(N, rec_hidden, rec_hidden)
                   + linear_flops(N, rec_hidden, rec_bottleneck) + linear_flops(N, rec_bottleneck, patch))
        teacher = (linear_flops(N, patch, D, False) + block_train_flops(L, D, e.depth, r, False)
                   + dino_head(False))
        return objective.num_views * (student + teacher)
    raise ValueError(f"no FLOP formula for objective family {objective.family!r}")


def _parse_batch_sizes(items: list[str], size: str) -> dict[str, int]:
    batch = dict(DEFAULT_BATCH[size])
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:  # one number for every method
            batch = {k: int(item) for k in batch}
        elif name not in batch:
            raise SystemExit(f"--batch-size: unknown method {name!r}; methods: {', '.join(batch)}")
        else:
            batch[name] = int(value)
    return batch


def _build(method: str, size: str, device: torch.device):
    from common.config import load_config
    from pretrain.engine import PretrainConfig, build_objective

    recipe = PRETRAIN_RECIPES[method][0 if size == "base" else 1]
    cfg = load_config(PretrainConfig, RECIPES / f"{recipe}.yaml")
    torch.manual_seed(0)
    return cfg, build_objective(cfg.objective).to(device).train()


def _waveforms(objective, batch: int, device: torch.device,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random full-length crops ``(B, V, S)`` and their lengths ``(B, V)``, as the data loader gives them."""
    fe = objective.frontend
    secs = objective.crop_secs if objective.crop_secs is not None else 10.0
    samples = round(secs * fe.sample_rate)
    wavs = 0.1 * torch.randn(batch, objective.num_views, samples, generator=gen, device=device)
    return wavs, torch.full((batch, objective.num_views), samples, dtype=torch.long, device=device)


def _features(fbank, wavs: torch.Tensor, lengths: torch.Tensor, num_views: int):
    """Batched fbank on the waveforms' device: (B, V, S) -> (B, [V,] T, F), frames (B, [V])."""
    with torch.no_grad():
        feats, frames = fbank(wavs.flatten(0, 1), lengths.flatten())
    feats, frames = feats.unflatten(0, wavs.shape[:2]), frames.view(wavs.shape[:2])
    return (feats[:, 0], frames[:, 0]) if num_views == 1 else (feats, frames)


def bench_pretrain_step(method: str, size: str, device: str, batch: int, steps: int, warmup: int, amp: str,
                        compile_model: bool = False, peak_tflops: float = 989.0,
                        data: str | None = None, workers: int = 8) -> list[dict]:
    """Time full pretraining steps (forward, backward, AdamW step, EMA/centre update) of one method.

    Rows: ``model step`` (fbank precomputed on the device), ``with data path`` (waveforms on the device ->
    batched fbank -> step) and, with ``data``, ``with decoding`` (files decoded by DataLoader workers).
    """
    from upstream.frontend import Fbank
    from pretrain.engine import _make_optimizer

    dev = torch.device(device)
    cfg, objective = _build(method, size, dev)
    model = torch.compile(objective) if compile_model else objective
    optimizer = _make_optimizer(objective, cfg.optim, dev)  # AdamW/Adam, fused where torch can, as pretraining
    fbank = Fbank(objective.frontend).to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    wavs, lengths = _waveforms(objective, batch, dev, gen)
    feats, frames = _features(fbank, wavs, lengths, objective.num_views)
    flops = batch * pretrain_step_flops(objective, feats.shape[-2])
    use_bf16 = amp == "bf16"
    counter = iter(range(10**9))

    def step(x, n) -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, _ = model(x, n, gen)
        loss.float().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.after_step(next(counter), 10**6)

    paths = {"model step": lambda: step(feats, frames),
             "with data path": lambda: step(*_features(fbank, wavs, lengths, objective.num_views))}
    if data:
        paths["with decoding"] = _decoding_path(objective, cfg, data, batch, steps + warmup, workers, dev,
                                                fbank, step)
    rows = []
    for path, fn in paths.items():
        for _ in range(warmup):
            fn()
        _sync(device)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        secs = (time.perf_counter() - start) / steps
        mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else math.nan
        rows.append({"method": method, "path": path, "batch": batch, "step ms": 1e3 * secs,
                     "clips/s": batch / secs, "TFLOP/step": flops / 1e12, "TFLOP/s": flops / secs / 1e12,
                     "MFU %": 100 * flops / secs / (peak_tflops * 1e12), "peak mem GiB": mem})
    return rows


def _decoding_path(objective, cfg, data: str, batch: int, total_steps: int, workers: int, dev, fbank, step):
    """A step fed by the pretraining DataLoader (decode, crop, collate in workers), not fixed waveforms."""
    from torch.utils.data import DataLoader

    from pretrain.engine import StepBatchSampler, UnlabeledAudio, collate_views, list_audio_files

    files = list_audio_files(data, cfg.data.min_secs)
    fe = objective.frontend
    dataset = UnlabeledAudio(files, fe.sample_rate, objective.crop_secs, objective.num_views, 0, cfg.data)
    sampler = StepBatchSampler(len(files), batch, 0, 0, total_steps)
    loader = iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_views, num_workers=workers,
                             pin_memory=dev.type == "cuda", prefetch_factor=4 if workers else None))

    def run() -> None:
        wavs, lengths, _ = next(loader)
        w, n = wavs.to(dev, non_blocking=True), lengths.to(dev, non_blocking=True)
        step(*_features(fbank, w, n, objective.num_views))

    return run


def format_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    table = [list(columns)] + [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in table]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def main_pretrain(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.speed pretrain",
                                description="time full pretraining steps (see the module docstring)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=["base", "mini"], default="base",
                   help="base: the paper recipes; mini: the *_mini test recipes (CPU smoke runs)")
    p.add_argument("--methods", nargs="+", choices=list(PRETRAIN_RECIPES), default=list(PRETRAIN_RECIPES))
    p.add_argument("--batch-size", nargs="*", default=[], metavar="[METHOD=]N",
                   help="clips per step, one number for all or per method (default base: ssast=24 "
                        "mae_ast=32 asit=32, the recipes' per-GPU batches)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each row")
    p.add_argument("--amp", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the objective")
    p.add_argument("--data", help="folder or manifest of audio files: adds a 'with decoding' row")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers for --data")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="bf16 dense peak of the device in TFLOP/s (default: H100 SXM, 989)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    amp = args.amp or ("bf16" if args.device.startswith("cuda") else "fp32")
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batch = _parse_batch_sizes(args.batch_size, args.size)
    print("command: python -m benchmark.speed pretrain " + " ".join(shlex.quote(a) for a in argv))
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else
             f" ({torch.get_num_threads()} threads)")
          + f", {amp}, size {args.size}, peak {args.peak_tflops:g} TFLOP/s")
    rows = []
    for method in args.methods:
        rows += bench_pretrain_step(method, args.size, args.device, batch[method], args.steps, args.warmup,
                                    amp, args.compile, args.peak_tflops, args.data, args.workers)
    print(format_table(rows, PRETRAIN_COLUMNS))
    return 0


# ============================================================================================ all at once
ALL_PRETRAIN_COLUMNS = ("method", "compile", "batch kind") + PRETRAIN_COLUMNS[1:]
FEATURE_COLUMNS = ("upstream", "compile", "clip s", "batch", "clips/s", "TFLOP/s", "MFU %")
FBANK_COLUMNS = ("what", "device", "compile", "batch", "clips/s", "x one CPU core")


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fits(method: str, size: str, device: torch.device, batch: int, amp: str) -> bool:
    """Whether one pretraining step with the data path (fbank on the device) runs at ``batch`` without OOM."""
    try:
        bench_pretrain_step(method, size, str(device), batch, steps=1, warmup=1, amp=amp)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        _free_memory(device)


def largest_batch(method: str, size: str, device: torch.device, start: int, cap: int, amp: str) -> int:
    """The largest batch in ``[start, cap]`` whose step fits: doubling from ``start``, then bisection to 1/8.

    Memory is what bounds it on a GPU; on a CPU nothing runs out first, so the search simply reaches ``cap``.
    """
    lo, hi = start, None  # lo fits (the recipe batch is assumed to), hi does not
    while hi is None and lo < cap:
        trial = min(2 * lo, cap)
        if _fits(method, size, device, trial, amp):
            lo = trial
        else:
            hi = trial
    while hi is not None and hi - lo > max(1, lo // 8):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _fits(method, size, device, mid, amp) else (lo, mid)
    return lo


def _write_atomic(path: Path, text: str) -> None:
    tmp = temp_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(value):
    """NaN (a figure that does not apply, e.g. CUDA memory on a CPU) -> null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _markdown(report: dict) -> str:
    lines = [f"# Speed: {report['device_name']}, {report['date']}", "", f"`{report['command']}`", "",
             f"torch {report['torch']}, {report['amp']}, size {report['size']}, "
             f"peak {report['peak_tflops'] or 'n/a'} TFLOP/s (MFU is relative to it)", ""]
    for key, title, columns in (("pretrain", "Pretraining step", ALL_PRETRAIN_COLUMNS),
                                ("features", "Frozen feature extraction", FEATURE_COLUMNS),
                                ("fbank", "Fbank", FBANK_COLUMNS)):
        if report[key]:
            lines += [f"## {title}", "", format_table(report[key], columns), ""]
    if report["errors"]:
        lines += ["## Errors", ""] + [f"- {e['part']}: {e['error']}" for e in report["errors"]] + [""]
    return "\n".join(lines)


def main_all(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.speed all",
                                description="every speed figure in one run, written to OUT/speed.json and "
                                            "OUT/speed.md (see the module docstring)")
    p.add_argument("--out", required=True, help="folder for speed.json and speed.md (created)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=["base", "mini"], default="base",
                   help="base: the paper recipes and base upstreams; mini: the *_mini ones (CPU smoke runs)")
    p.add_argument("--compile", choices=["off", "on", "both"], default="both", help="torch.compile modes to run")
    p.add_argument("--methods", nargs="+", choices=list(PRETRAIN_RECIPES), default=list(PRETRAIN_RECIPES))
    p.add_argument("--upstreams", nargs="*", default=None, help="default: the five base (or mini) upstreams")
    p.add_argument("--steps", type=int, default=10, help="timed pretraining steps per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each row (compilation included)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="cap of the largest-batch search (default: 1024 on CUDA, 2x the recipe batch elsewhere)")
    p.add_argument("--feature-batch", type=int, default=None, help="clips per feature batch (base 64, mini 2)")
    p.add_argument("--feature-secs", type=float, default=None, help="feature clip length (base 10, mini 1)")
    p.add_argument("--fbank-batch", type=int, default=None, help="clips per fbank batch (base 64, mini 4)")
    p.add_argument("--min-secs", type=float, default=None,
                   help="timing window of each feature / fbank figure (base 2, mini 0.1)")
    p.add_argument("--data", help="folder or manifest of audio files: adds 'with decoding' pretraining rows")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="bf16 dense peak in TFLOP/s (default on CUDA: 989, H100/H200 SXM; elsewhere none: no MFU)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    mini = args.size == "mini"
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    peak = args.peak_tflops if args.peak_tflops is not None else (989.0 if cuda else None)
    amp = "bf16" if cuda else "fp32"
    modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": "python -m benchmark.speed all " + " ".join(shlex.quote(a) for a in argv),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "torch": torch.__version__, "device": args.device,
              "device_name": torch.cuda.get_device_name(dev) if cuda else f"CPU, {torch.get_num_threads()} threads",
              "amp": amp, "size": args.size, "peak_tflops": peak, "pretrain": [], "features": [], "fbank": [],
              "errors": []}

    def save() -> None:  # after every figure, so that a run cut short keeps what it measured
        _write_atomic(out / "speed.json", json.dumps(_jsonable(report), indent=1) + "\n")
        _write_atomic(out / "speed.md", _markdown(report))

    def attempt(part: str, fn) -> None:
        """Run one figure; a failure (OOM, a compiler error) is recorded and the run goes on."""
        print(f"[{time.strftime('%H:%M:%S')}] {part}", flush=True)
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - one broken figure must not lose the others
            msg = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            report["errors"].append({"part": part, "error": msg})
            print(f"  failed: {msg}", flush=True)
        finally:
            _free_memory(dev)
        save()

    print(report["command"])
    names = args.upstreams if args.upstreams is not None else (MINI_UPSTREAMS if mini else BASE_UPSTREAMS)
    feature_batch = args.feature_batch or (2 if mini else 64)
    feature_secs = args.feature_secs or (1.0 if mini else 10.0)
    min_secs = args.min_secs if args.min_secs is not None else (0.1 if mini else 2.0)
    fbank_batch = args.fbank_batch or (4 if mini else 64)
    batches = {m: {"recipe": DEFAULT_BATCH[args.size][m]} for m in args.methods}
    for method in args.methods:
        def search(method=method, recipe=batches[method]["recipe"]) -> None:
            cap = args.max_batch or (1024 if cuda else 2 * recipe)
            largest = largest_batch(method, args.size, dev, recipe, cap, amp)
            batches[method] = {"recipe": recipe, "largest": largest} if largest > recipe else {
                "recipe (largest)": recipe}

        attempt(f"pretrain {method}: largest batch", search)
    # every eager figure first, then the compiled ones (compilation is most of the run's time)
    for compiled in modes:
        for method in args.methods:
            for kind, batch in batches[method].items():
                def bench(method=method, kind=kind, batch=batch, compiled=compiled) -> None:
                    rows = bench_pretrain_step(method, args.size, args.device, batch, args.steps, args.warmup, amp,
                                               compiled, peak or math.nan, args.data)
                    report["pretrain"].extend({"compile": compiled, "batch kind": kind, **r} for r in rows)

                attempt(f"pretrain {method}, batch {batch} ({kind}), compile {compiled}", bench)
        for name in names:
            attempt(f"features {name}, compile {compiled}", lambda name=name, compiled=compiled: report[
                "features"].append(feature_rows(name, args.device, feature_batch, feature_secs, peak, compiled,
                                                min_secs)))
        attempt(f"fbank, compile {compiled}", lambda compiled=compiled: report["fbank"].extend(
            fbank_rows(args.device, fbank_batch, 10.0, (compiled,), min_secs, one_core=not report["fbank"])))
    print(_markdown(report))
    return 1 if report["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pretrain"]:
        return main_pretrain(argv[1:])
    if argv[:1] == ["all"]:
        return main_all(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--secs", type=float, default=10.0, help="clip length for feature extraction")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="bf16 dense peak of the device (H100 SXM: 989); MFU is shown only when given")
    p.add_argument("--upstreams", nargs="*", default=BASE_UPSTREAMS)
    p.add_argument("--skip-features", action="store_true")
    args = p.parse_args(argv)
    if args.device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = True
    print("command: python -m benchmark.speed " + " ".join(shlex.quote(a) for a in argv))
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device != "cpu" else ""))
    rows = bench_fbank(args.device, args.batch)
    if not args.skip_features:
        rows += bench_features(args.upstreams, args.device, args.batch, args.secs, args.peak_tflops)
    header = ("what", "device", "clips/s", "note")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(4)]
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
