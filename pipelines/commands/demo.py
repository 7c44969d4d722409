"""``reinforge demo``: the main job, short, on an embedded local Ray instance."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the short end-to-end demo and print where its report and plots are")
    p.add_argument("--out", metavar="DIR", help="demo directory (default runs/demo-<timestamp>)")
    p.add_argument("--only", action="append", default=[], metavar="STEP", help="run only these demo steps")
    p.add_argument("--address", help="Ray cluster address (default: an embedded local instance)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    return run_demo(out=args.out, only=args.only, address=args.address)
