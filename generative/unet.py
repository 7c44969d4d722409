"""The noise-prediction networks for DDPM: a small U-Net for images and an MLP for 2-D points.

U-Net (Ho et al. 2020, after PixelCNN++): ResNet blocks with GroupNorm and the time embedding
added between the two convolutions, two 2x downsamplings (S -> S/2 -> S/4), self-attention at
the lowest resolution and in the middle, skip connections. Conditioning on a class: its
embedding is added to the time embedding (default) or, with ``cross_attention=True``, the
attention blocks attend from the pixels to a few class tokens (as in latent diffusion).
Index ``num_classes`` is the "no label" token used by classifier-free guidance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DOWNSAMPLING = 4  # S must be divisible by this


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer positional encoding of the timestep: [sin(t w_k), cos(t w_k)], w_k = max_period^(-k/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeClassEmbedding(nn.Module):
    """t -> MLP(sinusoidal(t)); plus a learned class embedding (index num_classes = unconditional)."""

    def __init__(self, dim: int, num_classes: int = 0):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, 4 * dim))
        self.label = nn.Embedding(num_classes + 1, 4 * dim) if num_classes else None

    def forward(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        emb = self.mlp(sinusoidal_embedding(t, self.dim))
        if self.label is not None and y is not None:
            emb = emb + self.label(y)
        return emb


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int = 8):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    """Self-attention over the S*S pixels, or cross-attention from pixels to ``context`` tokens."""

    def __init__(self, channels: int, heads: int = 4, context_dim: int | None = None, groups: int = 8):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True,
                                          kdim=context_dim, vdim=context_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        kv = q if context is None else context
        out, _ = self.attn(q, kv, kv, need_weights=False)
        return x + out.transpose(1, 2).view(b, c, h, w)


class UNet(nn.Module):
    def __init__(self, in_channels: int = 1, ch: int = 32, num_classes: int = 0, cross_attention: bool = False,
                 context_tokens: int = 4):
        super().__init__()
        emb_dim = 4 * ch
        self.num_classes, self.cross = num_classes, cross_attention and num_classes > 0
        self.embed = TimeClassEmbedding(ch, 0 if self.cross else num_classes)
        if self.cross:  # class -> a few context tokens
            self.context = nn.Embedding(num_classes + 1, context_tokens * emb_dim)
            self.context_tokens, self.emb_dim = context_tokens, emb_dim
        ctx = emb_dim if self.cross else None
        c1, c2, c3 = ch, 2 * ch, 2 * ch
        self.inc = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.down1 = ResBlock(c1, c1, emb_dim)
        self.pool1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)  # S -> S/2
        self.down2 = ResBlock(c2, c2, emb_dim)
        self.pool2 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)  # S/2 -> S/4
        self.down3 = ResBlock(c3, c3, emb_dim)
        self.attn_down = Attention(c3)
        self.mid1 = ResBlock(c3, c3, emb_dim)
        self.mid_attn = Attention(c3)
        self.mid_cross = Attention(c3, context_dim=ctx) if self.cross else None
        self.mid2 = ResBlock(c3, c3, emb_dim)
        self.up3 = ResBlock(c3 + c3, c3, emb_dim)
        self.attn_up = Attention(c3)
        self.up_cross = Attention(c3, context_dim=ctx) if self.cross else None
        self.unpool2 = nn.ConvTranspose2d(c3, c2, 4, 2, 1)  # S/4 -> S/2
        self.up2 = ResBlock(c2 + c2, c2, emb_dim)
        self.unpool1 = nn.ConvTranspose2d(c2, c1, 4, 2, 1)  # S/2 -> S
        self.up1 = ResBlock(c1 + c1, c1, emb_dim)
        self.out = nn.Sequential(nn.GroupNorm(8, c1), nn.SiLU(), nn.Conv2d(c1, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, None if self.cross else y)
        context = None
        if self.cross:
            if y is None:
                y = torch.full((len(x),), self.num_classes, dtype=torch.long, device=x.device)
            context = self.context(y).view(len(x), self.context_tokens, self.emb_dim)
        h1 = self.down1(self.inc(x), emb)
        h2 = self.down2(self.pool1(h1), emb)
        h3 = self.attn_down(self.down3(self.pool2(h2), emb))
        m = self.mid_attn(self.mid1(h3, emb))
        if self.mid_cross is not None:
            m = self.mid_cross(m, context)
        m = self.mid2(m, emb)
        u = self.attn_up(self.up3(torch.cat([m, h3], 1), emb))
        if self.up_cross is not None:
            u = self.up_cross(u, context)
        u = self.up2(torch.cat([self.unpool2(u), h2], 1), emb)
        u = self.up1(torch.cat([self.unpool1(u), h1], 1), emb)
        return self.out(u)


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t) for 2-D points: the sinusoidal time embedding concatenated to x_t."""

    def __init__(self, dim: int = 2, hidden: int = 128, emb_dim: int = 32, num_classes: int = 0):
        super().__init__()
        self.embed = TimeClassEmbedding(emb_dim, num_classes)
        self.net = nn.Sequential(
            nn.Linear(dim + 4 * emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(torch.cat([x, self.embed(t, y)], dim=1))
