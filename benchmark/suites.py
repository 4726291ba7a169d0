"""Suites: sweep rows x tasks x modes x seeds x folds of a table through ``run_downstream.py``.

    python -m benchmark run --list                                   # suites and their job counts
    python -m benchmark run ssast_masked_patches --data-root DATA --pretrain-data UNLABELED --seeds 1 2 3
    python -m benchmark run ssast_main --dry-run                     # the plan, nothing run
    torchrun --nproc_per_node 4 -m benchmark run ssast_main ...      # each job runs under DDP

A suite is a table of ``benchmark/published`` (or one built in code, like the demo's): each row that says how
it is produced (``Row.run``) gives one job per column (task x mode), seed and fold. A row whose ``RunSpec``
names a pretraining recipe is pretrained first with ``run_pretrain.py`` (shared between rows and tables with the
same recipe and overrides, resumed if a previous sweep was killed). Each job then calls ``run_downstream.main``
with ``--label <row>``, so its result records land in the table's row.

Re-running a suite is how it resumes: a job whose test record already exists (same label, task, mode, seed and
fold, and the same upstream checkpoint) is skipped; a job killed part-way continues from its ``last.ckpt``. The
plan is fixed when the sweep starts, so every rank of a torchrun sweep runs the same jobs in the same order.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from astbench.resources import shipped_path

from . import results
from common.config import temp_path
from .published import PaperTable, RunSpec, get_table, load_tables

FOLDS = {"esc50": (1, 2, 3, 4, 5), "iemocap": (1, 2, 3, 4, 5)}


class SuiteError(ValueError):
    """A suite cannot be planned (unknown name or filter, missing pretraining data, ...)."""


# ------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class Job:
    """One ``run_downstream.py`` invocation: a table cell's run for one seed and fold."""

    table: str
    label: str
    run: RunSpec
    task: str
    mode: str  # 'frozen' | 'finetune'
    seed: int
    fold: int | None = None

    @property
    def expname(self) -> str:
        fold = f"_fold{self.fold}" if self.fold is not None else ""
        return _safe(f"{self.label}_{self.task}{fold}_{self.mode}_seed{self.seed}")

    def describe(self) -> str:
        fold = f" fold {self.fold}" if self.fold is not None else ""
        return f"{self.label} / {self.task}{fold} / {self.mode} / seed {self.seed}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", name)


@dataclass
class SuiteOptions:
    data_root: str | None = None  # run_downstream.py --data-root (default $ASTBENCH_DATA)
    pretrain_data: str | None = None  # run_pretrain.py --data for rows that pretrain and name no corpus
    pretrain_corpora: dict = field(default_factory=dict)  # corpus name -> folder or manifest (RunSpec.pretrain_data)
    seeds: Sequence[int] = (1337,)
    rows: Sequence[str] = ()  # only these row labels (empty: all)
    tasks: Sequence[str] = ()  # only these tasks
    modes: Sequence[str] = ()  # only these modes
    folds: Sequence[int] = ()  # only these folds of fold tasks (empty: all)
    expdir: str = "exp/suites"  # <expdir>/pretrain/<run>, <expdir>/downstream/<table>/<job>
    results: str = str(results.DEFAULT_PATH)
    device: str | None = None
    cache_dir: str | None = None  # run_downstream.py --cache-dir (frozen features; default $ASTBENCH_CACHE)
    config_dir: str | None = None  # <config_dir>/<task>[_finetune].yaml instead of configs/downstream/
    downstream_overrides: Sequence[str] = ()  # -o for every job (after the row's own)
    pretrain_overrides: Sequence[str] = ()  # -o for every pretraining run (after the row's own)
    fail_fast: bool = False


def plan(table: PaperTable, opts: SuiteOptions) -> list[Job]:
    """Every job of ``table`` under the filters of ``opts``, in a fixed order (row, column, seed, fold)."""
    labels = {row.label for row in table.rows}
    for name, wanted, known in (("row", opts.rows, labels), ("task", opts.tasks, {c.task for c in table.columns}),
                                ("mode", opts.modes, {c.mode for c in table.columns})):
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise SuiteError(f"suite {table.id!r} has no {name}(s) {unknown}; it has {sorted(known)}")
    jobs = []
    for row in table.rows:
        if row.run is None or (opts.rows and row.label not in opts.rows):
            continue
        for col in table.columns:
            if (opts.tasks and col.task not in opts.tasks) or (opts.modes and col.mode not in opts.modes):
                continue
            folds = [f for f in FOLDS.get(col.task, (None,)) if f is None or not opts.folds or f in opts.folds]
            for seed in opts.seeds:
                for fold in folds:
                    jobs.append(Job(table.id, row.label, row.run, col.task, col.mode, seed, fold))
    return list(dict.fromkeys(jobs))  # two columns of one (task, mode) with other metrics: one run


