"""The learner's torch thread count: every core while the rollout actors wait for its weights
(a synchronous A2C/PPO update: the workers are idle, so their cores are free), only the cores
the actors do not hold while they run (DQN's asynchronous sampling, an overlapped rollout).
Intra-op threads that outnumber the free cores spin and stall an update many times over, and
tests and Tune trials share a process, so the caller's setting comes back afterwards."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def all_cores() -> int:
    return os.cpu_count() or 1


def free_cores(num_workers: int, cpus_per_worker: float) -> int:
    """Cores left to the learner once running workers' reservations (a fraction counts whole)
    are out; ``num_workers`` = 0 (every worker waiting for the learner) gives every core."""
    return max(1, all_cores() - math.ceil(num_workers * cpus_per_worker))


@contextmanager
def learner_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block (``None``: leave it), the caller's value after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
