"""``reinforge demo``: every pipeline's declared demo steps, run in order, and one report.

Each step is a :class:`pipelines.pipeline.DemoStep` in its pipeline's declaration: a preset,
a few overrides, the metrics to show and the bars its result must reach. The report
(``report.md``, with the plots embedded as images, and ``report.json``) states each step's
result against its bars.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError
from pipelines.pipeline import DemoStep


def demo_steps() -> list[DemoStep]:
    from pipelines.registry import PIPELINES

    return [d for p in PIPELINES.values() for d in p.demos]


def run_step(step: DemoStep, root: Path, address: str | None) -> dict[str, Any]:
    from pipelines.config import merge
    from pipelines.registry import execute, resolve

    extra = merge(step.overrides, {"run": {"run_dir": str(root / step.name), "address": address}})
    resolved = resolve(preset=step.preset, extra=extra)
    rd, result = execute(resolved)
    numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out: dict[str, Any] = {"title": step.title, "run_dir": str(rd.path), "metrics": numbers,
                           "plots": sorted(str(p) for p in rd.plots.glob("*.png")), "artifacts": []}
    if step.finish is not None:
        extra_out = step.finish(rd.path, resolved.experiment, result) or {}
        out["metrics"].update(extra_out.get("metrics", {}))
        out["artifacts"] += [str(p) for p in extra_out.get("artifacts", [])]
    out["bars"] = [{"bar": str(b), "value": out["metrics"].get(b.metric), "met": b.met(out["metrics"])}
                   for b in step.bars]
    if step.keep:
        out["shown"] = {k: out["metrics"][k] for k in step.keep if k in out["metrics"]}
    else:
        out["shown"] = dict(out["metrics"])
    return out


def run_demo(out: str | None = None, only: list[str] | None = None, address: str | None = None) -> int:
    steps = demo_steps()
    names = [s.name for s in steps]
    for n in only or []:
        if n not in names:
            raise ConfigError(f"unknown demo step {n!r}; steps: {', '.join(names)}")
    root = Path(out) if out else Path("runs") / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    t_all = time.time()
    for step in steps:
        if only and step.name not in only:
            continue
        print(f"== demo step: {step.name}: {step.title}", flush=True)
        t0 = time.time()
        res = run_step(step, root, address)
        res["seconds"] = round(time.time() - t0, 1)
        results[step.name] = res
        verdict = ", ".join(f"{b['bar']}: {_fmt(b['value'])} {'met' if b['met'] else 'NOT met'}" for b in res["bars"])
        print(f"   done in {res['seconds']} s -> {res['run_dir']}" + (f" ({verdict})" if verdict else ""), flush=True)
    report = write_report(root, results, round(time.time() - t_all, 1))
    print(f"\nreport: {report}")
    plots = [p for r in results.values() for p in r.get("plots", []) + r.get("artifacts", [])]
    print(f"plots:  {', '.join(plots) or '(none)'}")
    missed = [f"{n}: {b['bar']}" for n, r in results.items() for b in r["bars"] if not b["met"]]
    if missed:
        print(f"bars not met: {'; '.join(missed)}")
    return 0


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(root: Path, results: dict[str, Any], seconds: float | None = None) -> Path:
    lines = ["# reinforge demo report", "",
             f"Written {datetime.now().isoformat(timespec='seconds')}"
             + (f", {seconds:.0f} s in all." if seconds is not None else "."), "",
             "| step | result | bar | met |", "|---|---|---|---|"]
    for name, res in results.items():
        for b in res.get("bars", []):
            lines.append(f"| {name} | {_fmt(b['value'])} | {b['bar']} | {'yes' if b['met'] else '**no**'} |")
    lines.append("")
    for name, res in results.items():
        lines += [f"## {name}: {res.get('title', '')}", "", f"- run dir: `{res.get('run_dir')}`",
                  f"- wall time: {res['seconds']} s"]
        for k, v in (res.get("shown") or {}).items():
            lines.append(f"- {k}: {_fmt(v)}")
        lines.append("")
        for p in [*res.get("plots", []), *res.get("artifacts", [])]:
            rel = os.path.relpath(p, root)
            lines += [f"![{Path(p).stem}]({rel})", ""]
    (root / "report.json").write_text(json.dumps(results, indent=2, default=str))
    path = root / "report.md"
    path.write_text("\n".join(lines))
    return path
