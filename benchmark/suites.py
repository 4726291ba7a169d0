"""Suites: sweep rows x tasks x modes x seeds x folds of a table through ``downstream.run``.

    python -m benchmark run --list                                   # suites and their job counts
    python -m benchmark run ssast_masked_patches --data-root DATA --pretrain-data UNLABELED --seeds 1 2 3
    python -m benchmark run ssast_main --dry-run                     # the plan, nothing run
    torchrun --nproc_per_node 4 -m benchmark run ssast_main ...      # each job runs under DDP

A suite is a table of ``benchmark/published`` (or one built in code, like the demo's): each row that says how
it is produced (``Row.run``) gives one job per column (task x mode), seed and fold. A row whose ``RunSpec``
names a pretraining recipe is pretrained first (:mod:`benchmark.pretrain_runs`, shared between rows and tables
with the same recipe and overrides, resumed if a previous sweep was killed). Each job is one
:class:`downstream.DownstreamJob` labelled with its row, so its result records land in the table's row.

Re-running a suite is how it resumes: a job whose test record already exists (same label, task, mode, seed
and fold, and the same upstream checkpoint) is skipped; a job killed part-way continues from its
``last.ckpt``. The plan is fixed when the sweep starts, so every rank of a torchrun sweep runs the same jobs
in the same order.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import downstream
from common.distributed import DistContext, setup_distributed
from downstream import results
from downstream.tasks import TASKS

from .pretrain_runs import ensure_pretrained, pretrain_dir
from .published import PaperTable, RunSpec, get_table, load_tables

__all__ = ["Job", "SuiteError", "SuiteOptions", "SuiteReport", "downstream_job", "is_done", "plan",
           "pretrain_probe", "run_name", "run_suite", "run_suite_parallel", "select_fold_runs", "task_folds"]


class SuiteError(ValueError):
    """A suite cannot be planned (unknown name or filter, missing pretraining data, ...) or a job failed."""


# ------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class Job:
    """One downstream run of a sweep: a table cell's run for one seed and fold."""

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
    """How a sweep runs its jobs; the ``benchmark run`` flag each field comes from is in brackets."""

    data_root: str | None = None  # the jobs' data folder [--data-root] (default $ASTBENCH_DATA)
    pretrain_data: str | None = None  # pretraining data of rows that name no corpus [--pretrain-data DIR]
    # corpus name -> folder or manifest, for rows naming corpora (RunSpec.pretrain_data) [--pretrain-data]
    pretrain_corpora: dict = field(default_factory=dict)
    seeds: Sequence[int] = (1337,)
    mode_seeds: dict = field(default_factory=dict)  # mode -> its own seeds (e.g. fewer for "finetune")
    rows: Sequence[str] = ()  # only these row labels (empty: all)
    tasks: Sequence[str] = ()  # only these tasks
    modes: Sequence[str] = ()  # only these modes
    folds: Sequence[int] = ()  # only these folds of fold tasks (empty: all)
    expdir: str = "exp/suites"  # <expdir>/pretrain/<run>, <expdir>/downstream/<table>/<job>
    results: str = str(results.DEFAULT_PATH)
    device: str | None = None
    cache_dir: str | None = None  # frozen-feature cache [--cache-dir] (default $ASTBENCH_CACHE)
    config_dir: str | None = None  # <config_dir>/<task>[_finetune].yaml instead of configs/downstream/
    downstream_overrides: Sequence[str] = ()  # -o for every job (after the row's own)
    pretrain_overrides: Sequence[str] = ()  # pretraining -o for every pretraining run (after the row's own)
    # k-NN probes of every pretraining run (downstream.knn.KnnProbe on these tasks' data under data_root, at
    # step 0 and every probe_every steps, loaded as the row's upstream) [--probe]
    probe_tasks: Sequence[str] = ()
    probe_clips: int = 4000  # clips per probed task [--probe-clips]
    fail_fast: bool = False


def task_folds(task: str) -> tuple[int | None, ...]:
    """The folds a job of ``task`` runs: the task's (``TaskSpec.folds``), or ``(None,)`` for one run."""
    spec = TASKS.get(task)
    return tuple(spec.folds) if spec is not None and spec.folds else (None,)


