"""The learner's torch thread count: the cores the rollout actors do not hold, for the update
only. Intra-op threads that outnumber the free cores spin and stall an update many times over,
and tests and Tune trials share a process, so the caller's setting comes back afterwards."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def free_cores(num_workers: int, cpus_per_worker: float) -> int:
    """Cores left to the learner once the workers' reservations (a fraction counts whole) are out."""
    return max(1, (os.cpu_count() or 1) - math.ceil(num_workers * cpus_per_worker))


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
