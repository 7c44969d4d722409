"""``run:``, the config section every pipeline shares (seed, device, run dir, Ray address).

It lives in ``cluster/`` (the runtime) so that every pipeline module can import it without
importing the registry that lists those pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.errors import ConfigError


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
        if self.keep_checkpoints < 1:
            raise ConfigError("run.keep_checkpoints must be >= 1")
