"""Every size, count and probability of every pipeline's config is checked against its range
when the config is checked (before Ray starts): a negative int, a negative float and a
probability of 2 are refused in one line naming the key, unless an allow-list below says why
that value means something."""

from __future__ import annotations

import dataclasses
import re
import types
from typing import Union, get_args, get_origin

import pytest

from cluster.errors import ConfigError
from cluster.run_config import check_ranges
from pipelines import config as cfg
from pipelines.registry import PIPELINES
from pipelines.tune import SweepConfig

# Pipelines left out of this test (none: every pipeline's keys are under it).
SKIPPED_PIPELINES: set[str] = set()

# key -> why a negative value is meaningful there (e.g. a -1 "unset" sentinel). Empty: every
# int and float setting of these pipelines refuses -5.
NEGATIVE_ALLOWED: dict[str, str] = {
    "inputs.reward_weight": "a negative weight minimises the reward model's score",
    "inputs.reward_fn_weight": "a negative weight minimises the reward function's value",
}

# Probability-like floats (a probability, discount, decay or mixing weight): 2.0 must be refused.
PROBABILITIES = {
    "env.sticky_actions", "rl.gamma", "rl.gae_lambda", "rl.tau", "rl.alpha", "rl.beta_start",
    "rl.epsilon_start", "rl.epsilon_end", "rl.eval_epsilon", "rl.apex_base",
    "gen.ema_decay", "gen.cond_drop", "gen.moco_momentum", "gen.beta_start", "gen.beta_end",
    "sft.dropout", "sft.lora_dropout", "ppo.lora_dropout", "grpo.lora_dropout", "dpo.lora_dropout",
    "ppo.gamma", "ppo.gae_lambda", "seqtutor.gamma", "seqtutor.tau", "seqtutor.epsilon", "seqtutor.lora_dropout",
    "data.eval_fraction", "data.melody.validation_fraction",
    "data.arithmetic.error_rate", "reward.heldout_fraction",
}
# A float whose name says it is one of those must be listed above (so a new one is not missed).
PROBABILITY_NAME = re.compile(r"epsilon|prob|drop|sticky|momentum|(?<!weight_)decay|(?<!r1_)gamma|lambda|tau\b")  # R1 gamma is a penalty weight


def _leaves(cls: type, prefix: str = ""):
    """(dotted key, declared type without None) of every setting of an experiment dataclass."""
    for name, tp in cfg.fields_of(cls).items():
        args = [a for a in (get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,))
                if a is not type(None)]
        nested = [a for a in args if dataclasses.is_dataclass(a)]
        if nested:
            yield from _leaves(nested[0], f"{prefix}{name}.")
        else:
            yield prefix + name, (args[0] if len(args) == 1 else tp)


def _numbers(cls: type):
    """(key, kind) with kind int, float or 'int list' for every numeric setting of ``cls``."""
    for key, tp in _leaves(cls):
        if tp is int or tp is float:
            yield key, tp.__name__
        elif get_origin(tp) in (list, tuple) and get_args(tp) and get_args(tp)[0] is int:
            yield key, "int list"


def _cases():
    cases = []
    for name, pipe in PIPELINES.items():
        if name in SKIPPED_PIPELINES:
            continue
        for key, kind in _numbers(pipe.experiment):
            if key in NEGATIVE_ALLOWED:
                continue
            values = {"int": ["-5"], "float": ["-5"], "int list": ["[-5]", "[0]"]}[kind]
            if key in PROBABILITIES:
                values.append("2.0")
            cases += [pytest.param(pipe.experiment, key, v, id=f"{name}:{key}={v}") for v in values]
    for key, _kind in _numbers(SweepConfig):  # `reinforge tune` flags and sweep files
        cases.append(pytest.param(SweepConfig, key, "-5", id=f"sweep:{key}=-5"))
    return cases


CASES = _cases()


def test_the_walk_found_every_pipelines_numbers():
    keys = {p.values[1] for p in CASES}
    assert len(keys) > 90
    assert {"env.max_episode_frames", "rl.hidden_sizes", "rl.hidden", "gen.moco_queue", "toy.fail_once_at",
            "run.seed", "max_concurrent"} <= keys


