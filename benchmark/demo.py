"""The built-in demo: the whole pipeline on a generated corpus, end to end, on a fresh machine.

    python -m benchmark demo              # 2 CPU cores, about 7 minutes
    python -m benchmark demo --large      # the same on a GPU: 10x the data, longer pretraining, more rows

Stages, each resumable (re-running the command skips what is done):
1. ``benchmark.demo_data.generate``: an unlabeled set plus a keyword task in the Speech Commands v0.02 layout
   and an environmental-sound task in the ESC-50 layout (``<out>/data``).
2. Pretrain tiny SSAST, MAE-AST and ASiT on the unlabeled set with their ``configs/pretrain/*_mini.yaml``
   recipes (``run_pretrain.py``): 1,200 steps for SSAST and MAE-AST, 600 for ASiT (``SETTINGS``).
3. Evaluate each pretrained model and the same architecture from random weights (the from-scratch baseline)
   on both tasks as a frozen probe and fine-tuned (``run_downstream.py`` with ``configs/demo/``), through
   the same suite runner as ``python -m benchmark run``.
4. Print the table (accuracy in %, mean over folds for ESC), write it as markdown and CSV, and plot it.

Everything goes to ``<out>`` (default ``exp/demo``), with the result records in ``<out>/results.jsonl``,
kept apart from ``results/``. The numbers are whatever these runs produce: nothing is looked up.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

from astbench.resources import config_path

from common.config import temp_path
from .demo_data import DemoSize
from .published import Column, PaperTable, Row, RunSpec

DEMO_CONFIGS = config_path("demo")
SOURCE = "python -m benchmark demo"


@dataclass(frozen=True)
class Family:
    name: str  # row label prefix
    title: str
    pretrain_upstream: str  # run_pretrain.py -u
    recipe: str  # configs/pretrain/<recipe>
    upstream: str  # registered upstream the checkpoint loads as
    scratch_overrides: tuple[str, ...] = ()  # run_downstream.py -o making the random-init model match


FAMILIES = (
    Family("ssast", "SSAST", "ssast_patch", "configs/pretrain/ssast_patch_mini.yaml",
           "ssast_patch_mini"),
    Family("mae_ast", "MAE-AST", "mae_ast_patch", "configs/pretrain/mae_ast_patch_mini.yaml",
           "mae_ast_patch_mini"),
    Family("asit", "ASiT", "asit", "configs/pretrain/asit_mini.yaml",
           "asit_mini", ("upstream_overrides.num_frames=192",)),
)


@dataclass(frozen=True)
class Setting:
    """One size of the demo. ``pretrain_steps`` is per family; batch sizes are the recipes' own unless set."""

    data_size: str | DemoSize  # a benchmark.demo_data.SIZES name or a DemoSize
    pretrain_steps: dict
    pretrain_overrides: tuple[str, ...]
    folds: tuple[int, ...]  # ESC-50 folds evaluated
    downstream_overrides: tuple[str, ...] = ()
    ssast_objectives: bool = False  # add SSAST discriminative-only and generative-only rows


SETTINGS = {
    "cpu": Setting("small", {"ssast": 1200, "mae_ast": 1200, "asit": 600},
                   ("batch_size=8", "ckpt_every=200", "log_every=100", "optim.warmup_steps=50"), folds=(1, 2, 3, 4, 5)),
    "large": Setting("large", {"ssast": 6000, "mae_ast": 6000, "asit": 4000},
                     ("batch_size=64", "ckpt_every=500", "log_every=100", "optim.warmup_steps=200",
                      "data.num_workers=4"),
                     folds=(1, 2, 3, 4, 5), downstream_overrides=("runner.total_steps=2000", "runner.eval_step=200"),
                     ssast_objectives=True),
}


