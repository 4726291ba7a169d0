"""``python -m benchmark <command>``: the demo, the demo corpus, suites, tables, the upstream validator and
checkpoint downloads.

    python -m benchmark demo [--large]           # the whole pipeline on a generated corpus (README's main command)
    python -m benchmark demo-data --out DIR      # just generate the corpus
    python -m benchmark run SUITE ...            # sweep a paper table's runs (see --list)
    python -m benchmark tables [--plots]         # rebuild every table from results/results.jsonl
    python -m benchmark validate -u pkg.mod:fn   # check a plug-in upstream against the contract
    python -m benchmark download NAME            # fetch a released checkpoint into $ASTBENCH_CHECKPOINTS
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {  # name: (module, help)
    "demo": ("benchmark.demo", "run the whole pipeline on the generated demo corpus"),
    "demo-data": ("benchmark.demo_data", "generate the demo corpus in the public dataset layouts"),
    "run": ("benchmark.suites", "run a suite: a paper table's upstreams x tasks x modes x seeds"),
    "tables": ("benchmark.tables", "rebuild the tables (markdown, CSV, LaTeX) from result records"),
    "validate": ("downstream.validate", "check an upstream (e.g. your module:builder) against the contract"),
    "download": ("upstream.download", "download a released checkpoint into $ASTBENCH_CHECKPOINTS, verified"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module, help_text) in COMMANDS.items():
        modules[name] = importlib.import_module(module)
        modules[name].add_arguments(sub.add_parser(name, help=help_text, description=modules[name].__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    return modules[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
