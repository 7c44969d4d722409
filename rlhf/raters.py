"""Simulated raters (Christiano et al. 2017; Gao et al. 2022): pairs of completions sampled
from the SFT model, labelled by a Bradley-Terry model on the hidden gold score,

    P(a preferred to b) = sigmoid((gold(a) - gold(b)) / T),

with the label sampled from that probability. A rater sees ``completions_per_prompt`` (K)
completions of one prompt at once and labels all K(K-1)/2 pairs among them, as InstructGPT's
labellers ranked K = 4..9 completions (Ouyang et al. 2022): the same sampling cost buys
(K-1)/2 times more comparisons, and every completion is compared several times, which is what
lets a reward model see through the label noise (measured in the README). K = 2 is one plain
pair. Because the labelling model is known, the best
accuracy any reward model can reach on these pairs is known too (``bayes_optimal_accuracy``).
The output is a ``datasets`` preference set in TRL's format: ``prompt``, ``chosen``,
``rejected`` (plus the gold scores, for evaluation only). User preference files in the same
format are read by rlhf/data.py (``data.preferences``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cluster.errors import ConfigError


@dataclass
class RaterConfig:
    pairs_per_prompt: int = 1  # rating rounds per prompt; each labels all pairs of K completions (K = 2: one pair)
    completions_per_prompt: int = 12  # K completions sampled per round, all K(K-1)/2 pairs labelled
    train_prompts: int | None = None  # cap on train melodies used as prompts (None = all)
    temperature: float = 0.5  # T of the Bradley-Terry labeller; lower = less noisy labels
    max_new_tokens: int = 112
    profiles: list[str] = field(default_factory=lambda: ["gold"])  # rater kinds, one drawn per round (rlhf.gold.RATER_PROFILES)

    def validate(self) -> None:
        if self.pairs_per_prompt < 1:
            raise ConfigError("raters.pairs_per_prompt must be >= 1")
        if self.completions_per_prompt < 2:
            raise ConfigError("raters.completions_per_prompt must be >= 2 (2 = one pair per round)")
        if self.temperature <= 0:
            raise ConfigError("raters.temperature must be > 0 (e.g. 0.5)")
        if self.max_new_tokens < 1:
            raise ConfigError("raters.max_new_tokens must be >= 1")
        if self.train_prompts is not None and self.train_prompts < 1:
            raise ConfigError(f"raters.train_prompts must be >= 1 (or null for every train melody), got {self.train_prompts}")
        from rlhf.gold import RATER_PROFILES

        bad = [p for p in self.profiles if p not in RATER_PROFILES]
        if bad or not self.profiles:
            raise ConfigError(f"raters.profiles={self.profiles}: each must be one of {', '.join(RATER_PROFILES)}")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def preference_probability(gold_a, gold_b, temperature: float):
    """P(a > b) under the simulated raters' Bradley-Terry model."""
    return sigmoid((np.asarray(gold_a) - np.asarray(gold_b)) / temperature)


def bayes_optimal_accuracy(gold_chosen, gold_rejected, temperature: float | None = None) -> dict[str, float]:
    """The accuracy of the best possible predictor (the one that knows the gold score and
    picks the higher one) on these pairs: ``realised`` against the sampled labels, and
    ``expected`` = mean max(p, 1 - p) under the labelling model (ties count one half)."""
    diff = np.asarray(gold_chosen, dtype=np.float64) - np.asarray(gold_rejected, dtype=np.float64)
    realised = float(np.mean(np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0))))
    out = {"realised": realised}
    if temperature:
        p = sigmoid(diff / temperature)
        out["expected"] = float(np.mean(np.maximum(p, 1 - p)))
    return out


def label_pairs(prompts: list[str], comps_a: list[str], comps_b: list[str], gold_a, gold_b,
                temperature: float, rng: np.random.Generator, rater_a=None, rater_b=None,
                raters: list[str] | None = None) -> list[dict[str, Any]]:
    """Sample a preference for each pair; returns TRL-format rows. The label comes from the
    rater's scores (``rater_a``/``rater_b``, default the gold); ``gold_*`` columns keep the
    evaluation gold either way."""
    rater_a = gold_a if rater_a is None else rater_a
    rater_b = gold_b if rater_b is None else rater_b
    a_wins = rng.random(len(prompts)) < preference_probability(rater_a, rater_b, temperature)
    rows = []
    for i, prompt in enumerate(prompts):
        w, lo = (0, 1) if a_wins[i] else (1, 0)
        comps, gold, rater = (comps_a[i], comps_b[i]), (gold_a[i], gold_b[i]), (rater_a[i], rater_b[i])
        row = {"prompt": prompt, "chosen": comps[w], "rejected": comps[lo],
               "gold_chosen": float(gold[w]), "gold_rejected": float(gold[lo])}
        if raters is not None:
            row.update(rater=raters[i], rater_chosen=float(rater[w]), rater_rejected=float(rater[lo]))
        rows.append(row)
    return rows


def round_pairs(k: int) -> tuple[list[int], list[int]]:
    """The K(K-1)/2 index pairs (i < j) a rater labels among K completions."""
    i, j = zip(*itertools.combinations(range(k), 2))
    return list(i), list(j)


def simulate_preferences(model, tokenizer, prompts: list[str], cfg: RaterConfig, seed: int = 0):
    """For each (prompt, round): sample K completions from ``model``; a rater (one of
    ``cfg.profiles``, drawn per round) labels all their pairs."""
    import datasets

    from rlhf.gold import gold_score, profile_score
    from rlhf.models import sample

    k = cfg.completions_per_prompt
    rounds = [p for p in prompts for _ in range(cfg.pairs_per_prompt)]
    ids = sample(model, tokenizer, [p for p in rounds for _ in range(k)], cfg.max_new_tokens, temperature=1.0,
                 generator_seed=seed)
    texts = [" " + tokenizer.decode(c).strip() for c in ids]
    full = [rounds[n // k] + t for n, t in enumerate(texts)]
    gold = [gold_score(t) for t in full]
    rng = np.random.default_rng(seed)
    divergent = cfg.profiles != ["gold"]
    who = [cfg.profiles[i] for i in rng.integers(len(cfg.profiles), size=len(rounds))] if divergent else None
    rater = [profile_score(t, who[n // k]) for n, t in enumerate(full)] if divergent else gold
    ii, jj = round_pairs(k)
    a = [r * k + i for r in range(len(rounds)) for i in ii]  # sample index of each pair's first text
    b = [r * k + j for r in range(len(rounds)) for j in jj]

    def pick(xs, idx):
        return [xs[n] for n in idx]

    rows = label_pairs([rounds[n // k] for n in a], pick(texts, a), pick(texts, b),
                       pick(gold, a), pick(gold, b), cfg.temperature, rng, pick(rater, a), pick(rater, b),
                       [who[n // k] for n in a] if divergent else None)
    return datasets.Dataset.from_list(rows)
