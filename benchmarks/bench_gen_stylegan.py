"""Style-based generator vs the DCGAN-style GAN on 16x16 digits, at the same number of generator updates.

Both start from their presets (gen-stylegan-digits, gen-gan-digits: batch 64, 22 updates per
epoch, one generator update per step) with ``epochs = updates / 22``, in-process (gen.workers=0)
so both get the same single process; 1,000 samples each against the 360 held-out digits.
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
    from pipelines.registry import execute, resolve

    resolved = resolve(preset=preset, extra={"run": {"run_dir": str(out / preset), "tensorboard": False, "seed": seed},
                                             "gen": {"workers": 0, "epochs": epochs, **gen}})
    with Timer() as t:
        _, result = execute(resolved)
    return result, t.seconds


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
                     "generator_updates": res["epochs"] * UPDATES_PER_EPOCH,
                     "classifier_frechet_distance": res["classifier_frechet_distance"],
                     "class_coverage": res["class_coverage"], "seconds": round(secs, 1),
                     "run_dir": str(out / preset)})
        print(rows[-1], flush=True)
    print_table(rows, ["preset", "epochs", "generator_updates", "classifier_frechet_distance", "class_coverage",
                       "seconds"], "digits 16x16, same generator updates (classifier-feature Frechet; lower is better)")
    path = write_results("gen-stylegan", rows, args.out, quick=args.quick, updates=updates,
                         note="CPU only; in-process (gen.workers=0); 1,000 samples per model unless --quick")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
