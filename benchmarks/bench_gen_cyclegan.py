"""CycleGAN on digit-domains: the translation measures against the issue's targets.

Trains the ``gen-cyclegan-digit-domains`` preset (Ray Train, 1 worker) per seed, then prints one
row per measure: the measured value (mean over seeds, each seed's value), the target, whether it
is met, and two reference points computed with the same judges on the same 180 + 180 held-out
rows: ``no translation`` (G and F replaced by the identity) and ``known style`` (A -> B by the
style function itself; B -> A has no exact inverse, so it is left empty).

    python benchmarks/bench_gen_cyclegan.py [--quick] [--seeds N]
    # or: reinforge bench gen-cyclegan [-- --seeds 2]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from _common import Timer, parse_args, print_table, write_results

PRESET = "gen-cyclegan-digit-domains"
# measure -> (rule, bound); None: reported, no target
TARGETS: dict[str, tuple[str, float] | None] = {
    "class_kept_a_to_b": (">=", 0.80), "class_kept_b_to_a": (">=", 0.80),
    "target_domain_a_to_b": (">=", 0.90), "target_domain_b_to_a": (">=", 0.90),
    "cycle_error_a": None, "cycle_error_b": None,
    "class_b_classifier_accuracy": None, "domain_classifier_accuracy": None,
}


def reference_points(size: int = 16) -> dict[str, dict[str, float]]:
    """The judges' verdicts on untranslated held-out images and on the known A -> B style."""
    import torch

    from generative import data as gdata
    from generative.cyclegan import DOMAIN_A, DOMAIN_B, class_b_classifier, domain_classifier
    from generative.cyclegan import agreement as agree
    from generative.metrics import digits_classifier

    x, y, _ = gdata.digit_domains(size, "test")
    a, b = x[:, :1], x[:, 1:2]
    judge_a, judge_b, judge_domain = digits_classifier(size), class_b_classifier(size), domain_classifier(size)

    with torch.no_grad():
        ident = {"class_kept_a_to_b": agree(judge_b(a), y[:, 0]), "class_kept_b_to_a": agree(judge_a(b), y[:, 1]),
                 "target_domain_a_to_b": agree(judge_domain(a), torch.full_like(y[:, 0], DOMAIN_B)),
                 "target_domain_b_to_a": agree(judge_domain(b), torch.full_like(y[:, 1], DOMAIN_A)),
                 "cycle_error_a": 0.0, "cycle_error_b": 0.0}
        styled = gdata.style_b(a)
        style = {"class_kept_a_to_b": agree(judge_b(styled), y[:, 0]),
                 "target_domain_a_to_b": agree(judge_domain(styled), torch.full_like(y[:, 0], DOMAIN_B))}
    return {"no translation": ident, "known style": style}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], [
        (("--seeds",), {"type": int, "default": 1, "help": "training runs with seeds 0..N-1 (the table shows the mean)"}),
    ])
    from cluster.runtime import connect
    from pipelines.registry import execute, resolve

    connect(num_cpus=2)
    out = Path(tempfile.mkdtemp(prefix="bench-gen-cyclegan-"))
    runs: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        gen = {"epochs": 1, "hidden": 16, "residual_blocks": 1} if args.quick else {}
        resolved = resolve(preset=PRESET, extra={"run": {"run_dir": str(out / f"s{seed}"), "tensorboard": False,
                                                         "seed": seed}, "gen": gen})
        with Timer() as t:
            _, result = execute(resolved)
        runs.append({**result, "seconds": t.seconds, "run_dir": str(out / f"s{seed}")})
        print({k: runs[-1][k] for k in (*TARGETS, "epochs", "seconds")}, flush=True)
    refs = reference_points()
    rows = []
    for name, target in TARGETS.items():
        values = [r[name] for r in runs]
        mean = sum(values) / len(values)
        row = {"measure": name, "measured": mean, "per_seed": ", ".join(f"{v:.3f}" for v in values),
               "target": f"{target[0]} {target[1]:g}" if target else "", "met": "",
               **{ref: vals.get(name) for ref, vals in refs.items()}}
        if target:
            row["met"] = "yes" if mean >= target[1] and min(values) >= target[1] else "NO"
        rows.append(row)
    print_table(rows, ["measure", "measured", "per_seed", "target", "met", "no translation", "known style"],
                f"CycleGAN on digit-domains ({PRESET}, {runs[0]['epochs']} epochs, {args.seeds} seed(s), "
                f"{sum(r['seconds'] for r in runs) / len(runs):.0f} s per run incl. evaluation; held-out 180 + 180)")
    path = write_results("gen-cyclegan", rows, args.out, quick=args.quick, runs=runs, preset=PRESET,
                         note="CPU only; 2 cores; Ray Train 1 worker, 1 thread")
    print(f"translation grids: {', '.join(str(Path(r['run_dir']) / 'plots' / 'translations.png') for r in runs)}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
