"""Contrastive encoders: SimCLR (Chen et al. 2020) and MoCo (He et al. 2020), plus a linear probe.

    NT-Xent / InfoNCE   l(i, j) = -log exp(sim(z_i, z_j)/tau) / sum_{k != i} exp(sim(z_i, z_k)/tau)
                        over the 2N augmented views of a batch, sim = cosine similarity
    MoCo                logits = [q . k+, q . queue] / tau, label 0; the key encoder is an exponential
                        moving average of the query encoder, theta_k <- m theta_k + (1 - m) theta_q;
                        keys of each batch enter a FIFO queue of negatives (gathered from every
                        Train worker, as MoCo does across GPUs)

On digits the encoder is a small CNN; on Atari frames it is the RL agents' NatureCNN torso
(random-shift augmentation as in DrQ), so a trained torso can initialise an agent.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from generative.nets import ConvEncoder, mlp, unwrap


# --- the equations ---------------------------------------------------------------------------
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy; row i of z1 and z2 are views of one image."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))  # k != i
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE: the positive key k+ against the queue's negatives (all L2-normalised)."""
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.t()
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@torch.no_grad()
def momentum_update(key_encoder: nn.Module, query_encoder: nn.Module, m: float) -> None:
    """theta_k <- m theta_k + (1 - m) theta_q."""
    for pk, pq in zip(key_encoder.parameters(), query_encoder.parameters()):
        pk.mul_(m).add_(pq.detach(), alpha=1 - m)


class KeyQueue:
    """A fixed-size FIFO of L2-normalised keys (the MoCo dictionary)."""

    def __init__(self, size: int, dim: int, device=None, generator: torch.Generator | None = None):
        self.keys = F.normalize(torch.randn(size, dim, generator=generator), dim=1).to(device)
        self.ptr = 0

    def enqueue(self, k: torch.Tensor) -> None:
        k = k.detach()
        n, size = len(k), len(self.keys)
        idx = (self.ptr + torch.arange(n)) % size
        self.keys[idx.to(self.keys.device)] = k[-size:] if n > size else k
        self.ptr = int((self.ptr + n) % size)


def gather_keys(k: torch.Tensor) -> torch.Tensor:
    """Keys from every data-parallel worker (the batch itself when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return k
    out = [torch.empty_like(k) for _ in range(dist.get_world_size())]
    dist.all_gather(out, k.contiguous())
    return torch.cat(out)


# --- augmentations ---------------------------------------------------------------------------
def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad by replication and crop back at a random offset per image (DrQ's augmentation)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,))
    dy = torch.randint(0, 2 * pad + 1, (b,))
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (B, H)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (B, W)
    bidx = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def augment(x: torch.Tensor, atari: bool) -> torch.Tensor:
    """Two calls give two views. Digits: shift, random contrast, noise, random erasing (no flips:
    a flipped digit is another digit). Atari: shift and brightness jitter."""
    b = len(x)
    if atari:
        x = random_shift(x, 4)
        return (x * (0.8 + 0.4 * torch.rand(b, 1, 1, 1, device=x.device))).clamp(0, 1)
    x = random_shift(x, max(x.shape[-1] // 8, 1))
    x = x * (0.6 + 0.8 * torch.rand(b, 1, 1, 1, device=x.device))
    x = x + 0.1 * torch.randn_like(x)
    s = x.shape[-1]
    size = s // 4  # erase one square patch per image
    ox = torch.randint(0, s - size + 1, (b,), device=x.device)
    oy = torch.randint(0, s - size + 1, (b,), device=x.device)
    ar = torch.arange(s, device=x.device)
    mx = (ar[None] >= ox[:, None]) & (ar[None] < ox[:, None] + size)
    my = (ar[None] >= oy[:, None]) & (ar[None] < oy[:, None] + size)
    keep = ~(my[:, :, None] & mx[:, None, :]) | (torch.rand(b, 1, 1, device=x.device) < 0.5)
    return (x * keep[:, None].float()).clamp(0, 1)


# --- encoders ----------------------------------------------------------------------------------
def nature_torso() -> nn.Module:
    """``rl.networks.NatureCNN(in_channels=4)``: the RL agents' torso that we pretrain."""
    from rl.networks import NatureCNN

    return NatureCNN(in_channels=4)


