"""After training: samples, the offline metrics, PNG grids, and the exported RL torso."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generative import data as gdata
from generative.config import ENCODER_ONLY, GenConfig


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, title: str | None = None) -> Path:
    """(N, C, H, W) in [0, 1] -> one PNG grid (first channel shown for multi-channel frames)."""
    plt = _plt()
    imgs = images.detach().cpu().float().clamp(0, 1)[:, 0].numpy()
    n = len(imgs)
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    h, w = imgs.shape[1:]
    canvas = np.ones((nrows * (h + 1) + 1, ncol * (w + 1) + 1))
    for i, im in enumerate(imgs):
        r, c = divmod(i, ncol)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = im
    fig, ax = plt.subplots(figsize=(max(2.0, ncol * 0.6), max(2.0, nrows * 0.6)))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    return _save(plt, fig, path)


def _save(plt, fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def save_scatter(samples: torch.Tensor, data: str, path: str | Path, title: str | None = None) -> Path:
    plt = _plt()
    pts = samples.detach().cpu().numpy()
    centres, _ = gdata.mode_centres(data)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.4, label="samples")
    ax.scatter(centres[:, 0], centres[:, 1], s=30, c="red", marker="x", label="modes")
    lim = 3.0 if data == "ring8" else 6.0
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


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
