"""Offline datasets: 8-Gaussian ring, 25-Gaussian grid, 8x8 digits (padded/upsampled), Atari frames,
and two unpaired digit domains (plain / thick-inverted) for image-to-image translation.

Everything is generated or loaded locally (nothing is downloaded). Each dataset is a pair of
tensors ``(x, y)`` (``y`` is None when unlabelled); ``shard`` gives each Ray Train worker its
own disjoint slice.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cluster.errors import ReinforgeError

RING_RADIUS, RING_STD = 2.0, 0.02  # the usual 8-Gaussian ring (Metz et al. 2017; VEEGAN)
GRID_SPACING, GRID_STD = 2.0, 0.05  # the usual 25-Gaussian grid at {-4,-2,0,2,4}^2


def mode_centres(name: str) -> tuple[np.ndarray, float]:
    """The mixture's means (K, 2) and its per-component standard deviation."""
    if name == "ring8":
        angles = 2 * math.pi * np.arange(8) / 8
        return RING_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1), RING_STD
    if name == "grid25":
        g = GRID_SPACING * (np.arange(5) - 2.0)
        return np.array([(a, b) for a in g for b in g], dtype=np.float64), GRID_STD
    raise ReinforgeError(f"{name!r} is not a 2-D mixture; use ring8 or grid25")


def mixture(name: str, n: int, seed: int) -> torch.Tensor:
    """``n`` points from the mixture, equal weights, seeded."""
    centres, std = mode_centres(name)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(centres), size=n)
    pts = centres[idx] + std * rng.standard_normal((n, 2))
    return torch.from_numpy(pts.astype(np.float32))


def digits(image_size: int = 16, split: str = "train", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits in [0, 1], shape (N, 1, S, S), with labels; 80/20 split fixed by seed 0.

    16x16: bilinear 2x upsampling. 32x32: bilinear 3x (24x24) padded by 4 on each side.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))
    cut = int(0.8 * len(x))
    idx = perm[:cut] if split == "train" else perm[cut:]
    x, y = x[idx], y[idx]
    if image_size == 16:
        x = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    elif image_size == 32:
        x = torch.nn.functional.interpolate(x, scale_factor=3, mode="bilinear", align_corners=False)
        x = torch.nn.functional.pad(x, (4, 4, 4, 4))
    else:
        raise ReinforgeError(f"digits image size {image_size} unsupported; use 16 or 32")
    return x.clamp(0, 1), y



