"""PNG plots every generative model shares: image grids and 2-D scatters (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from generative import data as gdata


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
