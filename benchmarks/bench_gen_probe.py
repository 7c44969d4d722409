"""Self-supervised encoders on digits: the linear probe with all labels and with few labels.

Trains simclr, moco, byol and simsiam on 16x16 digits from their presets (gen-<model>-digits)
and reads each run's evaluation: a logistic regression on frozen features, trained on

  * all 1,437 training labels (linear_probe_accuracy), and
  * k = 1, 5, 10 labelled images per class, the mean over gen.probe_draws random label draws
    (probe_accuracy_<k>_per_class; the few-label protocol, as SimCLR's 1% / 10% labels),

scored on the 360 held-out digits. Baselines: the same probe on an untrained encoder of the
same shape and on the raw pixels. The target: every method >= 3 points above the untrained
encoder with 5 labels per class.

    python benchmarks/bench_gen_probe.py [--quick] [--models simclr,byol] [--seeds N] [--in-process]
                                         [--set gen.KEY=VALUE ...]
    # or: reinforge bench gen-probe [-- --in-process]

--in-process trains each preset's config with a plain loop over ``model.train_step`` in this
process (what gen.workers=0 runs, without Ray or the pipeline), then the same probes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import Timer, check_overrides, parse_args, print_table, write_results

METHODS = ("simclr", "moco", "byol", "simsiam")
KS = (1, 5, 10)
TARGET_GAIN = 0.03  # probe_accuracy_5_per_class over the untrained encoder's


def probe_row(name: str, results: list[dict[str, Any]], suffix: str = "") -> dict[str, Any]:
    """Mean over seeds of the full-label and k-per-class probes stored under ``suffix``."""

    def mean(key: str) -> float:
        return sum(r[key] for r in results) / len(results)

    row: dict[str, Any] = {"features": name, "full_labels": mean(f"linear_probe_accuracy{suffix}")}
    row.update({f"{k}_per_class": mean(f"probe_accuracy_{k}_per_class{suffix}") for k in KS})
    return row


def train_in_process(model: str, seed: int, quick: bool, overrides: list[str]) -> dict[str, Any]:
    """The preset's config (with the --set overrides) trained in this process (one thread), then
    the evaluation's probes."""
    import torch

    from generative import data as gdata
    from generative.contrastive import probe_metrics
    from generative.train import build_model
    from pipelines.registry import resolve

    torch.set_num_threads(1)
    cfg = resolve(preset=f"gen-{model}-digits", overrides=overrides,
                  extra={"gen": {"workers": 0, **({"epochs": 3, "probe_draws": 2} if quick else {})}}).experiment.gen
    torch.manual_seed(seed)
    net = build_model(cfg)
    ds, it, rows = gdata.load(cfg, "train", seed), 0, []
    for epoch in range(cfg.epochs):
        outs = [net.train_step(x, y, it + i) for i, (x, y) in
                enumerate(gdata.batches(ds, cfg.batch_size, torch.Generator().manual_seed(epoch)))]
        it += len(outs)
        rows.append({k: sum(o[k] for o in outs) / len(outs) for k in outs[0]})
    torch.manual_seed(seed)  # the untrained encoder: as the pipeline's evaluation builds it
    return {**rows[-1], "epochs": cfg.epochs, "first_epoch_loss": rows[0]["loss"],
            **probe_metrics(net, build_model(cfg), cfg, seed)}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], [
        (("--models",), {"default": ",".join(METHODS), "help": "comma-separated subset of " + ", ".join(METHODS)}),
        (("--seeds",), {"type": int, "default": 1, "help": "training seeds per method (the table shows the mean)"}),
        (("--in-process",), {"action": "store_true", "help": "a plain loop in this process instead of Ray Train"}),
        (("--set",), {"action": "append", "default": [], "metavar": "gen.KEY=VALUE",
                      "help": "override every method's preset (repeatable), e.g. gen.learning_rate=3e-4"}),
    ])
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(METHODS))
    if unknown:
        print(f"bench gen-probe: unknown --models {','.join(unknown)}; choose from {', '.join(METHODS)}", file=sys.stderr)
        raise SystemExit(2)
    check_overrides("gen-probe", [f"gen-{m}-digits" for m in models], args.set)
    if not args.in_process:  # (the pipeline imports only when used: they are slow to import)
        from cluster.runtime import connect
        from pipelines.registry import execute, resolve

        connect(num_cpus=2)
    out = Path(tempfile.mkdtemp(prefix="bench-gen-probe-"))
    rows, baseline = [], []
    for model in models:
        results, secs = [], 0.0
        for seed in range(args.seeds):
            gen = {"epochs": 3, "probe_draws": 2} if args.quick else {}
            with Timer() as t:
                if args.in_process:
                    res = train_in_process(model, seed, args.quick, args.set)
                else:
                    _, res = execute(resolve(preset=f"gen-{model}-digits", overrides=args.set, extra={
                        "run": {"run_dir": str(out / f"{model}-s{seed}"), "tensorboard": False, "seed": seed},
                        "gen": gen}))
            results.append(res)
            secs += t.seconds
        row = probe_row(model, results)
        untrained = probe_row("untrained encoder", results, "_untrained")
        row["gain_5_per_class_per_seed"] = [round(r["probe_accuracy_5_per_class"]
                                                  - r["probe_accuracy_5_per_class_untrained"], 4) for r in results]
        row.update(gain_5_per_class=row["5_per_class"] - untrained["5_per_class"], epochs=results[0]["epochs"],
                   seconds_per_run=round(secs / args.seeds, 1),
                   projection_std=results[0].get("projection_std"))
        row["target_met"] = row["gain_5_per_class"] >= TARGET_GAIN
        rows.append(row)
        baseline = baseline or [untrained, probe_row("raw pixels", results, "_raw")]
        print(row, flush=True)
    # the untrained encoder is the same for every method (same backbone, same seed); raw pixels too
    table = rows + baseline
    cols = ["features", "epochs", "full_labels", *(f"{k}_per_class" for k in KS), "gain_5_per_class",
            "target_met", "projection_std", "seconds_per_run"]
    print_table(table, cols, f"digits linear probe (test accuracy, 360 images; k labels per class: mean over "
                             f"the presets' label draws; {args.seeds} training seed(s))")
    path = write_results("gen_probe", table, args.out, quick=args.quick, seeds=args.seeds, target_gain=TARGET_GAIN,
                         overrides=args.set,
                         in_process=args.in_process, note="CPU only; encoders trained with the presets' settings")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