def plan(table: PaperTable, opts: SuiteOptions) -> list[Job]:
    """Every job of ``table`` under the filters of ``opts``, in a fixed order (row, column, seed, fold)."""
    labels = {row.label for row in table.rows}
    tasks, modes = {c.task for c in table.columns}, {c.mode for c in table.columns}
    for name, wanted, known in (("row", opts.rows, labels), ("task", opts.tasks, tasks),
                                ("mode", opts.modes, modes)):
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
            folds = [f for f in task_folds(col.task) if f is None or not opts.folds or f in opts.folds]
            for seed in opts.mode_seeds.get(col.mode, opts.seeds):
                for fold in folds:
                    jobs.append(Job(table.id, row.label, row.run, col.task, col.mode, seed, fold))
    return list(dict.fromkeys(jobs))  # two columns of one (task, mode) with other metrics: one run


# ------------------------------------------------------------------------------------------ jobs
def job_checkpoint(job: Job, opts: SuiteOptions, log: Callable[[str], None] = print) -> Path | None:
    """The upstream checkpoint a job runs on: its row's pretraining output, an official file looked up in
    ``$ASTBENCH_CHECKPOINTS``, or ``None`` (the upstream's own default: random init for test-size models)."""
    from upstream.download import checkpoint_dir, download_hint

    if job.run.pretrain:
        return ensure_pretrained(job.run, opts.expdir, opts.pretrain_data, opts.pretrain_corpora,
                                 opts.pretrain_overrides, opts.device, log,
                                 make_probe=lambda: pretrain_probe(job.run, opts))
    if job.run.ckpt:
        path = Path(job.run.ckpt).expanduser()
        path = path if path.is_absolute() or path.exists() else checkpoint_dir() / job.run.ckpt
        if not path.is_file():
            raise SuiteError(f"checkpoint {job.run.ckpt!r} not found (looked in {checkpoint_dir()}; "
                             f"set ASTBENCH_CHECKPOINTS){download_hint(Path(job.run.ckpt).name)}")
        return path
    return None


_PROBES: dict[tuple, object] = {}  # (task, data root, clips) -> KnnProbe: its audio is read once per process


def pretrain_probe(run: RunSpec, opts: SuiteOptions):
    """The probe callback of ``run``'s pretraining: a ``downstream.knn.ProbeSet`` of ``opts.probe_tasks``
    that loads the encoder as the row's upstream (``run.upstream``, what its downstream jobs load), or None.
    The tasks' clips are read once and shared by every pretraining run of the process."""
    if not opts.probe_tasks:
        return None
    from downstream.knn import KnnProbe, ProbeSet

    probes = []
    for task in opts.probe_tasks:
        key = (task, opts.data_root, opts.probe_clips)
        if key not in _PROBES:
            _PROBES[key] = KnnProbe(task, opts.data_root, max_clips=opts.probe_clips)
        probes.append(_PROBES[key].for_upstream(run.upstream))
    return ProbeSet(probes)


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


def downstream_job(job: Job, ckpt: Path | None, opts: SuiteOptions, name: str) -> downstream.DownstreamJob:
    """The :class:`downstream.DownstreamJob` of ``job``, run in folder ``name`` (:func:`run_name`) under
    ``<expdir>/downstream/<table>``; it resumes when that folder holds a ``last.ckpt``."""
    expdir = Path(opts.expdir) / "downstream" / _safe(job.table)
    config = None
    if opts.config_dir:
        suffix = "_finetune" if job.mode == "finetune" else ""
        config = str(Path(opts.config_dir) / f"{job.task}{suffix}.yaml")
    return downstream.DownstreamJob(
        upstream=job.run.upstream, task=job.task, finetune=job.mode == "finetune", layer=job.run.layer,
        fold=job.fold, seed=job.seed, ckpt=str(ckpt) if ckpt is not None else None, name=name,
        config=config, overrides=tuple(job.run.overrides) + tuple(opts.downstream_overrides),
        data_root=opts.data_root, expdir=str(expdir), results=opts.results, label=job.label,
        cache_dir=opts.cache_dir, resume=(expdir / name / "last.ckpt").is_file(), device=opts.device)


def run_name(job: Job, opts: SuiteOptions) -> str:
    """The job's run folder (and record ``expname``): its description plus a hash of the configuration it
    resolves to (:func:`downstream.identity_hash`), so that changing a config or an override starts a new run
    instead of resuming or skipping one made with other settings."""
    cfg, _ = downstream.resolve(downstream_job(job, None, opts, "x"))
    return f"{job.expname}-{downstream.identity_hash(cfg)[:8]}"


