"""Arguments and helpers every pipeline command shares."""

from __future__ import annotations

import argparse
from typing import Any

from cluster.errors import ConfigError


def add_run_args(p: argparse.ArgumentParser, resume: bool = True) -> None:
    g = p.add_argument_group("config and run")
    g.add_argument("--config", metavar="FILE", help="YAML config (a preset name or a path)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set rl.learning_rate=3e-4 (repeatable)")
    g.add_argument("--run-dir", metavar="DIR", help="run directory (default runs/<pipeline>-<timestamp>)")
    g.add_argument("--seed", type=int, help="base seed (run.seed)")
    g.add_argument("--device", help="auto|cpu|cuda|cuda:N (run.device)")
    g.add_argument("--address", help="Ray cluster address (default RAY_ADDRESS, else an embedded local instance)")
    if resume:
        g.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    run: dict[str, Any] = {}
    for flag, key in (("run_dir", "run_dir"), ("seed", "seed"), ("device", "device"), ("address", "address")):
        value = getattr(args, flag, None)
        if value is not None:
            run[key] = value
    return {"run": run} if run else {}


def resolve_args(pipeline: str | None, args: argparse.Namespace, extra: dict[str, Any] | None = None,
                 preset: str | None = None):
    """Resolve the experiment for ``pipeline`` from --config/--resume/flags/--set."""
    from pipelines.config import merge
    from pipelines.registry import resolve

    layers = merge(extra or {}, run_overrides(args))
    config_file = getattr(args, "config", None)
    if getattr(args, "resume", None):
        from pathlib import Path

        config_file = str(Path(args.resume) / "config.yaml")
        if getattr(args, "config", None):
            raise ConfigError("--resume takes its config from the run directory; drop --config")
        layers.setdefault("run", {})["run_dir"] = args.resume
    if config_file and not config_file.endswith((".yaml", ".yml")):
        preset, config_file = config_file, None  # --config NAME means a preset
    return resolve(pipeline=pipeline, preset=preset, config_file=config_file,
                   overrides=list(getattr(args, "overrides", []) or []), extra=layers)


def run_pipeline(pipeline: str | None, args: argparse.Namespace, extra: dict[str, Any] | None = None,
                 preset: str | None = None) -> dict[str, Any]:
    from pipelines.registry import execute

    resolved = resolve_args(pipeline, args, extra, preset=preset)
    rd, result = execute(resolved, resume=getattr(args, "resume", None))
    print_summary(rd.path, result)
    return result


def print_summary(path, result: dict[str, Any]) -> None:
    width = max([len(k) for k in result] + [6])
    print(f"run dir: {path}")
    for k, v in result.items():
        shown = f"{v:.4g}" if isinstance(v, float) else str(v)
        print(f"  {k:<{width}}  {shown}")

