"""Reward functions the RLHF tests pass as ``--reward-fn rlhf_toy_rewards:NAME`` (tests/ is on
the PYTHONPATH of the CLI subprocesses, see conftest.py)."""

from __future__ import annotations


def says_blue(prompts, completions, **columns):
    """1 per occurrence of the word "blue" in the completion."""
    return [float(c.split().count("blue")) for c in completions]


def matches_answer(prompts, completions, answer, **columns):
    """1 if the completion's first word is the row's ``answer`` column, else 0."""
    return [float(bool(c.split()) and c.split()[0] == a) for c, a in zip(completions, answer)]


def too_few(prompts, completions, **columns):
    return [0.0] * (len(completions) - 1)


def not_finite(prompts, completions, **columns):
    return [float("nan")] * len(completions)
