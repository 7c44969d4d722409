"""A SIGKILL of the driver in the middle of an RLHF PPO run, and its ``--resume``: the run
continues from its last checkpoint to the planned number of iterations, says it resumed, and
its metrics hold every PPO iteration exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

MELODY_SIZE = "data.melody.max_songs"  # the melody data set's size key (was data.max_songs)
DATA = ["--set", f"{MELODY_SIZE}=30"]
TINY_SFT = ["--set", "sft.max_steps=20", "--set", "sft.n_embd=32", "--set", "sft.logging_steps=10"]
ITERATIONS = 6
TINY_PPO = ["--set", "ppo.toy_reward_token=p60", "--set", f"ppo.iterations={ITERATIONS}",
            "--set", "ppo.checkpoint_every=2", "--set", "ppo.batch_size=8", "--set", "ppo.minibatch_size=4",
            "--set", "ppo.max_new_tokens=16", "--set", "ppo.eval_every=3", "--set", "ppo.eval_prompts=4",
            "--set", "run.tensorboard=false"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return {"REINFORGE_CACHE": str(tmp_path_factory.mktemp("rlhf-cache"))}


@pytest.fixture(scope="module")
def sft_run(ray_session, cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fault-rlhf") / "sft"
    res = run_cli("rlhf", "sft", "--run-dir", str(out), *TINY_SFT, *DATA, env=cache, ray_address=ray_session)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def _checkpoints(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("step_*/manifest.json"))


def test_killed_ppo_driver_resumes_to_the_planned_iterations(sft_run, ray_session, cache, tmp_path):
    run = tmp_path / "ppo"
    env = {**os.environ, **cache, "RAY_ADDRESS": ray_session}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "rlhf", "ppo", "--sft", str(sft_run),
                             "--run-dir", str(run), *TINY_PPO, *DATA],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and not _checkpoints(run):
            time.sleep(0.2)
        running = proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started in its group
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    assert running, f"the run ended before it was killed: {err[-2000:]}"
    saved = _checkpoints(run)
    assert saved and not (run / "result.json").exists()  # killed in the middle: a checkpoint, no result
    killed_at = int(saved[-1].parent.name.removeprefix("step_"))
    assert 0 < killed_at < ITERATIONS

    res = run_cli("rlhf", "ppo", "--resume", str(run), env=cache, ray_address=ray_session)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed PPO at iteration" in res.stdout + res.stderr
    result = json.loads((run / "result.json").read_text())
    assert result["iterations"] == ITERATIONS
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    iteration_steps = [r["step"] for r in rows if "proxy_reward" in r]  # one row per PPO iteration
    assert iteration_steps == list(range(1, ITERATIONS + 1)), iteration_steps
