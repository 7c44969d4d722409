"""What a pipeline is: one declared object, ``PIPELINE = Pipeline(...)``, in its own module.

The declaration holds everything the rest of the system needs to know about a pipeline, so
that nothing outside its module keeps a table about it:

* ``experiment`` and ``run``: the config dataclass (a ``run: RunConfig`` section plus its own
  sections) and ``run(experiment, run_dir) -> final metrics``; the CLI, the demo, Tune trials
  and cluster jobs all call it through :func:`pipelines.registry.execute`;
* ``metrics`` and ``tune_metric``: every name its metric rows and final result can hold (a
  sweep's ``--metric`` is checked against them before a trial starts) and the default one;
* ``actor_bundles`` and ``outside_resources``: the Ray resources one run takes, so a sweep
  can size each trial's placement group;
* ``evaluate``: how ``reinforge rl eval`` plays a saved policy (RL pipelines);
* ``demos``: the short steps ``reinforge demo`` runs, each with the bar its result must reach.

This module imports nothing from the pipelines, so each pipeline module can import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Ray resources of one actor or bundle, e.g. {"CPU": 1.0, "GPU": 0.25}.
Bundle = dict[str, float]


@dataclass(frozen=True)
class Bar:
    """The result a demo step must reach: ``metric`` compared with ``value`` by ``op``."""

    metric: str
    op: str  # ">=" or "<="
    value: float

    def met(self, result: dict[str, Any]) -> bool:
        got = result.get(self.metric)
        if not isinstance(got, (int, float)) or not math.isfinite(float(got)):
            return False
        return float(got) >= self.value if self.op == ">=" else float(got) <= self.value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


@dataclass(frozen=True)
class DemoStep:
    """One step of ``reinforge demo``: a preset run with a few overrides, and its bars.

    ``finish(run_dir_path, experiment, result) -> dict`` may add artifacts after the run
    (``{"artifacts": [paths], "metrics": {...}}``), e.g. an evaluation episode as a GIF.
    """

    name: str
    preset: str
    title: str  # what the step shows, one line for the report
    overrides: dict[str, Any] = field(default_factory=dict)
    keep: tuple[str, ...] = ()  # metrics shown in the report (empty: every number)
    bars: tuple[Bar, ...] = ()
    finish: Callable[..., dict[str, Any]] | None = None


@dataclass(frozen=True)
class Pipeline:
    name: str
    experiment: type
    run: Callable[..., dict[str, Any]]
    description: str
    metrics: tuple[str, ...] = ()  # every name its rows / final result may hold
    tune_metric: tuple[str, str] | None = None  # (name, "min" | "max"): the default sweep target
    uses_ray: bool = True  # False: execute() does not start or join Ray
    # Ray actors one run starts (Tune captures them into the trial's placement group).
    # Called with the experiment and the cluster's resources ({} when not yet connected).
    actor_bundles: Callable[[Any, dict[str, float]], list[Bundle]] | None = None
    # Resources a run takes outside that group (Ray Train places its workers in its own).
    outside_resources: Callable[[Any], Bundle] | None = None
    # (run_path, experiment, episodes, epsilon=None, video=False, seed=0) -> evaluation dict
    evaluate: Callable[..., dict[str, Any]] | None = None
    demos: tuple[DemoStep, ...] = ()
    # (experiment) -> None, raising ConfigError: checks that need more than the config alone
    # (inputs that must exist, an env's action space), run before Ray starts
    preflight: Callable[[Any], None] | None = None

    def bundles(self, experiment: Any, cluster: dict[str, float] | None = None) -> list[Bundle]:
        if self.actor_bundles is None:
            return []
        return [{k: float(v) for k, v in b.items()} for b in self.actor_bundles(experiment, dict(cluster or {}))]

    def outside(self, experiment: Any) -> Bundle:
        if self.outside_resources is None:
            return {}
        return {k: float(v) for k, v in self.outside_resources(experiment).items()}
