"""Every pipeline in one table, and the one driver that runs any of them.

Each pipeline is declared once, as ``PIPELINE = Pipeline(...)`` in its own module
(:mod:`pipelines.pipeline` says what a declaration holds); this table imports those modules
directly, so every import is visible to the import checker. The same driver serves the CLI,
the demo, Tune trials and jobs on a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError
from cluster.run_config import RunConfig
from pipelines import config as cfg
from pipelines import gen_pipeline, rl_ac, rl_dqn, rl_tabular, rlhf_pipeline, toy
from pipelines.pipeline import Pipeline

PIPELINES: dict[str, Pipeline] = {
    p.name: p for p in (rl_dqn.PIPELINE, rl_ac.PIPELINE, rl_tabular.PIPELINE, gen_pipeline.PIPELINE,
                        *rlhf_pipeline.PIPELINES, toy.PIPELINE)
}


def get_pipeline(name: str) -> Pipeline:
    if name not in PIPELINES:
        guess = cfg.nearest(name, list(PIPELINES))
        hint = f"; did you mean {guess!r}?" if guess else f"; available: {', '.join(PIPELINES)}"
        raise ConfigError(f"unknown pipeline {name!r}{hint}")
    return PIPELINES[name]


@dataclass
class Resolved:
    pipeline: Pipeline
    experiment: Any
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline.name, **cfg.to_dict(self.experiment)}

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _split_pipeline(data: dict[str, Any], source: str) -> tuple[str | None, dict[str, Any]]:
    data = dict(data)
    name = data.pop("pipeline", None)
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"'pipeline' in {source} must be a name like 'rl', got {name!r}")
    return name, data


def resolve(
    pipeline: str | None = None,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Resolved:
    """Layers, lowest first: dataclass defaults, preset, --config file, CLI flags, --set."""
    layers: list[dict[str, Any]] = []
    sources: list[str] = []
    names: list[tuple[str, str]] = []
    for path in (cfg.preset_path(preset) if preset else None, config_file):
        if path is None:
            continue
        name, data = _split_pipeline(cfg.load_yaml(path), str(path))
        if name:
            names.append((name, str(path)))
        layers.append(data)
        sources.append(str(path))
    chosen = pipeline
    for name, source in names:
        if chosen is None:
            chosen = name
        elif name != chosen:
            raise ConfigError(f"{source} is a {name!r} config but this command runs the {chosen!r} pipeline")
    if chosen is None:
        raise ConfigError("config names no pipeline; add 'pipeline: <name>' to the YAML")
    pipe = get_pipeline(chosen)
    if extra:
        layers.append(extra)
    experiment = cfg.build(pipe.experiment, layers, overrides)
    return Resolved(pipe, experiment, sources)


RUN_FILES = ("config.yaml", "metrics.jsonl", "env.json")


def check_run_dir(resolved: Resolved, resume: str | None = None) -> Path | None:
    """Everything about the run dir that can be refused before Ray starts, touching nothing:
    a dir that already holds a run needs --resume; a --resume dir must hold a run whose newest
    whole checkpoint (if it saved any) loads. Returns the explicit path (None: a default one)."""
    from cluster import checkpoint as ckpt_io

    run: RunConfig = resolved.experiment.run
    if resume:
        path = Path(resume)
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"--resume {resume}: not a run directory (no config.yaml)")
        found = ckpt_io.list_checkpoints(path / "checkpoints")
        if found and ckpt_io.latest_valid_checkpoint(path / "checkpoints", warn=lambda m: None) is None:
            try:
                ckpt_io.check_checkpoint(found[-1])
            except ckpt_io.CheckpointError as exc:
                raise ConfigError(f"--resume {resume}: no whole checkpoint to continue from ({exc})") from None
        return path
    if not run.run_dir:
        return None
    path = Path(run.run_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--run-dir {path} exists and is not a directory; choose another --run-dir")
    if path.is_dir() and (any((path / n).exists() for n in RUN_FILES) or ckpt_io.list_checkpoints(path / "checkpoints")):
        raise ConfigError(f"run dir {path} already holds a run; continue it with --resume {path}, "
                          "or choose another --run-dir")
    return path


def open_run_dir(resolved: Resolved, path: Path | None, resume: str | None = None):
    """Create (or reopen, for --resume) the run directory ``check_run_dir`` accepted (None: a
    new default one) and write config.yaml and env.json."""
    from cluster.rundir import RunDir, create_default_run_dir

    run: RunConfig = resolved.experiment.run
    if path is None:
        path = create_default_run_dir(resolved.pipeline.name, run.runs_root)
    run.run_dir = str(path)
    return RunDir(path, config=resolved.to_dict(), seed=run.seed, device=run.device,
                  tensorboard=run.tensorboard, resume=bool(resume))


def preflight(resolved: Resolved, resume: str | None = None, check_dir: bool = True) -> Path | None:
    """Everything that can be refused before Ray starts: the device, the Ray address's form, the
    run dir (and a resume's checkpoint), and the pipeline's own ``preflight`` (e.g. inputs).
    Returns the run dir path ``check_run_dir`` accepted (None: a default one is to be made)."""
    from cluster.runtime import parse_address, select_device

    run: RunConfig = resolved.experiment.run
    if run.device != "auto":
        select_device(run.device)  # e.g. cuda on a machine without one
    if resolved.pipeline.uses_ray and (run.address or os.environ.get("RAY_ADDRESS")):
        address = run.address or os.environ["RAY_ADDRESS"]
        if address not in ("auto", "local"):
            parse_address(address)
    path = check_run_dir(resolved, resume) if check_dir else None
    if resolved.pipeline.preflight is not None:
        resolved.pipeline.preflight(resolved.experiment)
    return path


def execute(resolved: Resolved, resume: str | None = None, listeners: list[Callable] | None = None,
            run_dir=None) -> tuple[Any, dict[str, Any]]:
    """Seed, connect to Ray, run the pipeline, close the run dir. Returns (RunDir, final metrics)."""
    from cluster.runtime import connect
    from cluster.seeding import seed_everything

    run: RunConfig = resolved.experiment.run
    seed_everything(run.seed)
    path = preflight(resolved, resume, check_dir=run_dir is None)
    if resolved.pipeline.uses_ray:
        connect(run.address, num_cpus=run.num_cpus, num_gpus=run.num_gpus)
    rd = run_dir or open_run_dir(resolved, path, resume=resume)
    for fn in listeners or []:
        rd.add_listener(fn)
    try:
        result = resolved.pipeline.run(resolved.experiment, rd) or {}
    finally:
        rd.close()
    return rd, result
