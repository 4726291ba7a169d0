"""Speed benchmark: fbank throughput, frozen feature extraction and pretraining steps, with MFU.

    python -m benchmark.speed [--device cuda] [--batch 64] [--peak-tflops 989]        # fbank + features
    python -m benchmark.speed long ssast_patch_400 --secs 300 --layers all none 11 [--set target_length=1024]
        # one long clip on CPU, each layer request in a fresh process: peak RSS, CPU seconds, MB returned
    python -m benchmark.speed --device cpu --feature-batch 4 --official --skip-fbank
        # frozen features of every base upstream on CPU, each next to its official s3prl expert on the same
        # clips (that column needs the s3prl extra: pip install 'astbench[s3prl]')
    python -m benchmark.speed pretrain [--device cuda] [--size base|mini] [--batch-size ssast=24 ...]
        [--steps 20] [--warmup 5] [--amp bf16|fp32] [--compile] [--data DIR] [--peak-tflops 989]
    python -m benchmark.speed all --out DIR [--device cuda] [--size base|mini] [--compile off|on|both]
        # everything at once (benchmark/gpu_check.sh): pretraining steps at the recipe batch and the
        # largest batch that fits, frozen features of every upstream, batched fbank against one CPU
        # core, with and without torch.compile; writes DIR/speed.json and DIR/speed.md

MFU = analytic FLOPs per second / the device's bf16 dense peak. FLOPs count matrix products only (2 per
multiply-add; ``upstream.objective.block_train_flops``): each objective's ``step_flops`` counts one
pretraining step (its family's module says what), feature extraction counts the encoder's blocks forward. The
fbank front end, norms, softmax and the optimizer are not counted. The measurements are
:mod:`benchmark.speed_measure`; this module is the command line: it prints the figures with the command that
made them, and ``all`` records them as JSON and markdown. This is a benchmark, never a timed test.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

from common.files import write_atomic

from .speed_measure import (
    DEFAULT_BATCH,
    PRETRAIN_RECIPES,
    bench_fbank,
    bench_features,
    bench_pretrain_step,
    fbank_rows,
    feature_rows,
    free_memory,
    largest_batch,
    long_clip_rows,
)

BASE_UPSTREAMS = ["ssast_patch_400", "ssast_frame_400", "mae_ast_patch", "mae_ast_frame", "asit_base"]
MINI_UPSTREAMS = ["ssast_patch_mini", "ssast_frame_mini", "mae_ast_patch_mini", "mae_ast_frame_mini",
                  "asit_mini"]
PRETRAIN_COLUMNS = ("method", "path", "batch", "step ms", "clips/s", "TFLOP/step", "TFLOP/s", "MFU %",
                    "peak mem GiB")


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
    p.add_argument("--compile", choices=["off", "on", "both"], default="both",
                   help="torch.compile modes to run")
    p.add_argument("--methods", nargs="+", choices=list(PRETRAIN_RECIPES), default=list(PRETRAIN_RECIPES))
    p.add_argument("--upstreams", nargs="*", default=None, help="default: the five base (or mini) upstreams")
    p.add_argument("--steps", type=int, default=10, help="timed pretraining steps per row")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps before each row (compilation included)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="cap of the largest-batch search (default: 1024 on CUDA, 2x the recipe batch "
                        "elsewhere)")
    p.add_argument("--feature-batch", type=int, default=None,
                   help="clips per feature batch (base 64, mini 2)")
    p.add_argument("--feature-secs", type=float, default=None, help="feature clip length (base 10, mini 1)")
    p.add_argument("--fbank-batch", type=int, default=None, help="clips per fbank batch (base 64, mini 4)")
    p.add_argument("--min-secs", type=float, default=None,
                   help="timing window of each feature / fbank figure (base 2, mini 0.1)")
    p.add_argument("--data", help="folder or manifest of audio files: adds 'with decoding' pretraining rows")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="bf16 dense peak in TFLOP/s (default on CUDA: 989, H100/H200 SXM; elsewhere none: "
                        "no MFU)")
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
              "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "torch": torch.__version__, "device": args.device,
              "device_name": (torch.cuda.get_device_name(dev) if cuda
                              else f"CPU, {torch.get_num_threads()} threads"),
              "amp": amp, "size": args.size, "peak_tflops": peak, "pretrain": [], "features": [], "fbank": [],
              "errors": []}

    def save() -> None:  # after every figure, so that a run cut short keeps what it measured
        write_atomic(out / "speed.json", json.dumps(_jsonable(report), indent=1) + "\n")
        write_atomic(out / "speed.md", _markdown(report))

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
            free_memory(dev)
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
                    rows = bench_pretrain_step(method, args.size, args.device, batch, args.steps, args.warmup,
                                               amp, compiled, peak or math.nan, args.data)
                    report["pretrain"].extend({"compile": compiled, "batch kind": kind, **r} for r in rows)

                attempt(f"pretrain {method}, batch {batch} ({kind}), compile {compiled}", bench)
        for name in names:
            def features(name=name, compiled=compiled) -> None:
                report["features"].append(feature_rows(name, args.device, feature_batch, feature_secs, peak,
                                                       compiled, min_secs))

            attempt(f"features {name}, compile {compiled}", features)
        attempt(f"fbank, compile {compiled}", lambda compiled=compiled: report["fbank"].extend(
            fbank_rows(args.device, fbank_batch, 10.0, (compiled,), min_secs, one_core=not report["fbank"])))
    print(_markdown(report))
    return 1 if report["errors"] else 0


LONG_COLUMNS = ("upstream", "clip s", "layers", "model RSS MB", "peak RSS MB", "returned MB", "CPU s",
                "wall s")


def main_long(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.speed long",
                                description="one long clip through a frozen upstream on CPU, each layer "
                                            "request in a fresh process: peak RSS, CPU seconds, MB returned")
    p.add_argument("upstream")
    p.add_argument("--secs", type=float, default=300.0)
    p.add_argument("--layers", nargs="+", default=["all", "none"],
                   help="requests: 'all', 'none' (last_hidden_state only) or comma-separated block indices")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=INT", help="upstream overrides (integers)")
    args = p.parse_args(argv)
    try:
        requests = [None if r == "all" else [] if r == "none" else [int(i) for i in r.split(",")]
                    for r in args.layers]
        overrides = {k: int(v) for k, _, v in (item.partition("=") for item in args.set)}
    except ValueError as err:
        p.error(f"--layers / --set: {err}")
    print("command: python -m benchmark.speed long " + " ".join(shlex.quote(a) for a in argv))
    print(format_table(long_clip_rows(args.upstream, args.secs, requests, overrides), LONG_COLUMNS))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pretrain"]:
        return main_pretrain(argv[1:])
    if argv[:1] == ["long"]:
        return main_long(argv[1:])
    if argv[:1] == ["all"]:
        return main_all(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--secs", type=float, default=10.0, help="clip length for feature extraction")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="bf16 dense peak of the device (H100 SXM: 989); MFU is shown only when given")
    p.add_argument("--upstreams", nargs="*", default=BASE_UPSTREAMS)
    p.add_argument("--feature-batch", type=int, default=None,
                   help="clips per feature batch (default: --batch, 4 on a CPU)")
    p.add_argument("--official", action="store_true",
                   help="time each upstream's official s3prl expert on the same clips (needs s3prl)")
    p.add_argument("--min-secs", type=float, default=2.0, help="timing window of each figure")
    p.add_argument("--skip-features", action="store_true")
    p.add_argument("--skip-fbank", action="store_true")
    args = p.parse_args(argv)
    feature_batch = args.feature_batch or (4 if args.device == "cpu" else args.batch)
    if args.device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = True
    print("command: python -m benchmark.speed " + " ".join(shlex.quote(a) for a in argv))
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device != "cpu" else
             f" ({torch.get_num_threads()} threads)"))
    rows = [] if args.skip_fbank else bench_fbank(args.device, args.batch)
    if not args.skip_features:
        rows += bench_features(args.upstreams, args.device, feature_batch, args.secs, args.peak_tflops,
                               args.official, args.min_secs)
    if not rows:
        p.error("--skip-fbank and --skip-features leave nothing to measure")
    header = ("what", "device", "clips/s", "note")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(4)]
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
