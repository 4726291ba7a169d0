"""SUPERB-style downstream runner (s3prl ``run_downstream.py``), one upstream API for frozen and ``-f`` runs.

    python run_downstream.py -u ssast_patch_400 -d speech_commands_v1 -n ks1_ssast --data-root DATA
    python run_downstream.py -u ssast_frame_400 -d speech_commands_v2 -f -o optimizer.lr=2.5e-4
    python run_downstream.py -u my_pkg.my_mod:build -d esc50 --fold 3          # a user's upstream
    python run_downstream.py -m evaluate -e exp/downstream/ks1_ssast            # re-score dev-best.ckpt
    python run_downstream.py -m evaluate -e exp/downstream/ks1_ssast/last.ckpt  # s3prl's -e: a checkpoint
    python run_downstream.py -u s3prl:hubert -d esc50 --fold 1                  # an s3prl upstream (pip s3prl)
    python run_downstream.py ... -o "config.optimizer.lr=1e-4,,config.runner.total_steps=10"  # s3prl's -o
    python run_downstream.py -m esc50-select -e exp/downstream/x_esc50_fold{1,2,3,4,5}_finetune
    torchrun --nproc_per_node 4 run_downstream.py -u ssast_patch_400 -d esc50 --fold 1 -f   # DDP

Writes ``<expdir>/<expname>/{config.yaml, run.json, dev-best.ckpt, last.ckpt, evals.jsonl, events.*}``, the
per-clip ``predictions.<split>.jsonl`` of each reported evaluation (``downstream.predictions``), and
appends one ``ResultRecord`` per evaluated split to ``--results`` (rank 0 only under ``torchrun``; a record
already there for the same run, split and step is not written twice). Frozen runs cache the upstream's
features under ``--cache-dir`` (``downstream.cache``).

Run folders. Without ``-n`` the folder is named by upstream, task, fold, mode, layer and seed plus a hash of
everything else that makes a run different (resolved config with overrides, checkpoint sha256, data root), so
two runs that differ in anything never share a folder. A folder holding another configuration is refused
(the differing keys are listed), as is one holding a run when ``--resume`` is not given; ``--resume``
refuses a changed configuration except ``runner.total_steps`` (a run may be continued further),
``runner.num_workers`` and ``runner.log_step``. Exit codes: 0 done, 2 bad arguments, config, data or run
folder (one ``error:`` line), 3 a plug-in upstream breaks the contract, 4 non-finite training loss.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

import upstream as upstreams
from astbench.resources import config_path, shipped_path
from benchmark import results
from common.config import (ConfigError, config_from_dict, config_to_dict, ensure_writable_dir, load_config,
                              run_dir_lock)
from downstream import protocols, rundir, runner
from downstream.cache import CACHE_ENV, FeatureCache, default_cache_dir
from common.distributed import setup_distributed
from downstream.metrics import esc50_select_runs, evaluation_report
from downstream.predictions import data_base, prediction_rows, write_predictions
from downstream.datasets import DatasetLayoutError
from downstream.runner import DownstreamConfig, DownstreamModel, RunConfig
from downstream.tasks import TASKS, data_overrides, get_task
from downstream.validate import errors, validate_upstream
from upstream.registry import resolve_builder

CONFIG_DIR = config_path("downstream")  # shipped with the package: found from any folder


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--mode", choices=("train", "evaluate", "esc50-select"), default="train")
    p.add_argument("-u", "--upstream", help="registered name or package.module:builder")
    p.add_argument("-d", "--task", help="downstream task: " + ", ".join(sorted(TASKS)))
    p.add_argument("-f", "--finetune", action="store_true", help="fine-tune the upstream with the head")
    p.add_argument("-l", "--layer", type=int, default=None, help="use hidden_states[LAYER] instead of wsum")
    p.add_argument("-n", "--expname", default="")
    p.add_argument("-c", "--config", default=None, help="YAML (default configs/downstream/<task>[_finetune].yaml)")
    p.add_argument("-o", "--override", action="append", default=[],
                   help="key=value, e.g. optimizer.lr=1e-5; also s3prl's form config.a.b=v,,config.c=w")
    p.add_argument("-e", "--from", dest="from_dir", nargs="+", default=None,
                   help="-m evaluate: the run's folder, or one of its checkpoints (EXPDIR/last.ckpt); "
                        "-m esc50-select: the 5 fold runs' folders")
    p.add_argument("--ckpt", default=None, help="upstream checkpoint")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle checkpoints in full even where they name Python objects outside the official "
                        "formats' allow-list: this can run code stored in the file (warns); off by default")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--fold", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from <expdir>/<expname>/last.ckpt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-root", default=None, help="data folder (default $ASTBENCH_DATA)")
    p.add_argument("--expdir", default="exp/downstream")
    p.add_argument("--results", default=str(results.DEFAULT_PATH))
    p.add_argument("--label", default="", help="table row this run belongs to (default: the upstream name)")
    p.add_argument("--cache-dir", default=None, help=f"frozen-feature cache (default ${CACHE_ENV} or "
                   "~/.cache/astbench/features)")
    p.add_argument("--no-cache", action="store_true", help="frozen runs: run the upstream every epoch")
    p.add_argument("--split-seed", type=int, default=None, help="folder/manifest without a split: seed of the "
                   "per-class train/dev/test draw (default 0: the same split for every run; data.split_seed)")
    p.add_argument("--split-ratios", default=None, metavar="TRAIN,DEV,TEST", help="folder/manifest without a "
                   "split: fractions of the draw (default 0.8,0.1,0.1; data.split_ratios)")
    p.add_argument("--strict-audio", action="store_true", help="refuse a dataset with unusable audio files, naming "
                   "the first, instead of skipping and counting them (data.on_bad_audio=error)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration as YAML (task "
                   "config, family protocol, -c/-o; the upstream's front end; each protocol value's source) and "
                   "exit; reads no data and needs no checkpoint")
    return p.parse_args(argv)


def resolve_config(args) -> tuple[DownstreamConfig, Path]:
    if args.mode == "evaluate":
        if not args.from_dir or len(args.from_dir) != 1:
            raise ValueError("-m evaluate takes one run folder or one of its checkpoints: -e EXPDIR or "
                             "-e EXPDIR/dev-best.ckpt")
        expdir, ckpt = _evaluated(Path(args.from_dir[0]))
        for need in ("config.yaml", ckpt.name):
            if not (expdir / need).is_file():
                raise ValueError(f"-m evaluate: {expdir} has no {need}: not the folder of a trained run")
        if data_overrides(args.split_seed, args.split_ratios, args.strict_audio):
            raise ValueError("--split-seed/--split-ratios/--strict-audio set a new run's data; -m evaluate uses "
                             "the run's own (its config.yaml, section data)")
        cfg = config_from_dict(DownstreamConfig, yaml.safe_load((expdir / "config.yaml").read_text()),
                               f"{expdir / 'config.yaml'}")
        return (replace(cfg, run=replace(cfg.run, data_root=args.data_root)) if args.data_root else cfg), expdir
    if not args.upstream or not args.task:
        raise ValueError("-u UPSTREAM and -d TASK are required in train mode")
    spec = get_task(args.task)
    spec.check_fold(args.fold)
    default = CONFIG_DIR / f"{args.task}{'_finetune' if args.finetune else ''}.yaml"
    path = shipped_path(args.config) if args.config else default  # configs/... also outside the checkout
    # defaults <- task config <- the family's protocol <- -c <- -o (downstream.protocols)
    cfg = protocols.resolve(args.upstream, args.task, args.finetune, path if args.config else None,
                            [*s3prl_overrides(args.override),
                             *data_overrides(args.split_seed, args.split_ratios, args.strict_audio)])
    run = RunConfig(upstream=args.upstream, ckpt=args.ckpt, task=args.task, fold=args.fold,
                    finetune=args.finetune, layer=args.layer, seed=args.seed, data_root=args.data_root,
                    expname=args.expname, label=args.label)
    cfg = replace(cfg, run=run)
    name = args.expname or rundir.default_expname(cfg)
    return replace(cfg, run=replace(run, expname=name)), Path(args.expdir) / name


def s3prl_overrides(items: list[str]) -> list[str]:
    """``-o`` values as ``key=value`` items: s3prl's ``"config.a.b=v,,config.c=w"`` (one ``-o`` holding several
    overrides joined by ``,,``, each key under ``config.``) becomes ``["a.b=v", "c=w"]``; plain items pass."""
    out = []
    for item in items:
        for part in (p.strip() for p in item.split(",,")):
            if part:
                out.append(part.removeprefix("config."))
    return out


def _evaluated(given: Path) -> tuple[Path, Path]:
    """``-m evaluate -e``: (run folder, checkpoint file). A folder means its reported model (``wa.ckpt`` when
    the run averaged weights, else ``dev-best.ckpt``, chosen once the config is read); a file is s3prl's habit of
    naming the checkpoint itself (``-e EXPDIR/dev-best.ckpt``, ``EXPDIR/last.ckpt``), its folder is the run."""
    if not given.is_dir() and (given.is_file() or given.suffix in (".ckpt", ".pt", ".pth")):
        if given.suffix not in (".ckpt", ".pt", ".pth"):
            raise ValueError(f"-m evaluate -e {given}: give a run folder or one of its checkpoints (.ckpt), "
                             f"not a {given.suffix or 'suffix-less'} file")
        return given.parent, given
    return given, given / "dev-best.ckpt"


def _check_up_front(args, cfg: DownstreamConfig, expdir: Path) -> None:
    """Everything about outputs that can fail, checked before any data is read or step trained."""
    results.check_writable(args.results)
    if args.mode == "train":
        ensure_writable_dir(expdir.parent, "experiment folder (--expdir)")
        rundir.check_before_run(expdir, cfg, args.resume, named=bool(args.expname))


def _one_line(err: BaseException) -> str:
    """The error's message on one line; for an exception re-raised from a DataLoader worker, the original
    message rather than the worker's traceback."""
    text = str(err)
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(ln.strip() for ln in text.splitlines() if ln.strip())


