"""Self-supervised encoders: SimCLR (Chen et al. 2020), MoCo (He et al. 2020), BYOL (Grill et al.
2020), SimSiam (Chen & He 2021), and the linear probe that measures them.

    NT-Xent / InfoNCE   l(i, j) = -log exp(sim(z_i, z_j)/tau) / sum_{k != i} exp(sim(z_i, z_k)/tau)
                        over the 2N augmented views of a batch, sim = cosine similarity
    MoCo                logits = [q . k+, q . queue] / tau, label 0; the key encoder is an exponential
                        moving average of the query encoder, theta_k <- m theta_k + (1 - m) theta_q;
                        keys of each batch enter a FIFO queue of negatives (gathered from every
                        Train worker, as MoCo does across GPUs)
    BYOL                online f, projector g, predictor q; target (f', g') = EMA of (f, g) with the same
                        theta' <- m theta' + (1 - m) theta (m = gen.moco_momentum);
                        L = 2 - 2 cos(q(z1), sg(z'2))  +  2 - 2 cos(q(z2), sg(z'1))   (byol_loss, symmetrised)
    SimSiam             one encoder f + projector g (z = g(f(x))), predictor h (p = h(z)), no EMA, no negatives:
                        D(p, z) = -cos(p, sg(z))                                       (negative_cosine)
                        L = 1/2 D(p1, z2) + 1/2 D(p2, z1)                              (simsiam_loss)
                        batch norm in the projector and predictor keeps both from collapsing
    few-label probe     logistic regression on frozen features from k labelled images per class
                        (k = 1, 5, 10; mean over gen.probe_draws random label draws), scored on the test split

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


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, sg(z)), averaged over the batch (minimum -1 at p parallel to z)."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """L = 1/2 D(p1, z2) + 1/2 D(p2, z1): each view's prediction against the other's stopped projection."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def byol_loss(q: torch.Tensor, z_target: torch.Tensor) -> torch.Tensor:
    """BYOL's ||q/|q| - z'/|z'| ||^2 = 2 - 2 cos(q, sg(z')), averaged over the batch (minimum 0).
    The symmetrised loss is byol_loss(q1, z'2) + byol_loss(q2, z'1)."""
    return (2 - 2 * F.cosine_similarity(q, z_target.detach(), dim=1)).mean()


def normalised_std(z: torch.Tensor) -> float:
    """Collapse check (SimSiam, Sec. 4.1): std over the batch of z/|z|, averaged over the d dimensions,
    times sqrt(d): about 1 for outputs spread over the sphere, 0 for a collapsed (constant) output."""
    return float(F.normalize(z.detach(), dim=1).std(dim=0).mean() * z.shape[1] ** 0.5)


