"""Typed config loading: round trips, refusals with the nearest name, never a traceback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.errors import ConfigError
from cluster.run_config import RunConfig
from pipelines import config as cfg
from pipelines.registry import resolve


@dataclass
class Inner:
    learning_rate: float = 1e-3
    batch_size: int = 32
    algo: Literal["dqn", "ddqn"] = "dqn"
    layers: list[int] = field(default_factory=lambda: [64, 64])
    init_encoder: str | None = None
    double_q: bool = False


@dataclass
class Outer:
    run: RunConfig = field(default_factory=RunConfig)
    rl: Inner = field(default_factory=Inner)


def test_defaults_and_round_trip():
    exp = cfg.build(Outer, [{"rl": {"learning_rate": 3e-4, "layers": [8]}}], ["rl.batch_size=64", "run.seed=5"])
    assert exp.rl.learning_rate == 3e-4 and exp.rl.batch_size == 64 and exp.run.seed == 5 and exp.rl.layers == [8]
    again = cfg.from_dict(Outer, yaml.safe_load(cfg.to_yaml(exp)))
    assert again == exp


def test_set_parses_by_declared_type():
    exp = cfg.build(Outer, [], ["rl.learning_rate=1e-5", "rl.double_q=true", "rl.layers=[1, 2, 3]",
                                "rl.init_encoder=runs/x", "rl.algo=ddqn"])
    assert exp.rl.learning_rate == 1e-5 and exp.rl.double_q is True and exp.rl.layers == [1, 2, 3]
    assert exp.rl.init_encoder == "runs/x" and exp.rl.algo == "ddqn"
    assert cfg.build(Outer, [{"rl": {"init_encoder": "a"}}], ["rl.init_encoder=null"]).rl.init_encoder is None
    # YAML 1.1 reads 1e-3 as a string; a float field still accepts it from a file
    assert cfg.from_dict(Outer, {"rl": {"learning_rate": "1e-3"}}).rl.learning_rate == 1e-3


@pytest.mark.parametrize(
    "override, message",
    [
        ("rl.lr=0.1", "unknown key 'rl.lr'; did you mean 'rl.learning_rate'?"),
        ("rl.batchsize=3", "unknown key 'rl.batchsize'; did you mean 'rl.batch_size'?"),
        ("rn.seed=3", "unknown key 'rn'; did you mean 'run'?"),
        ("rl.batch_size=abc", "wrong type for 'rl.batch_size': expected int, got 'abc'"),
        ("rl.batch_size=0.5", "wrong type for 'rl.batch_size': expected int, got '0.5'"),
        ("rl.double_q=maybe", "wrong type for 'rl.double_q': expected bool, got 'maybe'"),
        ("rl.algo=dqm", "invalid value 'dqm' for 'rl.algo': expected one of dqn, ddqn; did you mean 'dqn'?"),
        ("rl", "cannot parse --set 'rl'; expected KEY=VALUE"),
        ("rl.learning_rate.x=1", "'rl.learning_rate' is a float, it has no key 'x'"),
    ],
)
def test_refusals_name_the_problem(override, message):
    with pytest.raises(ConfigError) as info:
        cfg.build(Outer, [], [override])
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_file_keys_are_checked_too():
    with pytest.raises(ConfigError, match=r"unknown key 'rl.learning_rat'; did you mean 'rl.learning_rate'\?"):
        cfg.from_dict(Outer, {"rl": {"learning_rat": 1.0}})
    with pytest.raises(ConfigError, match="wrong type for 'run.seed': expected int"):
        cfg.from_dict(Outer, {"run": {"seed": "x"}})


def test_preset_resolution_and_pipeline_mismatch(tmp_path):
    resolved = resolve(preset="toy", overrides=["toy.steps=2"])
    assert resolved.pipeline.name == "toy" and resolved.experiment.toy.steps == 2
    bad = tmp_path / "x.yaml"
    bad.write_text("pipeline: toy\nrun: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve(config_file=str(bad))
    other = tmp_path / "o.yaml"
    other.write_text("pipeline: nosuch\n")
    with pytest.raises(ConfigError, match="unknown pipeline 'nosuch'"):
        resolve(config_file=str(other))
    with pytest.raises(ConfigError, match="config file .* not found"):
        resolve(pipeline="toy", config_file=str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="unknown preset 'ppo-cartpol'; did you mean 'ppo-cartpole'"):
        resolve(preset="ppo-cartpol")


_key = st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz_."), min_size=0, max_size=20)
_value = st.one_of(st.text(max_size=15), st.integers(), st.floats(allow_nan=True), st.booleans(), st.none(),
                   st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=_key, value=_value)
def test_random_overrides_never_traceback(key, value):
    try:
        cfg.build(Outer, [], [f"{key}={value}"])
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.recursive(
    st.dictionaries(_key, _value, max_size=4),
    lambda children: st.dictionaries(_key, children, max_size=3), max_leaves=10))
def test_random_mappings_never_traceback(data):
    for candidate in (data, {"rl": data}, {"run": data}):
        try:
            cfg.from_dict(Outer, candidate)
        except ConfigError as exc:
            assert "\n" not in str(exc)


def _float_keys(cls, prefix=""):
    """Every float-typed key (also float | None) of an experiment dataclass, dotted."""
    import dataclasses
    import types
    from typing import Union, get_args, get_origin

    out = []
    for name, tp in cfg.fields_of(cls).items():
        args = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
        if float in args:
            out.append(prefix + name)
        for a in args:
            if dataclasses.is_dataclass(a):
                out += _float_keys(a, f"{prefix}{name}.")
    return out


def test_every_float_key_of_every_pipeline_refuses_non_finite_values():
    from pipelines.registry import PIPELINES

    keys = [(name, key) for name, p in PIPELINES.items() for key in _float_keys(p.experiment)]
    assert len(keys) > 50  # the walk found the pipelines' float settings

    @settings(max_examples=60, deadline=None)
    @given(st.sampled_from(keys), st.sampled_from(["nan", "inf", "-inf", "NaN", "1e999", float("nan"), float("-inf")]))
    def check(item, value):
        name, key = item
        with pytest.raises(ConfigError, match="must be a finite number"):
            if isinstance(value, str):  # --set text
                resolve(pipeline=name, overrides=[f"{key}={value}"])
            else:  # a YAML file's .nan / .inf
                section, _, leaf = key.rpartition(".")
                nested = {leaf: value}
                for part in reversed(section.split(".")):
                    nested = {part: nested}
                resolve(pipeline=name, extra=nested)

    check()