def demo_table(setting: Setting) -> PaperTable:
    """The demo's table: each family pretrained vs from scratch, keyword and ESC tasks, frozen and fine-tuned.
    There are no published numbers for it, so every paper value is ``None``."""
    columns = (
        Column("ks_frozen", "speech_commands_v2", "frozen", "accuracy", 100.0, "Keywords, frozen probe"),
        Column("ks_ft", "speech_commands_v2", "finetune", "accuracy", 100.0, "Keywords, fine-tuned"),
        Column("esc_frozen", "esc50", "frozen", "accuracy", 100.0, "ESC, frozen probe"),
        Column("esc_ft", "esc50", "finetune", "accuracy", 100.0, "ESC, fine-tuned"),
    )
    empty = {c.key: None for c in columns}
    rows = []
    for fam in FAMILIES:
        overrides = setting.pretrain_overrides + (f"max_steps={setting.pretrain_steps[fam.name]}",)
        rows.append(Row(f"{fam.name}_pretrained", f"{fam.title}, pretrained", SOURCE, empty,
                        RunSpec(fam.upstream, pretrain=fam.recipe, pretrain_upstream=fam.pretrain_upstream,
                                pretrain_overrides=overrides)))
        if fam.name == "ssast" and setting.ssast_objectives:
            for objective in ("discriminative", "generative"):
                rows.append(Row(f"ssast_{objective}", f"SSAST {objective} only, pretrained", SOURCE,
                                empty, RunSpec(fam.upstream, pretrain=fam.recipe,
                                               pretrain_upstream=fam.pretrain_upstream,
                                               pretrain_overrides=overrides + (f"objective.objective={objective}",))))
        rows.append(Row(f"{fam.name}_scratch", f"{fam.title}, from scratch", SOURCE, empty,
                        RunSpec(fam.upstream, overrides=fam.scratch_overrides)))
    return PaperTable("demo", "demo", "Demo: self-supervised pretraining vs from scratch on the generated corpus",
                      SOURCE, columns, tuple(rows),
                      notes="Accuracy (%) on the generated corpus (test sets: 80 keyword clips, 5 x 40 ESC clips); "
                            "ESC is the mean over its 5 folds at one step chosen on the fold-averaged curve. "
                            "Tiny models (D=64, 2 blocks) pretrained with configs/pretrain/{ssast_patch,"
                            "mae_ast_patch,asit}_mini.yaml: SSAST patch, joint objective, cluster masking; "
                            "MAE-AST patch, chunked masking, joint; ASiT with GMML, alien corruption, local and "
                            "global DINO heads and reconstruction. From scratch = same architecture, random "
                            "weights.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--large", action="store_true", help="the GPU setting: more data, steps and rows")
    p.add_argument("--out", default="exp/demo", help="everything the demo writes goes here")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (runs use seed 1337, as s3prl)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--rows", nargs="+", default=[], help="only these rows (e.g. ssast_pretrained ssast_scratch)")
    p.add_argument("--features", action="store_true",
                   help="instead: extract features with every registered upstream from one clip and exit")


def run(args: argparse.Namespace) -> int:
    if args.features:
        from .features_demo import run as features

        return features(3.0, args.device or "cpu", None)
    return run_demo(Path(args.out), SETTINGS["large" if args.large else "cpu"], args.seed, args.device, args.rows)


def run_demo(out: Path, setting: Setting, seed: int = 0, device: str | None = None, rows=()) -> int:
    """Generate, pretrain, evaluate, tabulate and plot into ``out``; 0 when every job succeeded."""
    from . import demo_data, results
    from .suites import SuiteOptions, run_suite
    from .provenance import Provenance
    from .tables import to_csv, to_markdown

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 writes the corpus, the others wait
        _wait_for(lambda: demo_data.is_up_to_date(out / "data", seed, setting.data_size), out / "data")
    paths = demo_data.generate(out / "data", seed=seed, size=setting.data_size)
    timings["corpus"] = time.perf_counter() - t0

    table = demo_table(setting)
    opts = SuiteOptions(data_root=str(paths["root"]), pretrain_data=str(paths["unlabeled"]),
                        rows=rows, folds=setting.folds, expdir=str(out), results=str(out / "results.jsonl"),
                        device=device, cache_dir=str(out / "feature_cache"), config_dir=str(DEMO_CONFIGS),
                        downstream_overrides=setting.downstream_overrides)
    t1 = time.perf_counter()
    report = run_suite(table, opts)
    timings["pretrain + downstream"] = time.perf_counter() - t1
    if int(os.environ.get("RANK", "0")) != 0:
        return 0 if report.ok else 1  # rank 0 writes and prints the table

    records = results.load(opts.results)
    prov = Provenance(opts)  # the demo's own sweep settings: its rows' runs count as ours
    markdown = to_markdown(table, records, provenance=prov)
    _write(out / "demo_table.md", markdown)
    _write(out / "demo_table.csv", to_csv(table, records, provenance=prov))
    plot = _plot(table, opts.results, out, prov)
    timings["total"] = time.perf_counter() - t0
    print()
    print(markdown)
    print("time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items())
          + f" ({os.cpu_count()} CPU cores visible)")
    print(f"table: {out / 'demo_table.md'}" + (f", plot: {plot}" if plot else ""))
    for job, why in report.failed:
        print(f"failed: {job.describe()}: {why}")
    return 0 if report.ok else 1


def _wait_for(ready, what: Path, timeout_s: float = 3600.0) -> None:
    start = time.monotonic()
    while not ready():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"waited {timeout_s:.0f} s for rank 0 to write {what}")
        time.sleep(1.0)


def _write(path: Path, text: str) -> None:
    tmp = temp_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def _plot(table: PaperTable, records_path: str, out: Path, provenance=None) -> Path | None:
    from .plots import PlotsUnavailable, write_plots

    try:
        return write_plots(records_path, out, tables=[table], provenance=provenance)[0]
    except PlotsUnavailable as err:  # matplotlib is an optional extra
        print(f"no plot: {err}")
        return None
