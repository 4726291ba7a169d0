"""Speed benchmark: fbank throughput, frozen feature extraction and pretraining steps, with MFU.

``python -m benchmark.speed [--device cuda] [--batch 64] [--peak-tflops 989]``

MFU = analytic FLOPs per second / the device's bf16 dense peak. FLOPs count the transformer only
(2 per multiply-add): per block and sequence of L tokens of width D, ``24·L·D²`` for the projections and
MLP plus ``4·L²·D`` for attention; a training step counts 3x the forward. The figures are printed with
the command that made them. This is a benchmark, never a timed test.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch

import upstream
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


def main(argv: list[str] | None = None) -> int:
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
    print("command: python -m benchmark.speed " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
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
