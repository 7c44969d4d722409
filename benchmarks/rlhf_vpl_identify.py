"""How many of one rater's labelled pairs tell its kind, read with the kinds' true rules (not a ``reinforge bench`` target).

A ceiling for any inference of who rated (VPL's q(z | C pairs) included) on the simulated
divergent raters of ``bench rlhf-vpl``: C pairs drawn from one kind's held-out pairs are
assigned the kind under whose rules their labels are likeliest,

    kind(C pairs) = argmax_k sum_j log sigmoid((s_k(y_c,j) - s_k(y_r,j)) / T)

with s_k the kind's score (``rlhf.gold.profile_score``) and T the raters' temperature (the
labels were drawn from exactly this Bradley-Terry model). Prints the share identified per C.

    python benchmarks/rlhf_vpl_identify.py --preferences DIR [--context 1 4 8 16 32] [--pairs N] [--draws N]

DIR: a preference set saved with a rater column of kinds, e.g. the ``rlhf-vpl-work/preferences/heldout``
that ``bench rlhf-vpl`` writes under its ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench_rlhf_vpl import TEMPERATURE  # the raters' temperature that labelled bench rlhf-vpl's pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preferences", required=True, help="a saved preference set with a 'rater' column of kinds")
    p.add_argument("--context", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    p.add_argument("--pairs", type=int, default=8000, help="held-out pairs scored (a random subset)")
    p.add_argument("--draws", type=int, default=2000, help="C-pair samples per kind and C")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if min(args.context) < 1 or args.pairs < 1 or args.draws < 1:
        print("rlhf_vpl_identify: --context values, --pairs and --draws must be >= 1", file=sys.stderr)
        raise SystemExit(2)
    if not (Path(args.preferences) / "dataset_info.json").is_file():
        print(f"rlhf_vpl_identify: --preferences {args.preferences} is not a saved preference set (no "
              "dataset_info.json); point it at bench rlhf-vpl's rlhf-vpl-work/preferences/heldout", file=sys.stderr)
        raise SystemExit(2)

    import datasets
    import numpy as np

    from rlhf.gold import RATER_PROFILES, profile_score
    from rlhf.raters import preference_probability
    from rlhf.reward import full_texts

    ds = datasets.load_from_disk(args.preferences)
    kinds = sorted(set(ds["rater"])) if "rater" in ds.column_names else []
    if len(kinds) < 2 or not set(kinds) <= set(RATER_PROFILES):
        print(f"rlhf_vpl_identify: the set's raters {kinds} are not two or more simulated kinds "
              f"({', '.join(RATER_PROFILES)})", file=sys.stderr)
        raise SystemExit(2)
    rng = np.random.default_rng(args.seed)
    idx = rng.permutation(len(ds))[:args.pairs]
    sub = ds.select(idx.tolist())
    chosen, rejected, _ = full_texts(sub)
    who = np.array(sub["rater"])
    loglik = {k: np.log(preference_probability([profile_score(c, k) for c in chosen],
                                               [profile_score(r, k) for r in rejected], TEMPERATURE)) for k in kinds}
    print(f"{len(sub)} pairs of {args.preferences}; kinds {', '.join(kinds)}; T = {TEMPERATURE}")
    print("| context pairs | kind identified |\n|---|---|")
    for c in args.context:
        hits = []
        for kind in kinds:
            pool = np.flatnonzero(who == kind)
            for _ in range(args.draws):
                pick = rng.choice(pool, size=c, replace=len(pool) < c)
                score = np.array([loglik[k][pick].sum() for k in kinds])
                best = np.flatnonzero(score == score.max())
                hits.append(kinds[rng.choice(best)] == kind)  # ties broken at random
        print(f"| {c} | {np.mean(hits):.3f} |")


if __name__ == "__main__":
    main()
