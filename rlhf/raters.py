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
format are read by ``load_preferences``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cluster.errors import ConfigError, ReinforgeError

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class RaterConfig:
    pairs_per_prompt: int = 1  # rating rounds per prompt; each labels all pairs of K completions (K = 2: one pair)
    completions_per_prompt: int = 12  # K completions sampled per round, all K(K-1)/2 pairs labelled
    train_prompts: int | None = None  # cap on train melodies used as prompts (None = all)
    temperature: float = 0.5  # T of the Bradley-Terry labeller; lower = less noisy labels
    max_new_tokens: int = 112
    preferences: str | None = None  # a user preference set (json/jsonl/csv/parquet or a saved dataset dir)

    def validate(self) -> None:
        if self.pairs_per_prompt < 1:
            raise ConfigError("raters.pairs_per_prompt must be >= 1")
        if self.completions_per_prompt < 2:
            raise ConfigError("raters.completions_per_prompt must be >= 2 (2 = one pair per round)")
        if self.temperature <= 0:
            raise ConfigError("raters.temperature must be > 0 (e.g. 0.5)")
        if self.max_new_tokens < 1:
            raise ConfigError("raters.max_new_tokens must be >= 1")


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
                temperature: float, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Sample a preference for each pair; returns TRL-format rows."""
    p = preference_probability(gold_a, gold_b, temperature)
    a_wins = rng.random(len(p)) < p
    rows = []
    for i, prompt in enumerate(prompts):
        win, lose = (comps_a[i], comps_b[i]) if a_wins[i] else (comps_b[i], comps_a[i])
        gw, gl = (gold_a[i], gold_b[i]) if a_wins[i] else (gold_b[i], gold_a[i])
        rows.append({"prompt": prompt, "chosen": win, "rejected": lose,
                     "gold_chosen": float(gw), "gold_rejected": float(gl)})
    return rows


def round_pairs(k: int) -> tuple[list[int], list[int]]:
    """The K(K-1)/2 index pairs (i < j) a rater labels among K completions."""
    i, j = zip(*itertools.combinations(range(k), 2))
    return list(i), list(j)


def simulate_preferences(model, tokenizer, prompts: list[str], cfg: RaterConfig, seed: int = 0):
    """For each (prompt, round): sample K completions from ``model`` and label all their pairs."""
    import datasets

    from rlhf.gold import gold_score
    from rlhf.models import sample

    k = cfg.completions_per_prompt
    rounds = [p for p in prompts for _ in range(cfg.pairs_per_prompt)]
    ids = sample(model, tokenizer, [p for p in rounds for _ in range(k)], cfg.max_new_tokens, temperature=1.0,
                 generator_seed=seed)
    texts = [" " + tokenizer.decode(c).strip() for c in ids]
    gold = [gold_score(p + c) for p, c in zip((p for p in rounds for _ in range(k)), texts)]
    ii, jj = round_pairs(k)
    pr, a, b, ga, gb = [], [], [], [], []
    for r, prompt in enumerate(rounds):
        for i, j in zip(ii, jj):
            pr.append(prompt)
            a.append(texts[r * k + i]), b.append(texts[r * k + j])
            ga.append(gold[r * k + i]), gb.append(gold[r * k + j])
    rows = label_pairs(pr, a, b, ga, gb, cfg.temperature, np.random.default_rng(seed))
    return datasets.Dataset.from_list(rows)


def load_preferences(path: str | Path):
    """A user preference set in TRL's format, from local files or a ``save_to_disk`` dir."""
    import datasets

    p = Path(path).expanduser()
    if not p.exists():
        raise ReinforgeError(f"preference set {path}: no such file or directory; expected a json/jsonl/csv/"
                             "parquet file or a saved dataset dir with prompt, chosen, rejected")
    try:
        if p.is_dir():
            ds = datasets.load_from_disk(str(p))
        else:
            kind = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}.get(p.suffix)
            if kind is None:
                raise ReinforgeError(f"preference set {path}: unknown file type {p.suffix!r}; "
                                     "use .json, .jsonl, .csv or .parquet")
            ds = datasets.load_dataset(kind, data_files=str(p), split="train")
    except ReinforgeError:
        raise
    except Exception as exc:
        raise ReinforgeError(f"preference set {path}: cannot read it ({type(exc).__name__}); expected "
                             "prompt, chosen, rejected columns") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise ReinforgeError(f"preference set {path}: missing column(s) {', '.join(missing)}; expected "
                             f"{', '.join(REQUIRED_COLUMNS)} (TRL's explicit-prompt preference format)")
    return ds
