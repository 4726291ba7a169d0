"""``python -m benchmark <command>``: the demo, the demo corpus, suites, tables, the upstream validator and
checkpoint downloads.

    python -m benchmark demo [--large]           # the whole pipeline on a generated corpus (the main command)
    python -m benchmark demo --publish results/demo   # its records, table, plot to results/ (--render: redo)
    python -m benchmark demo-data --out DIR      # just generate the corpus
    python -m benchmark run SUITE ...            # sweep a paper table's runs (see --list)
    python -m benchmark tables [--plots]         # rebuild every paper table from results/results.jsonl
    python -m benchmark validate -u pkg.mod:fn   # check a plug-in upstream against the contract
    python -m benchmark download NAME            # fetch a released checkpoint into $ASTBENCH_CHECKPOINTS
    python -m benchmark probe-curves RUN ...     # k-NN probe accuracy against pretraining step (--probe)
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from pretrain import PretrainStopped

COMMANDS = {  # name: (module, help)
    "demo": ("benchmark.demo", "run the whole pipeline on the generated demo corpus"),
    "demo-data": ("benchmark.demo_data", "generate the demo corpus in the public dataset layouts"),
    "run": ("benchmark.suites", "run a suite: a paper table's upstreams x tasks x modes x seeds"),
    "tables": ("benchmark.tables", "rebuild the tables (markdown, CSV, LaTeX) from result records"),
    "validate": ("downstream.validate", "check an upstream (e.g. your module:builder) against the contract"),
    "download": ("upstream.download", "download a released checkpoint into $ASTBENCH_CHECKPOINTS, verified"),
    "probe-curves": ("benchmark.probe_curves", "table and plot of probe accuracy against pretraining steps"),
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; its exit code."""
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module, help_text) in COMMANDS.items():
        modules[name] = importlib.import_module(module)
        modules[name].add_arguments(sub.add_parser(name, help=help_text, description=modules[name].__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    # progress of the library (e.g. pretraining's loss lines) on stderr; under torchrun from rank 0 only
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return modules[args.command].run(args)
    except PretrainStopped as err:  # SIGTERM / Ctrl-C during a sweep's pretraining: last.ckpt was saved
        print(f"error: {err}; the same command resumes it", file=sys.stderr)
        return 128 + err.signum


if __name__ == "__main__":
    sys.exit(main())