# ------------------------------------------------------------------------------------------ the sweep
@dataclass
class SuiteReport:
    """What a sweep did: the jobs run, skipped (done before) and failed (with why), and its time."""

    done: list[Job] = field(default_factory=list)  # ran now
    skipped: list[Job] = field(default_factory=list)  # record already there
    failed: list[tuple[Job, str]] = field(default_factory=list)
    seconds: float = 0.0
    # where the time went: "pretrain <row>" and "<mode> <task>" -> [wall s, CPU s of this process]
    stages: dict[str, list[float]] = field(default_factory=dict)

    def add_time(self, stage: str, wall: float, cpu: float) -> None:
        total = self.stages.setdefault(stage, [0.0, 0.0])
        total[0] += wall
        total[1] += cpu

    def merge(self, other: SuiteReport) -> None:
        """Add ``other`` (a part of the sweep run elsewhere) to this report; ``seconds`` is the caller's."""
        self.done += other.done
        self.skipped += other.skipped
        self.failed += other.failed
        for stage, (wall, cpu) in other.stages.items():
            self.add_time(stage, wall, cpu)

    @property
    def ok(self) -> bool:
        return not self.failed


def run_suite(table: PaperTable, opts: SuiteOptions, log: Callable[[str], None] | None = None) -> SuiteReport:
    """Run every pending job of ``table``; see the module docstring for skipping and resuming.

    Under torchrun the sweep holds one process group (``common.distributed``): pretraining and every job run
    in it (each leaves a group it did not create alone), and ranks meet at a barrier after each job.
    """
    dist_ctx, _ = setup_distributed(opts.device)
    log = log or (print if dist_ctx.is_main else (lambda _msg: None))
    try:
        return _run_jobs(table, opts, log, dist_ctx)
    finally:
        dist_ctx.close()


def _run_jobs(table: PaperTable, opts: SuiteOptions, log: Callable[[str], None], dist_ctx: DistContext
              ) -> SuiteReport:
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
                w0, c0 = time.perf_counter(), time.process_time()
                ckpts[job.run] = job_checkpoint(job, opts, log)
                if job.run.pretrain:
                    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                    report.add_time(f"pretrain {job.label}", wall, cpu)
            ckpt = ckpts[job.run]
            sha = shas.setdefault(ckpt, file_sha256(ckpt)) if ckpt is not None else None
            if is_done(job, records, sha, name):
                report.skipped.append(job)
                log(f"{tag}: done before, skipped")
                continue
            log(f"{tag}: running")
            t0, c0 = time.perf_counter(), time.process_time()
            downstream.run(downstream_job(job, ckpt, opts, name))
            report.add_time(f"{job.mode} {job.task}", time.perf_counter() - t0, time.process_time() - c0)
            report.done.append(job)
            dist_ctx.barrier()  # rank 0 has written the job's records before anyone plans on
            log(f"{tag}: finished in {time.perf_counter() - t0:.0f} s")
        except (ValueError, FileNotFoundError, FloatingPointError) as err:  # FloatingPointError: a NaN loss
            why = " ".join(str(err).split())
            report.failed.append((job, why))
            log(f"{tag}: FAILED: {why}")
            if opts.fail_fast:
                break
    if dist_ctx.is_main:
        select_fold_runs(jobs, names, opts, log)
    report.seconds = time.perf_counter() - start
    log(f"suite {table.id}: {len(report.done)} run, {len(report.skipped)} skipped, {len(report.failed)} "
        f"failed in {report.seconds:.0f} s")
    return report


def _one_thread() -> None:
    """A worker of :func:`run_suite_parallel`: one thread, as many workers as cores share the machine."""
    import torch

    torch.set_num_threads(1)


def _run_part(table: PaperTable, opts: SuiteOptions) -> SuiteReport:
    return run_suite(table, opts)


