"""After training: samples, the offline metrics, PNG grids, and the exported RL torso."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from generative import data as gdata
from generative.config import ENCODER_ONLY, GenConfig
from generative.plots import save_image_grid, save_scatter


def export_torso(torso: torch.nn.Module, run_dir: str | Path, meta: dict[str, Any]) -> Path:
    """RUN_DIR/encoder/torso.safetensors: keys of rl.networks.NatureCNN(in_channels=4).state_dict()."""
    from safetensors.torch import save_file

    out = Path(run_dir) / "encoder"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in torso.state_dict().items()}, str(out / "torso.safetensors"))
    (out / "torso.json").write_text(json.dumps({"in_channels": 4, "input": "4x84x84 uint8 / 255", **meta}, indent=2))
    return out / "torso.safetensors"


@torch.no_grad()
def evaluate(model, cfg: GenConfig, run_dir: str | Path, seed: int = 0, frames_path: str | None = None) -> tuple[dict, list[Path]]:
    """Metrics and plots for a trained model; returns (metrics, plot paths)."""
    torch.manual_seed(seed)
    plots = Path(run_dir) / "plots"
    out: dict[str, Any] = {}
    paths: list[Path] = []
    tag = f"{cfg.model} on {cfg.data}"
    if hasattr(model, "evaluate"):  # models with their own measures (cyclegan, stylegan, hopfield, ...)
        return model.evaluate(cfg, Path(run_dir), seed)
    if cfg.model in ENCODER_ONLY:  # simclr, moco, byol, simsiam
        if cfg.data == "digits":
            from generative.contrastive import probe_metrics
            from generative.train import build_model

            # full- and few-label probes; the same on an untrained encoder of the same shape (what
            # training added) and on the raw pixels
            out.update(probe_metrics(model, build_model(cfg, "cpu"), cfg, seed))
        torso = model.encoder_torso()
        if torso is not None:
            out["encoder"] = str(export_torso(torso, run_dir, {"model": cfg.model, "data": cfg.data}))
        return out, paths
    if cfg.is_2d:
        samples = model.sample(cfg.eval_samples)
        out.update(gdata_metrics := _mode_metrics(samples, cfg.data))
        paths.append(save_scatter(samples, cfg.data, plots / "samples.png",
                                  f"{tag}: {gdata_metrics['modes_captured']}/{gdata_metrics['num_modes']} modes, "
                                  f"HQ {gdata_metrics['high_quality_fraction']:.2f}"))
    elif cfg.data == "digits":
        from generative.metrics import digits_metrics

        n = cfg.eval_samples
        labels = torch.arange(n) % 10 if model.num_classes else None
        samples = model.sample(n, labels)
        out.update(digits_metrics(samples, labels, cfg.image_size))
        g = min(cfg.grid_samples, n)
        order = torch.arange(g)
        if labels is not None:  # one class per column: row r, column c shows class c
            order = torch.tensor([r * 10 + c for r in range(g // 10) for c in range(10)]) if g >= 10 else order
        paths.append(save_image_grid(samples[order], plots / "samples.png", nrow=10 if labels is not None else 8,
                                     title=tag))
    if cfg.model in ("vae", "cvae"):
        test = gdata.load(cfg, "test", seed, frames_path)
        out["heldout_elbo"] = model.heldout_elbo(test.x, test.y)
        if not cfg.is_2d:
            paths.append(save_image_grid(model.latent_walk(10), plots / "latent_walk.png", nrow=10,
                                         title="latent walk (straight line between two z)"))
            paths.append(save_image_grid(model.perturbation_grid(8, 9), plots / "latent_perturbation.png", nrow=9,
                                         title="row j: latent j from -3 to +3, others 0"))
        if cfg.data == "atari-frames":
            torso = model.encoder_torso()
            out["encoder"] = str(export_torso(torso, run_dir, {"model": cfg.model, "data": cfg.data}))
    return out, paths


def _mode_metrics(samples, data):
    from generative.metrics import mode_metrics

    return mode_metrics(samples, data)
