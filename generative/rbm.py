"""Restricted Boltzmann machine (Smolensky 1986; Hinton 2002) with binary visible and hidden units.

    energy        E(v, h) = -b.v - c.h - h^T W v            v in {0,1}^V (pixels), h in {0,1}^H (gen.hidden)
    conditionals  p(h_j = 1 | v) = sigmoid(c_j + W_j . v),  p(v_i = 1 | h) = sigmoid(b_i + W_:i . h)
    free energy   F(v) = -log sum_h exp(-E(v, h)) = -b.v - sum_j softplus(c_j + W_j . v)   (free_energy)
    Gibbs step    h ~ p(h | v), v' ~ p(v | h)                                                   (gibbs_step)
    log-likelihood gradient  d log p(v)/d theta = -dF(v)/d theta + E_model[dF(v~)/d theta]
    CD-k          the model expectation from a chain of k Gibbs steps started at the data
                  (gen.cd_k; Hinton 2002); PCD keeps the chains from one update to the next
                  instead of restarting them at the data (gen.persistent_cd; Tieleman 2008)
    loss          L = mean F(v_data) - mean F(sg(v_model))                                  (cd_loss)
                  its gradient is the CD estimate of -d log p / d theta, so torch's optimiser
                  (SGD with momentum, gen.learning_rate) and DDP's gradient all-reduce train it

Per-epoch rows: ``loss``, ``reconstruction_error`` (mean squared error between the data and
p(v | h ~ p(h | v)), the mean of one Gibbs step) and ``free_energy_gap`` (mean F of held-out test
digits minus mean F of the training batch: it grows when the model starts to overfit, Hinton's
"practical guide" Sec. 6). Evaluation: the held-out reconstruction error (trained vs the same RBM
untrained), a grid of samples from gen.gibbs_steps-long Gibbs chains started at random pixels, the
in-project classifier's class coverage / Frechet distance on those samples, and a linear probe on
the hidden-unit probabilities p(h | v) against one on the binarised pixels themselves.

Inputs are binarised at 0.5 (gen.binarize=true; generative/config.py refuses the RBM without it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from generative.nets import unwrap

VALIDATION_IMAGES = 256  # held-out test digits behind free_energy_gap


# --- the equations ---------------------------------------------------------------------------
def binarize(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> (B, V) visible states in {0, 1} (threshold 0.5)."""
    return (x.flatten(1) > 0.5).float()


