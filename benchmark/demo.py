"""The built-in demo: the whole pipeline on a generated corpus, end to end, on a fresh machine.

    python -m benchmark demo              # 2 CPU cores, about 7 minutes
    python -m benchmark demo --large      # the same on a GPU: 10x the data, longer pretraining, more rows

Stages, each resumable (re-running the command skips what is done):
1. ``benchmark.demo_data.generate``: an unlabeled set plus a keyword task in the Speech Commands v0.02 layout
   and an environmental-sound task in the ESC-50 layout (``<out>/data``).
2. Pretrain tiny SSAST, MAE-AST and ASiT on the unlabeled set with their ``configs/pretrain/*_mini.yaml``
   recipes (``pretrain.run``): 1,200 steps for SSAST and MAE-AST, 600 for ASiT (``demo_spec.SETTINGS``).
3. Evaluate each pretrained model and the same architecture from random weights (the from-scratch baseline)
   on both tasks as a frozen probe and fine-tuned (``downstream.run`` with ``configs/demo/``), through the
   same suite runner as ``python -m benchmark run``.
4. Print the table (accuracy in %, mean over folds for ESC), write it as markdown and CSV, and plot it.

Everything goes to ``<out>`` (default ``exp/demo``), with the result records in ``<out>/results.jsonl`` and
what the run was (setting, corpus seed, machine, time taken) in ``<out>/demo_run.json``, kept apart from
``results/``. The numbers are whatever these runs produce: nothing is looked up. ``--publish DIR`` copies
the records into the repository's ``results/`` (:mod:`benchmark.demo_results`), where ``--render DIR``
regenerates the table and plot from them alone.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from common.files import write_atomic

from . import demo_data
from .demo_results import DemoResultsError, publish, render, write_table
from .demo_spec import SETTINGS, Setting, demo_options, demo_table
from .provenance import Provenance
from .suites import SuiteReport, run_suite

__all__ = ["add_arguments", "run", "run_demo"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``python -m benchmark demo``."""
    p.add_argument("--large", action="store_true", help="the GPU setting: more data, steps and rows")
    p.add_argument("--out", default="exp/demo", help="everything the demo writes goes here")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (runs use seed 1337, as s3prl)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--rows", nargs="+", default=[],
                   help="only these rows (e.g. ssast_pretrained ssast_scratch)")
    p.add_argument("--features", action="store_true",
                   help="instead: extract features with every registered upstream from one clip and exit")
    p.add_argument("--publish", metavar="DIR", default=None,
                   help="instead: copy the records of the demo in --out to DIR (e.g. results/demo) and "
                        "write its table and plot there")
    p.add_argument("--render", metavar="DIR", default=None,
                   help="instead: regenerate the table and plot of a published demo folder from its records")


def run(args: argparse.Namespace) -> int:
    """The demo, ``--features``, ``--publish`` or ``--render``; the exit code (2 with one error line)."""
    if args.features:
        from .features_demo import run as features

        return features(3.0, args.device or "cpu", None)
    setting = SETTINGS["large" if args.large else "cpu"]
    if args.publish or args.render:
        try:
            if args.publish:  # the setting and seed count only for a demo folder without demo_run.json
                written = publish(Path(args.out), Path(args.publish), setting, args.seed)
            else:
                written = render(Path(args.render))
        except DemoResultsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {', '.join(str(p) for p in written)}")
        return 0
    return run_demo(Path(args.out), setting, args.seed, args.device, args.rows)


def run_demo(out: Path, setting: Setting, seed: int = 0, device: str | None = None, rows=()) -> int:
    """Generate, pretrain, evaluate, tabulate and plot into ``out``; 0 when every job succeeded."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 writes the corpus, the others wait
        _wait_for(lambda: demo_data.is_up_to_date(out / "data", seed, setting.data_size), out / "data")
    paths = demo_data.generate(out / "data", seed=seed, size=setting.data_size)
    timings["corpus"] = time.perf_counter() - t0

    table = demo_table(setting)
    opts = demo_options(out, setting, rows, device, paths)
    t1 = time.perf_counter()
    report = run_suite(table, opts)
    timings["pretrain + downstream"] = time.perf_counter() - t1
    if int(os.environ.get("RANK", "0")) != 0:
        return 0 if report.ok else 1  # rank 0 writes and prints the table

    prov = Provenance(opts)  # the demo's own sweep settings: its rows' runs count as ours
    markdown, plot = write_table(out, table, Path(opts.results), prov)
    timings["total"] = time.perf_counter() - t0
    _log_run(out, setting, seed, device, report, timings)
    print()
    print(markdown)
    print("time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items())
          + f" ({os.cpu_count()} CPU cores visible)")
    print(f"table: {out / 'demo_table.md'}" + (f", plot: {plot}" if plot else ""))
    for job, why in report.failed:
        print(f"failed: {job.describe()}: {why}")
    return 0 if report.ok else 1


def _log_run(out: Path, setting: Setting, seed: int, device: str | None, report: SuiteReport,
             timings: dict[str, float]) -> None:
    """Add this invocation to ``<out>/demo_run.json``: the setting and corpus seed (which ``--publish`` needs
    to check the records again) and, per invocation, jobs run and skipped, minutes taken and the machine."""
    import torch

    path = out / "demo_run.json"
    want = {"setting": asdict(setting), "seed": seed}
    try:
        log = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log = {}
    if {k: log.get(k) for k in want} != json.loads(json.dumps(want)):  # another setting: a new log
        log = {**want, "invocations": []}
    log["invocations"].append({
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "jobs_run": len(report.done),
        "jobs_skipped": len(report.skipped), "jobs_failed": len(report.failed),
        "minutes": {k: round(v / 60, 2) for k, v in timings.items()},
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"), "cpu_cores": os.cpu_count(),
        "machine": platform.machine(), "torch": torch.__version__})
    write_atomic(path, json.dumps(log, indent=1) + "\n")


def _wait_for(ready, what: Path, timeout_s: float = 3600.0) -> None:
    start = time.monotonic()
    while not ready():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"waited {timeout_s:.0f} s for rank 0 to write {what}")
        time.sleep(1.0)
