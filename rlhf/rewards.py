"""What PPO and GRPO maximise: a reward model, a reward function, or both with weights,

    r(x, y) = reward_weight * RM(x, y)  +  reward_fn_weight * f(x, y, **columns).

A reward function is any Python callable ``f(prompts, completions, **columns) -> list[float]``
named ``module:function`` on the command line (``--reward-fn``), the signature TRL's trainers
use too: rewards that can be verified, as in DeepSeek-R1's accuracy rewards. ``prompts`` and
``completions`` are strings; ``columns`` are the prompt set's other columns (``answer`` for
exact match), aligned with them. ``--reward-fn gold`` is the task's hidden gold (exact match
on the arithmetic task), for experiments that train on what is usually held out.
"""

from __future__ import annotations

import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cluster.errors import ConfigError

GOLD = "gold"


def load_reward_fn(spec: str, flag: str = "--reward-fn") -> Callable[..., Any]:
    """The user's ``module:function`` (resolved with ``pkgutil.resolve_name``: it names the
    user's own code, never one of ours), refused in one line when it cannot be imported."""
    if ":" not in spec:
        raise ConfigError(f"{flag} {spec!r}: expected module:function (e.g. mypkg.rewards:exact_match) or 'gold'")
    try:
        fn = pkgutil.resolve_name(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{flag} {spec}: cannot import it ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                          "check the module is on PYTHONPATH and the function name") from None
    except Exception as exc:  # the user's module raised while being imported
        raise ConfigError(f"{flag} {spec}: importing it raised {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if not callable(fn):
        raise ConfigError(f"{flag} {spec}: is a {type(fn).__name__}, not a function")
    return fn


def call_reward_fn(fn, prompts: list[str], completions: list[str], columns: dict[str, list], name: str) -> np.ndarray:
    """``fn``'s rewards, checked: one finite number per completion."""
    try:
        out = fn(prompts, completions, **columns)
    except Exception as exc:
        raise ConfigError(f"--reward-fn {name} raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                          f" (it is called as f(prompts, completions, **columns) with columns "
                          f"{', '.join(columns) or 'none'})") from None
    try:
        values = [float(v) for v in out]
    except (TypeError, ValueError):
        raise ConfigError(f"--reward-fn {name} returned {type(out).__name__}; expected a list of floats, "
                          "one per completion") from None
    if len(values) != len(completions):
        raise ConfigError(f"--reward-fn {name} returned {len(values)} rewards for {len(completions)} completions; "
                          "return one per completion")
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"--reward-fn {name} returned a non-finite reward ({values[bad[0]]}) for completion "
                          f"{bad[0]}; rewards must be finite numbers")
    return np.asarray(values, dtype=np.float64)


@dataclass
class Reward:
    """The training reward: reward-model scores (computed by the scorer actor) and/or a
    function (computed here), combined with their weights."""

    fn: Callable[..., Any] | None = None
    fn_name: str = ""
    model_weight: float = 1.0
    fn_weight: float = 1.0
    has_model: bool = False

    def combine(self, model_scores: np.ndarray | None, prompts: list[str], completions: list[str],
                columns: dict[str, list]) -> np.ndarray:
        total = np.zeros(len(completions))
        if self.has_model and model_scores is not None:
            total += self.model_weight * np.asarray(model_scores, dtype=np.float64)
        if self.fn is not None:
            total += self.fn_weight * call_reward_fn(self.fn, prompts, completions, columns, self.fn_name)
        return total


def reward_model_spec(reward_dir, tokenizer, sft_dir, allow_pickle: bool = False):
    """(reward model, its actor spec, the offset still to subtract) for ``--reward DIR``: ours
    or any one-label ``AutoModelForSequenceClassification``, with the policy's vocabulary."""
    from rlhf.actors import model_spec
    from rlhf.models import load_reward_model, reward_offset

    rm, rm_tok = load_reward_model(reward_dir, "--reward", allow_pickle)
    if rm_tok.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"--reward {reward_dir}: its tokenizer differs from the SFT model's ({sft_dir}); "
                          "train the reward model from this SFT model")
    return rm, model_spec(rm), reward_offset(reward_dir)


def critic_from_sft(sft_dir, tokenizer, allow_pickle: bool = False):
    """A value network for PPO when there is no reward model to start it from: the SFT
    transformer with a fresh scalar head."""
    from transformers import AutoModelForSequenceClassification

    from rlhf.models import safetensors_only

    critic = AutoModelForSequenceClassification.from_pretrained(
        str(sft_dir), num_labels=1, use_safetensors=safetensors_only(sft_dir, "--sft", allow_pickle))
    critic.config.pad_token_id = tokenizer.pad_token_id
    return critic
