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
        for key in ("num_cpus", "num_gpus"):
            value = getattr(self, key)
            if value is not None and value < (1 if key == "num_cpus" else 0):
                raise ConfigError(f"run.{key}={value} must be {'>= 1' if key == 'num_cpus' else '>= 0'} "
                                  "(or null for everything the machine has)")
        dev = (self.device or "").lower()
        if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"run.device={self.device!r}: use auto, cpu, cuda, cuda:N or mps")
