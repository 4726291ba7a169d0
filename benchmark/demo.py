"""The built-in demo: the whole pipeline on a generated corpus, end to end, on a fresh machine.

    python -m benchmark demo              # 2 CPU cores
    python -m benchmark demo --large      # the same on a GPU: 10x the data, longer pretraining, more rows

Stages, each resumable (re-running the command skips what is done):
1. ``benchmark.demo_data.generate``: an unlabeled set plus a keyword task in the Speech Commands v0.02 layout
   and an environmental-sound task in the ESC-50 layout (``<out>/data``), each with about 1,000 test clips.
2. Pretrain tiny SSAST, MAE-AST and ASiT on the unlabeled set with their ``configs/pretrain/*_mini.yaml``
   recipes (``pretrain.run``): 1,200 steps for SSAST and MAE-AST, 600 for ASiT (``demo_spec.SETTINGS``).
   A k-NN probe (``downstream.knn.KnnProbe``) scores each encoder on both tasks at step 0 (the random
   initialisation) and every ``probe_every`` steps; ``<out>/probe_curves.{md,png}`` show the curves.
3. Evaluate each pretrained model and the same architecture from random weights (the from-scratch baseline)
   on both tasks as a frozen probe and fine-tuned (``downstream.run`` with ``configs/demo/``), for each of
   the setting's downstream seeds, through the same suite runner as ``python -m benchmark run``.
4. Print the table (accuracy in %, mean over folds for ESC), write it as markdown and CSV, and plot it.

Everything goes to ``<out>`` (default ``exp/demo``), with the result records in ``<out>/results.jsonl`` and
what the run was (setting, corpus seed, machine, time per stage) in ``<out>/demo_run.json``, kept apart from
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
from .pretrain_runs import pretrain_dir
from .probe_curves import read_probe_curves, write_report
from .provenance import Provenance
from .published import PaperTable
from .suites import SuiteOptions, SuiteReport, run_suite, run_suite_parallel

__all__ = ["add_arguments", "run", "run_demo"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``python -m benchmark demo``."""
    p.add_argument("--large", action="store_true", help="the GPU setting: more data, steps and rows")
    p.add_argument("--out", default="exp/demo", help="everything the demo writes goes here")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (runs use seed 1337, as s3prl)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--workers", type=int, default=None,
                   help="on a CPU: jobs run at once, one thread each (default: the CPU cores, at most 4); "
                        "on a GPU or under torchrun: 1")
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
    return run_demo(Path(args.out), setting, args.seed, args.device, args.rows, args.workers)


def run_demo(out: Path, setting: Setting, seed: int = 0, device: str | None = None, rows=(),
             workers: int | None = None) -> int:
    """Generate, pretrain, evaluate, tabulate and plot into ``out``; 0 when every job succeeded.

    ``workers``: on a CPU, processes of one thread each running jobs at once (:func:`run_suite_parallel`;
    default: the cores, at most 4); 1 runs the sweep in this process. A GPU or torchrun always uses 1."""
    timings: dict[str, list[float]] = {}  # stage -> [wall s, CPU s of this process]
    t0, c0 = time.perf_counter(), time.process_time()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 writes the corpus, the others wait
        _wait_for(lambda: demo_data.is_up_to_date(out / "data", seed, setting.data_size), out / "data")
    paths = demo_data.generate(out / "data", seed=seed, size=setting.data_size)
    timings["corpus"] = [time.perf_counter() - t0, time.process_time() - c0]  # workers' CPU not counted

    table = demo_table(setting)
    opts = demo_options(out, setting, rows, device, paths)
    workers = _workers(workers, device)
    report = run_suite(table, opts) if workers == 1 else run_suite_parallel(table, opts, workers)
    timings.update(report.stages)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0 if report.ok else 1  # rank 0 writes and prints the table

    t1, c1 = time.perf_counter(), time.process_time()
    prov = Provenance(opts)  # the demo's own sweep settings: its rows' runs count as ours
    markdown, plot = write_table(out, table, Path(opts.results), prov)
    curves = write_probe_curves(out, table, opts)
    timings["table, plot and probe curves"] = [time.perf_counter() - t1, time.process_time() - c1]
    # CPU: this process's, plus the workers' (their stages) when the sweep ran in other processes
    cpu = time.process_time() - c0 + (sum(c for _, c in report.stages.values()) if workers > 1 else 0.0)
    timings["total"] = [time.perf_counter() - t0, cpu]
    _log_run(out, setting, seed, device, report, timings, workers)
    print()
    print(markdown)
    print("time (wall / CPU of this process, min): " + ", ".join(
        f"{k} {w / 60:.1f} / {c / 60:.1f}" for k, (w, c) in timings.items())
        + f" ({os.cpu_count()} CPU cores visible)")
    print(f"table: {out / 'demo_table.md'}" + (f", plot: {plot}" if plot else "")
          + (f", probe curves: {curves}" if curves else ""))
    for job, why in report.failed:
        print(f"failed: {job.describe()}: {why}")
    return 0 if report.ok else 1


def _workers(workers: int | None, device: str | None) -> int:
    """Processes for the sweep: 1 on a GPU and under torchrun, else ``workers`` or the cores (at most 4)."""
    import torch

    on_gpu = device == "cuda" or (device is None and torch.cuda.is_available())
    if on_gpu or "RANK" in os.environ:
        return 1
    return max(1, workers if workers is not None else min(4, os.cpu_count() or 1))


def write_probe_curves(out: Path, table: PaperTable, opts: SuiteOptions) -> Path | None:
    """``<out>/probe_curves.md`` (and ``.png`` with matplotlib): the k-NN probe curves of the pretraining runs
    of ``table``'s rows, one column per row, one section per probed task. None when no run has probes."""
    curves = []
    for row in table.rows:
        if row.run is None or not row.run.pretrain:
            continue
        losses = pretrain_dir(row.run, opts.expdir, opts.pretrain_overrides) / "losses.jsonl"
        try:
            curves += read_probe_curves(losses, row.paper_label.removesuffix(", pretrained"))
        except (OSError, ValueError):  # not run (--rows), or run without probes
            continue
    if not curves:
        return None
    return Path(write_report(curves, out, "probe_curves")["markdown"])


def _log_run(out: Path, setting: Setting, seed: int, device: str | None, report: SuiteReport,
             timings: dict[str, list[float]], workers: int = 1) -> None:
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
        "minutes": {k: round(w / 60, 2) for k, (w, _) in timings.items()},
        "cpu_minutes": {k: round(c / 60, 2) for k, (_, c) in timings.items()},
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"), "cpu_cores": os.cpu_count(),
        "workers": workers,
        "machine": platform.machine(), "torch": torch.__version__})
    write_atomic(path, json.dumps(log, indent=1) + "\n")


def _wait_for(ready, what: Path, timeout_s: float = 3600.0) -> None:
    start = time.monotonic()
    while not ready():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"waited {timeout_s:.0f} s for rank 0 to write {what}")
        time.sleep(1.0)
