"""SUPERB-style downstream runner (s3prl ``run_downstream.py``), one upstream API for frozen and ``-f`` runs.

    python run_downstream.py -u ssast_patch_400 -d speech_commands_v1 -n ks1_ssast --data-root DATA
    python run_downstream.py -u ssast_frame_400 -d speech_commands_v2 -f -o optimizer.lr=2.5e-4
    python run_downstream.py -u my_pkg.my_mod:build -d esc50 --fold 3          # a user's upstream
    python run_downstream.py -m evaluate -e exp/downstream/ks1_ssast            # re-score dev-best.ckpt

Writes ``<expdir>/<expname>/{config.yaml, dev-best.ckpt, last.ckpt, evals.jsonl, events.*}`` and appends one
``ResultRecord`` per evaluated split to ``--results``.
"""
from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

import upstream as upstreams
from benchmark import results
from benchmark.config import ConfigError, config_from_dict, config_to_dict, dump_config, load_config
from downstream import runner
from downstream.datasets import DatasetLayoutError
from downstream.runner import DownstreamConfig, DownstreamModel, RunConfig
from downstream.tasks import get_task
from downstream.validate import errors, validate_upstream
from upstream.registry import resolve_builder

CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "downstream"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--mode", choices=("train", "evaluate"), default="train")
    p.add_argument("-u", "--upstream", help="registered name or package.module:builder")
    p.add_argument("-d", "--task", help="downstream task (downstream.tasks.TASKS)")
    p.add_argument("-f", "--finetune", action="store_true", help="fine-tune the upstream with the head")
    p.add_argument("-l", "--layer", type=int, default=None, help="use hidden_states[LAYER] instead of wsum")
    p.add_argument("-n", "--expname", default="")
    p.add_argument("-c", "--config", default=None, help="YAML (default configs/downstream/<task>[_finetune].yaml)")
    p.add_argument("-o", "--override", action="append", default=[], help="key=value, e.g. optimizer.lr=1e-5")
    p.add_argument("-e", "--from", dest="from_dir", default=None, help="-m evaluate: the run's folder")
    p.add_argument("--ckpt", default=None, help="upstream checkpoint")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--fold", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from <expdir>/<expname>/last.ckpt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-root", default=None, help="data folder (default $ASTBENCH_DATA)")
    p.add_argument("--expdir", default="exp/downstream")
    p.add_argument("--results", default=str(results.DEFAULT_PATH))
    p.add_argument("--label", default="", help="table row this run belongs to (default: the upstream name)")
    return p.parse_args(argv)


def resolve_config(args) -> tuple[DownstreamConfig, Path]:
    if args.mode == "evaluate":
        expdir = Path(args.from_dir)
        cfg = config_from_dict(DownstreamConfig, yaml.safe_load((expdir / "config.yaml").read_text()),
                               f"{expdir / 'config.yaml'}")
        return (replace(cfg, run=replace(cfg.run, data_root=args.data_root)) if args.data_root else cfg), expdir
    if not args.upstream or not args.task:
        raise ValueError("-u UPSTREAM and -d TASK are required in train mode")
    spec = get_task(args.task)
    spec.check_fold(args.fold)
    path = args.config or CONFIG_DIR / f"{args.task}{'_finetune' if args.finetune else ''}.yaml"
    cfg = load_config(DownstreamConfig, path, args.override)
    mode = "finetune" if args.finetune else "frozen"
    name = args.expname or "_".join(x for x in [args.upstream.replace(":", "."), args.task,
                                    f"fold{args.fold}" if args.fold else "", mode,
                                    f"l{args.layer}" if args.layer is not None else ""] if x)
    run = RunConfig(upstream=args.upstream, ckpt=args.ckpt, task=args.task, fold=args.fold,
                    finetune=args.finetune, layer=args.layer, seed=args.seed, data_root=args.data_root,
                    expname=name, label=args.label)
    return replace(cfg, run=run), Path(args.expdir) / name


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg, expdir = resolve_config(args)
        r = cfg.run
        spec = get_task(r.task)
        resolve_builder(r.upstream)  # an unknown upstream fails before any data is read
        data = spec.read(r.data_root, r.fold)
        # seed before building: a random-init upstream (frozen, so not in the checkpoint) is then rebuilt exactly
        random.seed(r.seed), np.random.seed(r.seed), torch.manual_seed(r.seed)
        up = upstreams.load(r.upstream, r.ckpt, **cfg.upstream_overrides)
    except (ValueError, ConfigError, DatasetLayoutError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if ":" in r.upstream:
        problems = validate_upstream(up)
        for prob in problems:
            print(f"upstream {r.upstream}: {prob}", file=sys.stderr)
        if errors(problems):
            print(f"error: upstream {r.upstream} violates the upstream contract (see above)", file=sys.stderr)
            return 3
    device = torch.device(args.device)
    model = DownstreamModel(up, data.num_classes, cfg.head, r.layer, r.finetune).to(device)
    config_dict = config_to_dict(cfg)
    if args.mode == "train":
        expdir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, expdir / "config.yaml")
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(expdir))
        except ImportError:
            writer = None
        try:
            runner.fit(model, data, spec, cfg, expdir, device, config_dict, resume=args.resume, writer=writer)
        except FloatingPointError as err:
            print(f"error: {err}", file=sys.stderr)
            return 4
        finally:
            if writer is not None:
                writer.close()
    state = runner.load_for_eval(model, expdir / "dev-best.ckpt", device)
    splits = ["test"] + ([data.selection_split] if data.selection_split != "test" else [])
    # the record keeps the run's identity but no machine paths (data root, checkpoint path: its sha256 is kept)
    config_dict["run"] = {k: v for k, v in config_dict["run"].items() if k not in ("data_root", "ckpt")}
    for split in splits:
        loader = runner.build_loader(data, spec, split, up.sample_rate, cfg.runner, r.seed)
        value = runner.evaluate(model, loader, spec, device)[spec.metric]
        print(f"{r.expname}: {split} {spec.metric} = {value:.4f} (step {state['step']})")
        results.append(results.ResultRecord(
            upstream=r.upstream, ckpt_sha256=getattr(up, "checkpoint_sha256", None), task=r.task, split=split,
            metric=spec.metric, value=float(value), fold=r.fold, mode="finetune" if r.finetune else "frozen",
            layer=r.layer, seed=r.seed, config=config_dict, expname=r.expname, step=state["step"],
            label=r.label), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