def _fail(err: BaseException) -> int:
    print(f"error: {_one_line(err)}", file=sys.stderr)
    return 2


def print_config(args) -> int:
    """``--print-config``: the run's resolved configuration on stdout (``downstream.protocols.render``)."""
    try:
        if args.mode == "train" and args.task and args.fold is None and get_task(args.task).folds:
            args.fold = get_task(args.task).folds[0]  # every fold resolves the same; run.fold says which
        # the default folder name hashes the checkpoint and data root, which printing does not need
        args.expname = args.expname or "(default: named at run time from these settings, checkpoint, data root)"
        cfg, _ = resolve_config(args)
        text = protocols.render(cfg, args.config, args.override)
    except (ValueError, ConfigError, FileNotFoundError) as err:
        return _fail(err)
    print(text, end="")
    return 0


def esc50_select(args) -> int:
    """``-m esc50-select -e FOLD1 .. FOLD5``: SSAST's one epoch for all folds, printed as JSON."""
    try:
        chosen = esc50_select_runs(args.from_dir or [])
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(chosen))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.mode == "esc50-select":
        return esc50_select(args)
    if args.print_config:
        return print_config(args)
    try:
        cfg, expdir = resolve_config(args)
        r = cfg.run
        spec = get_task(r.task)
        resolve_builder(r.upstream)  # an unknown upstream fails before any data is read
        if cfg.augment.active and not r.finetune:
            raise ValueError("augment.* is set but this is a frozen run: augmentation is for -f PSLA runs only "
                             "(the frozen s3prl probes see clean clips)")
        _check_up_front(args, cfg, expdir)
        if not r.finetune and cfg.runner.feature_cache and not args.no_cache:
            ensure_writable_dir(args.cache_dir or default_cache_dir(), "feature cache folder (--cache-dir)")
        data = spec.read(r.data_root, r.fold, cfg.data)
        # seed before building: a random-init upstream (frozen, so not in the checkpoint) is then rebuilt exactly
        random.seed(r.seed), np.random.seed(r.seed), torch.manual_seed(r.seed)
        up = upstreams.load(r.upstream, r.ckpt, trust_checkpoint=args.trust_checkpoint,
                            **cfg.overrides_for(r.upstream))
    except (ValueError, ConfigError, DatasetLayoutError, FileNotFoundError) as err:
        return _fail(err)
    if ":" in r.upstream:
        problems = validate_upstream(up, finetune=r.finetune)
        for prob in problems:
            print(f"upstream {r.upstream}: {prob}", file=sys.stderr)
        if errors(problems):
            print(f"error: upstream {r.upstream} violates the upstream contract (see above)", file=sys.stderr)
            return 3
    dist_ctx, device = setup_distributed(args.device)
    try:
        return _run(args, cfg, expdir, data, spec, up, device, dist_ctx)
    except ValueError as err:  # ConfigError, DatasetLayoutError, AudioError met while training or evaluating
        return _fail(err)
    finally:
        dist_ctx.close()


