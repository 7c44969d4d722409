"""GANs: the losses in one place, and the generator/discriminator pairs they train.

Discriminators output logits ``l``, so ``D(x) = sigmoid(l)``. With ``log D = -softplus(-l)`` and
``log(1 - D) = -softplus(l)``:

    original minimax     max_D  E[log D(x)] + E[log(1 - D(G(z)))]      min_G  E[log(1 - D(G(z)))]
    non-saturating       same D loss                                     min_G -E[log D(G(z))]
    WGAN (clipping)      max_f  E[f(x)] - E[f(G(z))], |w| <= c          min_G -E[f(G(z))]
    WGAN-GP              critic loss + lambda E[(||grad_x f(x_hat)||_2 - 1)^2], x_hat on segments

Conditional GAN (Mirza & Osindero 2014): the one-hot label is concatenated to the generator's
noise and to the discriminator's input (as extra constant channels for images).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from generative.nets import ConvDecoder, ConvEncoder, ema_copy, mlp, one_hot, unwrap


# --- losses --------------------------------------------------------------------------------------
def minimax_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-(E[log D(x)] + E[log(1 - D(G(z)))]): the discriminator's binary cross-entropy."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def minimax_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """E[log(1 - D(G(z)))], the original (saturating) generator objective, minimised."""
    return -F.softplus(fake_logits).mean()


def non_saturating_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[log D(G(z))]: same fixed point, strong gradients when D rejects the fakes."""
    return F.softplus(-fake_logits).mean()


def wasserstein_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[f(G(z))] - E[f(x)]: minimising it maximises the Kantorovich-Rubinstein estimate."""
    return fake_scores.mean() - real_scores.mean()


def wasserstein_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.mean()


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """E[(||grad f(x_hat)||_2 - 1)^2] with x_hat = eps x + (1 - eps) G(z), eps ~ U[0, 1] per sample.

    Pass the plain critic (not its DDP wrapper): DDP does not support double backward, and the
    parameter gradients of this term still meet DDP's all-reduce in the one backward that follows.
    """
    shape = (len(real),) + (1,) * (real.dim() - 1)
    eps = torch.rand(shape, device=real.device, generator=generator)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    scores = critic(x_hat, cond)
    (grads,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return ((grads.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


@torch.no_grad()
def clip_weights(critic: nn.Module, c: float) -> None:
    """WGAN's Lipschitz constraint by clipping every weight to [-c, c]."""
    for p in critic.parameters():
        p.clamp_(-c, c)


