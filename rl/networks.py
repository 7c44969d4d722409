"""Networks shared by the RL algorithms: torsos (feature extractors) and the Q-value head.

* ``NatureCNN``: the Nature-DQN torso (Mnih et al. 2015): conv 32x8x8/4, 64x4x4/2, 64x3x3/1,
  linear 512, ReLU. Takes uint8 frames (N, C, 84, 84) and scales them to [0, 1] itself.
* ``MLP``: a torso for vector observations (CartPole).
* ``make_torso(observation_space)``: the right torso for a space; ``NatureCNN`` refuses a
  non-image space with one line.
* ``load_torso(module, path)``: plain safetensors weights from a file or from a run dir holding
  ``encoder/torso.safetensors`` (keys as in ``NatureCNN().state_dict()``), written by the
  generative pretraining pipeline. ``rl.init_encoder=RUN_DIR`` uses it.
* ``QNetwork``: torso + linear head, or the dueling head (Wang et al. 2016)
  Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a').
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from cluster.errors import CheckpointError, ReinforgeError


class NatureCNN(nn.Module):
    def __init__(self, in_channels: int = 4, out_features: int = 512, image_size: int = 84):
        super().__init__()
        self.in_channels = in_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.conv(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.fc = nn.Sequential(nn.Linear(n, out_features), nn.ReLU())
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        return self.fc(self.conv(x))


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        layers: list[nn.Module] = []
        last = in_features
        for h in hidden:
            layers += [nn.Linear(last, h), nn.ReLU()]
            last = h
        self.net = nn.Sequential(*layers)
        self.out_features = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float().flatten(1))


def make_torso(observation_space, kind: str = "auto", hidden: tuple[int, ...] = (256, 256)) -> nn.Module:
    """``auto``: NatureCNN for (C, H, W) image spaces, MLP for flat vectors. ``cnn`` forces the CNN
    and refuses a non-image space; ``mlp`` forces the MLP."""
    shape = tuple(observation_space.shape or ())
    image = len(shape) == 3 and shape[1] == shape[2] and shape[1] >= 36
    if kind == "cnn" or (kind == "auto" and image):
        if not image:
            raise ReinforgeError(
                f"the Nature CNN needs image observations (C, H, W) like Atari's (4, 84, 84), got shape {shape}; "
                "use the MLP torso (rl.torso=mlp) for vector observations"
            )
        return NatureCNN(in_channels=shape[0], image_size=shape[1])
    if kind not in ("auto", "mlp"):
        raise ReinforgeError(f"unknown torso {kind!r}; use auto, cnn or mlp")
    n = 1
    for s in shape:
        n *= int(s)
    return MLP(n, hidden)


def load_torso(module: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load plain safetensors torso weights (a ``.safetensors`` file or a run dir holding
    ``encoder/torso.safetensors``) into ``module``; mismatched keys or shapes are refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        p = p / "encoder" / "torso.safetensors"
    if not p.is_file():
        raise CheckpointError(f"no torso weights at {p}; pass a .safetensors file or a run dir with encoder/torso.safetensors")
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read torso weights {p}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(f"torso weights {p} do not match {type(module).__name__}: "
                              f"missing {missing[:3]}, unexpected {extra[:3]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"torso weights {p}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    module.load_state_dict(state)
    return module


class QNetwork(nn.Module):
    """Q(s, .) for every action. ``dueling``: Q = V + A - mean(A) (Wang et al. 2016)."""

    def __init__(self, torso: nn.Module, num_actions: int, dueling: bool = False, hidden: int = 0):
        super().__init__()
        self.torso = torso
        self.dueling = dueling
        self.num_actions = num_actions
        f = torso.out_features

        def head(out: int) -> nn.Module:
            if hidden:
                return nn.Sequential(nn.Linear(f, hidden), nn.ReLU(), nn.Linear(hidden, out))
            return nn.Linear(f, out)

        if dueling:
            self.value = head(1)
            self.advantage = head(num_actions)
        else:
            self.q = head(num_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        z = self.torso(obs)
        if self.dueling:
            a = self.advantage(z)
            return self.value(z) + a - a.mean(dim=1, keepdim=True)
        return self.q(z)
