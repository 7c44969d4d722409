"""Offline, honest sample-quality metrics (no Inception network can be downloaded, so no FID).

2-D mixtures (ring8, grid25): every sample is assigned to its nearest mode; it is
*high quality* when it lies within 3 standard deviations of that mode. A mode is *captured*
when at least ``min_count`` high-quality samples land on it (default 10 of 2,500).

Digits: a small CNN classifier trained in-project on the training split gives
  - class coverage: the number of digit classes that receive at least 2% of the samples,
  - conditional accuracy: how often a class-conditional model produces the requested class,
  - the classifier-feature Frechet distance: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))
    between the classifier's penultimate features of generated and held-out digits. It is the
    FID formula on *our* classifier's features; its numbers are not comparable with FID.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from generative.data import cache_dir, digits, mode_centres


# --- 2-D mixtures --------------------------------------------------------------------------------
def mode_metrics(samples: torch.Tensor | np.ndarray, data: str, n_std: float = 3.0, min_count: int = 10) -> dict:
    """``modes_captured``, ``num_modes`` and ``high_quality_fraction`` for ring8/grid25 samples."""
    pts = np.asarray(samples.detach().cpu() if isinstance(samples, torch.Tensor) else samples, dtype=np.float64)
    centres, std = mode_centres(data)
    d = np.linalg.norm(pts[:, None, :] - centres[None], axis=2)
    nearest, dist = d.argmin(axis=1), d.min(axis=1)
    hq = dist <= n_std * std
    counts = np.bincount(nearest[hq], minlength=len(centres))
    return {
        "modes_captured": int((counts >= min_count).sum()),
        "num_modes": len(centres),
        "high_quality_fraction": float(hq.mean()) if len(pts) else 0.0,
    }


# --- the in-project digits classifier --------------------------------------------------------------
class DigitsClassifier(nn.Module):
    def __init__(self, size: int = 16):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, 128), nn.ReLU())
        self.out = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


@torch.enable_grad()
def fit_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 15, seed: int = 0) -> nn.Module:
    """Cross-entropy with Adam (lr 2e-3, batches of 64) on random one-pixel shifts of the images."""
    from generative.contrastive import random_shift

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(random_shift(x[idx], 1)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def train_digits_classifier(size: int = 16, epochs: int = 15, seed: int = 0) -> tuple[DigitsClassifier, float]:
    """Train on the digits training split (with small random shifts); returns (model, test accuracy)."""
    torch.manual_seed(seed)
    x, y = digits(size, "train")
    xt, yt = digits(size, "test")
    model = fit_classifier(DigitsClassifier(size), x, y, epochs, seed)
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    return model, acc


def cached_classifier(path: Path, fresh, train) -> nn.Module:
    """The network saved at ``path`` (safetensors) loaded into ``fresh()``; when the file is missing
    or does not fit, ``train()`` makes one (training data only) and it is saved there."""
    from safetensors.torch import load_file, save_file

    model = fresh()
    if path.is_file():
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except Exception:  # a stale or cut file: retrain below
            pass
    model = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    save_file(model.state_dict(), str(tmp))
    os.replace(tmp, path)
    return model.eval()


def digits_classifier(size: int = 16) -> DigitsClassifier:
    """The cached classifier (trained once, a few seconds, saved as safetensors under the cache dir)."""
    return cached_classifier(cache_dir() / f"digits-classifier-{size}.safetensors", lambda: DigitsClassifier(size),
                             lambda: train_digits_classifier(size)[0])


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula)."""
    from scipy import linalg

    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    sa, sb = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    covmean = linalg.sqrtm(sa @ sb)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as in the reference code
        off = np.eye(len(sa)) * 1e-6
        covmean = linalg.sqrtm((sa + off) @ (sb + off))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean))


@torch.no_grad()
def digits_metrics(samples: torch.Tensor, labels: torch.Tensor | None = None, size: int = 16) -> dict:
    """Class coverage, conditional accuracy (when ``labels`` were requested) and the
    classifier-feature Frechet distance to the held-out digits, for samples in [0, 1]."""
    clf = digits_classifier(size)
    samples = samples.detach().cpu().float().clamp(0, 1)
    logits = clf(samples)
    pred = logits.argmax(1)
    share = torch.bincount(pred, minlength=10).float() / len(pred)
    out = {
        "class_coverage": int((share >= 0.02).sum()),
        "classifier_frechet_distance": frechet_distance(clf.features(samples).numpy().astype(np.float64),
                                                        clf.features(digits(size, "test")[0]).numpy().astype(np.float64)),
    }
    if labels is not None:
        out["conditional_accuracy"] = float((pred == labels.cpu()).float().mean())
    return out
