"""Variational autoencoders (Kingma & Welling 2014), beta-VAE, conditional VAE.

    q(z|x) = N(mu(x), diag(sigma(x)^2)),  z = mu + sigma * eps, eps ~ N(0, I)   (reparameterisation)
    ELBO(x) = E_q[log p(x|z)] - beta * KL(q(z|x) || N(0, I))
    KL      = 1/2 sum_j (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1)

Decoders: a Gaussian with a learned per-dimension variance for 2-D points, a Bernoulli on
pixel intensities in [0, 1] for images (the usual choice for digits). The conditional VAE
(Sohn et al. 2015) concatenates the one-hot label to the encoder's and decoder's input.
On Atari frames the encoder is the RL side's NatureCNN torso, so it can initialise an agent.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from generative.nets import ConvDecoder, ConvEncoder, mlp, one_hot, unwrap


# --- the equations ---------------------------------------------------------------------------
def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """z = mu + sigma * eps: a sample whose gradient flows to mu and logvar."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per example (summed over latent dimensions)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(dim=1)


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(logvar)) per example."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean).pow(2) / logvar.exp()).flatten(1).sum(dim=1)


def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """sum_i x_i log p_i + (1 - x_i) log(1 - p_i) per example (x may be continuous in [0, 1])."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(dim=1)


def elbo(log_likelihood: torch.Tensor, kl: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Per-example evidence lower bound E_q[log p(x|z)] - beta KL (beta = 1: the true bound)."""
    return log_likelihood - beta * kl


# --- networks ----------------------------------------------------------------------------------
class AtariDecoder(nn.Module):
    """Mirror of the NatureCNN torso: (B, z) -> (B, 4, 84, 84) logits (7 -> 9 -> 20 -> 84)."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(z_dim, 64 * 7 * 7), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 64, 3, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2), nn.ReLU(),
            nn.ConvTranspose2d(32, 4, 8, 4),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.fc(z).view(len(z), 64, 7, 7))


def atari_torso() -> nn.Module:
    """The RL agents' torso (rl.networks.NatureCNN, 4 stacked frames in [0, 1])."""
    from generative.contrastive import nature_torso

    return nature_torso()


