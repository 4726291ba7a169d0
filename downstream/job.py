"""One downstream run as one library call: ``downstream.run(DownstreamJob(...)) -> list[ResultRecord]``.

``run_downstream.py`` parses its arguments into a :class:`DownstreamJob`; the benchmark suites build one
directly. Either way the run is the same:

1. :func:`resolve` the configuration (defaults <- task config <- family protocol <- ``-c`` <- ``-o``,
   ``downstream.protocols``) and the run folder (``downstream.rundir``: named from the settings unless given);
2. check everything that can fail up front (outputs writable, the folder free for this run), read the data,
   seed, build the upstream (a plug-in is checked against the contract first, ``downstream.validate``);
3. train (``downstream.engine.fit``: frozen features from ``downstream.cache``, ``torchrun`` ranks), or skip
   that with ``evaluate`` (re-score a saved run);
4. score the selected checkpoint on test and on the selection split, write the per-clip predictions
   (``downstream.predictions``) and append one :class:`~downstream.results.ResultRecord` per split.

Errors: ``ValueError`` (its subclasses ``ConfigError``, ``DatasetLayoutError``, ...) or ``FileNotFoundError``
for bad settings, data, checkpoints or run folders, one line each; :class:`UpstreamContractError` (also a
``ValueError``) for a plug-in upstream that breaks the contract; ``FloatingPointError`` for a non-finite
training loss.
"""
from __future__ import annotations

import contextlib
import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

import upstream as upstreams
from common.config import ConfigError, config_from_dict, config_to_dict
from common.distributed import DistContext, setup_distributed
from common.resources import shipped_path
from common.rundir import ensure_writable_dir, read_saved_config, run_dir_lock
from upstream.interface import feature_fingerprint
from upstream.registry import resolve_builder

from . import engine, protocols, results, rundir
from .cache import FeatureCache, default_cache_dir
from .config import DownstreamConfig, RunConfig
from .datasets import TaskData
from .metrics import evaluation_report
from .model import DownstreamModel
from .predictions import data_base, prediction_rows, write_predictions
from .results import ResultRecord
from .tasks import TaskSpec, data_overrides, get_task
from .validate import errors, validate_upstream

__all__ = ["DownstreamJob", "UpstreamContractError", "identity_hash", "render_config", "resolve", "run",
           "select_fold_runs"]


@dataclass(frozen=True)
class DownstreamJob:
    """What one ``run_downstream.py`` invocation asks for (its flags in brackets)."""

    upstream: str = ""  # -u: a registered name or package.module:builder
    task: str = ""  # -d
    finetune: bool = False  # -f: train the upstream with the head
    layer: int | None = None  # -l: hidden_states[layer] instead of the weighted sum
    fold: int | None = None  # --fold, for tasks with folds
    seed: int = 1337  # --seed
    ckpt: str | None = None  # --ckpt: the upstream's checkpoint
    trust_checkpoint: bool = False  # --trust-checkpoint: unpickle beyond the allow-list (can run code)
    name: str = ""  # -n: the run folder's name; "" names it from the settings (downstream.rundir)
    config: str | None = None  # -c: a YAML in the task config's place
    overrides: tuple[str, ...] = ()  # -o key=value, also s3prl's "config.a.b=v,,config.c=w"
    data_root: str | None = None  # --data-root (default $ASTBENCH_DATA)
    expdir: str = "exp/downstream"  # --expdir: where run folders go
    results: str = str(results.DEFAULT_PATH)  # --results: the records file
    label: str = ""  # --label: the table row the records belong to (default: the upstream name)
    cache_dir: str | None = None  # --cache-dir (default $ASTBENCH_CACHE or ~/.cache/astbench/features)
    use_cache: bool = True  # not --no-cache: frozen runs read upstream features from the cache
    resume: bool = False  # --resume: continue <expdir>/<name>/last.ckpt
    evaluate: str | None = None  # -m evaluate -e: re-score this run folder or checkpoint instead of training
    device: str | None = None  # --device (default cuda when available)
    split_seed: int | None = None  # --split-seed: data.split_seed of a folder/manifest without a split
    split_ratios: str | None = None  # --split-ratios TRAIN,DEV,TEST: data.split_ratios
    strict_audio: bool = False  # --strict-audio: data.on_bad_audio=error