def free_energy(v: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """F(v) = -b.v - sum_j softplus(c_j + W_j . v) per row of ``v`` (B, V); W is (H, V)."""
    return -(v @ b) - F.softplus(v @ W.t() + c).sum(dim=1)


def hidden_probs(v: torch.Tensor, W: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """p(h_j = 1 | v) = sigmoid(c_j + W_j . v)."""
    return torch.sigmoid(v @ W.t() + c)


def visible_probs(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """p(v_i = 1 | h) = sigmoid(b_i + W_:i . h)."""
    return torch.sigmoid(h @ W + b)


def gibbs_step(v: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One block Gibbs step h ~ p(h | v), v' ~ p(v | h); returns (v' sampled, p(v | h))."""
    h = torch.bernoulli(hidden_probs(v, W, c), generator=generator)
    pv = visible_probs(h, W, b)
    return torch.bernoulli(pv, generator=generator), pv


def gibbs_chain(v: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor, k: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """k Gibbs steps from ``v``; returns (the last v sampled, its mean p(v | h))."""
    pv = v
    for _ in range(k):
        v, pv = gibbs_step(v, W, b, c, generator)
    return v, pv


def cd_loss(f_data: torch.Tensor, f_model: torch.Tensor) -> torch.Tensor:
    """mean F(v_data) - mean F(v_model): minimising it follows the CD estimate of the
    log-likelihood gradient (v_model is a chain sample, treated as a constant)."""
    return f_data.mean() - f_model.mean()


def reconstruction_error(v: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Mean squared error between ``v`` and p(v | h), h ~ p(h | v) (one Gibbs step's mean)."""
    _, pv = gibbs_step(v, W, b, c)
    return (v - pv).pow(2).mean()


# --- networks ----------------------------------------------------------------------------------
class RBM(nn.Module):
    """W (H, V), visible biases b (V), hidden biases c (H); forward(v) = F(v) (what DDP wraps)."""

    def __init__(self, visible: int, hidden: int):
        super().__init__()
        self.W = nn.Parameter(0.01 * torch.randn(hidden, visible))  # Hinton's guide: N(0, 0.01^2)
        self.b = nn.Parameter(torch.zeros(visible))
        self.c = nn.Parameter(torch.zeros(hidden))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return free_energy(v, self.W, self.b, self.c)

    def params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.W, self.b, self.c


class PersistentChains(nn.Module):
    """PCD's negative chains (a buffer, so checkpoints keep them; not wrapped in DDP, so each Train
    worker keeps its own chains instead of receiving rank 0's)."""

    def __init__(self, n: int, visible: int):
        super().__init__()
        self.register_buffer("v", torch.bernoulli(torch.full((n, visible), 0.5)))


class RBMModel:
    """``--model rbm``: binary RBM on binarised digits, trained by CD-k or PCD."""

    def __init__(self, cfg, data_shape: tuple[int, ...], num_classes: int, device: torch.device):
        self.cfg, self.device, self.num_classes = cfg, device, 0
        self.size = data_shape[-1]
        visible = self.size * self.size
        self.net = RBM(visible, cfg.hidden).to(device)
        self.chains = PersistentChains(cfg.batch_size if cfg.persistent_cd else 1, visible).to(device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=cfg.learning_rate, momentum=0.9)
        self._validation: torch.Tensor | None = None

    def modules(self) -> dict[str, nn.Module]:
        return {"rbm": self.net, "chains": self.chains}

    def set_modules(self, mods: dict[str, nn.Module]) -> None:
        self.net, self.chains = mods["rbm"], mods["chains"]

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"rbm": self.opt}

    def trainable(self) -> set[str]:
        return {"rbm"}

    def validation(self) -> torch.Tensor:
        """Held-out binarised test digits, for free_energy_gap (never trained on)."""
        if self._validation is None:
            from generative import data as gdata

            self._validation = binarize(gdata.digits(self.cfg.image_size, "test")[0][:VALIDATION_IMAGES]).to(self.device)
        return self._validation

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, it: int) -> dict[str, Any]:
        v = binarize(x)
        W, b, c = unwrap(self.net).params()
        with torch.no_grad():
            if self.cfg.persistent_cd:
                start = self.chains.v[: len(v)]
            else:
                start = v
            v_model, _ = gibbs_chain(start, W, b, c, self.cfg.cd_k)
            if self.cfg.persistent_cd:
                self.chains.v[: len(v)] = v_model
        f = self.net(torch.cat([v, v_model]))  # one forward through DDP: both phases in one graph
        f_data, f_model = f[: len(v)], f[len(v) :]
        loss = cd_loss(f_data, f_model)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            rec = reconstruction_error(v, W, b, c)
            gap = free_energy(self.validation(), W, b, c).mean() - f_data.mean()
        return {"loss": float(loss.detach()), "reconstruction_error": float(rec), "free_energy_gap": float(gap)}

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, steps: int | None = None) -> torch.Tensor:
        """Gibbs chains of gen.gibbs_steps from uniformly random pixels; the last step's mean
        p(v | h) as images in [0, 1]."""
        W, b, c = unwrap(self.net).params()
        v0 = torch.bernoulli(torch.full((n, W.shape[1]), 0.5, device=W.device))
        _, pv = gibbs_chain(v0, W, b, c, steps or self.cfg.gibbs_steps)
        return pv.view(n, 1, self.size, self.size).cpu()

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """p(h | v) of binarised images: the RBM's representation."""
        W, _, c = unwrap(self.net).params()
        return hidden_probs(binarize(x).to(W.device), W, c).cpu()

    @torch.no_grad()
    def heldout_reconstruction_error(self, x: torch.Tensor, seed: int = 0) -> float:
        torch.manual_seed(seed)
        W, b, c = unwrap(self.net).params()
        return float(reconstruction_error(binarize(x).to(W.device), W, b, c))

    @torch.no_grad()
    def evaluate(self, cfg, run_dir: Path, seed: int = 0) -> tuple[dict[str, Any], list[Path]]:
        from generative import data as gdata
        from generative.contrastive import linear_probe_accuracy
        from generative.metrics import digits_metrics
        from generative.plots import save_image_grid

        plots = Path(run_dir) / "plots"
        x, y = gdata.digits(cfg.image_size, "train")
        xt, yt = gdata.digits(cfg.image_size, "test")
        fresh = type(self)(cfg, (1, cfg.image_size, cfg.image_size), 10, torch.device("cpu"))  # untrained
        out: dict[str, Any] = {"reconstruction_error": self.heldout_reconstruction_error(xt, seed),
                               "reconstruction_error_untrained": fresh.heldout_reconstruction_error(xt, seed)}
        out["linear_probe_accuracy"] = linear_probe_accuracy(self.features(x).numpy(), y.numpy(),
                                                             self.features(xt).numpy(), yt.numpy(), seed)
        out["linear_probe_accuracy_raw"] = linear_probe_accuracy(binarize(x).numpy(), y.numpy(),
                                                                 binarize(xt).numpy(), yt.numpy(), seed)
        torch.manual_seed(seed)
        samples = self.sample(cfg.eval_samples)
        out.update(digits_metrics(samples, None, cfg.image_size))
        paths = [save_image_grid(samples[: cfg.grid_samples], plots / "samples.png",
                                 title=f"rbm on binarised digits: {cfg.gibbs_steps} Gibbs steps from noise")]
        k = min(10, len(xt))
        v = binarize(xt[:k])
        W, b, c = unwrap(self.net).params()
        _, pv = gibbs_step(v.to(W.device), W, b, c)
        paths.append(save_image_grid(torch.cat([v, pv.cpu()]).view(2 * k, 1, self.size, self.size),
                                     plots / "reconstructions.png", nrow=k,
                                     title="held-out digits / one Gibbs step's mean p(v | h)"))
        return out, paths