# ------------------------------------------------------------------------------------------ pretraining
def pretrain_dir(run: RunSpec, opts: SuiteOptions) -> Path:
    """Where the pretraining of ``run`` lives: named by recipe plus a hash of everything that changes it, so
    rows (and tables) asking for the same pretraining share one run."""
    overrides = list(run.pretrain_overrides) + list(opts.pretrain_overrides)
    corpora = [f"data={'+'.join(run.pretrain_data)}"] if run.pretrain_data else []
    key = "\n".join([str(run.pretrain_upstream), Path(run.pretrain).as_posix(), *overrides, *corpora])
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return Path(opts.expdir) / "pretrain" / f"{Path(run.pretrain).stem}-{digest}"


def ensure_pretrained(run: RunSpec, opts: SuiteOptions, log: Callable[[str], None] = print) -> Path:
    """Pretrain ``run`` unless done (resuming a killed run); returns its ``upstream.pt``."""
    import run_pretrain

    out = pretrain_dir(run, opts)
    done = out / "upstream.pt"
    if done.is_file() and not (out / "last.ckpt").is_file():
        return done
    if done.is_file() and _pretrain_finished(out):
        return done
    data = pretrain_data(run, opts, out)
    argv = ["-u", run.pretrain_upstream, "-c", str(_repo_path(run.pretrain)), "--data", data,
            "-n", out.name, "--expdir", str(out.parent)]
    for item in list(run.pretrain_overrides) + list(opts.pretrain_overrides):
        argv += ["-o", item]
    if opts.device:
        argv += ["--device", opts.device]
    if (out / "last.ckpt").is_file():
        argv.append("--resume")
    log(f"pretraining {out.name}: run_pretrain.py {' '.join(argv)}")
    code = run_pretrain.main(argv)
    import torch.distributed as dist

    if dist.is_initialized():  # under torchrun rank 0 writes upstream.pt: wait for it
        dist.barrier()
    if code != 0 or not done.is_file():
        raise SuiteError(f"pretraining {out} failed (exit code {code}); see its log above")
    return done


def pretrain_data(run: RunSpec, opts: SuiteOptions, out: Path) -> str:
    """The ``--data`` of ``run``'s pretraining: the sweep's default, the one corpus the row names, or for several
    corpora a JSONL manifest of all their audio files written next to the run (``<out>.data.jsonl``)."""
    from pretrain.engine import list_audio_files

    if not run.pretrain_data:
        if not opts.pretrain_data:
            raise SuiteError(f"row needs pretraining ({run.pretrain}) but no --pretrain-data DIR was given")
        return opts.pretrain_data
    missing = [name for name in run.pretrain_data if name not in opts.pretrain_corpora]
    if missing:
        raise SuiteError(f"row pretrains on {list(run.pretrain_data)}: pass --pretrain-data NAME=DIR for "
                         f"{missing} (given: {sorted(opts.pretrain_corpora) or 'none'})")
    if len(run.pretrain_data) == 1:
        return opts.pretrain_corpora[run.pretrain_data[0]]
    import json

    manifest = out.with_name(out.name + ".data.jsonl")
    if not manifest.is_file():  # written once: a resumed run must see the same file list
        lines = [json.dumps({"path": str(Path(f).resolve())}) for name in run.pretrain_data
                 for f in list_audio_files(opts.pretrain_corpora[name])]
        manifest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(manifest)
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, manifest)
    return str(manifest)


def _pretrain_finished(out: Path) -> bool:
    """True when ``out/last.ckpt`` has reached the run's ``max_steps`` (a stopped run is resumed)."""
    import yaml

    from upstream.safe_load import load_checkpoint_file

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    state = load_checkpoint_file(out / "last.ckpt", what="pretraining checkpoint")  # never runs code from it
    return int(state["step"]) >= int(cfg["max_steps"])


