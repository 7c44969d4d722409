"""A tiny, fast, deterministic pipeline for exercising sweeps and fault tolerance.

Gradient descent on a noisy quadratic ``f(x) = 0.5 * ||x - target||^2`` with a step counter,
checkpoints and an optional one-time crash. It needs no Ray actors, so a Tune trial of it costs
a fraction of a second per step; ``toy.step_seconds`` slows it down on purpose so that ASHA and
PBT have something to decide between.

Metrics: ``loss`` (the quadratic at the current x, lower is better), ``grad_norm``, and
``resumed_from`` (the step a resumed run started from; 0 for a fresh run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cluster.run_config import RunConfig, check_ranges
from pipelines.pipeline import Pipeline

# Names this pipeline logs; `reinforge tune` checks --metric against them before any trial starts.
METRICS = ("loss", "grad_norm", "x_norm", "resumed_from")


@dataclass
class ToyConfig:
    dim: int = 4
    steps: int = 20
    learning_rate: float = 0.05
    noise: float = 0.01  # std of the gradient noise
    checkpoint_every: int = 5
    step_seconds: float = 0.0  # sleep per step (to make trials last, for schedulers)
    fail_once_at: int = 0  # >0: raise once at this step (a marker file in the run dir remembers it)

    def validate(self) -> None:
        check_ranges("toy", self, {
            "dim": ">= 1", "steps": ">= 1", "checkpoint_every": ">= 1", "learning_rate": "> 0",
            "noise": ">= 0", "step_seconds": ">= 0", "fail_once_at": (">= 0", "0: never fail"),
        })


@dataclass
class ToyExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    toy: ToyConfig = field(default_factory=ToyConfig)


class InjectedFailure(RuntimeError):
    """The crash ``toy.fail_once_at`` asks for (used by the fault-tolerance tests)."""


def run(exp: ToyExperiment, run_dir) -> dict[str, Any]:
    import torch

    from cluster.checkpoint import load_checkpoint

    t = exp.toy
    rng = np.random.default_rng(exp.run.seed)
    target = np.linspace(-1.0, 1.0, t.dim)
    x = np.full(t.dim, 3.0)
    start = 0
    latest = run_dir.latest_checkpoint()
    if latest is not None:
        ck = load_checkpoint(latest)
        x = ck["model"]["x"].numpy().astype(np.float64)
        start = int(ck["state"]["step"])
        rng = np.random.default_rng([exp.run.seed, start])
    marker = run_dir.path / ".toy_failed_once"
    loss = 0.5 * float(((x - target) ** 2).sum())
    for step in range(start + 1, t.steps + 1):
        if t.fail_once_at and step == t.fail_once_at and not marker.exists():
            marker.write_text(str(step))
            raise InjectedFailure(f"toy: injected failure at step {step}")
        with np.errstate(over="ignore", invalid="ignore"):  # a divergence is reported by the run dir
            grad = (x - target) + t.noise * rng.standard_normal(t.dim)
            x = x - t.learning_rate * grad
            loss = 0.5 * float(((x - target) ** 2).sum())
            norms = float(np.linalg.norm(grad)), float(np.linalg.norm(x))
        run_dir.log({"loss": loss, "grad_norm": norms[0], "x_norm": norms[1], "resumed_from": start}, step=step)
        if step % t.checkpoint_every == 0 or step == t.steps:
            run_dir.save_checkpoint(step, {"model": {"x": torch.from_numpy(x.copy())}, "state": {"step": step}},
                                    keep=exp.run.keep_checkpoints)
        if t.step_seconds:
            time.sleep(t.step_seconds)
    return {"loss": loss, "steps": t.steps, "resumed_from": start}


PIPELINE = Pipeline(
    name="toy", experiment=ToyExperiment, run=run,
    description="noisy quadratic with checkpoints: a fast target for sweeps and fault tests",
    metrics=METRICS, tune_metric=("loss", "min"), uses_ray=False,
)
