"""Every pipeline is one declaration: what tune, the demo and `rl eval` read from it holds up."""

from __future__ import annotations

import json

import pytest

from cluster.errors import ConfigError
from pipelines import config as cfg
from pipelines import tune as T
from pipelines.demo import demo_steps, run_step, write_report
from pipelines.pipeline import Bar, DemoStep
from pipelines.registry import PIPELINES, resolve


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_declaration_is_consistent(name):
    pipe = PIPELINES[name]
    assert pipe.name == name
    exp = cfg.from_dict(pipe.experiment, {})  # defaults build
    assert hasattr(exp, "run")
    if pipe.tune_metric is not None:
        metric, mode = pipe.tune_metric
        assert mode in ("min", "max")
        assert not pipe.metrics or metric in pipe.metrics, f"{name}: tune_metric {metric!r} is not declared"
    for step in pipe.demos:
        assert resolve(preset=step.preset).pipeline is pipe, f"demo step {step.name}: preset of another pipeline"
        for bar in step.bars:
            assert bar.op in (">=", "<=")
    for b in pipe.bundles(exp, {}):
        assert b and all(v >= 0 for v in b.values())


def test_demo_steps_have_unique_names():
    names = [s.name for s in demo_steps()]
    assert names and len(names) == len(set(names))
    assert "plumbing" not in names


def test_sweep_metric_is_checked_against_the_declaration():
    with pytest.raises(ConfigError, match="never reports metric 'los'; did you mean 'loss'"):
        T.plan_sweep(T.sweep_from_sources("toy", None, {"metric": "los", "mode": "min"},
                                          ["toy.learning_rate=loguniform(1e-3,1e-1)"], []))
    plan = T.plan_sweep(T.sweep_from_sources("toy", None, {}, ["toy.learning_rate=loguniform(1e-3,1e-1)"], []))
    assert (plan.metric, plan.mode) == PIPELINES["toy"].tune_metric


def test_bar_needs_a_finite_number():
    bar = Bar("x", ">=", 1.0)
    assert bar.met({"x": 1.0}) and not bar.met({"x": 0.5})
    assert not bar.met({}) and not bar.met({"x": float("nan")}) and not bar.met({"x": "1"})
    assert Bar("x", "<=", 1.0).met({"x": 0.5}) and not Bar("x", "<=", 1.0).met({"x": 2.0})


def test_demo_step_runs_and_the_report_states_its_bars(tmp_path):
    step = DemoStep("toy", "toy", "a quadratic", overrides={"toy": {"steps": 4, "checkpoint_every": 2}},
                    bars=(Bar("loss", "<=", 1e6), Bar("loss", "<=", -1.0)))
    res = run_step(step, tmp_path, None)
    res["seconds"] = 0.1
    assert [b["met"] for b in res["bars"]] == [True, False]
    (tmp_path / "toy" / "plots").mkdir(exist_ok=True)
    png = tmp_path / "toy" / "plots" / "curve.png"
    png.write_bytes(b"\x89PNG")
    res["plots"] = [str(png)]
    report = write_report(tmp_path, {"toy": res}).read_text()
    assert "| toy |" in report and "| loss <= -1 | **no** |" in report and "| loss <= 1e+06 | yes |" in report
    assert "![curve](toy/plots/curve.png)" in report  # embedded, relative: renders on a code host
    assert json.loads((tmp_path / "report.json").read_text())["toy"]["bars"][1]["met"] is False
