"""One directory per run: resolved config, metrics, TensorBoard events, checkpoints, plots.

    runs/<pipeline>-<YYYYmmdd-HHMMSS>/
        config.yaml      the resolved config (re-runnable with --config)
        env.json         seed, git commit, library versions, device, host
        metrics.jsonl    one JSON object per log step
        tb/              TensorBoard events
        checkpoints/     step_*/ (see cluster.checkpoint)
        plots/           PNG plots
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cluster import checkpoint as ckpt_io
from cluster.errors import DivergedError, ReinforgeError

TRACKED_LIBRARIES = ("torch", "ray", "transformers", "trl", "peft", "datasets", "gymnasium", "ale-py", "numpy")


def library_versions(names: tuple[str, ...] = TRACKED_LIBRARIES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).resolve().parent.parent,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def create_default_run_dir(pipeline: str, root: str | os.PathLike = "runs") -> Path:
    """Create ``<root>/<pipeline>-<timestamp>`` atomically: ``mkdir`` without ``exist_ok`` fails
    for the second of two runs started in the same second, which then takes ``-2``, ``-3``..."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    Path(root).mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = Path(root) / (f"{pipeline}-{stamp}" if n == 1 else f"{pipeline}-{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        try:
            v = v.item()
        except (ValueError, RuntimeError):
            return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


GUARDED_METRICS = ("loss", "grad_norm")  # a metric whose name has one of these must stay finite


def _guarded(name: str) -> bool:
    """Training-step metrics only: not evaluations, not a stage's summary row (``final/...``)."""
    leaf = name.rsplit("/", 1)[-1]
    return (any(g in leaf for g in GUARDED_METRICS) and not leaf.startswith(("eval", "heldout"))
            and not name.startswith("final/"))


def _non_finite(obj: Any, path: str = "") -> str | None:
    """The path of the first floating tensor or array holding NaN/inf in a nested structure."""
    import torch

    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel() and not bool(torch.isfinite(obj).all()):
            return path or "a tensor"
        return None
    if isinstance(obj, np.ndarray):
        if np.issubdtype(obj.dtype, np.floating) and obj.size and not np.isfinite(obj).all():
            return path or "an array"
        return None
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        found = _non_finite(v, f"{path}.{k}" if path else str(k))
        if found is not None:
            return found
    return None


class RunDir:
    """A run directory and its writers. Pass it to a training loop; it logs and checkpoints.

    Listeners (``add_listener``) receive every logged metrics dict; Tune uses that to report.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        config: dict[str, Any] | None = None,
        seed: int | None = None,
        device: str | None = None,
        tensorboard: bool = True,
        resume: bool = False,
    ):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ReinforgeError(f"run dir {self.path} exists and is not a directory; choose another --run-dir")
        for sub in ("checkpoints", "plots"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._checkpoint_listeners: list[Callable[[Path, dict[str, Any]], None]] = []
        self._tb = None
        self._tensorboard = tensorboard
        self._latest_cache: tuple[tuple[str, int], Path | None] | None = None
        self._last_log_step: int | None = None
        if resume:
            self._keep_history()
            self._truncate_metrics_after_checkpoint()
        self._metrics = open(self.path / "metrics.jsonl", "a" if resume else "w")
        if config is not None:
            self.write_config(config)
        self.write_env(seed=seed, device=device)

    def _keep_history(self) -> None:
        """On resume, keep the earlier run's config.yaml and env.json (its command line, seeds and
        versions) under ``history/`` before they are rewritten for this session."""
        old = [n for n in ("config.yaml", "env.json") if (self.path / n).is_file()]
        if not old:
            return
        hist = self.path / "history"
        hist.mkdir(exist_ok=True)
        k = 1
        while any((hist / f"{n.split('.')[0]}-{k}.{n.split('.')[1]}").exists() for n in old):
            k += 1
        for n in old:
            stem, ext = n.split(".")
            (hist / f"{stem}-{k}.{ext}").write_bytes((self.path / n).read_bytes())

    def _truncate_metrics_after_checkpoint(self) -> None:
        """Rows the interrupted run logged after its last checkpoint are dropped, so the resumed
        run's rows for the same steps do not double the curves."""
        latest = self.latest_checkpoint()
        path = self.path / "metrics.jsonl"
        if latest is None or not path.is_file():
            return
        # the step of the last row logged before that checkpoint was saved (save_checkpoint
        # records it: a pipeline's checkpoint step may count other units than its rows' step)
        step = json.loads((latest / ckpt_io.MANIFEST).read_text()).get("metadata", {}).get("log_step")
        if not isinstance(step, int):
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                row_step = int(json.loads(line).get("step", 0))
            except (ValueError, AttributeError, TypeError):
                continue  # a half-written last line of a killed run
            if row_step <= step:
                kept.append(line)
        if len(kept) != len(lines):
            self._atomic_write("metrics.jsonl", "".join(kept))

    # --- files -----------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def write_config(self, config: dict[str, Any]) -> Path:
        return self._atomic_write("config.yaml", yaml.safe_dump(_jsonable(config), sort_keys=False))

    def write_env(self, seed: int | None = None, device: str | None = None, **extra: Any) -> Path:
        env = {
            "seed": seed,
            "device": device,
            "git_commit": git_commit(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "host": socket.gethostname(),
            "started": datetime.now().isoformat(timespec="seconds"),
            "argv": sys.argv,
            "versions": library_versions(),
            **extra,
        }
        return self._atomic_write("env.json", json.dumps(_jsonable(env), indent=2))

    def _atomic_write(self, name: str, text: str) -> Path:
        final = self.path / name
        tmp = self.path / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, final)
        return final

    # --- metrics ---------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.append(fn)

    def add_checkpoint_listener(self, fn: Callable[[Path, dict[str, Any]], None]) -> None:
        self._checkpoint_listeners.append(fn)

    def log(self, metrics: dict[str, Any], step: int) -> dict[str, Any]:
        for k, v in metrics.items():  # a diverged update stops the run here, one line naming it
            if _guarded(k) and isinstance(v, float) and not math.isfinite(v):
                raise DivergedError(f"training diverged at step {int(step)}: {k} is {v}; lower the learning "
                                    "rate (or raise max_grad_norm clipping) and resume from the last checkpoint")
        row = {"step": int(step), "time": round(time.time(), 3), **_jsonable(metrics)}
        self._last_log_step = int(step)
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        tb = self._writer()
        if tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    tb.add_scalar(k, v, int(step))
        for fn in self._listeners:
            fn(row)
        return row

    def _writer(self):
        if not self._tensorboard:
            return None
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.path / "tb"))
        return self._tb

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    # --- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, step: int, objects: dict[str, Any], keep: int | None = 3, **metadata: Any) -> Path:
        bad = _non_finite(objects)
        if bad is not None:
            raise DivergedError(f"training diverged at step {int(step)}: {bad} holds NaN or infinite values; "
                                "not saving that checkpoint (lower the learning rate and resume from the last one)")
        if self._last_log_step is not None:
            metadata.setdefault("log_step", self._last_log_step)
        path = ckpt_io.save_checkpoint(self.checkpoints, step, objects, keep=keep, metadata=metadata)
        for fn in self._checkpoint_listeners:
            fn(path, {"step": step, **metadata})
        return path

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint that is whole (a damaged newer one is skipped with a warning)."""
        found = ckpt_io.list_checkpoints(self.checkpoints)
        if not found:
            return None
        key = (str(found[-1]), (found[-1] / ckpt_io.MANIFEST).stat().st_mtime_ns)
        if self._latest_cache is None or self._latest_cache[0] != key:
            self._latest_cache = (key, ckpt_io.latest_valid_checkpoint(self.checkpoints))
        return self._latest_cache[1]

    # --- plots -----------------------------------------------------------------------------
    def plot(self, name: str, y: list[str] | str, x: str = "step", title: str | None = None) -> Path | None:
        from cluster.plots import plot_metrics

        return plot_metrics(self.read_metrics(), self.plots / f"{name}.png", y=y, x=x, title=title)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if not self._metrics.closed:
            self._metrics.close()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write: skip it, keep the rest
    return rows
