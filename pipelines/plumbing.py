"""The plumbing check: Ray actors placed through the cluster layer, seeded per worker, a run
directory with metrics, TensorBoard, a checkpoint and a plot. ``reinforge demo`` runs it first
so a broken install shows up in seconds, before any training starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cluster.errors import ConfigError
from pipelines.registry import RunConfig


@dataclass
class PlumbingConfig:
    num_actors: int = 2
    steps: int = 10
    samples_per_step: int = 20_000

    def validate(self) -> None:
        if self.num_actors < 1 or self.steps < 1 or self.samples_per_step < 1:
            raise ConfigError("demo.num_actors, demo.steps and demo.samples_per_step must be >= 1")


@dataclass
class PlumbingExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    demo: PlumbingConfig = field(default_factory=PlumbingConfig)


class PiSampler:
    """A Ray actor: Monte Carlo estimate of pi from its own seeded stream."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.seed = seed

    def sample(self, n: int) -> tuple[int, int]:
        xy = self.rng.random((n, 2))
        return int(((xy**2).sum(axis=1) <= 1.0).sum()), self.seed


def run(exp: PlumbingExperiment, run_dir) -> dict[str, Any]:
    import ray
    import torch

    from cluster.runtime import Resources, make_actor
    from cluster.seeding import worker_seed

    d = exp.demo
    actors = [
        make_actor(PiSampler, worker_seed(exp.run.seed, i), resources=Resources(num_cpus=0.5))
        for i in range(d.num_actors)
    ]
    hits = total = 0
    seeds: set[int] = set()
    for step in range(1, d.steps + 1):
        for h, seed in ray.get([a.sample.remote(d.samples_per_step) for a in actors]):
            hits += h
            seeds.add(seed)
        total += d.samples_per_step * d.num_actors
        estimate = 4.0 * hits / total
        run_dir.log({"pi_estimate": estimate, "abs_error": abs(estimate - np.pi), "samples": total}, step=step)
    for a in actors:
        ray.kill(a)
    run_dir.save_checkpoint(d.steps, {"estimate": {"hits": torch.tensor(hits), "total": torch.tensor(total)},
                                      "state": {"distinct_worker_seeds": len(seeds)}})
    run_dir.plot("pi_estimate", ["pi_estimate", "abs_error"], title="plumbing: Monte Carlo pi on Ray actors")
    return {"pi_estimate": estimate, "abs_error": abs(estimate - np.pi), "distinct_worker_seeds": len(seeds)}
