"""Generative benchmark: sample quality against the issue's targets, and Ray Train throughput.

Three tables, all measured in this one run:
  1. modes captured / high-quality fraction on ring8 and grid25 (2,500 samples, 3 std):
     WGAN-GP and the non-saturating GAN against the original minimax GAN (mode collapse);
  2. digits: classifier-feature Frechet distance (NOT FID: our own classifier's features),
     class coverage and conditional accuracy for DDPM, VAE, GAN, cGAN, cVAE;
  3. train throughput (samples/s): a plain single-process PyTorch loop (the peer) against
     Ray Train TorchTrainer with 1 and 2 workers (DDP over gloo), same model and batch size.

    python benchmarks/bench_gen.py [--quick] [--only modes|digits|throughput] [--data ring8|grid25] [--seeds N]
    # or: reinforge bench gen [...]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from _common import Timer, parse_args, print_table, write_results

SECTIONS = ("modes", "digits", "throughput")
DIGITS_SAMPLES = 1000  # samples per digits model for the metrics (the held-out split has 360)


def run_pipeline(preset: str, out, name: str, seed: int = 0, **gen: Any) -> tuple[dict[str, Any], float]:
    from pipelines.registry import execute, resolve

    resolved = resolve(preset=preset, extra={"run": {"run_dir": str(out / name), "tensorboard": False, "seed": seed},
                                             "gen": gen})
    with Timer() as t:
        _, result = execute(resolved)
    return result, t.seconds


def mode_figure(rows: list[dict[str, Any]], out_dir) -> Path:
    """Every mode-capture run's scatter (seed 0) side by side in one PNG, for the README."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, (len(rows) + 1) // 2, figsize=(4 * ((len(rows) + 1) // 2), 8), squeeze=False)
    for ax, row in zip(axes.flat, rows):
        ax.imshow(plt.imread(Path(row["run_dirs"][0]) / "plots" / "samples.png"))
        ax.set_title(f"{row['model']} {row['data']}: {row['modes']} modes, HQ {row['high_quality_fraction']:.2f}",
                     fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    path = Path(out_dir) / "gen-modes.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plain_torch_throughput(gen: dict[str, Any], seconds: float = 8.0) -> float:
    """The peer: the same model's train_step in one process, one thread, no Ray (samples/s)."""
    import torch

    from generative import data as gdata
    from generative.config import GenConfig
    from generative.train import build_model

    torch.set_num_threads(1)
    cfg = GenConfig(**gen)
    model = build_model(cfg)
    ds = gdata.load(cfg, "train", 0)
    seen, it, t0 = 0, 0, None
    while True:
        for x, y in gdata.batches(ds, cfg.batch_size, torch.Generator().manual_seed(it)):
            model.train_step(x, y, it)
            it += 1
            if it == 3:  # warm-up excluded
                t0 = time.perf_counter()
            elif t0 is not None:
                seen += len(x)
                if time.perf_counter() - t0 > seconds:
                    return seen / (time.perf_counter() - t0)


def main() -> None:
    import tempfile

    args = parse_args(__doc__.splitlines()[0], [
        (("--only",), {"choices": SECTIONS, "action": "append",
                       "help": "run only this section (repeatable); default: all three"}),
        (("--data",), {"choices": ("ring8", "grid25"), "action": "append",
                       "help": "mode capture on this mixture only (repeatable); default: both"}),
        (("--seeds",), {"type": int, "default": 1, "help": "seeds per mode-capture run (the table shows the mean)"}),
    ])
    quick = args.quick
    sections = args.only or list(SECTIONS)
    out = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    from cluster.runtime import connect

    connect(num_cpus=2)
    scale = 0.15 if quick else 1.0

    def epochs(n: int) -> int:
        return max(1, int(n * scale))

    rows_modes, rows_digits, rows_tp = [], [], []
    # 1. mode capture (presets hold the tuned settings; --quick shortens them)
    # (epochs: each preset's own; --quick cuts them to a smoke run)
    mode_runs = [("wgan-gp", "ring8"), ("gan", "ring8"), ("minimax-gan", "ring8"),
                 ("wgan-gp", "grid25"), ("gan", "grid25"), ("minimax-gan", "grid25")]
    for model, data in mode_runs if "modes" in sections else []:
        if args.data and data not in args.data:
            continue
        runs = []
        for seed in range(args.seeds):
            res, secs = run_pipeline(f"gen-{model}-{data}", out, f"{model}-{data}-s{seed}", seed=seed,
                                     **({"epochs": 2} if quick else {}))
            runs.append((res, secs))
        modes = [r["modes_captured"] for r, _ in runs]
        rows_modes.append({"model": model, "data": data, "epochs": runs[0][0]["epochs"], "seeds": args.seeds,
                           "modes": f"{sum(modes) / len(modes):g}/{runs[0][0]['num_modes']}",
                           "modes_per_seed": modes,
                           "high_quality_fraction": sum(r["high_quality_fraction"] for r, _ in runs) / len(runs),
                           "seconds_per_run": round(sum(s for _, s in runs) / len(runs), 1),
                           "run_dirs": [str(out / f"{model}-{data}-s{seed}") for seed in range(args.seeds)]})
        print(rows_modes[-1], flush=True)
    if rows_modes:
        rows_modes[0]["figure"] = str(mode_figure(rows_modes, args.out))
        print_table(rows_modes, ["model", "data", "epochs", "seeds", "modes", "modes_per_seed",
                                 "high_quality_fraction", "seconds_per_run"],
                    "mode capture (2,500 samples; a mode counts with >= 10 samples within 3 std; mean over seeds)")
    # 2. digits
    # (each preset's own epochs; every model is measured on the same number of samples, so the
    # distances are comparable: the Frechet distance's finite-sample bias depends on the count)
    digit_runs = ("ddpm", "vae", "gan", "cgan", "cvae")
    for model in digit_runs if "digits" in sections else []:
        extra = {"eval_samples": DIGITS_SAMPLES}
        if quick:
            extra = {"epochs": epochs(30), "eval_samples": 200, **({"timesteps": 50} if model == "ddpm" else {})}
        res, secs = run_pipeline(f"gen-{model}-digits", out, f"{model}-digits", **extra)
        rows_digits.append({"model": model, "epochs": res["epochs"],
                            "classifier_frechet_distance": res["classifier_frechet_distance"],
                            "class_coverage": res["class_coverage"],
                            "conditional_accuracy": res.get("conditional_accuracy"),
                            "heldout_elbo": res.get("heldout_elbo"), "seconds": round(secs, 1)})
        print(rows_digits[-1], flush=True)
    if rows_digits:
        print_table(rows_digits, ["model", "epochs", "classifier_frechet_distance", "class_coverage",
                                  "conditional_accuracy", "heldout_elbo", "seconds"],
                    "digits 16x16 (classifier-feature Frechet distance to held-out digits; lower is better; not FID)")
    # 3. throughput: plain PyTorch vs Ray Train with 1 and 2 workers
    tp_models = [{"model": "gan", "data": "ring8", "batch_size": 256, "dataset_size": 20000},
                 {"model": "ddpm", "data": "digits", "batch_size": 64, "hidden": 128}]
    for gen in tp_models if "throughput" in sections else []:
        label = f"{gen['model']} {gen['data']}"
        plain = plain_torch_throughput(gen, seconds=3.0 if quick else 8.0)
        rows_tp.append({"model": label, "runner": "plain PyTorch (1 process, 1 thread)", "workers": 1,
                        "samples_per_s": plain, "vs_plain": 1.0})
        one = None
        for workers in (1, 2):
            ep = 2 if quick else (6 if gen["model"] == "gan" else 4)
            res, _ = run_pipeline(f"gen-{gen['model']}-{gen['data']}", out, f"tp-{gen['model']}-{workers}",
                                  workers=workers, epochs=ep, eval_samples=100, timesteps=20, **{
                                      k: v for k, v in gen.items() if k not in ("model", "data")})
            sps = res["samples_per_s"]
            one = one or sps
            rows_tp.append({"model": label, "runner": "Ray Train TorchTrainer", "workers": workers,
                            "samples_per_s": sps, "vs_plain": sps / plain,
                            "scaling_efficiency": sps / (workers * one)})
            print(rows_tp[-1], flush=True)
    if rows_tp:
        print_table(rows_tp, ["model", "runner", "workers", "samples_per_s", "vs_plain", "scaling_efficiency"],
                    "train throughput, CPU only (last epoch's samples/s summed over workers)")
    name = "gen" if len(sections) == len(SECTIONS) else "gen-" + "-".join(sections + (args.data or []))
    path = write_results(name, rows_modes + rows_digits + rows_tp, args.out, quick=quick, sections=sections,
                         tables={"modes": rows_modes, "digits": rows_digits, "throughput": rows_tp},
                         note="CPU only (no GPU in this session); 2 cores shared by all Ray Train workers")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
