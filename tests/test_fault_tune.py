"""Fault tolerance of sweeps: a trial that crashes is retried from its last checkpoint
(``FailureConfig(max_failures)``) with its step counter intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import tune as T


@pytest.mark.slow
def test_crashed_trial_resumes_from_its_checkpoint(ray_session, tmp_path):
    sweep = T.sweep_from_sources(
        "toy", None, {"storage_path": str(tmp_path), "name": "crash", "max_failures": 1},
        ["toy.learning_rate=choice(0.1)"], ["toy.steps=10", "toy.checkpoint_every=5", "toy.fail_once_at=7"])
    plan = T.plan_sweep(sweep)
    results = T.run_sweep(plan, verbose=0)
    (result,) = list(results)
    assert result.error is None
    assert results._experiment_analysis.trials[0].num_failures == 1  # it did crash once
    run = Path(result.path) / "run"
    assert (run / ".toy_failed_once").read_text() == "7"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in rows if r["resumed_from"] == 5]
    # the retry continued at step 6 from the step-5 checkpoint: nothing before it was redone
    assert [r["step"] for r in resumed] == [6, 7, 8, 9, 10]
    assert [r["step"] for r in rows if r["resumed_from"] == 0][:5] == [1, 2, 3, 4, 5]
    assert result.metrics["step"] == 10 and result.metrics["resumed_from"] == 5
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step_000000010"