@torch.no_grad()
def momentum_update(key_encoder: nn.Module, query_encoder: nn.Module, m: float) -> None:
    """theta_k <- m theta_k + (1 - m) theta_q (MoCo's key encoder, BYOL's target network)."""
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
def bn_mlp(sizes: list[int], out_bn: bool = False) -> nn.Sequential:
    """Linear-BatchNorm-ReLU blocks, a plain last Linear (+ BatchNorm when ``out_bn``, as SimSiam's projector):
    BYOL's and SimSiam's projector and predictor."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=i < len(sizes) - 2 or not out_bn))
        if i < len(sizes) - 2:
            layers += [nn.BatchNorm1d(sizes[i + 1]), nn.ReLU()]
        elif out_bn:
            layers.append(nn.BatchNorm1d(sizes[i + 1], affine=False))
    return nn.Sequential(*layers)


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
                 hidden: int = 128, head: str = "mlp"):
        super().__init__()
        self.atari = atari
        if atari:
            torso = nature_torso()  # registered once (inside backbone): safetensors refuses shared tensors
            self.backbone = nn.Sequential(torso, nn.Flatten())
            feature_dim = torso_out_dim(torso)
        else:
            self.backbone = nn.Sequential(ConvEncoder(data_shape[0], data_shape[-1], feature_dim, ch=hidden // 2,
                                                      act=nn.ReLU), nn.ReLU())
        if head == "mlp":  # SimCLR / MoCo
            self.head = mlp([feature_dim, 256, projection_dim])
        elif head == "byol":  # Linear-BN-ReLU-Linear
            self.head = bn_mlp([feature_dim, 256, projection_dim])
        else:  # simsiam: two BN hidden layers and a BN output
            self.head = bn_mlp([feature_dim, 256, 256, projection_dim], out_bn=True)

    @property
    def torso(self) -> nn.Module | None:
        return self.backbone[0] if self.atari else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class ContrastiveModel:
    """simclr, moco, byol and simsiam on digits or atari-frames."""

    def __init__(self, cfg, data_shape: tuple[int, ...], num_classes: int, device: torch.device):
        self.cfg, self.device = cfg, device
        self.atari = cfg.data == "atari-frames"
        self.method = cfg.model
        head = self.method if self.method in ("byol", "simsiam") else "mlp"
        self.net = Encoder(data_shape, self.atari, 128, cfg.projection_dim, cfg.hidden, head).to(device)
        params = list(self.net.parameters())
        self.predictor = None
        if self.method in ("byol", "simsiam"):  # q / h: Linear-BN-ReLU-Linear
            self.predictor = bn_mlp([cfg.projection_dim, cfg.predictor_hidden, cfg.projection_dim]).to(device)
            params += list(self.predictor.parameters())
        self.opt = torch.optim.Adam(params, lr=cfg.learning_rate)
        self.key_net = None  # MoCo's key encoder / BYOL's target: an EMA of the online encoder, no gradients
        if self.method in ("moco", "byol"):
            self.key_net = copy.deepcopy(self.net).requires_grad_(False)
        if self.method == "moco":
            self.queue = KeyQueue(cfg.moco_queue, cfg.projection_dim, device)

    def _module_names(self) -> dict[str, str]:
        names = {"encoder": "net"}
        if self.predictor is not None:
            names["predictor"] = "predictor"
        if self.method == "moco":
            names["key_encoder"] = "key_net"
        elif self.method == "byol":
            names["target_encoder"] = "key_net"
        return names

    def modules(self) -> dict[str, nn.Module]:
        return {k: getattr(self, attr) for k, attr in self._module_names().items()}

    def set_modules(self, mods: dict[str, nn.Module]) -> None:
        for k, attr in self._module_names().items():
            setattr(self, attr, mods[k] if k in self.trainable() else unwrap(mods[k]))

    def trainable(self) -> set[str]:
        # the key / target encoder is never wrapped for DDP (it has no gradients)
        return {"encoder", "predictor"} if self.predictor is not None else {"encoder"}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"encoder": self.opt}  # one Adam over the encoder (and the predictor)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 if x.dtype == torch.uint8 else x

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, it: int) -> dict[str, Any]:
        x = self._prep(x)
        v1, v2 = augment(x, self.atari), augment(x, self.atari)
        out: dict[str, Any] = {}
        if self.method == "moco":
            q = F.normalize(self.net(v1), dim=1)
            with torch.no_grad():
                momentum_update(self.key_net, unwrap(self.net), self.cfg.moco_momentum)
                k = F.normalize(self.key_net(v2), dim=1)
            loss = info_nce(q, k, self.queue.keys, self.cfg.temperature)
        elif self.method == "simclr":
            loss = nt_xent(self.net(v1), self.net(v2), self.cfg.temperature)
        else:  # one forward pass over both views (one DDP forward per backward)
            z1, z2 = self.net(torch.cat([v1, v2])).chunk(2)
            p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
            if self.method == "byol":
                with torch.no_grad():
                    t1, t2 = self.key_net(torch.cat([v1, v2])).chunk(2)
                loss = byol_loss(p1, t2) + byol_loss(p2, t1)
            else:
                loss = simsiam_loss(p1, p2, z1, z2)
            out["projection_std"] = normalised_std(z1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.method == "moco":
            self.queue.enqueue(gather_keys(k))
        elif self.method == "byol":  # the target follows the updated online network
            momentum_update(self.key_net, unwrap(self.net), self.cfg.moco_momentum)
        out["loss"] = float(loss.detach())
        return out

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


PROBE_LABELS_PER_CLASS = (1, 5, 10)


def few_label_probe_accuracy(train_feats, train_y, test_feats, test_y, per_class: int, draws: int = 5,
                             seed: int = 0) -> float:
    """The linear probe trained on ``per_class`` labelled images of each class (the rest of the training
    split unlabelled, as in SimCLR's 1% / 10% label protocol), scored on the whole test split; the mean
    over ``draws`` random draws of the labelled images (draw d uses seed + d, the same for every encoder)."""
    import numpy as np

    train_y = np.asarray(train_y)
    accs = []
    for d in range(draws):
        rng = np.random.default_rng(seed + d)
        idx = np.concatenate([rng.choice(np.flatnonzero(train_y == c), per_class, replace=False)
                              for c in np.unique(train_y)])
        accs.append(linear_probe_accuracy(train_feats[idx], train_y[idx], test_feats, test_y, seed))
    return float(np.mean(accs))


def probe_metrics(model, fresh, cfg, seed: int = 0) -> dict[str, float]:
    """Full-label and few-label probes on digits for a trained encoder, an untrained one of the same
    shape (``fresh``: what training added) and the raw pixels (what any encoder must beat)."""
    from generative import data as gdata

    x, y = gdata.digits(cfg.image_size, "train")
    xt, yt = gdata.digits(cfg.image_size, "test")
    y, yt = y.numpy(), yt.numpy()
    feats = {"": (model.features(x).numpy(), model.features(xt).numpy()),
             "_untrained": (fresh.features(x).numpy(), fresh.features(xt).numpy()),
             "_raw": (x.flatten(1).numpy(), xt.flatten(1).numpy())}
    out: dict[str, float] = {}
    for suffix, (f, ft) in feats.items():
        out[f"linear_probe_accuracy{suffix}"] = linear_probe_accuracy(f, y, ft, yt, seed)
        for k in PROBE_LABELS_PER_CLASS:
            out[f"probe_accuracy_{k}_per_class{suffix}"] = few_label_probe_accuracy(f, y, ft, yt, k,
                                                                                  cfg.probe_draws, seed)
    return out
