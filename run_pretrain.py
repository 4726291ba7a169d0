"""Pretrain an SSAST / MAE-AST / ASiT encoder on unlabeled audio (the library is ``pretrain/``).

    python run_pretrain.py -u ssast_patch -c configs/pretrain/ssast_patch_400.yaml --data DIR_OR_MANIFEST \\
        -n my_run [-o optim.lr=5e-5 -o max_steps=20000 ...] [--resume] [--device cuda|cpu] [--fbank-cache DIR]
        [--probe TASK [TASK ...] --probe-data-root LABELLED_DIR -o probe_every=200]
    torchrun --nproc_per_node 4 run_pretrain.py ...          # DDP: batch_size stays the global batch

Writes ``<expdir>/<name>/``: ``config.yaml`` (resolved), ``last.ckpt``, ``losses.jsonl``, ``tb/`` and, once
the run reaches ``max_steps`` (or ``--stop-at-step``), ``upstream.pt`` (loads with ``upstream.load("<any
upstream of the family>", ckpt=...)``), whose path is printed on stdout. A folder holding a run is not
written into without ``--resume``, nor with another configuration; ``--resume`` refuses changed settings (each
differing key is named) unless ``--allow-config-change``. SIGTERM / Ctrl-C: ``last.ckpt`` is saved after the
step under way (at the next ``log_every`` step under torchrun), no ``upstream.pt`` is written; ``--resume``
continues exactly. ``--probe TASK [TASK ...]``: a k-NN probe (``downstream.knn``) of the encoder on each
labelled task at step 0 and every ``probe_every`` steps, one ``losses.jsonl`` line per task and tensorboard
``probe/<task>/knn_accuracy``.

Exit codes: 0 done, 1 non-finite loss (the last good checkpoint, if any, kept), 2 bad arguments, config, data
or run folder (one ``error:`` line), 128 + the signal's number when stopped by one (143 SIGTERM, 130 SIGINT).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import pretrain
from common.config import ConfigError

PROBE_CLIPS = 4000  # per probed task: leave-one-group-out over this many clips gives about +-1.5 points


def make_probe(args: argparse.Namespace, rank: int):
    """The ``--probe`` callback (one ``downstream.knn.KnnProbe`` per task, as a ``ProbeSet``), or None. Only
    rank 0 reads the data and probes; the other ranks get a stand-in so that every rank syncs at the same
    probe steps."""
    if not args.probe:
        return None
    if rank != 0:
        return lambda objective, step: []
    from downstream.knn import KnnProbe, ProbeSet  # the CLI joins the two packages; pretrain never imports it

    probes = []
    for task in args.probe:
        try:
            probes.append(KnnProbe(task, args.probe_data_root, max_clips=args.probe_clips,
                                   upstream=args.probe_upstream))
        except ValueError as err:  # unknown or multi-label task, a data layout error (DatasetLayoutError)
            raise ConfigError(f"--probe {task}: {' '.join(str(err).split())}") from None
    return ProbeSet(probes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("-u", "--upstream", help=f"shortcut ({', '.join(pretrain.shortcuts())}) or package.module:builder")
    add("-c", "--config", help="recipe YAML (default: the shortcut's paper recipe)")
    add("--data", help="folder of audio files (recursive) or manifest (.jsonl/.csv/.json/.tsv)")
    add("-n", "--name", required=True, help="experiment name: output in <expdir>/<name>")
    add("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
        help="config override, dotted for nested keys (optim.lr=1e-4, objective.mask_patch=250)")
    add("--resume", action="store_true", help="continue from <expdir>/<name>/last.ckpt")
    add("--allow-config-change", action="store_true", help="with --resume: continue with changed settings "
        "(e.g. a lower optim.lr after a divergence); the old config.yaml is kept as config.to-step<K>.yaml")
    add("--trust-checkpoint", action="store_true", help="with --resume: unpickle last.ckpt in full even "
        "where it names Python objects this project never writes: this can run code stored in it (warns)")
    add("--stop-at-step", type=int, metavar="N", help="checkpoint and exit after N steps in all (schedules "
        "still end at max_steps)")
    add("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    add("--expdir", default="exp/pretrain", help="parent folder of experiments")
    add("--fbank-cache", metavar="DIR", help="precompute the recipe's fbank of every file once into DIR "
        "(memory-mapped shards) and train on crops of it, not decoding audio (= -o data.fbank_cache=DIR)")
    add("--probe", metavar="TASK", nargs="+", help="k-NN probe of the encoder on these labelled tasks (e.g. "
        "folder) at step 0 and every probe_every steps, to losses.jsonl and tensorboard: leave one speaker "
        "or fold out over every clip, on the time-mean of last_hidden_state of the upstream the downstream "
        "loads")
    add("--probe-data-root", metavar="DIR", help="the --probe tasks' data (default $ASTBENCH_DATA)")
    add("--probe-clips", type=int, default=PROBE_CLIPS, metavar="N",
        help=f"--probe: at most N clips per task, a seeded draw (default {PROBE_CLIPS})")
    add("--probe-upstream", metavar="NAME", help="--probe: the registered upstream to load the encoder as "
        "(default: the family's, as its upstream.pt loads)")
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.allow_config_change and not args.resume:
        p.error("--allow-config-change only applies with --resume")
    if (args.probe_data_root is not None or args.probe_clips != PROBE_CLIPS or args.probe_upstream) \
            and not args.probe:
        p.error("--probe-data-root / --probe-clips / --probe-upstream only apply with --probe TASK")
    try:
        cfg = pretrain.resolve_config(args.upstream, args.config, args.override,
                                      out_dir=os.path.join(args.expdir, args.name), data=args.data,
                                      device=args.device, fbank_cache=args.fbank_cache, resume=args.resume)
        path = pretrain.run(cfg, resume=args.resume, probe=make_probe(args, rank),
                            stop_at_step=args.stop_at_step, allow_config_change=args.allow_config_change,
                            trust_checkpoint=args.trust_checkpoint)
    except (ConfigError, pretrain.DataError) as err:
        print(f"run_pretrain.py: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except pretrain.NonFiniteLossError as err:
        print(f"run_pretrain.py: error: {err}", file=sys.stderr)
        return 1
    except pretrain.PretrainStopped as stop:  # the shell's convention for a process ended by a signal
        if rank == 0:
            print(f"run_pretrain.py: {stop}; continue with: run_pretrain.py -n {args.name} --expdir "
                  f"{args.expdir} --resume", file=sys.stderr)
        return 128 + stop.signum
    if rank == 0:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