class UpstreamContractError(ValueError):
    """A plug-in upstream that breaks the upstream contract; its problems were printed to stderr."""


# ------------------------------------------------------------------------------------------ configuration
def s3prl_overrides(items: tuple[str, ...] | list[str]) -> list[str]:
    """``-o`` values as ``key=value`` items: s3prl's ``"config.a.b=v,,config.c=w"`` (one ``-o`` holding
    several overrides joined by ``,,``, each key under ``config.``) becomes ``["a.b=v", "c=w"]``; plain items
    pass."""
    out = []
    for item in items:
        for part in (p.strip() for p in item.split(",,")):
            if part:
                out.append(part.removeprefix("config."))
    return out


def _evaluated(given: Path) -> tuple[Path, Path]:
    """``evaluate``: (run folder, checkpoint file). A folder means its reported model (``wa.ckpt`` when the
    run averaged weights, else ``dev-best.ckpt``, chosen once the config is read); a file is s3prl's habit of
    naming the checkpoint itself (``-e EXPDIR/dev-best.ckpt``, ``EXPDIR/last.ckpt``), its folder is the
    run."""
    if not given.is_dir() and (given.is_file() or given.suffix in (".ckpt", ".pt", ".pth")):
        if given.suffix not in (".ckpt", ".pt", ".pth"):
            raise ValueError(f"-m evaluate -e {given}: give a run folder or one of its checkpoints (.ckpt), "
                             f"not a {given.suffix or 'suffix-less'} file")
        return given.parent, given
    return given, given / "dev-best.ckpt"


def resolve(job: DownstreamJob) -> tuple[DownstreamConfig, Path]:
    """The job's resolved configuration and its run folder; reads no data. Without ``job.name`` the folder is
    named from the settings, which hashes the upstream checkpoint and the data root
    (``rundir.default_expname``); with ``evaluate`` both come from the saved run.

    Raises:
        ValueError: a missing or unknown task, fold, config file or key, override, or a folder that is no run.
    """
    if job.evaluate is not None:
        expdir, ckpt = _evaluated(Path(job.evaluate))
        for need in ("config.yaml", ckpt.name):
            if not (expdir / need).is_file():
                raise ValueError(f"-m evaluate: {expdir} has no {need}: not the folder of a trained run")
        if data_overrides(job.split_seed, job.split_ratios, job.strict_audio):
            raise ValueError("--split-seed/--split-ratios/--strict-audio set a new run's data; -m evaluate "
                             "uses the run's own (its config.yaml, section data)")
        cfg = config_from_dict(DownstreamConfig, read_saved_config(expdir / "config.yaml"),
                               f"{expdir / 'config.yaml'}")
        return (replace(cfg, run=replace(cfg.run, data_root=job.data_root)) if job.data_root else cfg), expdir
    if not job.upstream or not job.task:
        raise ValueError("-u UPSTREAM and -d TASK are required in train mode")
    get_task(job.task).check_fold(job.fold)
    # defaults <- task config <- the family's protocol <- -c <- -o (downstream.protocols); -c configs/... is
    # found outside the checkout too
    config = shipped_path(job.config) if job.config else None
    cfg = protocols.resolve(job.upstream, job.task, job.finetune, config,
                            [*s3prl_overrides(job.overrides),
                             *data_overrides(job.split_seed, job.split_ratios, job.strict_audio)])
    _refuse_run_settings(cfg.run, job.config)
    run = RunConfig(upstream=job.upstream, ckpt=job.ckpt, task=job.task, fold=job.fold, finetune=job.finetune,
                    layer=job.layer, seed=job.seed, data_root=job.data_root, expname=job.name,
                    label=job.label)
    cfg = replace(cfg, run=run)
    name = job.name or rundir.default_expname(cfg)
    return replace(cfg, run=replace(run, expname=name)), Path(job.expdir) / name


