"""Learning tests: the models must actually learn small problems within the CI budget."""

from __future__ import annotations

import pytest
import torch

from generative import data as gdata
from generative.config import GenConfig
from generative.metrics import mode_metrics
from generative.train import build_model


def _train(model, ds, batch_size: int, epochs: int, seed: int = 0) -> list[float]:
    losses, it = [], 0
    for e in range(epochs):
        g = torch.Generator().manual_seed(seed + e)
        epoch_losses = []
        for x, y in gdata.batches(ds, batch_size, g):
            out = model.train_step(x, y, it)
            epoch_losses.append(out.get("loss", out.get("d_loss")))
            it += 1
        losses.append(sum(epoch_losses) / len(epoch_losses))
    return losses


@pytest.mark.slow
def test_gan_on_the_ring_captures_most_modes():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = GenConfig(model="gan", data="ring8", learning_rate=2e-3, batch_size=64, dataset_size=10_000)
    model = build_model(cfg)
    _train(model, gdata.load(cfg, "train", seed=0), cfg.batch_size, epochs=7)
    m = mode_metrics(model.sample(2500), "ring8")
    assert m["modes_captured"] >= 5, m  # most of the 8 modes, each with >= 10 samples within 3 std


@pytest.mark.slow
def test_ddpm_on_a_2d_mixture_lowers_its_loss_and_samples_near_the_modes():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    centres = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    idx = torch.randint(0, 4, (4096,))
    ds = gdata.Split(centres[idx] + 0.1 * torch.randn(4096, 2))
    cfg = GenConfig(model="ddpm", data="ring8", timesteps=100, schedule="cosine", learning_rate=2e-3, hidden=256)
    model = build_model(cfg)
    losses = _train(model, ds, batch_size=128, epochs=45)
    assert losses[-1] < 0.6 * losses[0], losses
    samples = model.sample(1000)
    dist, nearest = torch.cdist(samples, centres).min(dim=1)
    assert dist.median() < 0.25, dist.median()  # the data's own median distance is about 0.12
    share = torch.bincount(nearest, minlength=4).float() / len(samples)
    assert share.min() > 0.1, share  # every mode gets samples