def _repo_path(path: str) -> Path:
    """A recipe as the published tables name it (``configs/pretrain/x.yaml``: the shipped file)."""
    return shipped_path(path, prefer_shipped=True)


# ------------------------------------------------------------------------------------------ jobs
def job_checkpoint(job: Job, opts: SuiteOptions, log: Callable[[str], None] = print) -> Path | None:
    """The upstream checkpoint a job runs on: its row's pretraining output, an official file looked up in
    ``$ASTBENCH_CHECKPOINTS``, or ``None`` (the upstream's own default: random init for test-size models)."""
    from upstream.registry import checkpoint_dir

    if job.run.pretrain:
        return ensure_pretrained(job.run, opts, log)
    if job.run.ckpt:
        path = Path(job.run.ckpt).expanduser()
        path = path if path.is_absolute() or path.exists() else checkpoint_dir() / job.run.ckpt
        if not path.is_file():
            from upstream.download import download_hint

            raise SuiteError(f"checkpoint {job.run.ckpt!r} not found (looked in {checkpoint_dir()}; "
                             f"set ASTBENCH_CHECKPOINTS){download_hint(Path(job.run.ckpt).name)}")
        return path
    return None


def is_done(job: Job, records: Sequence[results.ResultRecord], ckpt_sha: str | None, name: str | None = None
            ) -> bool:
    """A test-split record of this job exists (for the same upstream checkpoint when it has one, and from the
    run folder ``name`` when given, i.e. with the same resolved configuration)."""
    for r in records:
        if (r.label == job.label and r.task == job.task and r.mode == job.mode and r.seed == job.seed
                and r.fold == job.fold and r.split == "test" and r.upstream == job.run.upstream
                and r.layer == job.run.layer and (ckpt_sha is None or r.ckpt_sha256 == ckpt_sha)
                and (name is None or r.expname == name)):
            return True
    return False


def run_name(job: Job, opts: SuiteOptions) -> str:
    """The job's run folder (and record ``expname``): its description plus a hash of the configuration
    ``run_downstream.py`` resolves for it, so that changing a config or an override starts a new run instead of
    resuming or skipping one made with other settings."""
    import run_downstream

    from common.config import config_to_dict

    cfg, _ = run_downstream.resolve_config(run_downstream.parse_args(downstream_argv(job, None, opts, "x")))
    config = config_to_dict(cfg)
    config["run"] = {k: v for k, v in config["run"].items() if k not in ("expname", "data_root", "ckpt")}
    return f"{job.expname}-{results.config_hash(config)[:8]}"


def downstream_argv(job: Job, ckpt: Path | None, opts: SuiteOptions, name: str) -> list[str]:
    """The ``run_downstream.py`` arguments of ``job``, run in folder ``name`` (:func:`run_name`)."""
    expdir = Path(opts.expdir) / "downstream" / _safe(job.table)
    argv = ["-u", job.run.upstream, "-d", job.task, "-n", name, "--expdir", str(expdir),
            "--results", opts.results, "--seed", str(job.seed), "--label", job.label]
    if job.mode == "finetune":
        argv.append("-f")
    if job.fold is not None:
        argv += ["--fold", str(job.fold)]
    if ckpt is not None:
        argv += ["--ckpt", str(ckpt)]
    if job.run.layer is not None:
        argv += ["-l", str(job.run.layer)]
    if opts.config_dir:
        argv += ["-c", str(Path(opts.config_dir) / f"{job.task}{'_finetune' if job.mode == 'finetune' else ''}.yaml")]
    for item in list(job.run.overrides) + list(opts.downstream_overrides):
        argv += ["-o", item]
    if opts.data_root:
        argv += ["--data-root", opts.data_root]
    if opts.device:
        argv += ["--device", opts.device]
    if opts.cache_dir:
        argv += ["--cache-dir", opts.cache_dir]
    if (expdir / name / "last.ckpt").is_file():
        argv.append("--resume")
    return argv


