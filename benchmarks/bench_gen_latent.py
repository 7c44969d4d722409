"""Latent diffusion against pixel diffusion on 16x16 digits, all measured in this one run.

Trains the autoencoder (preset gen-vae-autoencoder-digits: a VAE with a small KL weight), the
latent DDPM on its latents (gen-latent-ddpm-digits) and the pixel DDPM (gen-ddpm-digits), then prints side by side: the classifier-feature Frechet
distance (not FID), conditional accuracy of guided samples, sampling seconds per image (the
same timing of ``model.sample`` for both, one thread, the same labels) and training seconds.

    python benchmarks/bench_gen_latent.py [--quick] [--epochs N] [--samples N] [--beta B] [--in-process]
    # or: reinforge bench gen-latent
    --beta B: the autoencoder's KL weight (default: the preset's)
    --epochs N: both diffusion models train N epochs (an equal, reduced budget; default: each preset's)
    --in-process: train each preset's config with the same train_step loop in this process, one
                  thread, without Ray Train (for a machine too loaded to start Ray's processes)
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_gen import DIGITS_SAMPLES, run_pipeline

from _common import parse_args, print_table, write_results

SAMPLING_IMAGES = 200  # images timed per model (10 classes x 20)


def run_in_process(preset: str, out: Path, name: str, **gen: Any) -> tuple[dict[str, Any], float, float]:
    """The preset's config (validated as the CLI does), trained by the Ray Train worker loop's
    steps in this process; checkpoint into out/name/checkpoints, then the pipeline's evaluation.
    Returns (final metrics, training seconds, total seconds)."""
    import torch

    from cluster.checkpoint import save_checkpoint
    from cluster.seeding import derive_seed, seed_everything
    from generative import data as gdata
    from generative.evaluate import evaluate
    from generative.train import build_model, checkpoint_objects
    from pipelines.registry import resolve

    t_start = time.perf_counter()
    torch.set_num_threads(1)
    seed_everything(0)
    cfg = resolve(preset=preset, extra={"gen": gen}).experiment.gen
    model = build_model(cfg)
    ds = gdata.load(cfg, "train")
    batch = min(cfg.batch_size, len(ds))
    if hasattr(model, "set_total_steps"):
        model.set_total_steps(cfg.epochs * (len(ds) // batch))
    step, t0 = 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        for x, y in gdata.batches(ds, batch, torch.Generator().manual_seed(derive_seed(0, epoch, 0))):
            model.train_step(x, y, step)
            step += 1
    train_s = time.perf_counter() - t0
    save_checkpoint(out / name / "checkpoints", cfg.epochs, checkpoint_objects(model, cfg, cfg.epochs, step))
    metrics, _ = evaluate(model, cfg, out / name, seed=0)
    return {"epochs": cfg.epochs, **metrics}, train_s, time.perf_counter() - t_start


def train_seconds(run_dir: Path, epochs: int) -> float:
    """Mean logged epoch time x epochs: the training alone (no evaluation, no Ray start-up)."""
    rows = [json.loads(line) for line in (run_dir / "train_metrics.jsonl").read_text().splitlines() if line.strip()]
    return sum(r["epoch_s"] for r in rows) / len(rows) * epochs


def sampling_seconds_per_image(run_dir: Path, n: int = SAMPLING_IMAGES) -> float:
    """Seconds per image of ``sample(n, labels)`` from the trained checkpoint (one thread)."""
    import torch

    from generative.train import load_trained

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, _, _ = load_trained(run_dir)
    labels = torch.arange(n) % 10
    model.sample(10, labels[:10])  # warm-up
    t0 = time.perf_counter()
    model.sample(n, labels)
    return (time.perf_counter() - t0) / n


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], [
        (("--epochs",), {"type": int, "help": "epochs of BOTH diffusion models (equal budget); default: presets'"}),
        (("--samples",), {"type": int, "help": f"eval samples of every model (default {DIGITS_SAMPLES})"}),
        (("--in-process",), {"action": "store_true", "help": "train in this process (one thread), not through Ray Train"}),
        (("--beta",), {"type": float, "help": "the autoencoder's KL weight gen.beta (default: the preset's)"}),
    ])
    if args.in_process:
        def train(preset, out, name, **gen):
            return run_in_process(preset, out, name, **gen)
    else:
        from cluster.runtime import connect

        connect(num_cpus=2)

        def train(preset, out, name, **gen):
            res, secs = run_pipeline(preset, out, name, **gen)
            return res, train_seconds(out / name, res["epochs"]), secs
    out = Path(tempfile.mkdtemp(prefix="bench-gen-latent-"))
    quick = args.quick
    samples = args.samples or (200 if quick else DIGITS_SAMPLES)
    diff: dict[str, Any] = {"eval_samples": samples}
    if args.epochs or quick:
        diff["epochs"] = args.epochs or 3
    ae: dict[str, Any] = {"epochs": 3} if quick else {}
    if args.beta is not None:
        ae["beta"] = args.beta
    vae, vae_train_s, vae_s = train("gen-vae-autoencoder-digits", out, "vae", eval_samples=samples, **ae)
    print({"vae": vae, "seconds": vae_s}, flush=True)
    rows = [{"model": "vae autoencoder (its prior samples)", "epochs": vae["epochs"],
             "classifier_frechet_distance": vae["classifier_frechet_distance"], "class_coverage": vae["class_coverage"],
             "train_s": round(vae_train_s, 1), "run_s": round(vae_s, 1)}]
    runs = [("latent-ddpm", "gen-latent-ddpm-digits", {"autoencoder": str(out / "vae")}),
            ("ddpm (pixels, U-Net)", "gen-ddpm-digits", {})]
    for label, preset, extra in runs:
        name = preset.removeprefix("gen-")
        res, train_s, secs = train(preset, out, name, **diff, **extra)
        print({label: res, "seconds": secs}, flush=True)
        rows.append({"model": label, "epochs": res["epochs"],
                     "classifier_frechet_distance": res["classifier_frechet_distance"],
                     "conditional_accuracy": res.get("conditional_accuracy"),
                     "class_coverage": res["class_coverage"],
                     "reconstruction_frechet_distance": res.get("reconstruction_frechet_distance"),
                     "sampling_s_per_image": sampling_seconds_per_image(out / name),
                     "train_s": round(train_s, 1), "run_s": round(secs, 1)})
        print(rows[-1], flush=True)
    latent, pixel = rows[1], rows[2]
    ratio = latent["classifier_frechet_distance"] / pixel["classifier_frechet_distance"]
    speed = latent["sampling_s_per_image"] / pixel["sampling_s_per_image"]
    print_table(rows, ["model", "epochs", "classifier_frechet_distance", "conditional_accuracy", "class_coverage",
                       "reconstruction_frechet_distance", "sampling_s_per_image", "train_s", "run_s"],
                f"digits 16x16, {samples} samples each (classifier-feature Frechet distance, not FID; lower is better)")
    print(f"latent / pixel Frechet distance: {ratio:.2f} (target <= 1.20); "
          f"latent / pixel sampling time: {speed:.3f}")
    path = write_results("gen-latent", rows, args.out, quick=quick, epochs=args.epochs, in_process=args.in_process,
                         beta=args.beta,
                         fd_ratio=ratio,
                         sampling_time_ratio=speed, run_dir=str(out),
                         note="CPU only (no GPU); 2 cores shared with other work")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
