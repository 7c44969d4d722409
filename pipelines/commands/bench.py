"""``reinforge bench``: run the benchmarks in benchmarks/ (JSON out, side-by-side table)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from cluster.errors import ConfigError

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def register(sub) -> None:
    p = sub.add_parser("bench", help="run benchmarks (writes bench-results/*.json and prints a table)")
    p.add_argument("name", nargs="?", default="all", help="benchmark name or 'all' (see --list)")
    p.add_argument("--list", action="store_true", help="list the benchmarks")
    p.add_argument("--quick", action="store_true", help="smallest sizes (a smoke run)")
    p.add_argument("--out", default="bench-results", help="directory for the JSON results")
    p.add_argument("--require-gpu", action="store_true", help="gpu: exit 2 when no CUDA GPU is visible (else it says so, exit 0)")
    p.add_argument("args", nargs=argparse.REMAINDER,
                   help="after --: arguments for the benchmark script (e.g. bench atari-learning -- --game Pong)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    names = available()
    args.name = args.name.replace("-", "_")  # rlhf-arithmetic runs bench_rlhf_arithmetic.py
    if args.list:
        print("\n".join(names) if names else "no benchmarks found")
        return 0
    if args.name != "all" and args.name not in names:
        raise ConfigError(f"unknown benchmark {args.name!r}; available: {', '.join(names) or 'none'}")
    from cluster.progress import progress

    status = 0
    chosen = names if args.name == "all" else [args.name]
    # each benchmark shows its own bar; this one counts the benchmarks of `bench all`
    with progress(len(chosen), "bench", unit="benchmark", plain_every_s=0) as bar:
        for name in chosen:
            cmd = [sys.executable, str(BENCH_DIR / f"bench_{name}.py"), "--out", args.out]
            if args.quick:
                cmd.append("--quick")
            if args.require_gpu and name == "gpu":
                cmd.append("--require-gpu")
            cmd += [a for a in args.args if a != "--"]
            print(f"== bench {name}: {' '.join(cmd)}", flush=True)
            rc = subprocess.call(cmd)
            status = max(status, rc)
            bar.update(1, last=name, failed=int(rc != 0) + int(bar.postfix.get("failed", 0)))
    return status