def run_suite_parallel(table: PaperTable, opts: SuiteOptions, workers: int,
                       log: Callable[[str], None] = print) -> SuiteReport:
    """:func:`run_suite` in ``workers`` processes of one thread each (small models on a CPU: two one-thread
    jobs at once do about twice the work of one two-thread job). The units are each row's pretraining, then
    each (row, seed): every unit is one :func:`run_suite` call on a filtered plan, so what a job computes,
    where it writes and how it resumes do not depend on the number of workers; a row's seeds are queued once
    its pretraining is done. Result records are appended under a file lock (``downstream.results``)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    start = time.perf_counter()
    jobs = plan(table, opts)  # validates the filters
    rows = [row for row in table.rows if any(j.label == row.label for j in jobs)]
    report = SuiteReport()
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_one_thread) as pool:
        seeds = list(dict.fromkeys([*opts.seeds, *(s for v in opts.mode_seeds.values() for s in v)]))

        def seeds_of(row) -> list:
            return [pool.submit(_run_part, table, _one_seed(opts, row.label, seed)) for seed in seeds]

        # pretraining first (the longest units), each as the pretraining of the row's first job only
        pretraining = {pool.submit(_pretrain_part, table, opts, row.label): row for row in rows
                       if row.run is not None and row.run.pretrain}
        pending = set(pretraining)
        for row in rows:
            if row not in pretraining.values():
                pending.update(seeds_of(row))
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                part = fut.result()
                report.merge(part)
                row = pretraining.get(fut)
                if row is not None and not part.failed:
                    pending.update(seeds_of(row))
    report.seconds = time.perf_counter() - start
    log(f"suite {table.id}: {len(report.done)} run, {len(report.skipped)} skipped, {len(report.failed)} "
        f"failed in {report.seconds:.0f} s ({workers} workers)")
    return report


def _one_seed(opts: SuiteOptions, label: str, seed: int) -> SuiteOptions:
    """``opts`` narrowed to row ``label`` and ``seed`` (in every mode that has it)."""
    return replace(opts, rows=(label,), seeds=tuple(s for s in opts.seeds if s == seed),
                   mode_seeds={m: tuple(s for s in v if s == seed) for m, v in opts.mode_seeds.items()})


def _pretrain_part(table: PaperTable, opts: SuiteOptions, label: str) -> SuiteReport:
    """Pretrain row ``label`` (resume or skip as the sweep would); a report with its time, or its failure
    charged to every job of the row."""
    jobs = [j for j in plan(table, replace(opts, rows=(label,)))]
    report = SuiteReport()
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        job_checkpoint(jobs[0], opts)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        why = " ".join(str(err).split())
        report.failed += [(job, why) for job in jobs]
        print(f"{label}: pretraining FAILED: {why}")
    report.add_time(f"pretrain {label}", time.perf_counter() - w0, time.process_time() - c0)
    return report


def select_fold_runs(jobs: Sequence[Job], names: dict[Job, str], opts: SuiteOptions,
                     log: Callable[[str], None] = print) -> int:
    """The recipe's selection across folds for every finished fold group of ``jobs`` whose task has one
    (``TaskSpec.select_runs``; ESC-50: SSAST's one step for all folds, chosen on the fold-averaged test curve
    of their ``evals.jsonl``). Appends one record of split ``TaskSpec.selected_split`` per fold (a copy of the
    fold's test record with the value at that step). Returns the records written."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        spec = TASKS.get(job.task)
        if spec is not None and spec.select_runs is not None:
            groups.setdefault((job.table, job.label, job.task, job.mode, job.seed), []).append(job)
    records = results.load(opts.results)
    written = 0
    for group in groups.values():
        group = sorted(group, key=lambda j: j.fold)
        spec = TASKS[group[0].task]
        if [j.fold for j in group] != list(spec.folds) or not all(j in names for j in group):
            continue  # a sweep restricted to some folds (or stopped early) cannot select
        folds = {names[j]: j.fold for j in group}
        tests, done = {}, set()
        for r in records:
            if r.expname in folds and r.fold == folds[r.expname] and r.label == group[0].label:
                if r.split == "test":
                    tests[r.fold] = r  # the file is in time order: the newest wins
                elif r.split == spec.selected_split:
                    done.add((r.fold, r.ckpt_sha256))
        if len(tests) < len(group) or all((f, t.ckpt_sha256) in done for f, t in tests.items()):
            continue
        expdir = Path(opts.expdir) / "downstream" / _safe(group[0].table)
        chosen = spec.select_runs([expdir / names[j] for j in group])
        per_clip = chosen.get("fold_per_clip") or [None] * len(group)
        for job, value, clips in zip(group, chosen["fold_accuracies"], per_clip):
            # the test record's per-clip correctness is of its own best step: the chosen step's replaces it
            predictions = {k: v for k, v in tests[job.fold].predictions.items()
                           if k not in ("correct", "clip_ids_sha1")} | (clips or {})
            results.append(replace(tests[job.fold], split=spec.selected_split, value=float(value),
                                   step=chosen["step"], timestamp="", predictions=predictions), opts.results)
            written += 1
        first = group[0]
        log(f"{first.label} / {first.task} / {first.mode} / seed {first.seed}: step {chosen['step']} chosen "
            f"on the fold-averaged test curve, mean accuracy {chosen['mean_accuracy']:.4f}")
    return written


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``python -m benchmark run``."""
    p.add_argument("suite", nargs="?", help="a table id (see --list)")
    p.add_argument("--list", action="store_true", help="list the suites and their job counts")
    p.add_argument("--dry-run", action="store_true", help="print the plan and whether each job is done")
    p.add_argument("--data-root", default=None, help="datasets folder (default $ASTBENCH_DATA)")
    p.add_argument("--pretrain-data", action="append", default=[], metavar="[NAME=]DIR",
                   help="unlabeled audio for rows that pretrain: DIR (or manifest) for rows naming no "
                        "corpus, NAME=DIR for rows naming corpus NAME (e.g. librispeech=/data/LibriSpeech); "
                        "repeatable")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337])
    p.add_argument("--rows", nargs="+", default=[], help="only these row labels")
    p.add_argument("--tasks", nargs="+", default=[], help="only these tasks")
    p.add_argument("--modes", nargs="+", default=[], choices=["frozen", "finetune"])
    p.add_argument("--folds", type=int, nargs="+", default=[], help="only these folds of ESC-50 / IEMOCAP")
    p.add_argument("--expdir", default="exp/suites")
    p.add_argument("--results", default=str(results.DEFAULT_PATH))
    p.add_argument("--device", default=None)
    p.add_argument("--cache-dir", default=None, help="frozen-feature cache (default $ASTBENCH_CACHE)")
    p.add_argument("-o", "--override", action="append", default=[], help="downstream -o for every job")
    p.add_argument("--pretrain-override", action="append", default=[], help="pretraining -o for every run")
    p.add_argument("--probe", nargs="+", default=[], metavar="TASK",
                   help="k-NN probe every pretraining run on these tasks (data under --data-root) at step 0 "
                        "and every probe_every steps (--pretrain-override probe_every=N)")
    p.add_argument("--probe-clips", type=int, default=4000, metavar="N", help="--probe: clips per task")
    p.add_argument("--fail-fast", action="store_true")


def _parse_pretrain_data(items: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    """``--pretrain-data`` values: the one without a name (the default) and NAME=DIR corpora."""
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
    """List, plan (``--dry-run``) or run a suite; exit code 0, 1 (a job failed) or 2 (one error line)."""
    try:
        if args.list or not args.suite:
            for table in load_tables():
                n = len(plan(table, SuiteOptions()))
                print(f"{table.id:32s} {n:4d} jobs per seed  {table.source}: {table.title}")
            return 0
        table = get_table(args.suite)
        default, corpora = _parse_pretrain_data(args.pretrain_data)
        opts = SuiteOptions(data_root=args.data_root, pretrain_data=default, pretrain_corpora=corpora,
                            seeds=args.seeds, rows=args.rows, tasks=args.tasks, modes=args.modes,
                            folds=args.folds,
                            expdir=args.expdir, results=args.results, device=args.device,
                            cache_dir=args.cache_dir, downstream_overrides=args.override,
                            pretrain_overrides=args.pretrain_override, probe_tasks=args.probe,
                            probe_clips=args.probe_clips, fail_fast=args.fail_fast)
        if args.dry_run:
            records = results.load(opts.results)
            for job in plan(table, opts):
                state = "done" if is_done(job, records, None, run_name(job, opts)) else "pending"
                pre = ""
                if job.run.pretrain:
                    pre = f" (pretrain {pretrain_dir(job.run, opts.expdir, opts.pretrain_overrides)})"
                print(f"{state:8s} {job.describe()}{pre}")
            return 0
        report = run_suite(table, opts)
    except ValueError as err:  # SuiteError, PublishedError, a job that cannot be resolved, ...
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    for job, why in report.failed:
        print(f"failed: {job.describe()}: {why}", file=sys.stderr)
    return 0 if report.ok else 1
