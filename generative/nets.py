"""Small building blocks the model files share (MLPs, image encoders/decoders, unwrapping DDP)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(sizes: list[int], act: type[nn.Module] = nn.ReLU, out_act: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


def ema_copy(module: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``module``'s weights, used only for sampling:

        theta_ema <- d_n theta_ema + (1 - d_n) theta,   d_n = min(decay, (1 + n) / (10 + n))

    (n = updates so far). Averaging the generator damps the oscillation that leaves GAN samples
    between modes (Yazici et al. 2019); DDPM samples from an EMA of its network (Ho et al. 2020).
    torch's ``AveragedModel`` keeps the copy and the update count; the warm-up d_n (as in
    TensorFlow's ExponentialMovingAverage with num_updates) is ours, so short runs are not
    dominated by the initial weights. Buffers (batch-norm statistics) are averaged too.
    """
    from torch.optim.swa_utils import AveragedModel

    @torch.no_grad()
    def update(ema_params, params, n):
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        floats = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [p for _, p in floats], 1.0 - d)
        for e, p in zip(ema_params, params):
            if not e.is_floating_point():  # counters such as num_batches_tracked
                e.copy_(p)

    ema = AveragedModel(unwrap(module), multi_avg_fn=update, use_buffers=True)
    ema.requires_grad_(False)
    return ema


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (state dicts without 'module.').
    Other wrappers (an EMA's ``AveragedModel``) are kept: their state includes the update count."""
    from torch.nn.parallel import DistributedDataParallel

    return module.module if isinstance(module, DistributedDataParallel) else module


def one_hot(y: torch.Tensor | None, num_classes: int) -> torch.Tensor | None:
    return None if y is None else nn.functional.one_hot(y, num_classes).float()


class ConvEncoder(nn.Module):
    """(B, C, S, S) -> (B, out_dim): stride-2 convolutions down to 4x4, then a linear layer.

    S in {16, 32}. No normalisation, so it also serves as a WGAN-GP critic (the gradient
    penalty is per sample; batch norm would couple samples).
    """

    def __init__(self, in_channels: int, size: int, out_dim: int, ch: int = 64, act=nn.LeakyReLU):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c, s = in_channels, ch, size
        while s > 4:
            layers += [nn.Conv2d(c_in, c, 4, 2, 1), act(0.2) if act is nn.LeakyReLU else act()]
            c_in, c, s = c, min(c * 2, 4 * ch), s // 2
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * 4 * 4, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


class ConvDecoder(nn.Module):
    """(B, in_dim) -> (B, C, S, S): a linear layer to 4x4, then stride-2 transposed convolutions
    (DCGAN generator shape; batch norm between layers)."""

    def __init__(self, in_dim: int, out_channels: int, size: int, ch: int = 64, batch_norm: bool = True):
        super().__init__()
        n_up = {16: 2, 32: 3}[size]
        c = ch * 2 ** (n_up - 1)
        self.c0 = c
        self.fc = nn.Sequential(nn.Linear(in_dim, c * 16), nn.ReLU())
        layers: list[nn.Module] = []
        for i in range(n_up):
            last = i == n_up - 1
            c_out = out_channels if last else c // 2
            layers.append(nn.ConvTranspose2d(c, c_out, 4, 2, 1))
            if not last:
                if batch_norm:
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(nn.ReLU())
            c = c_out
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.fc(z).view(len(z), self.c0, 4, 4))
