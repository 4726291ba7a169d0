"""Pretrain an SSAST / MAE-AST / ASiT encoder on unlabeled audio (the loop is ``pretrain/engine.py``).

    python run_pretrain.py -u ssast_patch -c configs/pretrain/ssast_patch_400.yaml --data DIR_OR_MANIFEST \\
        -n my_run [-o optim.lr=5e-5 -o max_steps=20000 ...] [--resume] [--device cuda|cpu] [--fbank-cache DIR]
        [--probe folder --probe-data-root LABELLED_DIR -o probe_every=200]
    torchrun --nproc_per_node 4 run_pretrain.py ...          # DDP: batch_size stays the global batch

Writes ``<expdir>/<name>/``: ``config.yaml`` (resolved), ``last.ckpt``, ``losses.jsonl``, ``tb/`` and, once the
run reaches ``max_steps`` (or ``--stop-at-step``), ``upstream.pt`` (loads with
``upstream.load("<any upstream of the family>", ckpt=...)``). A folder holding a run is not written into
without ``--resume``, nor with another configuration; ``--resume`` refuses changed settings (each differing
key is named) unless ``--allow-config-change``. SIGTERM / Ctrl-C: ``last.ckpt`` is saved after the step under
way (at the next ``log_every`` step under torchrun), no ``upstream.pt`` is written, and the exit code says
so; ``--resume`` continues exactly.

``--probe TASK`` watches the representation learn: at step 0 (the random initialisation) and every
``probe_every`` steps, a k-NN probe (``downstream.knn``: k=20 cosine neighbours, DINO's weighted vote) scores the
encoder's frozen clip features of the task's test split against its train split (at most ``--probe-clips`` of
each); ``losses.jsonl`` gets a ``{"step", "probe": {"knn_accuracy", "majority", "chance", ...}}`` line and
tensorboard ``probe/knn_accuracy``. Any single-label task ``run_downstream.py -d`` reads will do.

Exit codes: 0 done (``max_steps`` or ``--stop-at-step`` reached), 1 non-finite loss (the last good checkpoint,
if any, kept), 2 bad arguments, config, data or run folder (one ``error:`` line), 128 + the signal's number
when stopped by one (143 SIGTERM, 130 SIGINT).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from astbench.resources import config_path, shipped_path
from common.config import ConfigError, load_config
from pretrain.engine import DataError, NonFiniteLossError, PretrainConfig, pretrain

RECIPES = config_path("pretrain")  # shipped with the package: found from any folder
SHORTCUTS = {  # -u name: (objective defaults, default recipe)
    "ssast_patch": ({"family": "ssast", "token": "patch"}, "ssast_patch_400.yaml"),
    "ssast_frame": ({"family": "ssast", "token": "frame"}, "ssast_frame_400.yaml"),
    "mae_ast_patch": ({"family": "mae_ast", "token": "patch"}, "mae_ast_patch.yaml"),
    "mae_ast_frame": ({"family": "mae_ast", "token": "frame"}, "mae_ast_frame.yaml"),
    "asit": ({"family": "asit"}, "asit_base.yaml"),
}


def resolve_config(args: argparse.Namespace) -> PretrainConfig:
    out_dir = Path(args.expdir) / args.name
    if args.upstream and args.upstream not in SHORTCUTS and ":" not in args.upstream:
        raise ConfigError(f"-u {args.upstream!r} is not one of {sorted(SHORTCUTS)} or package.module:builder")
    shortcut = ({}, None)
    if args.upstream:
        shortcut = SHORTCUTS.get(args.upstream, ({"family": args.upstream}, None))
    yaml_path = shipped_path(args.config) if args.config else None  # configs/... also outside the checkout
    if yaml_path is None and args.resume and (out_dir / "config.yaml").is_file():
        yaml_path = out_dir / "config.yaml"  # the resumed run's own resolved config
    elif yaml_path is None and shortcut[1]:
        yaml_path = RECIPES / shortcut[1]
    elif yaml_path is None:
        raise ConfigError("give a recipe with -c configs/pretrain/<recipe>.yaml or a shortcut with -u "
                          f"({', '.join(SHORTCUTS)})")
    cfg = load_config(PretrainConfig, yaml_path, args.override, base={"objective": shortcut[0]})
    for key, want in shortcut[0].items():
        if cfg.objective.get(key) != want:
            raise ConfigError(f"-u {args.upstream} sets objective.{key}={want!r} but {yaml_path} or an "
                              f"override says {cfg.objective.get(key)!r}")
    cfg.out_dir = str(out_dir)
    if args.data is not None:
        cfg.data.path = args.data
    if args.device is not None:
        cfg.device = args.device
    if args.fbank_cache is not None:
        cfg.data.fbank_cache = args.fbank_cache
    return cfg


def make_probe(args: argparse.Namespace, rank: int):
    """The ``--probe`` callback (``downstream.knn.KnnProbe``), or None. Only rank 0 reads the data and probes;
    the other ranks get a stand-in so that every rank syncs at the same probe steps."""
    if not args.probe:
        return None
    if rank != 0:
        return lambda objective, step: {}
    from downstream.knn import KnnProbe  # the CLI joins the two packages; upstream never imports downstream

    try:
        return KnnProbe(args.probe, args.probe_data_root, max_clips=args.probe_clips)
    except ValueError as err:  # unknown or multi-label task, a data layout error (DatasetLayoutError)
        raise ConfigError(f"--probe {args.probe}: {' '.join(str(err).split())}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-u", "--upstream",
                   help=f"objective shortcut: {', '.join(SHORTCUTS)}, or package.module:builder")
    p.add_argument("-c", "--config", help="recipe YAML (default: the shortcut's paper recipe)")
    p.add_argument("--data", help="folder of audio files (recursive) or manifest (.jsonl/.csv/.json/.tsv)")
    p.add_argument("-n", "--name", required=True, help="experiment name: output in <expdir>/<name>")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, dotted for nested keys (optim.lr=1e-4, objective.mask_patch=250)")
    p.add_argument("--resume", action="store_true", help="continue from <expdir>/<name>/last.ckpt")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue with changed settings (e.g. a lower optim.lr after a divergence); "
                        "the old config.yaml is kept as config.to-step<K>.yaml")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="with --resume: unpickle last.ckpt in full even where it names Python objects this project "
                        "never writes: this can run code stored in the file (warns); off by default")
    p.add_argument("--stop-at-step", type=int, metavar="N",
                   help="checkpoint and exit after N steps in all (schedules still end at max_steps)")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    p.add_argument("--expdir", default="exp/pretrain", help="parent folder of experiments")
    p.add_argument("--fbank-cache", metavar="DIR",
                   help="precompute the recipe's fbank of every file once into DIR (memory-mapped shards) and "
                        "train on crops of it instead of decoding audio (= -o data.fbank_cache=DIR)")
    p.add_argument("--probe", metavar="TASK", help="k-NN probe of the encoder on this labelled task (e.g. folder) "
                   "at step 0 and every probe_every steps, to losses.jsonl and tensorboard")
    p.add_argument("--probe-data-root", metavar="DIR", help="the --probe task's data (default $ASTBENCH_DATA)")
    p.add_argument("--probe-clips", type=int, default=512, metavar="N",
                   help="--probe: at most N clips of the train and of the test split (default 512)")
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.allow_config_change and not args.resume:
        p.error("--allow-config-change only applies with --resume")
    if (args.probe_data_root is not None or args.probe_clips != 512) and not args.probe:
        p.error("--probe-data-root / --probe-clips only apply with --probe TASK")
    try:
        cfg = resolve_config(args)
        probe = make_probe(args, rank)
        result = pretrain(cfg, resume=args.resume, stop_at_step=args.stop_at_step,
                          allow_config_change=args.allow_config_change, trust_checkpoint=args.trust_checkpoint,
                          probe=probe)
    except (ConfigError, DataError) as err:
        print(f"run_pretrain.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"run_pretrain.py: error: {err}", file=sys.stderr)
        return 1
    stopped = result["stopped_by"]
    if rank == 0 and stopped:
        print(f"run_pretrain.py: stopped by {stopped} at step {result['step']} of {result['max_steps']}: "
              f"last.ckpt saved in {result['out_dir']}, no upstream.pt written; continue with: run_pretrain.py "
              f"-n {args.name} --expdir {args.expdir} --resume", file=sys.stderr)
    elif rank == 0:
        where = "" if result["step"] >= result["max_steps"] else f" of {result['max_steps']} (--stop-at-step)"
        print(f"done at step {result['step']}{where}: {result['out_dir']} (skipped files: "
              f"{result['skipped_files']})")
    if stopped:  # the shell's convention for a process ended by a signal; a peer's signal counts as SIGTERM
        sig = getattr(signal.Signals, stopped, signal.SIGTERM) if isinstance(stopped, str) else signal.SIGTERM
        return 128 + int(sig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
