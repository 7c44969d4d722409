"""Style-based generator vs the DCGAN-style GAN on 16x16 digits, at the same number of generator updates.

Both start from their presets (gen-stylegan-digits, gen-gan-digits: batch 64, 22 updates per
epoch, one generator update per step) with ``epochs = updates / 22``, each trained by the same
plain loop in this process (one thread, no Ray), then evaluated as ``gen train`` does: 1,000
samples each against the 360 held-out digits. Seconds are training time.
Prints the classifier-feature Frechet distance (lower is better; not FID), class coverage and
seconds side by side.

    python benchmarks/bench_gen_stylegan.py [--quick] [--updates N] [--seed S] [--seeds N]
                                            [--set gen.KEY=VALUE ...] [--curve K]
    # or: reinforge bench gen-stylegan [...]
--seeds N: seeds S, S+1, ..., S+N-1, both models per seed, and each model's mean over them (one
  seed's Frechet distance varies by tens of points for either model at this budget).
--set: overrides for the stylegan preset only (the GAN keeps its preset), as ``reinforge --set``.
--curve K: every K epochs, both models' Frechet distance and class coverage on 500 samples (so
  read them against each other, not against the final 1,000-sample table) and, for stylegan, its
  z-sensitivity: the mean per-pixel standard deviation of 64 images from 64 z with the noise
  inputs fixed (images in [-1, 1]); a collapsing generator's falls.
  The curve samples from the training random stream, so a run with --curve trains on other draws.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
from pathlib import Path

from _common import Timer, check_overrides, parse_args, print_table, write_results

UPDATES_PER_EPOCH = 1437 // 64  # digits training split / batch 64 (both presets)


def z_sensitivity(model, n: int = 64) -> float:
    """Mean over pixels of the standard deviation over n latents, the noise inputs fixed at 0."""
    import torch

    level, alpha = model.trained_stage()
    G = model._sampler()
    with torch.no_grad():
        noise = [torch.zeros(n, 1, r, r, device=model.device) for r in model.resolutions for _ in range(2)]
        img = G.synthesis(G.styles(torch.randn(n, model.z_dim, device=model.device)), level, alpha, noise)
    return float(img.std(0).mean())


def curve_row(model, cfg, preset: str, epoch: int) -> dict:
    from generative.metrics import digits_metrics

    m = digits_metrics(model.sample(500).cpu(), None, cfg.image_size)
    row = {"preset": preset, "epoch": epoch, "frechet_500": round(m["classifier_frechet_distance"], 1),
           "class_coverage": m["class_coverage"]}
    if hasattr(model, "trained_stage"):
        row["z_sensitivity"] = round(z_sensitivity(model), 3)
    return row


def run(preset: str, out: Path, epochs: int, seed: int, overrides: list[str] | None = None, curve: int = 0,
        curve_rows: list | None = None, **gen) -> tuple[dict, float]:
    """The preset's model trained in this process (the training loop's train_step per minibatch,
    no Ray: both models alike), then its evaluation. Returns (metrics + epochs, seconds); with
    ``curve``, appends a curve_row every ``curve`` epochs to ``curve_rows`` (outside the timing)."""
    import time

    import torch

    from cluster.seeding import seed_everything
    from generative import data as gdata
    from generative.evaluate import evaluate
    from generative.train import build_model
    from pipelines.registry import resolve

    cfg = resolve(preset=preset, overrides=overrides,
                  extra={"gen": {"workers": 0, "epochs": epochs, **gen}}).experiment.gen
    seed_everything(seed)
    torch.set_num_threads(1)  # as one Ray Train worker
    with Timer() as t:
        model = build_model(cfg)
        ds = gdata.load(cfg, "train", seed)
        if hasattr(model, "set_total_steps"):
            model.set_total_steps(epochs * (len(ds.x) // cfg.batch_size))
        step, untimed = 0, 0.0
        for epoch in range(epochs):
            for x, y in gdata.batches(ds, cfg.batch_size, torch.Generator().manual_seed(seed * 1000 + epoch)):
                model.train_step(x, y, step)
                step += 1
            if curve and (epoch + 1) % curve == 0:
                t0 = time.perf_counter()
                curve_rows.append(curve_row(model, cfg, preset, epoch + 1))
                print(curve_rows[-1], flush=True)
                untimed += time.perf_counter() - t0
    metrics, _ = evaluate(model, cfg, out / preset, seed=seed)
    return {"epochs": epochs, "steps": step, **metrics}, t.seconds - untimed


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], [
        (("--updates",), {"type": int, "default": 660, "help": "generator updates for each model (default 660: "
                                                               "the gen-gan-digits preset's 30 epochs)"}),
        (("--seed",), {"type": int, "default": 0}),
        (("--seeds",), {"type": int, "default": 1, "metavar": "N", "help": "seeds S .. S+N-1 and the mean"}),
        (("--set",), {"action": "append", "default": [], "metavar": "gen.KEY=VALUE",
                      "help": "override the stylegan preset (repeatable)"}),
        (("--curve",), {"type": int, "default": 0, "metavar": "K",
                        "help": "every K epochs: Frechet (500 samples), coverage and stylegan's z-sensitivity"}),
    ])
    if args.seeds < 1 or args.updates < 1 or args.curve < 0:
        print(f"bench gen-stylegan: --seeds {args.seeds}, --updates {args.updates}, --curve {args.curve}: "
              "--seeds and --updates must be >= 1 and --curve >= 0", file=sys.stderr)
        raise SystemExit(2)
    check_overrides("gen-stylegan", ["gen-stylegan-digits"], args.set)
    updates = 44 if args.quick else args.updates
    epochs = max(1, math.ceil(updates / UPDATES_PER_EPOCH))
    out = Path(tempfile.mkdtemp(prefix="bench-gen-stylegan-"))
    extra = {"eval_samples": 200} if args.quick else {}
    rows, curve_rows = [], []
    presets = ("gen-stylegan-digits", "gen-gan-digits")
    for seed in range(args.seed, args.seed + args.seeds):
        for preset in presets:
            run_dir = out / f"seed{seed}" if args.seeds > 1 else out
            res, secs = run(preset, run_dir, epochs, seed, args.set if preset == "gen-stylegan-digits" else None,
                            args.curve, curve_rows, **extra)
            rows.append({"model": preset.split("-")[1], "preset": preset, "seed": seed, "epochs": res["epochs"],
                         "generator_updates": res["steps"],
                         "classifier_frechet_distance": round(res["classifier_frechet_distance"], 1),
                         "class_coverage": res["class_coverage"], "seconds": round(secs, 1),
                         "run_dir": str(run_dir / preset)})
            print(rows[-1], flush=True)
    if args.seeds > 1:  # each model's mean over the seeds
        for preset in presets:
            mine = [r for r in rows if r["preset"] == preset]
            rows.append({"model": mine[0]["model"], "preset": preset, "seed": f"mean of {args.seeds}",
                         "epochs": epochs, "generator_updates": mine[0]["generator_updates"],
                         **{k: round(statistics.mean(r[k] for r in mine), 1)
                            for k in ("classifier_frechet_distance", "class_coverage", "seconds")}})
    print_table(rows, ["preset", "seed", "epochs", "generator_updates", "classifier_frechet_distance",
                       "class_coverage", "seconds"],
                "digits 16x16, same generator updates (classifier-feature Frechet; lower is better)")
    if curve_rows:
        print_table(curve_rows, ["preset", "epoch", "frechet_500", "class_coverage", "z_sensitivity"],
                    "along the run (500 samples each)")
    path = write_results("gen-stylegan", rows, args.out, quick=args.quick, updates=updates, overrides=args.set,
                         seeds=list(range(args.seed, args.seed + args.seeds)),
                         curve=curve_rows,
                         note="CPU only; one process, one thread, no Ray; 1,000 samples per model unless --quick")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
