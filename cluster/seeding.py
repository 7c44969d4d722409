"""Seeding: one base seed, derived seeds for every worker and env (never the same twice)."""

from __future__ import annotations

import random

import numpy as np


def derive_seed(base: int, *keys: int) -> int:
    """A 31-bit seed derived from ``base`` and any number of integer keys (worker, env, ...).

    numpy's SeedSequence mixes the keys so neighbouring workers get unrelated streams.
    """
    ss = np.random.SeedSequence([int(base) & 0xFFFFFFFF, *[int(k) & 0xFFFFFFFF for k in keys]])
    return int(ss.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)


def worker_seed(base: int, worker_index: int, env_index: int = 0) -> int:
    """Seed for env ``env_index`` of rollout worker ``worker_index``."""
    return derive_seed(base, 1 + worker_index, env_index)


def seed_everything(seed: int, deterministic_torch: bool = False) -> int:
    """Seed python, numpy and torch (torch only if it is importable); returns the seed."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return seed
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic_torch:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return seed