class VAE(nn.Module):
    def __init__(self, data_shape: tuple[int, ...], z_dim: int, num_classes: int = 0, hidden: int = 128,
                 atari: bool = False):
        super().__init__()
        self.image, self.num_classes, self.z_dim = len(data_shape) > 1, num_classes, z_dim
        c = num_classes
        if atari:
            from generative.contrastive import torso_out_dim

            torso = atari_torso()  # registered once (inside enc): safetensors refuses shared tensors
            self.enc = nn.Sequential(torso, nn.Flatten(), nn.Linear(torso_out_dim(torso), 2 * z_dim))
            self.dec = AtariDecoder(z_dim)
        elif self.image:
            self.enc = ConvEncoder(data_shape[0] + c, data_shape[-1], 2 * z_dim, ch=hidden // 2, act=nn.ReLU)
            self.dec = ConvDecoder(z_dim + c, data_shape[0], data_shape[-1], ch=hidden // 2)
        else:
            self.enc = mlp([data_shape[0] + c, hidden, hidden, 2 * z_dim])
            self.dec = mlp([z_dim + c, hidden, hidden, data_shape[0]])
            self.dec_logvar = nn.Parameter(torch.full(data_shape, -2.0))

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if cond is not None:
            x = torch.cat([x, cond[:, :, None, None].expand(-1, -1, *x.shape[-2:]) if self.image else cond], dim=1)
        mu, logvar = self.enc(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.dec(z if cond is None else torch.cat([z, cond], dim=1))

    def log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.image:
            return bernoulli_log_likelihood(x, out)
        return gaussian_log_likelihood(x, out, self.dec_logvar.expand_as(out))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out) if self.image else out

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None, beta: float = 1.0):
        """Returns per-example (elbo, log-likelihood, kl)."""
        mu, logvar = self.encode(x, cond)
        z = reparameterize(mu, logvar)
        ll = self.log_likelihood(x, self.decode(z, cond))
        kl = kl_to_standard_normal(mu, logvar)
        return elbo(ll, kl, beta), ll, kl


class VAEModel:
    """vae and cvae on any data (2-D, digits, Atari frames)."""

    def __init__(self, cfg, data_shape: tuple[int, ...], num_classes: int, device: torch.device):
        self.cfg, self.device = cfg, device
        self.num_classes = num_classes if cfg.model == "cvae" else 0
        self.atari = cfg.data == "atari-frames"
        self.net = VAE(data_shape, cfg.z_dim, self.num_classes, cfg.hidden, atari=self.atari).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate)

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.net}

    def set_modules(self, mods: dict[str, nn.Module]) -> None:
        self.net = mods["vae"]

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": self.opt}

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 if x.dtype == torch.uint8 else x

    def _cond(self, y):
        return one_hot(y, self.num_classes) if self.num_classes else None

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, it: int) -> dict[str, Any]:
        elbo_, ll, kl = self.net(self._prep(x), self._cond(y), beta=self.cfg.beta)
        loss = -elbo_.mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach()), "recon_log_likelihood": float(ll.detach().mean()),
                "kl": float(kl.detach().mean())}

    @torch.no_grad()
    def heldout_elbo(self, x: torch.Tensor, y: torch.Tensor | None, batch: int = 512) -> float:
        """Mean ELBO (beta = 1, nats per example) on held-out data: a lower bound on log p(x)."""
        net = unwrap(self.net)
        total = 0.0
        for i in range(0, len(x), batch):
            xb = self._prep(x[i : i + batch].to(self.device))
            yb = None if y is None else y[i : i + batch].to(self.device)
            e, _, _ = net(xb, self._cond(yb), beta=1.0)
            total += float(e.sum())
        return total / max(len(x), 1)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        net = unwrap(self.net)
        cond = None
        if self.num_classes:
            if labels is None:
                labels = torch.arange(n, device=self.device) % self.num_classes
            cond = one_hot(labels.to(self.device), self.num_classes)
        out = net.decode(torch.randn(n, net.z_dim, device=self.device), cond)
        if not net.image:  # sample the Gaussian decoder, not only its mean
            return out + torch.exp(0.5 * net.dec_logvar) * torch.randn_like(out)
        return net.mean(out)

    @torch.no_grad()
    def latent_walk(self, steps: int = 10, label: int | None = None) -> torch.Tensor:
        """Decoded means along a straight line between two random latents (steps images)."""
        net = unwrap(self.net)
        a, b = torch.randn(2, net.z_dim, device=self.device)
        t = torch.linspace(0, 1, steps, device=self.device)[:, None]
        z = (1 - t) * a + t * b
        cond = None
        if self.num_classes:
            cond = one_hot(torch.full((steps,), label or 0, device=self.device), self.num_classes)
        return net.mean(net.decode(z, cond))

    @torch.no_grad()
    def perturbation_grid(self, dims: int = 8, steps: int = 9, span: float = 3.0) -> torch.Tensor:
        """Row j varies latent j alone from -span to +span around 0 (dims x steps images)."""
        net = unwrap(self.net)
        dims = min(dims, net.z_dim)
        vals = torch.linspace(-span, span, steps, device=self.device)
        z = torch.zeros(dims, steps, net.z_dim, device=self.device)
        for j in range(dims):
            z[j, :, j] = vals
        z = z.view(dims * steps, net.z_dim)
        cond = None
        if self.num_classes:
            cond = one_hot(torch.zeros(len(z), dtype=torch.long, device=self.device), self.num_classes)
        return net.mean(net.decode(z, cond))

    def encoder_torso(self) -> nn.Module | None:
        return unwrap(self.net).enc[0] if self.atari else None
