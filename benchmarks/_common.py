"""Helpers every benchmark script shares: arguments, JSON output, the side-by-side table.

A benchmark script is ``benchmarks/bench_<name>.py``; run it with ``reinforge bench <name>``
or ``python benchmarks/bench_<name>.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))


def parse_args(description: str, extra: list[tuple[tuple, dict]] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smallest sizes: a smoke run, numbers not meaningful")
    p.add_argument("--out", default=str(ROOT / "bench-results"), help="directory for the JSON result")
    for args, kwargs in extra or []:
        p.add_argument(*args, **kwargs)
    return p.parse_args()


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def write_results(name: str, rows: list[dict[str, Any]], out: str, **extra: Any) -> Path:
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), "rows": rows, **extra}
    target = path / f"{name}.json"
    tmp = path / f".{name}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    os.replace(tmp, target)
    return target


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    """A plain-text table (rich is used when present)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return "" if v is None else str(v)

    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for c in columns:
            table.add_column(c)
        for r in rows:
            table.add_row(*[fmt(r.get(c)) for c in columns])
        Console().print(table)
    except ImportError:  # pragma: no cover
        if title:
            print(title)
        widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in columns]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
        for r in rows:
            print("  ".join(fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0


def rlhf_stage(argv: list[str]) -> dict:
    """``reinforge rlhf ARGV`` in this process; its result.json."""
    from pipelines.cli import main

    rc = main(["rlhf", *argv])
    if rc:
        raise SystemExit(f"reinforge rlhf {' '.join(argv)} exited {rc}")
    out = Path(argv[argv.index("--run-dir") + 1])
    return json.loads((out / "result.json").read_text())


def sets(section: str, **kv) -> list[str]:
    return [x for k, v in kv.items() for x in ("--set", f"{section}.{k}={v}")]


def check_overrides(bench: str, presets: list[str], overrides: list[str]) -> None:
    """Refuse bad --set values before any training: one line on stderr, exit status 2."""
    from cluster.errors import ConfigError
    from pipelines.registry import resolve

    try:
        for preset in presets:
            resolve(preset=preset, overrides=overrides)
    except ConfigError as e:
        print(f"bench {bench}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