def _run(args, cfg, expdir, data, spec, up, device, dist_ctx) -> int:
    r = cfg.run
    model = DownstreamModel(up, data.num_classes, cfg.head, r.layer, r.finetune).to(device)
    config_dict = config_to_dict(cfg)
    with contextlib.ExitStack() as stack:
        if args.mode == "train":  # rank 0 holds the run folder until its records are written
            problem = None
            if dist_ctx.is_main:
                try:
                    stack.enter_context(run_dir_lock(expdir))
                    sha = getattr(up, "checkpoint_sha256", None) or rundir.checkpoint_sha256(r.ckpt)
                    rundir.claim(expdir, cfg, sha, args.resume)
                except ValueError as err:
                    problem = str(err)
            problems = [p for p in dist_ctx.gather(problem) if p]
            if problems:  # every rank stops, not only rank 0
                raise ConfigError(problems[0])
        cache = None
        if not r.finetune and cfg.runner.feature_cache and not args.no_cache:
            cache = FeatureCache(args.cache_dir or default_cache_dir(), up, r.upstream,
                                 cfg.overrides_for(r.upstream), model.selection, r.seed, cfg.runner.eval_batch_size,
                                 device)
            if dist_ctx.enabled:  # rank 0 builds every shard once; the others read them
                if dist_ctx.is_main:
                    for split in data.splits:
                        cache.dataset(data, split, up.sample_rate, train=split == "train", seed=r.seed)
                dist_ctx.barrier()
        if args.mode == "train":
            writer = None
            if dist_ctx.is_main:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    writer = SummaryWriter(str(expdir))
                except ImportError:
                    writer = None
            try:
                runner.fit(model, data, spec, cfg, expdir, device, config_dict, resume=args.resume, writer=writer,
                           cache=cache, dist_ctx=dist_ctx, trust_checkpoint=args.trust_checkpoint)
            except FloatingPointError as err:
                print(f"error: {err}", file=sys.stderr)
                return 4
            finally:
                if writer is not None:
                    writer.close()
        if not dist_ctx.is_main:
            return 0
        _evaluate_and_record(args, cfg, expdir, data, spec, up, model, device, cache, config_dict)
    return 0


