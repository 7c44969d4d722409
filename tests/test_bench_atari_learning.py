"""The Atari learning benchmark: bad input refused in one line, and --resume continues the
run's step counter (a tiny budget on Pong)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "bench_atari_learning.py"


def bench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize(("args", "needle"), [
    (["--game", "Pongg"], "unknown game 'Pongg'; did you mean 'Pong'?"),
    (["--steps", "0"], "budget must be positive"),
    (["--minutes", "0"], "budget must be positive"),
    (["--algo", "sac"], "unknown --algo 'sac'"),
])
def test_bad_input_is_one_line_with_exit_status_2(args, needle, tmp_path):
    res = bench(*args, "--out", str(tmp_path))
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr, res.stderr[-1000:]
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_resume_continues_the_step_counter(ray_session, tmp_path):
    first = bench("--game", "Pong", "--algo", "ppo", "--steps", "1024", "--eval-episodes", "0", "--out", str(tmp_path),
                  env={"RAY_ADDRESS": ray_session})
    assert first.returncode == 0, first.stderr[-2000:]
    again = bench("--game", "Pong", "--algo", "ppo", "--steps", "2048", "--eval-episodes", "0", "--resume",
                  "--out", str(tmp_path), env={"RAY_ADDRESS": ray_session})
    assert again.returncode == 0, again.stderr[-2000:]
    doc = json.loads((tmp_path / "atari_learning_ppo_pong.json").read_text())
    assert doc["summary"]["env_steps"] == 2048
    rows = [json.loads(x) for x in (tmp_path / "atari-ppo-pong-seed0" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["env_steps"] for r in rows if "policy_loss" in r]
    assert steps == [1024, 2048]  # the resumed run went on from the checkpoint, not from 0
    assert (tmp_path / "atari_learning_ppo_pong.png").is_file()