@dataclass
class SuiteReport:
    done: list[Job] = field(default_factory=list)  # ran now
    skipped: list[Job] = field(default_factory=list)  # record already there
    failed: list[tuple[Job, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def run_suite(table: PaperTable, opts: SuiteOptions, log: Callable[[str], None] | None = None) -> SuiteReport:
    """Run every pending job of ``table``; see the module docstring for skipping and resuming."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    log = log or (print if rank == 0 else (lambda _msg: None))
    group = _DistributedSweep(world, opts.device)
    try:
        return _run_jobs(table, opts, log, rank, group)
    finally:
        group.close()


class _DistributedSweep:
    """Under torchrun, one process group for the whole sweep: pretraining and every downstream job run in it
    (each leaves a group it did not create alone), and ranks meet at a barrier after each job."""

    def __init__(self, world: int, device: str | None):
        import torch
        import torch.distributed as dist

        self.dist, self.owns = dist, False
        if world > 1 and not dist.is_initialized():
            use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
            dist.init_process_group("nccl" if use_cuda else "gloo")
            self.owns = True

    def barrier(self) -> None:
        if self.dist.is_initialized():
            self.dist.barrier()

    def close(self) -> None:
        if self.owns and self.dist.is_initialized():
            self.dist.destroy_process_group()


def _run_jobs(table: PaperTable, opts: SuiteOptions, log, rank: int, group: _DistributedSweep) -> SuiteReport:
    import run_downstream
    from upstream.checkpoint import file_sha256

    jobs = plan(table, opts)
    records = results.load(opts.results, skip_corrupt=False)
    report, start = SuiteReport(), time.perf_counter()
    shas: dict[Path, str] = {}
    ckpts: dict[RunSpec, Path | None] = {}  # one lookup per row: pretraining checks read the whole last.ckpt
    names: dict[Job, str] = {}
    for i, job in enumerate(jobs, 1):
        tag = f"[{i}/{len(jobs)}] {job.describe()}"
        try:
            name = names[job] = run_name(job, opts)
            if job.run not in ckpts:
                ckpts[job.run] = job_checkpoint(job, opts, log)
            ckpt = ckpts[job.run]
            sha = shas.setdefault(ckpt, file_sha256(ckpt)) if ckpt is not None else None
            if is_done(job, records, sha, name):
                report.skipped.append(job)
                log(f"{tag}: done before, skipped")
                continue
            log(f"{tag}: running")
            t0 = time.perf_counter()
            code = run_downstream.main(downstream_argv(job, ckpt, opts, name))
            if code != 0:
                raise SuiteError(f"run_downstream.py exited with code {code}")
            report.done.append(job)
            group.barrier()  # rank 0 has written the job's records before anyone plans on
            log(f"{tag}: finished in {time.perf_counter() - t0:.0f} s")
        except (SuiteError, FileNotFoundError, ValueError) as err:
            report.failed.append((job, str(err)))
            log(f"{tag}: FAILED: {err}")
            if opts.fail_fast:
                break
    if rank == 0:
        select_esc50(jobs, names, opts, log)
    report.seconds = time.perf_counter() - start
    log(f"suite {table.id}: {len(report.done)} run, {len(report.skipped)} skipped, {len(report.failed)} failed "
        f"in {report.seconds:.0f} s")
    return report


def select_esc50(jobs: Sequence[Job], names: dict, opts: SuiteOptions, log: Callable[[str], None] = print) -> int:
    """SSAST's ESC-50 selection for every finished 5-fold group of ``jobs`` (run folders ``names[job]``): one
    step for all folds, chosen on the fold-averaged test curve of their ``evals.jsonl``; appends one
    ``results.ESC50_SELECTED_SPLIT`` record per fold (a copy of the fold's test record with the value at that
    step). Returns the records written."""
    from dataclasses import replace

    from downstream.metrics import esc50_select_runs

    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        if job.task == "esc50":
            groups.setdefault((job.table, job.label, job.mode, job.seed), []).append(job)
    records = results.load(opts.results)
    written = 0
    for group in groups.values():
        group = sorted(group, key=lambda j: j.fold)
        if [j.fold for j in group] != list(FOLDS["esc50"]) or not all(j in names for j in group):
            continue  # a sweep restricted to some folds (or stopped early) cannot select
        folds = {names[j]: j.fold for j in group}
        tests, done = {}, set()
        for r in records:
            if r.expname in folds and r.fold == folds[r.expname] and r.label == group[0].label:
                if r.split == "test":
                    tests[r.fold] = r  # the file is in time order: the newest wins
                elif r.split == results.ESC50_SELECTED_SPLIT:
                    done.add((r.fold, r.ckpt_sha256))
        if len(tests) < len(group) or all((f, t.ckpt_sha256) in done for f, t in tests.items()):
            continue
        expdir = Path(opts.expdir) / "downstream" / _safe(group[0].table)
        chosen = esc50_select_runs([expdir / names[j] for j in group])
        for job, value in zip(group, chosen["fold_accuracies"]):
            results.append(replace(tests[job.fold], split=results.ESC50_SELECTED_SPLIT, value=float(value),
                                   step=chosen["step"], timestamp=""), opts.results)
            written += 1
        log(f"{group[0].label} / esc50 / {group[0].mode} / seed {group[0].seed}: step {chosen['step']} chosen on "
            f"the fold-averaged test curve, mean accuracy {chosen['mean_accuracy']:.4f}")
    return written


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", nargs="?", help="a table id (see --list)")
    p.add_argument("--list", action="store_true", help="list the suites and their job counts")
    p.add_argument("--dry-run", action="store_true", help="print the plan and whether each job is done")
    p.add_argument("--data-root", default=None, help="datasets folder (default $ASTBENCH_DATA)")
    p.add_argument("--pretrain-data", action="append", default=[], metavar="[NAME=]DIR",
                   help="unlabeled audio for rows that pretrain: DIR (or manifest) for rows naming no corpus, "
                        "NAME=DIR for rows naming corpus NAME (e.g. librispeech=/data/LibriSpeech); repeatable")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337])
    p.add_argument("--rows", nargs="+", default=[], help="only these row labels")
    p.add_argument("--tasks", nargs="+", default=[], help="only these tasks")
    p.add_argument("--modes", nargs="+", default=[], choices=["frozen", "finetune"])
    p.add_argument("--folds", type=int, nargs="+", default=[], help="only these folds of ESC-50 / IEMOCAP")
    p.add_argument("--expdir", default="exp/suites")
    p.add_argument("--results", default=str(results.DEFAULT_PATH))
    p.add_argument("--device", default=None)
    p.add_argument("--cache-dir", default=None, help="frozen-feature cache (default $ASTBENCH_CACHE)")
    p.add_argument("-o", "--override", action="append", default=[], help="run_downstream.py -o for every job")
    p.add_argument("--pretrain-override", action="append", default=[], help="run_pretrain.py -o for every run")
    p.add_argument("--fail-fast", action="store_true")


def _parse_pretrain_data(items: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    default, corpora = None, {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            if default is not None:
                raise SuiteError(f"--pretrain-data given twice without a name: {default!r} and {item!r}")
            default = item
        elif not name.isidentifier():
            raise SuiteError(f"--pretrain-data {item!r}: the corpus name must be an identifier")
        else:
            corpora[name] = path
    return default, corpora


def run(args: argparse.Namespace) -> int:
    try:
        if args.list or not args.suite:
            for table in load_tables():
                n = len(plan(table, SuiteOptions()))
                print(f"{table.id:32s} {n:4d} jobs per seed  {table.source}: {table.title}")
            return 0
        table = get_table(args.suite)
        default, corpora = _parse_pretrain_data(args.pretrain_data)
        opts = SuiteOptions(data_root=args.data_root, pretrain_data=default, pretrain_corpora=corpora,
                            seeds=args.seeds,
                            rows=args.rows, tasks=args.tasks, modes=args.modes, folds=args.folds,
                            expdir=args.expdir, results=args.results, device=args.device, cache_dir=args.cache_dir,
                            downstream_overrides=args.override, pretrain_overrides=args.pretrain_override,
                            fail_fast=args.fail_fast)
        if args.dry_run:
            records = results.load(opts.results)
            for job in plan(table, opts):
                state = "done" if is_done(job, records, None, run_name(job, opts)) else "pending"
                pre = f" (pretrain {pretrain_dir(job.run, opts)})" if job.run.pretrain else ""
                print(f"{state:8s} {job.describe()}{pre}")
            return 0
        report = run_suite(table, opts)
    except (SuiteError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for job, why in report.failed:
        print(f"failed: {job.describe()}: {why}", file=sys.stderr)
    return 0 if report.ok else 1
