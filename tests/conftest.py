"""Shared fixtures. One local Ray instance per test session (``ray.init(num_cpus=2)``); CLI
tests run in subprocesses that join it through RAY_ADDRESS instead of starting their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Ray workers inherit this environment: let them import the project and the test modules
# (actor classes defined in a test file are pickled by reference to that module).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), str(ROOT / "tests")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)


@pytest.fixture(scope="session")
def ray_session():
    """The session's one local Ray instance; yields its GCS address."""
    import ray

    from cluster.runtime import connect

    os.environ.pop("RAY_ADDRESS", None)
    connect(num_cpus=2)
    address = ray.get_runtime_context().gcs_address
    yield address
    ray.shutdown()


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None,
            ray_address: str | None = None) -> subprocess.CompletedProcess:
    """Run ``reinforge ARGS`` as a user would, in a subprocess. With ``ray_address`` it joins
    the test session's Ray instance rather than starting its own."""
    full_env = {**os.environ, **(env or {})}
    if ray_address:
        full_env["RAY_ADDRESS"] = ray_address
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=full_env,
    )


@pytest.fixture
def cli(ray_session):
    """``cli('rl', 'train', ...)`` -> CompletedProcess, joined to the session's Ray instance."""

    def _run(*args: str, **kw):
        kw.setdefault("ray_address", ray_session)
        return run_cli(*args, **kw)

    return _run


def run_cli_inprocess(*args: str) -> subprocess.CompletedProcess:
    """``reinforge ARGS`` through the CLI's own entry point (``pipelines.cli.main``) in this
    process: the same parsing, checks, one-line errors and exit status as the command, without
    a new interpreter importing torch, transformers and TRL again (several seconds a call).
    Ray stages join the session's instance (``connect`` reuses a connected driver)."""
    import contextlib
    import io

    import torch

    from pipelines.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(args))
    finally:
        torch.set_num_threads(threads)  # stages set their own; later tests get the session's back
    return subprocess.CompletedProcess(["reinforge", *args], rc, out.getvalue(), err.getvalue())
