"""SUPERB-style downstream runner (s3prl ``run_downstream.py``), one upstream API for frozen and ``-f`` runs.

    python run_downstream.py -u ssast_patch_400 -d speech_commands_v1 -n ks1_ssast --data-root DATA
    python run_downstream.py -u ssast_frame_400 -d speech_commands_v2 -f -o optimizer.lr=2.5e-4
    python run_downstream.py -u my_pkg.my_mod:build -d esc50 --fold 3          # a user's upstream
    python run_downstream.py -m evaluate -e exp/downstream/ks1_ssast            # re-score dev-best.ckpt
    python run_downstream.py -m evaluate -e exp/downstream/ks1_ssast/last.ckpt  # s3prl's -e: a checkpoint
    python run_downstream.py -u s3prl:hubert -d esc50 --fold 1                  # s3prl's (pip s3prl)
    python run_downstream.py ... -o "config.optimizer.lr=1e-4,,config.runner.total_steps=10"  # s3prl's -o
    python run_downstream.py -m esc50-select -e exp/downstream/x_esc50_fold{1,2,3,4,5}_finetune
    torchrun --nproc_per_node 4 run_downstream.py -u ssast_patch_400 -d esc50 --fold 1 -f   # DDP

Writes ``<expdir>/<expname>/{config.yaml, run.json, dev-best.ckpt, last.ckpt, evals.jsonl, events.*}``, the
per-clip ``predictions.<split>.jsonl`` of each reported evaluation, and appends one result record per
evaluated split to ``--results`` (rank 0 only under ``torchrun``; a record already there for the same run,
split and step is not written twice). Frozen runs cache the upstream's features under ``--cache-dir``.
The run itself is the library's ``downstream.run`` (``downstream/job.py``); this file only reads arguments.

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
import json
import sys

import downstream
from downstream.cache import CACHE_ENV
from downstream.results import DEFAULT_PATH
from downstream.tasks import TASKS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--mode", choices=("train", "evaluate", "esc50-select"), default="train")
    p.add_argument("-u", "--upstream", default="", help="registered name or package.module:builder")
    p.add_argument("-d", "--task", default="", help="downstream task: " + ", ".join(sorted(TASKS)))
    p.add_argument("-f", "--finetune", action="store_true", help="fine-tune the upstream with the head")
    p.add_argument("-l", "--layer", type=int, default=None, help="use hidden_states[LAYER] instead of wsum")
    p.add_argument("-n", "--expname", default="")
    p.add_argument("-c", "--config", default=None,
                   help="YAML (default configs/downstream/<task>[_finetune].yaml)")
    p.add_argument("-o", "--override", action="append", default=[],
                   help="key=value, e.g. optimizer.lr=1e-5; also s3prl's form config.a.b=v,,config.c=w")
    p.add_argument("-e", "--from", dest="from_dir", nargs="+", default=None,
                   help="-m evaluate: the run's folder, or one of its checkpoints (EXPDIR/last.ckpt); "
                        "-m esc50-select: the 5 fold runs' folders")
    p.add_argument("--ckpt", default=None, help="upstream checkpoint")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle checkpoints in full even where they name Python objects outside the "
                        "official formats' allow-list: this can run code stored in the file (warns); off by "
                        "default")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--fold", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from <expdir>/<expname>/last.ckpt")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--data-root", default=None, help="data folder (default $ASTBENCH_DATA)")
    p.add_argument("--expdir", default="exp/downstream")
    p.add_argument("--results", default=str(DEFAULT_PATH))
    p.add_argument("--label", default="", help="table row this run belongs to (default: the upstream name)")
    p.add_argument("--cache-dir", default=None, help=f"frozen-feature cache (default ${CACHE_ENV} or "
                   "~/.cache/astbench/features)")
    p.add_argument("--no-cache", action="store_true", help="frozen runs: run the upstream every epoch")
    p.add_argument("--split-seed", type=int, default=None, help="folder/manifest without a split: seed of "
                   "the per-class train/dev/test draw (default 0: the same split for every run; "
                   "data.split_seed)")
    p.add_argument("--split-ratios", default=None, metavar="TRAIN,DEV,TEST", help="folder/manifest without a "
                   "split: fractions of the draw (default 0.8,0.1,0.1; data.split_ratios)")
    p.add_argument("--strict-audio", action="store_true", help="refuse a dataset with unusable audio files, "
                   "naming the first, instead of skipping and counting them (data.on_bad_audio=error)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration as YAML "
                   "(task config, family protocol, -c/-o; the upstream's front end; each protocol value's "
                   "source) and exit; reads no data and needs no checkpoint")
    return p.parse_args(argv)


def to_job(args: argparse.Namespace) -> downstream.DownstreamJob:
    """The library's description of what ``args`` ask for; ValueError for ``-m evaluate`` without one
    ``-e``."""
    evaluate = None
    if args.mode == "evaluate":
        if not args.from_dir or len(args.from_dir) != 1:
            raise ValueError("-m evaluate takes one run folder or one of its checkpoints: -e EXPDIR or "
                             "-e EXPDIR/dev-best.ckpt")
        evaluate = args.from_dir[0]
    return downstream.DownstreamJob(
        upstream=args.upstream, task=args.task, finetune=args.finetune, layer=args.layer, fold=args.fold,
        seed=args.seed, ckpt=args.ckpt, trust_checkpoint=args.trust_checkpoint, name=args.expname,
        config=args.config, overrides=tuple(args.override), data_root=args.data_root, expdir=args.expdir,
        results=args.results, label=args.label, cache_dir=args.cache_dir, use_cache=not args.no_cache,
        resume=args.resume, evaluate=evaluate, device=args.device, split_seed=args.split_seed,
        split_ratios=args.split_ratios, strict_audio=args.strict_audio)


def _one_line(err: BaseException) -> str:
    """The error's message on one line; for an exception re-raised from a DataLoader worker, the original
    message rather than the worker's traceback."""
    text = str(err)
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(ln.strip() for ln in text.splitlines() if ln.strip())


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.mode == "esc50-select":  # SSAST's one epoch for all folds, printed as JSON
            print(json.dumps(downstream.select_fold_runs("esc50", args.from_dir or [])))
        elif args.print_config:
            print(downstream.render_config(to_job(args)), end="")
        else:
            downstream.run(to_job(args))
    except downstream.UpstreamContractError as err:  # its problems are on stderr already
        print(f"error: {err}", file=sys.stderr)
        return 3
    except FloatingPointError as err:  # a non-finite training loss
        print(f"error: {err}", file=sys.stderr)
        return 4
    except (ValueError, FileNotFoundError) as err:  # settings, data, checkpoint or run folder
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