def test_probability_list_names_real_keys_and_misses_none():
    floats = {key for name, p in PIPELINES.items() if name not in SKIPPED_PIPELINES
              for key, kind in _numbers(p.experiment) if kind == "float"}
    assert PROBABILITIES <= floats
    by_name = {k for k in floats if PROBABILITY_NAME.search(k.rpartition(".")[2])}
    assert by_name <= PROBABILITIES, f"probability-like floats missing from PROBABILITIES: {by_name - PROBABILITIES}"


@pytest.mark.parametrize(("experiment", "key", "value"), CASES)
def test_out_of_range_value_is_refused_in_one_line_naming_the_key(experiment, key, value):
    with pytest.raises(ConfigError) as err:
        cfg.build(experiment, [{}], [f"{key}={value}"])
    message = str(err.value)
    assert "\n" not in message
    assert key.rpartition(".")[2] in message, message


def test_defaults_and_presets_are_in_range():
    from pipelines.registry import resolve

    for pipe in PIPELINES.values():
        cfg.build(pipe.experiment, [{}])
    for preset in cfg.list_presets():
        resolve(preset=preset)
    cfg.build(SweepConfig, [{}])


@dataclasses.dataclass
class _Probe:
    p: float = 0.5
    n: int = 3
    sizes: tuple[int, ...] = (4, 4)
    unset: int | None = None


@pytest.mark.parametrize(("rules", "ok"), [
    ({"p": "[0, 1]"}, True), ({"p": "(0.5, 1]"}, False), ({"p": "[0, 0.5)"}, False), ({"p": "[0.5, 0.5]"}, True),
    ({"n": ">= 3"}, True), ({"n": "> 3"}, False), ({"n": "<= 2"}, False), ({"n": "< 4"}, True),
    ({"sizes": ">= 5"}, False), ({"sizes": ">= 4"}, True), ({"unset": ">= 1"}, True),
])
def test_check_ranges_rules(rules, ok):
    if ok:
        check_ranges("x", _Probe(), rules)
    else:
        with pytest.raises(ConfigError, match=r"^x\.\w+(\[0\])?=\S+ must be "):
            check_ranges("x", _Probe(), rules)


def test_check_ranges_message_names_key_range_and_hint():
    with pytest.raises(ConfigError) as err:
        check_ranges("rl", _Probe(p=2.0), {"p": ("[0, 1]", "a probability")})
    assert str(err.value) == "rl.p=2.0 must be in [0, 1] (a probability)"
    with pytest.raises(ConfigError, match=r"^rl\.sizes\[1\]=0 must be >= 1$"):
        check_ranges("rl", _Probe(sizes=(3, 0)), {"sizes": ">= 1"})


@pytest.mark.parametrize(("argv", "message"), [
    (["rl", "eval", "--checkpoint", "no-such-run", "--epsilon", "2"], "--epsilon 2 must be in [0, 1]"),
    (["rl", "eval", "--checkpoint", "no-such-run", "--epsilon", "nan"], "--epsilon nan must be in [0, 1]"),
    (["tune", "toy", "--search", "toy.learning_rate=loguniform(1e-3,1e-1)", "--max-concurrent", "0", "--dry-run"],
     "sweep.max_concurrent=0 must be >= 1"),
    (["tune", "toy", "--search", "toy.learning_rate=loguniform(1e-3,1e-1)", "--max-concurrent", "-1", "--dry-run"],
     "sweep.max_concurrent=-1 must be >= 1"),
    (["gen", "sample", "--checkpoint", "no-such-run", "--guidance", "-1"], "--guidance -1 must be"),
])
def test_cli_flags_outside_their_range_exit_2_in_one_line(argv, message, capsys):
    from pipelines.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err, err


def test_max_concurrent_left_out_means_as_many_as_resources_allow():
    from pipelines.tune import Plan, concurrency_limit

    sweep = cfg.build(SweepConfig, [{}])
    assert sweep.max_concurrent is None
    plan = Plan(sweep, "toy", {}, [], "loss", "min", [{"CPU": 1.0}])
    assert concurrency_limit(plan, {"CPU": 4.0}) is None
    plan.sweep.max_concurrent = 2
    assert concurrency_limit(plan, {"CPU": 4.0}) == 2
