"""The gold reward: music-theory rules in the spirit of Sequence Tutor (Jaques et al. 2017).

HIDDEN FROM TRAINING. Only the simulated raters (rlhf/raters.py) and evaluation read it; the
reward model and PPO never see it, which is what makes the pipeline checkable: the proxy
reward the policy optimises can be compared with the reward it was meant to stand for.

Every rule is a documented function of a parsed melody (``rlhf.melody.parse_tokens`` of
prompt + completion) returning a score in [0, 1]; ``gold_score`` is their weighted sum
(``WEIGHTS``), so the best possible score is ``sum(WEIGHTS.values())``. Melodies are
transposed so the tonic is C (pitch class 0); the mode token says major or minor.
"""

from __future__ import annotations

from collections import Counter

from rlhf.melody import Melody, parse_tokens

MAJOR_SCALE = frozenset({0, 2, 4, 5, 7, 9, 11})
MINOR_SCALE = frozenset({0, 2, 3, 5, 7, 8, 10, 11})  # natural minor plus the raised leading tone
TONIC = 0
MAX_REPEATS = 4  # Jaques et al.: no note repeated more than 4 times in a row
MAX_LEAP = 7  # semitones: leaps larger than a perfect fifth are "excessive"
MOTIF_LEN = 3  # a motif is a pattern of 3 consecutive intervals (4 notes)


def notes_in_key(mel: Melody) -> float:
    """Fraction of notes whose pitch class is in the scale of the melody's mode."""
    scale = MINOR_SCALE if mel.mode == "minor" else MAJOR_SCALE
    ps = mel.pitches
    return sum(p % 12 in scale for p in ps) / len(ps) if ps else 0.0


def begins_on_tonic(mel: Melody) -> float:
    """1 if the first note is the tonic, else 0."""
    ps = mel.pitches
    return float(bool(ps) and ps[0] % 12 == TONIC)


def ends_on_tonic(mel: Melody) -> float:
    """1 if the last note is the tonic, else 0."""
    ps = mel.pitches
    return float(bool(ps) and ps[-1] % 12 == TONIC)


def no_excess_repeats(mel: Melody) -> float:
    """1 minus the fraction of notes that repeat a pitch more than ``MAX_REPEATS`` times in a row."""
    ps = mel.pitches
    if not ps:
        return 0.0
    excess, run = 0, 1
    for a, b in zip(ps, ps[1:]):
        run = run + 1 if a == b else 1
        excess += run > MAX_REPEATS
    return 1.0 - excess / len(ps)


def leaps_resolved(mel: Melody) -> float:
    """1 minus the fraction of intervals that are bad leaps: a leap larger than a fifth is
    bad unless the next interval resolves it stepwise (1-2 semitones) in the opposite direction."""
    ps = mel.pitches
    iv = [b - a for a, b in zip(ps, ps[1:])]
    if not iv:
        return 0.0
    bad = 0
    for i, step in enumerate(iv):
        if abs(step) > MAX_LEAP:
            nxt = iv[i + 1] if i + 1 < len(iv) else 0
            resolved = 1 <= abs(nxt) <= 2 and (nxt > 0) != (step > 0)
            bad += not resolved
    return 1.0 - min(1.0, 4.0 * bad / len(iv))  # x4: a few unresolved leaps already cost a lot


def motif_reuse(mel: Melody) -> float:
    """Fraction of interval patterns (``MOTIF_LEN`` intervals, any transposition) that occur
    more than once: folk tunes repeat and sequence their motifs; random walks do not."""
    ps = mel.pitches
    iv = tuple(b - a for a, b in zip(ps, ps[1:]))
    grams = [iv[i:i + MOTIF_LEN] for i in range(len(iv) - MOTIF_LEN + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(counts[g] > 1 for g in grams) / len(grams)


def ends_with_eos(mel: Melody) -> float:
    """1 if the melody was closed by <eos> (not cut off at the length limit), else 0."""
    return float(mel.ended)


def well_formed(mel: Melody) -> float:
    """1 minus the fraction of tokens that break the pitch-then-duration grammar."""
    return 1.0 - min(1.0, 4.0 * mel.errors / max(1, mel.n_tokens))


def reasonable_length(mel: Melody) -> float:
    """1 for 12-64 notes, falling linearly to 0 at 0 notes: a one-note "melody" is not a tune."""
    n = len(mel.notes)
    return min(1.0, n / 12.0) if n <= 64 else max(0.0, 1.0 - (n - 64) / 64.0)


RULES = {
    "notes_in_key": notes_in_key,
    "begins_on_tonic": begins_on_tonic,
    "ends_on_tonic": ends_on_tonic,
    "no_excess_repeats": no_excess_repeats,
    "leaps_resolved": leaps_resolved,
    "motif_reuse": motif_reuse,
    "ends_with_eos": ends_with_eos,
    "well_formed": well_formed,
    "reasonable_length": reasonable_length,
}
WEIGHTS = {
    "notes_in_key": 2.0,
    "begins_on_tonic": 0.5,
    "ends_on_tonic": 1.5,
    "no_excess_repeats": 1.0,
    "leaps_resolved": 1.0,
    "motif_reuse": 1.5,
    "ends_with_eos": 1.0,
    "well_formed": 1.0,
    "reasonable_length": 1.0,
}
MAX_SCORE = sum(WEIGHTS.values())


def gold_rules(text: str) -> dict[str, float]:
    """Every rule's score for one melody text (prompt + completion)."""
    mel = parse_tokens(text)
    return {name: fn(mel) for name, fn in RULES.items()}


def gold_score(text: str) -> float:
    """The hidden gold reward: the weighted sum of all rules (0 .. ``MAX_SCORE``)."""
    return sum(WEIGHTS[k] * v for k, v in gold_rules(text).items())


def gold_scores(texts: list[str]) -> list[float]:
    return [gold_score(t) for t in texts]


# --- divergent raters ------------------------------------------------------------------------
# Raters who weigh the same rules differently (several raters with different gold rules
# model divergent preferences, as in variational preference learning). "gold" is the
# evaluation reward; "tonal" hears only key and cadence, "melodic" only the line's shape. Each
# sums to about the same maximum, so neither dominates a mixture by scale alone.
_NEUTRAL = {"ends_with_eos": 1.0, "well_formed": 1.0, "reasonable_length": 1.0}
RATER_PROFILES = {
    "gold": WEIGHTS,
    "tonal": {"notes_in_key": 3.0, "begins_on_tonic": 1.0, "ends_on_tonic": 3.0, **_NEUTRAL},
    "melodic": {"leaps_resolved": 3.0, "motif_reuse": 3.0, "no_excess_repeats": 1.0, **_NEUTRAL},
}


def profile_score(text: str, profile: str = "gold") -> float:
    """The score a rater of ``profile`` gives one melody (``gold`` is ``gold_score``)."""
    weights = RATER_PROFILES[profile]
    rules = gold_rules(text)
    return sum(w * rules[k] for k, w in weights.items())