def torso_out_dim(torso: nn.Module) -> int:
    with torch.no_grad():
        return int(torso(torch.zeros(1, 4, 84, 84)).flatten(1).shape[1])


class Encoder(nn.Module):
    """backbone h = f(x) (what the probe and the RL agent use) + projection head g(h) (the loss's space)."""

    def __init__(self, data_shape: tuple[int, ...], atari: bool, feature_dim: int, projection_dim: int,
                 hidden: int = 128):
        super().__init__()
        self.atari = atari
        if atari:
            torso = nature_torso()  # registered once (inside backbone): safetensors refuses shared tensors
            self.backbone = nn.Sequential(torso, nn.Flatten())
            feature_dim = torso_out_dim(torso)
        else:
            self.backbone = nn.Sequential(ConvEncoder(data_shape[0], data_shape[-1], feature_dim, ch=hidden // 2,
                                                      act=nn.ReLU), nn.ReLU())
        self.head = mlp([feature_dim, 256, projection_dim])

    @property
    def torso(self) -> nn.Module | None:
        return self.backbone[0] if self.atari else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class ContrastiveModel:
    """simclr and moco on digits or atari-frames."""

    def __init__(self, cfg, data_shape: tuple[int, ...], num_classes: int, device: torch.device):
        self.cfg, self.device = cfg, device
        self.atari = cfg.data == "atari-frames"
        self.net = Encoder(data_shape, self.atari, 128, cfg.projection_dim, cfg.hidden).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate)
        self.moco = cfg.model == "moco"
        if self.moco:
            self.key_net = copy.deepcopy(self.net).requires_grad_(False)
            self.queue = KeyQueue(cfg.moco_queue, cfg.projection_dim, device)

    def modules(self) -> dict[str, nn.Module]:
        mods = {"encoder": self.net}
        if self.moco:
            mods["key_encoder"] = self.key_net
        return mods

    def set_modules(self, mods: dict[str, nn.Module]) -> None:
        self.net = mods["encoder"]
        if self.moco:
            self.key_net = unwrap(mods["key_encoder"])

    def trainable(self) -> set[str]:
        return {"encoder"}  # the key encoder is never wrapped for DDP (it has no gradients)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"encoder": self.opt}

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 if x.dtype == torch.uint8 else x

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, it: int) -> dict[str, Any]:
        x = self._prep(x)
        v1, v2 = augment(x, self.atari), augment(x, self.atari)
        if self.moco:
            q = F.normalize(self.net(v1), dim=1)
            with torch.no_grad():
                momentum_update(self.key_net, unwrap(self.net), self.cfg.moco_momentum)
                k = F.normalize(self.key_net(v2), dim=1)
            loss = info_nce(q, k, self.queue.keys, self.cfg.temperature)
        else:
            loss = nt_xent(self.net(v1), self.net(v2), self.cfg.temperature)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.moco:
            self.queue.enqueue(gather_keys(k))
        return {"loss": float(loss.detach())}

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
        net = unwrap(self.net)
        net.eval()
        out = torch.cat([net.features(self._prep(x[i : i + batch]).to(self.device)).cpu()
                         for i in range(0, len(x), batch)])
        net.train()
        return out

    def encoder_torso(self) -> nn.Module | None:
        return unwrap(self.net).torso if self.atari else None


def linear_probe_accuracy(train_feats, train_y, test_feats, test_y, seed: int = 0) -> float:
    """Accuracy of a logistic regression trained on frozen features (the standard linear probe)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_feats)
    clf = LogisticRegression(max_iter=2000, random_state=seed)
    clf.fit(scaler.transform(train_feats), train_y)
    return float(clf.score(scaler.transform(test_feats), test_y))
