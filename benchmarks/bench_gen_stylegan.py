"""Style-based generator vs the DCGAN-style GAN on 16x16 digits, at the same number of generator updates.

Both start from their presets (gen-stylegan-digits, gen-gan-digits: batch 64, 22 updates per
epoch, one generator update per step) with ``epochs = updates / 22``, each trained by the same
plain loop in this process (one thread, no Ray), then evaluated as ``gen train`` does: 1,000
samples each against the 360 held-out digits. Seconds are training time.
Prints the classifier-feature Frechet distance (lower is better; not FID), class coverage and
seconds side by side.

    python benchmarks/bench_gen_stylegan.py [--quick] [--updates N] [--seed S]
    # or: reinforge bench gen-stylegan [...]
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from _common import Timer, parse_args, print_table, write_results

UPDATES_PER_EPOCH = 1437 // 64  # digits training split / batch 64 (both presets)


def run(preset: str, out: Path, epochs: int, seed: int, **gen) -> tuple[dict, float]:
    """The preset's model trained in this process (the training loop's train_step per minibatch,
    no Ray: both models alike), then its evaluation. Returns (metrics + epochs, seconds)."""
    import torch

    from cluster.seeding import seed_everything
    from generative import data as gdata
    from generative.evaluate import evaluate
    from generative.train import build_model
    from pipelines.registry import resolve

    cfg = resolve(preset=preset, extra={"gen": {"workers": 0, "epochs": epochs, **gen}}).experiment.gen
    seed_everything(seed)
    torch.set_num_threads(1)  # as one Ray Train worker
    with Timer() as t:
        model = build_model(cfg)
        ds = gdata.load(cfg, "train", seed)
        if hasattr(model, "set_total_steps"):
            model.set_total_steps(epochs * (len(ds.x) // cfg.batch_size))
        step = 0
        for epoch in range(epochs):
            for x, y in gdata.batches(ds, cfg.batch_size, torch.Generator().manual_seed(seed * 1000 + epoch)):
                model.train_step(x, y, step)
                step += 1
    metrics, _ = evaluate(model, cfg, out / preset, seed=seed)
    return {"epochs": epochs, "steps": step, **metrics}, t.seconds


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], [
        (("--updates",), {"type": int, "default": 660, "help": "generator updates for each model (default 660: "
                                                               "the gen-gan-digits preset's 30 epochs)"}),
        (("--seed",), {"type": int, "default": 0}),
    ])
    updates = 44 if args.quick else args.updates
    epochs = max(1, math.ceil(updates / UPDATES_PER_EPOCH))
    out = Path(tempfile.mkdtemp(prefix="bench-gen-stylegan-"))
    extra = {"eval_samples": 200} if args.quick else {}
    rows = []
    for preset in ("gen-stylegan-digits", "gen-gan-digits"):
        res, secs = run(preset, out, epochs, args.seed, **extra)
        rows.append({"model": preset.split("-")[1], "preset": preset, "epochs": res["epochs"],
                     "generator_updates": res["steps"],
                     "classifier_frechet_distance": res["classifier_frechet_distance"],
                     "class_coverage": res["class_coverage"], "seconds": round(secs, 1),
                     "run_dir": str(out / preset)})
        print(rows[-1], flush=True)
    print_table(rows, ["preset", "epochs", "generator_updates", "classifier_frechet_distance", "class_coverage",
                       "seconds"], "digits 16x16, same generator updates (classifier-feature Frechet; lower is better)")
    path = write_results("gen-stylegan", rows, args.out, quick=args.quick, updates=updates,
                         note="CPU only; one process, one thread, no Ray; 1,000 samples per model unless --quick")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
