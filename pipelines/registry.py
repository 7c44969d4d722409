"""Every pipeline in one table, and the one driver that runs any of them.

A pipeline is an experiment dataclass (with a ``run: RunConfig`` section plus its own
sections) and a ``run(experiment, run_dir) -> dict`` function. The same driver serves the CLI,
the demo, Tune trials and jobs on a cluster.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError
from pipelines import config as cfg


@dataclass
class RunConfig:
    """Settings every pipeline shares."""

    seed: int = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    run_dir: str | None = None  # default: <runs_root>/<pipeline>-<timestamp>
    runs_root: str = "runs"
    address: str | None = None  # Ray cluster address; default RAY_ADDRESS or an embedded instance
    num_cpus: int | None = None  # CPUs for the embedded instance (default: all)
    num_gpus: int | None = None  # GPUs for the embedded instance (default: all visible)
    keep_checkpoints: int = 3
    tensorboard: bool = True

    def validate(self) -> None:
        if self.keep_checkpoints < 1:
            raise ConfigError("run.keep_checkpoints must be >= 1")


@dataclass(frozen=True)
class Pipeline:
    name: str
    experiment: str  # "module:Class" of the experiment dataclass
    runner: str  # "module:function" taking (experiment, RunDir) and returning final metrics
    description: str
    uses_ray: bool = True

    def experiment_cls(self) -> type:
        return _load(self.experiment)

    def run_fn(self) -> Callable[..., dict[str, Any]]:
        return _load(self.runner)


# Pipelines register here (name -> where its experiment and run function live).
PIPELINES: dict[str, Pipeline] = {
    p.name: p
    for p in [
        Pipeline("demo", "pipelines.plumbing:PlumbingExperiment", "pipelines.plumbing:run",
                 "plumbing check: Ray actors, run dir, metrics, checkpoint, plot"),
        *[Pipeline(f"rlhf-{n}", f"pipelines.rlhf_pipeline:RLHF{c}Experiment", f"pipelines.rlhf_pipeline:run_{n}", d,
                   uses_ray=n in ("ppo", "all"))
          for n, c, d in [("sft", "SFT", "RLHF stage 1: supervised fine-tuning on folk melodies (TRL SFTTrainer)"),
                          ("reward", "Reward", "RLHF stage 2: Bradley-Terry reward model on rater preferences"),
                          ("ppo", "PPO", "RLHF stage 3: PPO with a KL penalty to the frozen SFT prior"),
                          ("dpo", "DPO", "RLHF baseline: DPO (TRL DPOTrainer) on the same preferences"),
                          ("all", "All", "RLHF: SFT -> reward model -> PPO in one run"),
                          ("eval", "Eval", "RLHF: gold reward, proxy reward and KL of a policy on held-out prompts")]],
        Pipeline("toy", "pipelines.toy:ToyExperiment", "pipelines.toy:run",
                 "noisy quadratic with checkpoints: a fast target for sweeps and fault tests", uses_ray=False),
        Pipeline("rl-dqn", "pipelines.rl_dqn:DQNExperiment", "pipelines.rl_dqn:run",
                 "DQN / Double DQN (dueling, n-step, prioritized replay) with Ray rollout actors"),
        Pipeline("rl-ac", "pipelines.rl_ac:ACExperiment", "pipelines.rl_ac:run",
                 "A2C / PPO actor-critic with Ray rollout actors (or RLlib's PPO as a backend)"),
        Pipeline("gen", "pipelines.gen_pipeline:GenExperiment", "pipelines.gen_pipeline:run",
                 "generative pretraining with Ray Train: GANs, VAEs, DDPM, contrastive encoders"),
    ]
}


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


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
    experiment = cfg.build(pipe.experiment_cls(), layers, overrides)
    return Resolved(pipe, experiment, sources)


def open_run_dir(resolved: Resolved, resume: str | None = None):
    """Create (or reopen, for --resume) the run directory and write config.yaml and env.json."""
    from cluster.rundir import RunDir, default_run_dir

    run: RunConfig = resolved.experiment.run
    if resume:
        path = Path(resume)
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"--resume {resume}: not a run directory (no config.yaml)")
    else:
        path = Path(run.run_dir) if run.run_dir else default_run_dir(resolved.pipeline.name, run.runs_root)
    run.run_dir = str(path)
    return RunDir(path, config=resolved.to_dict(), seed=run.seed, device=run.device,
                  tensorboard=run.tensorboard, resume=bool(resume))


def execute(resolved: Resolved, resume: str | None = None, listeners: list[Callable] | None = None,
            run_dir=None) -> tuple[Any, dict[str, Any]]:
    """Seed, connect to Ray, run the pipeline, close the run dir. Returns (RunDir, final metrics)."""
    from cluster.runtime import connect
    from cluster.seeding import seed_everything

    run: RunConfig = resolved.experiment.run
    seed_everything(run.seed)
    if resolved.pipeline.uses_ray:
        connect(run.address, num_cpus=run.num_cpus, num_gpus=run.num_gpus)
    rd = run_dir or open_run_dir(resolved, resume=resume)
    for fn in listeners or []:
        rd.add_listener(fn)
    try:
        result = resolved.pipeline.run_fn()(resolved.experiment, rd) or {}
    finally:
        rd.close()
    return rd, result
