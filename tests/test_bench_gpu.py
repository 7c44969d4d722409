"""The GPU check on a machine without a GPU: one line saying so and exit 0 (nothing run,
nothing written), or with --require-gpu one line and exit 2, from the script and from
``reinforge bench gpu``. CUDA is hidden from the subprocess, so these hold on a GPU machine too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"
NO_CUDA = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=NO_CUDA)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path):
    res = run(str(SCRIPT), "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(lines(res.stdout)) == 1 and "no GPU" in res.stdout, res.stdout
    assert not lines(res.stderr), res.stderr[-2000:]
    assert not list(tmp_path.iterdir())  # nothing run, nothing written


def test_require_gpu_without_one_is_one_line_and_exit_2(tmp_path):
    res = run(str(SCRIPT), "--require-gpu", "--out", str(tmp_path))
    assert res.returncode == 2, (res.stdout, res.stderr[-2000:])
    assert not lines(res.stdout)
    err = lines(res.stderr)
    assert len(err) == 1 and "no GPU" in err[0] and "--require-gpu" in err[0], res.stderr[-2000:]
    assert not list(tmp_path.iterdir())


def test_reinforge_bench_gpu_passes_require_gpu_on(tmp_path):
    res = run("-m", "pipelines.cli", "bench", "gpu", "--require-gpu", "--out", str(tmp_path))
    assert res.returncode == 2, (res.stdout, res.stderr[-2000:])
    assert any("no GPU" in ln and "--require-gpu" in ln for ln in lines(res.stderr)), res.stderr[-2000:]


def test_an_unknown_part_is_one_line_and_exit_2():
    res = run(str(SCRIPT), "--only", "dqn_learner,ppo_pongg")
    assert res.returncode == 2
    err = lines(res.stderr)
    assert len(err) == 1 and "ppo_pongg" in err[0] and "ppo_pong" in err[0].split("choose from")[1], res.stderr
