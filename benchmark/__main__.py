"""``python -m benchmark <command>``: the demo and (later) suites and tables."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the built-in demo on a generated clip")
    demo.add_argument("--seconds", type=float, default=3.0, help="length of the generated clip")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--upstreams", nargs="*", default=None, help="names to run (default: all registered)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .features_demo import run

        return run(args.seconds, args.device, args.upstreams)
    return 2


if __name__ == "__main__":
    sys.exit(main())