# the flag that sets each run.* key: the section says which run this is, and the command line says that
_RUN_FLAGS = {"upstream": "-u", "ckpt": "--ckpt", "task": "-d", "fold": "--fold", "finetune": "-f",
              "layer": "-l", "seed": "--seed", "data_root": "--data-root", "expname": "-n",
              "label": "--label"}


def _refuse_run_settings(run: RunConfig, config: str | None) -> None:
    """ConfigError for a ``run.*`` key set by a config file or ``-o``: the job's own fields would replace it
    without a word, so such a setting is refused, naming the flag that sets it."""
    default = RunConfig()
    for key, flag in _RUN_FLAGS.items():
        if getattr(run, key) != getattr(default, key):
            where = f"-c {config} or -o" if config else "-o"
            raise ConfigError(f"config key 'run.{key}' ({where}) is not a setting: the run's identity comes "
                              f"from the command line; use {flag}")


def identity_hash(cfg: DownstreamConfig) -> str:
    """16 hex digits of the resolved configuration without the run's name and machine paths
    (``run.expname``, ``run.data_root``, ``run.ckpt``): equal exactly when two jobs train the same way (the
    suites name their run folders by it, so a changed config or override starts a new run)."""
    config = config_to_dict(cfg)
    config["run"] = {k: v for k, v in config["run"].items() if k not in ("expname", "data_root", "ckpt")}
    return results.config_hash(config)


def render_config(job: DownstreamJob) -> str:
    """``--print-config``: the job's resolved configuration as YAML with the upstream's front end and each
    protocol value's source (``downstream.protocols.render``); reads no data and needs no checkpoint."""
    if job.evaluate is None and job.task and job.fold is None and get_task(job.task).folds:
        # every fold resolves the same; run.fold says which
        job = replace(job, fold=get_task(job.task).folds[0])
    # the default folder name hashes the checkpoint and data root, which printing does not need
    job = replace(job, name=job.name or "(default: named at run time from these settings, checkpoint, "
                                        "data root)")
    cfg, _ = resolve(job)
    return protocols.render(cfg, job.config, list(job.overrides))


def select_fold_runs(task: str, run_dirs: list[str | Path]) -> dict:
    """The recipe's one step for all fold runs of ``task`` (ESC-50: SSAST's pick on the fold-averaged test
    curve of the runs' ``evals.jsonl``), ``TaskSpec.select_runs``; ValueError for a task that has none."""
    spec = get_task(task)
    if spec.select_runs is None:
        raise ValueError(f"task {task!r} selects each run on its own; no step is chosen across fold runs")
    return spec.select_runs([Path(d) for d in run_dirs])


# ------------------------------------------------------------------------------------------ the run
@dataclass
class _Run:
    """A run under way: the job, what :func:`resolve` and the set-up gave."""

    job: DownstreamJob
    cfg: DownstreamConfig
    expdir: Path
    spec: TaskSpec
    data: TaskData
    upstream: nn.Module
    ckpt_sha256: str | None  # the upstream checkpoint's (plug-ins too), kept in run.json and the records
    cached: bool  # frozen features come from the on-disk cache

    @property
    def training(self) -> bool:
        return self.job.evaluate is None


