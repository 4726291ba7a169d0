"""Speed benchmark: fbank throughput, frozen feature extraction and pretraining steps, with MFU.

    python -m benchmark.speed [--device cuda] [--batch 64] [--peak-tflops 989]        # fbank + features
    python -m benchmark.speed pretrain [--device cuda] [--size base|mini] [--batch-size ssast=24 ...]
        [--steps 20] [--warmup 5] [--amp bf16|fp32] [--compile] [--data DIR] [--peak-tflops 989]

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
import math
import shlex
import sys
import time

import torch

import upstream
from astbench.resources import config_path
from upstream.frontend import kaldi_fbank, kaldi_fbank_batch

BASE_UPSTREAMS = ["ssast_patch_400", "ssast_frame_400", "mae_ast_patch", "mae_ast_frame", "asit_base"]
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


def bench_fbank(device: str, batch: int, secs: float = 10.0) -> list[tuple]:
    rows = []
    wav = 0.1 * torch.randn(int(16000 * secs))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t = _timeit(lambda: kaldi_fbank(wav, **FBANK_KW), "cpu")
    torch.set_num_threads(threads)
    rows.append(("fbank, one clip at a time", "cpu (1 core)", f"{1 / t:.1f}", ""))
    if device != "cpu":
        waves = 0.1 * torch.randn(batch, int(16000 * secs), device=device)
        lens = torch.full((batch,), waves.shape[1], device=device)
        tg = _timeit(lambda: kaldi_fbank_batch(waves, lens, **FBANK_KW), device)
        rows.append((f"fbank, batched x{batch}", device, f"{batch / tg:.1f}", f"{(batch / tg) * t:.0f}x cpu core"))
    return rows


def bench_features(names: list[str], device: str, batch: int, secs: float, peak: float | None) -> list[tuple]:
    rows = []
    for name in names:
        model = upstream.load(name, random_init=True).to(device).eval()
        waves = [0.1 * torch.randn(int(model.sample_rate * secs), device=device) for _ in range(batch)]
        dtype = torch.bfloat16 if device != "cpu" else torch.float32

        def run():
            with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=device != "cpu"):
                return model(waves)

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
        t = _timeit(run, device)
        mfu = f"{100 * flops / t / (peak * 1e12):.1f}%" if peak else "n/a"
        rows.append((f"{name} features ({secs:g} s clips, x{batch})", device, f"{batch / t:.1f}", f"MFU {mfu}"))
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
    from benchmark.config import load_config
    from upstream.pretrain import PretrainConfig, build_objective

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
    from upstream.pretrain import _make_optimizer

    dev = torch.device(device)
    cfg, objective = _build(method, size, dev)
    model = torch.compile(objective) if compile_model else objective
    optimizer = _make_optimizer(objective, cfg.optim, dev)  # AdamW/Adam, fused on CUDA, as pretraining
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

    from upstream.pretrain import StepBatchSampler, UnlabeledAudio, collate_views, list_audio_files

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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pretrain"]:
        return main_pretrain(argv[1:])
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