# --- two unpaired digit domains (CycleGAN) ---------------------------------------------------------
def style_b(x: torch.Tensor) -> torch.Tensor:
    """Domain B's fixed style: strokes thickened by a max-pool dilation, then intensities inverted
    (dark thick digits on a white background). ``x`` in [0, 1], (N, 1, S, S)."""
    k = 2 * (x.shape[-1] // 16) + 1  # 3x3 at 16x16, 5x5 at 32x32
    return 1.0 - torch.nn.functional.max_pool2d(x, k, stride=1, padding=k // 2)


def digit_domains(image_size: int = 16, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two unpaired domains from one digits split: ``(x, y, source)``.

    The split's digits are cut in two disjoint halves (fixed seed): domain A is the first half as
    it is, domain B the second half under ``style_b``. Row i holds A image ``source[i, 0]`` in
    channel 0 and an unrelated B image ``source[i, 1]`` (indices into ``digits(image_size,
    split)``) in channel 1, so no row (or anything else) shows a digit next to its own styled
    version. ``y[i]`` holds both labels, for evaluation only; x is (N, 2, S, S) in [0, 1].
    """
    x, y = digits(image_size, split)
    rng = np.random.default_rng(1 if split == "train" else 2)
    perm = torch.from_numpy(rng.permutation(len(x)))
    n = len(x) // 2
    src = torch.stack([perm[:n], perm[n : 2 * n]], dim=1)
    pair = torch.cat([x[src[:, 0]], style_b(x[src[:, 1]])], dim=1)
    return pair, y[src], src

# --- Atari frames ----------------------------------------------------------------------------
def cache_dir() -> Path:
    return Path(os.environ.get("REINFORGE_CACHE", Path.home() / ".cache" / "reinforge"))


def _make_atari(game: str, seed: int):
    """The RL side's env factory (the agents' exact Nature-DQN preprocessing and frame stack);
    evaluation mode: no episodic-life resets and no reward clipping (rewards are unused here)."""
    from rl.envs import EnvConfig, make_env

    return make_env(EnvConfig(id=game), seed=seed, training=False)


def record_atari_frames(game: str, n: int, seed: int = 0, path: str | os.PathLike | None = None):
    """Record ``n`` stacked observations (4, 84, 84) uint8 from a random policy into a
    ``datasets`` Dataset saved on disk (cached: a second call loads it). Returns its path."""
    import datasets

    safe = game.replace("/", "_").replace(":", "_")
    out = Path(path) if path else cache_dir() / f"atari-frames-{safe}-{n}-{seed}"
    if (out / "dataset_info.json").is_file():
        return out
    try:
        env = _make_atari(game, seed)
    except Exception as exc:  # gymnasium raises several types for unknown ids / missing ROMs
        raise ReinforgeError(f"cannot make Atari env {game!r} ({str(exc).splitlines()[0]}); use e.g. ALE/Pong-v5") from None
    rng = np.random.default_rng(seed)
    frames = np.empty((n, 4, 84, 84), dtype=np.uint8)
    obs, _ = env.reset(seed=seed)
    for i in range(n):
        frames[i] = np.asarray(obs, dtype=np.uint8).reshape(4, 84, 84)
        obs, _, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    ds = datasets.Dataset.from_dict({"obs": frames}, features=datasets.Features(
        {"obs": datasets.Array3D(shape=(4, 84, 84), dtype="uint8")}))
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    ds.save_to_disk(str(tmp))
    if out.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def load_atari_frames(path: str | os.PathLike, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This worker's shard of a recorded atari-frames dataset, as uint8 (N, 4, 84, 84)."""
    import datasets

    ds = datasets.load_from_disk(str(path))
    if world > 1:
        ds = ds.shard(num_shards=world, index=rank, contiguous=True)
    return torch.from_numpy(np.asarray(ds.with_format("numpy")["obs"], dtype=np.uint8))


# --- one entry point ---------------------------------------------------------------------------
@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)


def load(cfg, split: str = "train", seed: int = 0, frames_path: str | None = None) -> Split:
    """Dataset named by ``cfg.data`` (a GenConfig). Held-out ``test`` splits use other seeds."""
    if cfg.data in ("ring8", "grid25"):
        n = cfg.dataset_size if split == "train" else cfg.eval_samples
        return Split(mixture(cfg.data, n, seed if split == "train" else seed + 10_007))
    if cfg.data == "digits":
        return Split(*digits(cfg.image_size, split))
    if cfg.data == "digit-domains":
        x, y, _ = digit_domains(cfg.image_size, split)
        return Split(x, y)
    if cfg.data == "atari-frames":
        if frames_path is None:
            raise ReinforgeError("atari-frames needs a recorded dataset; the pipeline records it before training")
        x = load_atari_frames(frames_path)
        cut = int(0.9 * len(x))
        return Split(x[:cut] if split == "train" else x[cut:])
    raise ReinforgeError(f"unknown data {cfg.data!r}; use ring8, grid25, digits, atari-frames or digit-domains")


def shard(data: Split, rank: int, world: int) -> Split:
    """Worker ``rank``'s disjoint slice (strided, so every shard sees every class)."""
    if world <= 1:
        return data
    return Split(data.x[rank::world], None if data.y is None else data.y[rank::world])


def batches(data: Split, batch_size: int, generator: torch.Generator):
    """One epoch of shuffled minibatches (the last short batch is dropped)."""
    perm = torch.randperm(len(data), generator=generator)
    for i in range(0, len(data) - batch_size + 1, batch_size):
        idx = perm[i : i + batch_size]
        yield data.x[idx], (None if data.y is None else data.y[idx])