def run(job: DownstreamJob) -> list[ResultRecord]:
    """Train (or, with ``job.evaluate``, re-score) one downstream run and record it; see the module docstring.

    Returns:
        the records of this evaluation, one per split (test, then the selection split when it differs); under
        ``torchrun`` rank 0's, the other ranks return ``[]``.
    """
    cfg, expdir = resolve(job)
    r = cfg.run
    spec = get_task(r.task)
    resolve_builder(r.upstream)  # an unknown upstream fails before any data is read
    if cfg.augment.active and not r.finetune:
        raise ValueError("augment.* is set but this is a frozen run: augmentation is for -f PSLA runs only "
                         "(the frozen s3prl probes see clean clips)")
    # everything about outputs that can fail, checked before any data is read or step trained
    results.check_writable(job.results)
    if job.evaluate is None:
        ensure_writable_dir(expdir.parent, "experiment folder (--expdir)")
        rundir.check_before_run(expdir, cfg, job.resume, named=bool(job.name))
    cached = not r.finetune and cfg.runner.feature_cache and job.use_cache
    if cached:
        ensure_writable_dir(job.cache_dir or default_cache_dir(), "feature cache folder (--cache-dir)")
    data = spec.read(r.data_root, r.fold, cfg.data)
    # seed before building: a random-init upstream (frozen, so not in the checkpoint) is then rebuilt exactly
    random.seed(r.seed), np.random.seed(r.seed), torch.manual_seed(r.seed)
    up = upstreams.load(r.upstream, r.ckpt, trust_checkpoint=job.trust_checkpoint,
                        **cfg.overrides_for(r.upstream))
    if ":" in r.upstream:  # a plug-in (package.module:builder, s3prl:NAME): checked against the contract
        problems = validate_upstream(up, finetune=r.finetune)
        for prob in problems:
            print(f"upstream {r.upstream}: {prob}", file=sys.stderr)
        if errors(problems):
            raise UpstreamContractError(f"upstream {r.upstream} violates the upstream contract (see above)")
    sha = feature_fingerprint(up).checkpoint_sha256 or rundir.checkpoint_sha256(r.ckpt)
    dist_ctx, device = setup_distributed(job.device)  # None: cuda when available
    try:
        return _carry_out(_Run(job, cfg, expdir, spec, data, up, sha, cached), device, dist_ctx)
    finally:
        dist_ctx.close()


def _carry_out(run_: _Run, device: torch.device, dist_ctx: DistContext) -> list[ResultRecord]:
    cfg, r = run_.cfg, run_.cfg.run
    model = DownstreamModel(run_.upstream, run_.data.num_classes, cfg.head, r.layer, r.finetune).to(device)
    with contextlib.ExitStack() as stack:
        if run_.training:  # rank 0 holds the run folder until its records are written
            problem = None
            if dist_ctx.is_main:
                try:
                    stack.enter_context(run_dir_lock(run_.expdir))
                    rundir.claim(run_.expdir, cfg, run_.ckpt_sha256, run_.job.resume)
                except ValueError as err:
                    problem = str(err)
            problems = [p for p in dist_ctx.gather(problem) if p]
            if problems:  # every rank stops, not only rank 0
                raise ConfigError(problems[0])
        cache = _feature_cache(run_, model, device, dist_ctx) if run_.cached else None
        if run_.training:
            _train(run_, model, device, dist_ctx, cache)
        if not dist_ctx.is_main:
            return []
        return _evaluate_and_record(run_, model, device, cache)


def _feature_cache(run_: _Run, model: DownstreamModel, device: torch.device, dist_ctx: DistContext
                   ) -> FeatureCache:
    r, up = run_.cfg.run, run_.upstream
    cache = FeatureCache(run_.job.cache_dir or default_cache_dir(), up, r.upstream,
                         run_.cfg.overrides_for(r.upstream), model.selection, r.seed,
                         run_.cfg.runner.eval_batch_size, device)
    if dist_ctx.enabled:  # rank 0 builds every shard once; the others read them
        if dist_ctx.is_main:
            for split in run_.data.splits:
                cache.dataset(run_.data, split, up.sample_rate, train=split == "train", seed=r.seed)
        dist_ctx.barrier()
    return cache


