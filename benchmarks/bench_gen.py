"""Generative benchmark: sample quality against the issue's targets, and Ray Train throughput.

Three tables, all measured in this one run:
  1. modes captured / high-quality fraction on ring8 and grid25 (2,500 samples, 3 std):
     WGAN-GP and the non-saturating GAN against the original minimax GAN (mode collapse);
  2. digits: classifier-feature Frechet distance (NOT FID: our own classifier's features),
     class coverage and conditional accuracy for DDPM, VAE, GAN, cGAN, cVAE;
  3. train throughput (samples/s): a plain single-process PyTorch loop (the peer) against
     Ray Train TorchTrainer with 1 and 2 workers (DDP over gloo), same model and batch size.

    python benchmarks/bench_gen.py [--quick]      # or: reinforge bench gen [--quick]
"""

from __future__ import annotations

import time
from typing import Any

from _common import Timer, parse_args, print_table, write_results


def run_pipeline(preset: str, out, name: str, **gen: Any) -> tuple[dict[str, Any], float]:
    from pipelines.registry import execute, resolve

    resolved = resolve(preset=preset, extra={"run": {"run_dir": str(out / name), "tensorboard": False},
                                             "gen": gen})
    with Timer() as t:
        _, result = execute(resolved)
    return result, t.seconds


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
    from pathlib import Path

    args = parse_args(__doc__.splitlines()[0])
    quick = args.quick
    out = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    from cluster.runtime import connect

    connect(num_cpus=2)
    scale = 0.15 if quick else 1.0

    def epochs(n: int) -> int:
        return max(1, int(n * scale))

    rows_modes, rows_digits, rows_tp = [], [], []
    # 1. mode capture (presets hold the tuned settings; --quick shortens them)
    mode_runs = [("wgan-gp", "ring8", 20), ("gan", "ring8", 20), ("minimax-gan", "ring8", 20),
                 ("wgan-gp", "grid25", 20), ("gan", "grid25", 20), ("minimax-gan", "grid25", 20)]
    for model, data, ep in mode_runs:
        res, secs = run_pipeline(f"gen-{model}-{data}", out, f"{model}-{data}", epochs=epochs(ep))
        rows_modes.append({"model": model, "data": data, "epochs": res["epochs"],
                           "modes": f"{res['modes_captured']}/{res['num_modes']}",
                           "high_quality_fraction": res["high_quality_fraction"], "seconds": round(secs, 1)})
        print(rows_modes[-1], flush=True)
    print_table(rows_modes, ["model", "data", "epochs", "modes", "high_quality_fraction", "seconds"],
                "mode capture (2,500 samples; a mode counts with >= 10 samples within 3 std)")
    # 2. digits
    digit_runs = [("ddpm", 30), ("vae", 30), ("gan", 30), ("cgan", 30), ("cvae", 30)]
    for model, ep in digit_runs:
        extra = {"eval_samples": 200, "timesteps": 50} if quick and model == "ddpm" else {}
        res, secs = run_pipeline(f"gen-{model}-digits", out, f"{model}-digits", epochs=epochs(ep), **extra)
        rows_digits.append({"model": model, "epochs": res["epochs"],
                            "classifier_frechet_distance": res["classifier_frechet_distance"],
                            "class_coverage": res["class_coverage"],
                            "conditional_accuracy": res.get("conditional_accuracy"),
                            "heldout_elbo": res.get("heldout_elbo"), "seconds": round(secs, 1)})
        print(rows_digits[-1], flush=True)
    print_table(rows_digits, ["model", "epochs", "classifier_frechet_distance", "class_coverage",
                              "conditional_accuracy", "heldout_elbo", "seconds"],
                "digits 16x16 (classifier-feature Frechet distance to held-out digits; lower is better; not FID)")
    # 3. throughput: plain PyTorch vs Ray Train with 1 and 2 workers
    tp_models = [{"model": "gan", "data": "ring8", "batch_size": 256, "dataset_size": 20000},
                 {"model": "ddpm", "data": "digits", "batch_size": 64, "hidden": 128}]
    for gen in tp_models:
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
    print_table(rows_tp, ["model", "runner", "workers", "samples_per_s", "vs_plain", "scaling_efficiency"],
                "train throughput, CPU only (last epoch's samples/s summed over workers)")
    path = write_results("gen", rows_modes + rows_digits + rows_tp, args.out, quick=quick,
                         tables={"modes": rows_modes, "digits": rows_digits, "throughput": rows_tp},
                         note="CPU only (no GPU in this session); 2 cores shared by all Ray Train workers")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
