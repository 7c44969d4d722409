"""Denoising diffusion probabilistic models (Ho et al. 2020). The noise schedule and its
equations live here, apart from the network (``generative.unet``), as in diffusers.

    forward kernel   q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),  abar_t = prod_{s<=t} (1 - beta_s)
    L_simple         E_{t, x_0, eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2
    Algorithm 2      x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps_theta(x_t, t)) + sigma_t z,
                     z = 0 at the last step; sigma_t^2 = beta_t ("beta") or the posterior variance
                     beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t ("posterior"), the paper's two choices
    guidance (CFG)   eps = (1 + w) eps_theta(x_t, t, c) - w eps_theta(x_t, t, none)   (Ho & Salimans 2022)

Timesteps are indexed 0..T-1 here (index t is the paper's t + 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from generative.nets import ema_copy, unwrap
from generative.unet import MLPDenoiser, UNet


# --- the noise schedule ------------------------------------------------------------------------
def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al.'s linear schedule, rescaled to T steps (1000 / T) as in improved DDPM."""
    scale = 1000.0 / timesteps
    return torch.linspace(scale * beta_start, min(scale * beta_end, 0.999), timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal: abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), betas clipped at 0.999."""
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    abar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)


@dataclass
class Schedule:
    betas: torch.Tensor

    def __post_init__(self) -> None:
        self.betas = self.betas.double()
        self.alphas = 1 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
        self.posterior_variance = (1 - prev) / (1 - self.alpha_bars) * self.betas

    @classmethod
    def make(cls, kind: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
        return cls(cosine_betas(timesteps) if kind == "cosine" else linear_betas(timesteps, beta_start, beta_end))

    @property
    def timesteps(self) -> int:
        return len(self.betas)

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] as float, shaped to broadcast against ``like`` (B, ...)."""
        v = values.to(like.device)[t].to(like.dtype)
        return v.view(-1, *([1] * (like.dim() - 1)))


def q_mean_variance(sched: Schedule, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the forward kernel q(x_t | x_0)."""
    abar = sched._at(sched.alpha_bars, t, x0)
    return abar.sqrt() * x0, (1 - abar).expand_as(x0)


def q_sample(sched: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps: one draw from q(x_t | x_0)."""
    abar = sched._at(sched.alpha_bars, t, x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def epsilon_loss(model, sched: Schedule, x0: torch.Tensor, y: torch.Tensor | None = None,
                 t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """L_simple: mean squared error between the true and the predicted noise."""
    if t is None:
        t = torch.randint(0, sched.timesteps, (len(x0),), device=x0.device)
    if noise is None:
        noise = torch.randn_like(x0)
    return (noise - model(q_sample(sched, x0, t, noise), t, y)).pow(2).mean()


def guided_epsilon(model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, null_label: int,
                   w: float) -> torch.Tensor:
    """Classifier-free guidance: (1 + w) eps(x, c) - w eps(x, none); plain eps without a label."""
    if y is None or w == 0:
        return model(x, t, y)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]))
    cond, uncond = both.chunk(2)
    return (1 + w) * cond - w * uncond


@torch.no_grad()
def p_sample(model, sched: Schedule, x_t: torch.Tensor, t: int, y: torch.Tensor | None = None,
             null_label: int = 0, w: float = 0.0, variance: str = "beta",
             clip_x0: float | None = None) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} (Algorithm 2).

    ``clip_x0``: as in Ho et al.'s released code (``clip_denoised``), predict
    x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clip it to the data range [-c, c], and use
    the posterior mean of q(x_{t-1} | x_t, x0) =
    sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t,
    which equals the mean above whenever x0 already lies in range.
    """
    tt = torch.full((len(x_t),), t, dtype=torch.long, device=x_t.device)
    eps = guided_epsilon(model, x_t, tt, y, null_label, w)
    beta, alpha, abar = (float(v[t]) for v in (sched.betas, sched.alphas, sched.alpha_bars))
    if clip_x0 is None:
        mean = (x_t - beta / math.sqrt(1 - abar) * eps) / math.sqrt(alpha)
    else:
        abar_prev = float(sched.alpha_bars[t - 1]) if t > 0 else 1.0
        x0 = ((x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)).clamp(-clip_x0, clip_x0)
        mean = (math.sqrt(abar_prev) * beta * x0 + math.sqrt(alpha) * (1 - abar_prev) * x_t) / (1 - abar)
    if t == 0:
        return mean
    var = beta if variance == "beta" else float(sched.posterior_variance[t])
    return mean + math.sqrt(var) * torch.randn_like(x_t)


@torch.no_grad()
def sample_loop(model, sched: Schedule, shape: tuple[int, ...], device, y: torch.Tensor | None = None,
                null_label: int = 0, w: float = 0.0, variance: str = "beta",
                clip_x0: float | None = None) -> torch.Tensor:
    """Algorithm 2: x_T ~ N(0, I), then T ancestral steps down to x_0."""
    x = torch.randn(shape, device=device)
    for t in reversed(range(sched.timesteps)):
        x = p_sample(model, sched, x, t, y, null_label, w, variance, clip_x0)
    return x


def descend(loss: torch.Tensor, opt: torch.optim.Optimizer, net: nn.Module, net_ema=None) -> float:
    """One optimiser step on L_simple, then the EMA of the noise network's weights (when kept)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if net_ema is not None:
        net_ema.update_parameters(unwrap(net))
    return float(loss.detach())


