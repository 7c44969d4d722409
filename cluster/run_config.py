"""``run:``, the config section every pipeline shares (seed, device, run dir, Ray address).

It lives in ``cluster/`` (the runtime) so that every pipeline module can import it without
importing the registry that lists those pipelines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cluster.errors import ConfigError

_BOUND = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")
_INTERVAL = re.compile(r"^([\[(])\s*(\S+?)\s*,\s*(\S+?)\s*([\])])$")


def _holds(value: float, rule: str) -> bool:
    """Whether ``value`` satisfies ``rule``: ``">= 1"``, ``"> 0"``, or an interval ``"[0, 1)"``."""
    bound = _BOUND.match(rule)
    if bound:
        op, limit = bound.group(1), float(bound.group(2))
        return {">=": value >= limit, ">": value > limit, "<=": value <= limit, "<": value < limit}[op]
    interval = _INTERVAL.match(rule)
    if not interval:
        raise ValueError(f"not a range rule: {rule!r}")
    left, low, high, right = interval.group(1), float(interval.group(2)), float(interval.group(3)), interval.group(4)
    above = value >= low if left == "[" else value > low
    below = value <= high if right == "]" else value < high
    return above and below


def check_ranges(section: str, config: Any, rules: dict[str, str | tuple[str, str]]) -> None:
    """Refuse the first field of ``config`` outside its range, in one line naming the key and the
    range, e.g. ``rl.epsilon_start=2.0 must be in [0, 1]``.

    ``rules`` maps a field name to a rule (``">= 1"``, ``"> 0"``, ``"[0, 1)"``, ...) or to
    ``(rule, hint)``; a ``None`` value (an optional setting left unset) passes, and every item
    of a list or tuple value is checked (``rl.hidden_sizes[0]=0 must be >= 1``)."""
    for name, rule in rules.items():
        rule, hint = (rule, "") if isinstance(rule, str) else rule
        value = getattr(config, name)
        items: Iterable[tuple[str, Any]] = (
            ((f"{name}[{i}]", v) for i, v in enumerate(value)) if isinstance(value, (list, tuple)) else ((name, value),))
        for key, v in items:
            if v is not None and not _holds(v, rule):
                shown = f"must be in {rule}" if _INTERVAL.match(rule) else f"must be {rule}"
                raise ConfigError(f"{section}.{key}={v!r} {shown}" + (f" ({hint})" if hint else ""))


@dataclass
class RunConfig:
    """Settings every pipeline shares."""

    seed: int = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    run_dir: str | None = None  # default: <runs_root>/<pipeline>-<timestamp>
    runs_root: str = "runs"
    address: str | None = None  # Ray cluster address; default RAY_ADDRESS or an embedded instance
    num_cpus: int | None = None  # CPUs for the embedded instance (default: all)
    num_gpus: int | None = None  # GPUs for the embedded instance (default: all visible)
    keep_checkpoints: int = 3
    tensorboard: bool = True

    def validate(self) -> None:
        everything = "or null for everything the machine has"
        check_ranges("run", self, {"seed": (">= 0", "numpy takes no negative seed"), "keep_checkpoints": ">= 1",
                                   "num_cpus": (">= 1", everything), "num_gpus": (">= 0", everything)})
        dev = (self.device or "").lower()
        if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"run.device={self.device!r}: use auto, cpu, cuda, cuda:N or mps")