def _evaluate_and_record(args, cfg, expdir, data, spec, up, model, device, cache, config_dict) -> None:
    """Score the selected checkpoint on test (and the selection split) and append one record per split."""
    r = cfg.run
    given = _evaluated(Path(args.from_dir[0]))[1] if args.mode == "evaluate" and args.from_dir else None
    if given is not None and given.name != "dev-best.ckpt":  # s3prl's -e FILE: that checkpoint, as named
        ckpt, wa = given, given.name == "wa.ckpt"
    else:
        wa = cfg.schedule.wa and (expdir / "wa.ckpt").exists()  # SSAST run_as.sh --wa: AS-20K reports the WA model
        ckpt = expdir / ("wa.ckpt" if wa else "dev-best.ckpt")
    state = runner.load_for_eval(model, ckpt, device, trust_checkpoint=args.trust_checkpoint)
    splits = ["test"] + ([data.selection_split] if data.selection_split != "test" else [])
    # the record keeps the run's identity but no machine paths (data root, checkpoint path: its sha256 is kept)
    config_dict["run"] = {k: v for k, v in config_dict["run"].items() if k not in ("data_root", "ckpt")}
    base = data_base(r.data_root)
    for split in splits:
        loader = runner.build_loader(data, spec, split, up.sample_rate, cfg.runner, r.seed, cache)
        logits, targets, uids = runner.predict(model, loader, device, desc=f"{split} ({ckpt.name})")
        value = runner.score(logits, targets, spec)[spec.metric]
        # what the score means: majority / chance baselines, per-class scores, and a warning on a collapse
        report = evaluation_report(logits, targets, [c.label for c in data.splits["train"]], data.classes,
                                   data.multilabel)
        # per-clip predictions beside the run (error analysis), rewritten by each evaluation of this split
        write_predictions(expdir / f"predictions.{split}.jsonl",
                          prediction_rows(logits, targets, uids, data, split, spec.loss_for(r.finetune), base))
        how = ", weight-averaged" if wa else "" if ckpt.name == "dev-best.ckpt" else f", {ckpt.name}"
        written = results.append(results.ResultRecord(
            upstream=r.upstream, task=r.task, split=split,
            ckpt_sha256=getattr(up, "checkpoint_sha256", None) or rundir.checkpoint_sha256(r.ckpt),  # plug-ins too
            metric=spec.metric, value=float(value), fold=r.fold, mode="finetune" if r.finetune else "frozen",
            layer=r.layer, seed=r.seed, config=config_dict, expname=r.expname, step=state["step"],
            label=r.label, dataset=data.identity(up.sample_rate), baselines=report["baselines"],
            per_class=report["per_class"], predictions=report["predictions"]), args.results, unique=True)
        note = "" if written else f" (already in {args.results}, not appended again)"
        bl = report["baselines"]
        print(f"{r.expname}: {split} {spec.metric} = {value:.4f} (step {state['step']}{how}), baselines: majority "
              f"{bl['majority']:.4f}, chance {bl['chance']:.4f}{note}")
        if report["warning"]:
            print(f"warning: {r.expname}: {split}: {report['warning']}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