def _train(run_: _Run, model: DownstreamModel, device: torch.device, dist_ctx: DistContext,
           cache: FeatureCache | None) -> None:
    writer = None
    if dist_ctx.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_.expdir))
        except ImportError:  # tensorboard is optional: the log lines carry the same numbers
            writer = None
    ctx = engine.FitContext(run_.cfg, run_.spec, run_.expdir, device, dist_ctx, cache, writer,
                            trust_checkpoint=run_.job.trust_checkpoint)
    try:
        engine.fit(model, run_.data, ctx, resume=run_.job.resume)
    finally:
        if writer is not None:
            writer.close()


def _evaluate_and_record(run_: _Run, model: DownstreamModel, device: torch.device,
                         cache: FeatureCache | None) -> list[ResultRecord]:
    """Score the selected checkpoint on test (and the selection split) and append one record per split."""
    job, cfg, expdir, spec, data, r = run_.job, run_.cfg, run_.expdir, run_.spec, run_.data, run_.cfg.run
    given = _evaluated(Path(job.evaluate))[1] if job.evaluate is not None else None
    if given is not None and given.name != "dev-best.ckpt":  # s3prl's -e FILE: that checkpoint, as named
        ckpt, wa = given, given.name == "wa.ckpt"
    else:
        # SSAST run_as.sh --wa: AS-20K reports the weight-averaged model
        wa = cfg.schedule.wa and (expdir / "wa.ckpt").exists()
        ckpt = expdir / ("wa.ckpt" if wa else "dev-best.ckpt")
    state = engine.load_for_eval(model, ckpt, device, trust_checkpoint=job.trust_checkpoint)
    splits = ["test"] + ([data.selection_split] if data.selection_split != "test" else [])
    # the record keeps the run's identity but no machine paths (data root, checkpoint path: its sha256 stays)
    config_dict = config_to_dict(cfg)
    config_dict["run"] = {k: v for k, v in config_dict["run"].items() if k not in ("data_root", "ckpt")}
    base, metric, loss = data_base(r.data_root), str(spec.metric), spec.loss_for(r.finetune)
    records = []
    for split in splits:
        loader = engine.build_loader(data, spec, split, run_.upstream.sample_rate, cfg.runner, r.seed, cache)
        logits, targets, uids = engine.predict(model, loader, device, desc=f"{split} ({ckpt.name})")
        scores = spec.metric.report(logits, targets)  # the metric, and e.g. AS-20K's mAUC and d' beside it
        value = float(scores[metric])
        # what the score means: majority / chance baselines, per-class scores, and a warning on a collapse
        # ... and which clips were right (single-label), so paired tests need only the records
        report = evaluation_report(logits, targets, [c.label for c in data.splits["train"]], data.classes,
                                   data.multilabel, uids=uids)
        # per-clip predictions beside the run (error analysis), rewritten by each evaluation of this split
        write_predictions(expdir / f"predictions.{split}.jsonl",
                          prediction_rows(logits, targets, uids, data, split, loss, base))
        record = ResultRecord(
            upstream=r.upstream, task=r.task, split=split, ckpt_sha256=run_.ckpt_sha256, metric=metric,
            value=value, fold=r.fold, mode="finetune" if r.finetune else "frozen", layer=r.layer, seed=r.seed,
            config=config_dict, expname=r.expname, step=state["step"], label=r.label,
            dataset=data.identity(run_.upstream.sample_rate), baselines=report["baselines"],
            per_class=report["per_class"], predictions=report["predictions"], scores=scores)
        written = results.append(record, job.results, unique=True)
        records.append(record)
        how = ", weight-averaged" if wa else "" if ckpt.name == "dev-best.ckpt" else f", {ckpt.name}"
        note = "" if written else f" (already in {job.results}, not appended again)"
        bl = report["baselines"]
        print(f"{r.expname}: {split} {metric} = {value:.4f} (step {state['step']}{how}), baselines: majority "
              f"{bl['majority']:.4f}, chance {bl['chance']:.4f}{note}")
        if report["warning"]:
            print(f"warning: {r.expname}: {split}: {report['warning']}", file=sys.stderr)
    return records

