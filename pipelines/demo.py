"""The demo: each pipeline contributes one short step; a report ties them together.

A step is a function ``(out_dir: Path, address: str | None) -> dict`` returning at least
``run_dir`` and optionally ``metrics`` (name -> value) and ``plots`` (paths). Pipelines add
their step to ``DEMO_STEPS``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from cluster.errors import ReinforgeError


def plumbing_step(out: Path, address: str | None) -> dict[str, Any]:
    from pipelines.registry import execute, resolve

    resolved = resolve(preset="demo", extra={"run": {"run_dir": str(out / "plumbing"), "address": address}})
    rd, result = execute(resolved)
    return {"run_dir": str(rd.path), "metrics": result, "plots": sorted(str(p) for p in rd.plots.glob("*.png"))}


# (name, step function as "module:function" or a callable). Order is run order.
DEMO_STEPS: list[tuple[str, str | Callable[[Path, str | None], dict[str, Any]]]] = [
    ("plumbing", plumbing_step),
    ("rl-dqn", "pipelines.rl_dqn:demo_step"),
    ("rl-ppo", "pipelines.rl_ac:demo_step"),
    ("gen", "pipelines.gen_pipeline:demo_step"),
    ("rlhf", "pipelines.rlhf_pipeline:demo_step"),
]


def _resolve_step(fn: str | Callable) -> Callable:
    if callable(fn):
        return fn
    from pipelines.registry import _load

    return _load(fn)


def run_demo(out: str | None = None, only: list[str] | None = None, address: str | None = None) -> int:
    names = [n for n, _ in DEMO_STEPS]
    for n in only or []:
        if n not in names:
            raise ReinforgeError(f"unknown demo step {n!r}; steps: {', '.join(names)}")
    root = Path(out) if out else Path("runs") / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name, fn in DEMO_STEPS:
        if only and name not in only:
            continue
        print(f"== demo step: {name}", flush=True)
        t0 = time.time()
        res = _resolve_step(fn)(root, address)
        res["seconds"] = round(time.time() - t0, 1)
        results[name] = res
        print(f"   done in {res['seconds']} s -> {res.get('run_dir')}", flush=True)
    report = write_report(root, results)
    print(f"\nreport: {report}")
    print(f"plots:  {', '.join(p for r in results.values() for p in r.get('plots', [])) or '(none)'}")
    return 0


def write_report(root: Path, results: dict[str, Any]) -> Path:
    lines = ["# reinforge demo report", "", f"Written {datetime.now().isoformat(timespec='seconds')}.", ""]
    for name, res in results.items():
        lines += [f"## {name}", "", f"- run dir: `{res.get('run_dir')}`", f"- wall time: {res['seconds']} s"]
        for k, v in (res.get("metrics") or {}).items():
            lines.append(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}")
        for p in res.get("plots", []):
            lines.append(f"- plot: `{p}`")
        lines.append("")
    (root / "report.json").write_text(json.dumps(results, indent=2, default=str))
    path = root / "report.md"
    path.write_text("\n".join(lines))
    return path