# --- networks ------------------------------------------------------------------------------------
class Generator(nn.Module):
    """z (and a one-hot label) -> a 2-D point or an image in [-1, 1]."""

    def __init__(self, z_dim: int, data_shape: tuple[int, ...], num_classes: int = 0, hidden: int = 128):
        super().__init__()
        self.num_classes = num_classes
        in_dim = z_dim + num_classes
        if len(data_shape) == 1:
            self.net = mlp([in_dim, hidden, hidden, hidden, data_shape[0]])
        else:
            self.net = nn.Sequential(ConvDecoder(in_dim, data_shape[0], data_shape[-1], ch=hidden // 2), nn.Tanh())

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z if cond is None else torch.cat([z, cond], dim=1))


class Discriminator(nn.Module):
    """A point or image (and a one-hot label) -> one logit / critic score."""

    def __init__(self, data_shape: tuple[int, ...], num_classes: int = 0, hidden: int = 128):
        super().__init__()
        self.image = len(data_shape) > 1
        if self.image:
            self.net = ConvEncoder(data_shape[0] + num_classes, data_shape[-1], 1, ch=hidden // 2)
        else:
            self.net = mlp([data_shape[0] + num_classes, hidden, hidden, hidden, 1], act=lambda: nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is not None:
            if self.image:
                cond = cond[:, :, None, None].expand(-1, -1, *x.shape[-2:])
            x = torch.cat([x, cond], dim=1)
        return self.net(x).squeeze(-1)


# --- the model the training loop drives ----------------------------------------------------------
class GANModel:
    """gan (non-saturating), minimax-gan, wgan (clipping), wgan-gp, cgan."""

    def __init__(self, cfg, data_shape: tuple[int, ...], num_classes: int, device: torch.device):
        self.cfg, self.device = cfg, device
        self.image = len(data_shape) > 1
        self.num_classes = num_classes if cfg.model == "cgan" else 0
        self.z_dim = cfg.z_dim
        self.G = Generator(self.z_dim, data_shape, self.num_classes, cfg.hidden).to(device)
        self.D = Discriminator(data_shape, self.num_classes, cfg.hidden).to(device)
        wgan = cfg.model in ("wgan", "wgan-gp")
        if cfg.model == "wgan":  # RMSProp, as in Arjovsky et al. (momentum destabilises clipping)
            self.opt_g = torch.optim.RMSprop(self.G.parameters(), lr=cfg.learning_rate)
            self.opt_d = torch.optim.RMSprop(self.D.parameters(), lr=cfg.learning_rate)
        else:
            betas = (0.5, 0.9) if wgan else (0.5, 0.999)
            self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.learning_rate, betas=betas)
            self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.learning_rate, betas=betas)
        # gen.ema_decay > 0: an averaged copy of G, used only for sampling and the metrics
        self.G_ema = ema_copy(self.G, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.g_step = 0
        self.total_steps: int | None = None  # set by the training loop; drives gen.lr_decay

    def set_total_steps(self, total: int) -> None:
        self.total_steps = total

    def _decay_learning_rate(self, it: int) -> None:
        """lr_t = lr (1 - t / T): the linear decay of Gulrajani et al. It lets the generator settle
        on sharp modes at the end instead of hopping around them. Computed from the global step,
        so a resumed run continues the same schedule."""
        if self.cfg.lr_decay != "linear" or not self.total_steps:
            return
        lr = self.cfg.learning_rate * max(0.0, 1.0 - it / self.total_steps)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr

    # the training loop wraps these for DDP and saves/restores them
    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D, **({"G_ema": self.G_ema} if self.G_ema is not None else {})}

    def trainable(self) -> set[str]:
        return {"G", "D"}  # the averaged copy gets no gradients and is never wrapped for DDP

    def set_modules(self, mods: dict[str, nn.Module]) -> None:
        self.G, self.D = mods["G"], mods["D"]
        self.G_ema = mods.get("G_ema", self.G_ema)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_g, "D": self.opt_d}

    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1 if self.image else x  # images [0, 1] -> [-1, 1]

    def _cond(self, y):
        return one_hot(y, self.num_classes) if self.num_classes else None

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, it: int) -> dict[str, Any]:
        cfg, n = self.cfg, len(x)
        self._decay_learning_rate(it)
        real, cond = self.to_model_space(x), self._cond(y)
        z = torch.randn(n, self.z_dim, device=self.device)
        with torch.no_grad():
            fake = self.G(z, cond)
        # discriminator / critic: one forward on real and fake together
        scores = self.D(torch.cat([real, fake]), None if cond is None else torch.cat([cond, cond]))
        real_s, fake_s = scores[:n], scores[n:]
        out: dict[str, Any] = {}
        if cfg.model in ("wgan", "wgan-gp"):
            d_loss = wasserstein_critic_loss(real_s, fake_s)
            out["wasserstein_estimate"] = float(-d_loss.detach())
            if cfg.model == "wgan-gp":
                gp = gradient_penalty(unwrap(self.D), real, fake, cond)
                d_loss = d_loss + cfg.gp_weight * gp
                out["gradient_penalty"] = float(gp.detach())
        else:
            d_loss = minimax_d_loss(real_s, fake_s)
            out["d_real"] = float(torch.sigmoid(real_s.detach()).mean())
            out["d_fake"] = float(torch.sigmoid(fake_s.detach()).mean())
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        if cfg.model == "wgan":
            clip_weights(unwrap(self.D), cfg.clip_value)
        out["d_loss"] = float(d_loss.detach())
        if (it + 1) % cfg.critic_steps:
            return out
        # generator
        z = torch.randn(n, self.z_dim, device=self.device)
        fake_s = self.D(self.G(z, cond), cond)
        if cfg.model in ("wgan", "wgan-gp"):
            g_loss = wasserstein_g_loss(fake_s)
        elif cfg.model == "minimax-gan":
            g_loss = minimax_g_loss(fake_s)
        else:
            g_loss = non_saturating_g_loss(fake_s)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()  # also fills D's grads; they are cleared before D's next step
        self.opt_g.step()
        if self.G_ema is not None:
            self.G_ema.update_parameters(unwrap(self.G))
        self.g_step += 1
        out["g_loss"] = float(g_loss.detach())
        return out

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        G = self.G_ema.module if self.G_ema is not None else unwrap(self.G)
        was = G.training
        G.eval()
        cond = None
        if self.num_classes:
            if labels is None:
                labels = torch.arange(n, device=self.device) % self.num_classes
            cond = one_hot(labels.to(self.device), self.num_classes)
        x = G(torch.randn(n, self.z_dim, device=self.device), cond)
        G.train(was)
        return (x + 1) / 2 if self.image else x
