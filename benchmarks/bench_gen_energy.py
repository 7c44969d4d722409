"""Energy-based models on binarised digits: the Hopfield capacity curve and the RBM's measures.

1. Hopfield (generative/hopfield.py), N = 256 units: recall rate (fixed point within 2% of N
   pixels of the stored pattern) from 10% flipped pixels against the load P/N, for random +-1
   patterns and for distinct binarised training digits, Hebbian and pseudo-inverse rules;
   the target: >= 95% of the stored patterns recalled at every load below 0.1 patterns per
   neuron, for random patterns with the Hebbian rule and for digits with the pseudo-inverse rule.
2. RBM (generative/rbm.py): the gen-rbm-digits preset through the gen pipeline (Ray Train, one
   worker): held-out reconstruction error (trained vs untrained) and the linear probe on p(h | v)
   against the same probe on the binarised pixels.

    python benchmarks/bench_gen_energy.py [--quick]      (reinforge bench gen-energy)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import Timer, parse_args, print_table, write_results

LOADS = (0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 0.16, 0.18, 0.20, 0.25, 0.30)
TARGET_BELOW = 0.1


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], extra=[
        (("--trials",), {"type": int, "default": 0, "help": "corrupted copies per stored pattern (default 4, quick 1)"}),
        (("--skip-rbm",), {"action": "store_true", "help": "the Hopfield curve only"}),
    ])
    import torch

    from generative import data as gdata
    from generative import hopfield as H

    torch.set_num_threads(1)
    loads = (0.04, 0.1, 0.2) if args.quick else LOADS
    trials = args.trials or (1 if args.quick else 4)
    digits = H.distinct(H.to_spins(gdata.digits(16, "train")[0]), int(max(loads) * 256) + 1)
    with Timer() as t:
        curve = H.capacity_curve(digits, 0.1, loads=loads, trials=trials, max_sweeps=20, seed=0)
    table = {}
    for r in curve:
        row = table.setdefault(r["patterns"], {"P/N": round(r["patterns_per_neuron"], 3), "P": r["patterns"]})
        row[f"{r['kind']} {r['rule']}"] = r["recall_rate"]
    rows = list(table.values())
    cols = ["P/N", "P", "random hebbian", "random pseudo-inverse", "digits hebbian", "digits pseudo-inverse"]
    print_table(rows, cols, f"Hopfield N=256: recall rate from 10% flipped pixels ({trials} corrupted copies "
                            f"per pattern, within 5 px; {t.seconds:.0f} s)")
    targets = {}
    for kind, rule in (("random", "hebbian"), ("digits", "pseudo-inverse"), ("digits", "hebbian")):
        below = [r["recall_rate"] for r in curve if r["kind"] == kind and r["rule"] == rule
                 and r["patterns_per_neuron"] < TARGET_BELOW]
        targets[f"{kind} {rule}"] = {"min_recall_below_0.1": min(below), "met": min(below) >= 0.95,
                                     "capacity_95": H.capacity(curve, kind, rule)}
    for k, v in targets.items():
        print(f"target (>= 95% recalled at every P/N < {TARGET_BELOW}) {k}: min {v['min_recall_below_0.1']:.3f} -> "
              f"{'met' if v['met'] else 'missed'}; largest P/N with >= 95%: {v['capacity_95']:.3f}")
    rbm = None
    if not args.skip_rbm:
        from cluster.runtime import connect
        from pipelines.registry import execute, resolve

        connect(num_cpus=2)
        out = Path(tempfile.mkdtemp(prefix="bench-gen-energy-"))
        gen = {"epochs": 2, "gibbs_steps": 100, "eval_samples": 200} if args.quick else {}
        with Timer() as t:
            _, res = execute(resolve(pipeline="gen", preset="gen-rbm-digits",
                                     extra={"run": {"run_dir": str(out / "rbm"), "tensorboard": False}, "gen": gen}))
        rbm = {k: res.get(k) for k in ("epochs", "reconstruction_error", "reconstruction_error_untrained",
                                       "linear_probe_accuracy", "linear_probe_accuracy_raw", "class_coverage",
                                       "classifier_frechet_distance")}
        rbm["seconds"] = round(t.seconds, 1)
        print_table([rbm], list(rbm), "RBM (gen-rbm-digits preset): held-out digits, probe on p(h|v) vs pixels")
    path = write_results("gen_energy", rows, args.out, quick=args.quick, trials=trials, curve=curve,
                         targets=targets, rbm=rbm)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