def sampling_net(net: nn.Module, net_ema=None) -> nn.Module:
    """The network Algorithm 2 runs: the weight average when kept (Ho et al.), else the live one."""
    return net_ema.module if net_ema is not None else unwrap(net)


@torch.no_grad()
def guided_samples(net: nn.Module, net_ema, sched: Schedule, shape: tuple[int, ...], device, num_classes: int,
                   labels: torch.Tensor | None = None, w: float = 0.0, variance: str = "beta",
                   clip_x0: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x_0, y): Algorithm 2 with the sampling network in eval mode; labels 0, 1, ..., K-1 in turn
    unless given (conditional models), none otherwise."""
    model = sampling_net(net, net_ema)
    model.eval()
    y = None
    if num_classes:
        y = (labels if labels is not None else torch.arange(shape[0]) % num_classes).to(device)
    x = sample_loop(model, sched, shape, device, y, num_classes, w, variance, clip_x0)
    model.train()
    return x, y


# --- the model the training loop drives ----------------------------------------------------------
class DDPMModel:
    def __init__(self, cfg, data_shape: tuple[int, ...], num_classes: int, device: torch.device):
        self.cfg, self.device, self.data_shape = cfg, device, data_shape
        self.image = len(data_shape) > 1
        self.num_classes = num_classes if cfg.conditional else 0
        self.sched = Schedule.make(cfg.schedule, cfg.timesteps, cfg.beta_start, cfg.beta_end)
        if self.image:
            self.net: nn.Module = UNet(data_shape[0], ch=max(cfg.hidden // 4, 8), num_classes=self.num_classes,
                                       cross_attention=cfg.cross_attention)
        else:
            self.net = MLPDenoiser(data_shape[0], cfg.hidden, num_classes=self.num_classes)
        self.net.to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate)
        # gen.ema_decay > 0: sample from an exponential moving average of the weights (Ho et al.: 0.9999)
        self.net_ema = ema_copy(self.net, cfg.ema_decay) if cfg.ema_decay > 0 else None

    def modules(self) -> dict[str, nn.Module]:
        return {"eps": self.net, **({"eps_ema": self.net_ema} if self.net_ema is not None else {})}

    def trainable(self) -> set[str]:
        return {"eps"}  # the averaged copy gets no gradients and is never wrapped for DDP

    def set_modules(self, mods: dict[str, nn.Module]) -> None:
        self.net = mods["eps"]
        self.net_ema = mods.get("eps_ema", self.net_ema)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"eps": self.opt}

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, it: int) -> dict[str, Any]:
        x0 = x * 2 - 1 if self.image else x
        if self.num_classes and y is not None:  # drop labels for classifier-free guidance
            drop = torch.rand(len(y), device=y.device) < self.cfg.cond_drop
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        else:
            y = None
        return {"loss": descend(epsilon_loss(self.net, self.sched, x0, y), self.opt, self.net, self.net_ema)}

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, guidance: float | None = None) -> torch.Tensor:
        w = self.cfg.guidance_scale if guidance is None else guidance
        x, _ = guided_samples(self.net, self.net_ema, self.sched, (n, *self.data_shape), self.device,
                              self.num_classes, labels, w, self.cfg.sampling_variance,
                              1.0 if self.image and self.cfg.clip_denoised else None)
        return ((x.clamp(-1, 1) + 1) / 2) if self.image else x
