"""The CLI as a user types it: help, config show, refusals, a complete run dir, bad addresses."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import yaml

from conftest import ROOT, run_cli


def test_help_is_fast_and_lists_commands():
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    elapsed = time.time() - t0
    assert res.returncode == 0
    for cmd in ("demo", "run", "rl", "rlhf", "gen", "tune", "submit", "jobs", "bench", "config"):
        assert cmd in res.stdout
    # --help must not import torch or ray (the budget is 1 s; allow slack for a loaded CI box)
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from pipelines.cli import build_parser; build_parser();"
         "print(any(m in sys.modules for m in ('torch', 'ray', 'transformers')))"],
        capture_output=True, text=True, cwd=ROOT)
    assert probe.stdout.strip() == "False", probe.stderr
    assert elapsed < 5


def test_config_show_prints_resolved_yaml():
    res = run_cli("config", "show", "toy", "--set", "toy.steps=3", "--set", "run.seed=9")
    assert res.returncode == 0, res.stderr
    data = yaml.safe_load(res.stdout)
    assert data["pipeline"] == "toy" and data["toy"]["steps"] == 3 and data["run"]["seed"] == 9
    assert "keep_checkpoints" in data["run"]
    listing = run_cli("config", "list")
    assert listing.returncode == 0 and "ppo-cartpole" in listing.stdout and "rl-ac" in listing.stdout


def test_bad_input_is_one_line_exit_2():
    cases = [
        (("config", "show", "toy", "--set", "toy.stps=3"), "unknown key 'toy.stps'; did you mean 'toy.steps'?"),
        (("config", "show", "toy", "--set", "toy.steps=abc"), "expected int, got 'abc'"),
        (("config", "show", "ppo-cartpole", "--set", "rl.epochs=3"), "'rl.epochs': it was renamed to 'rl.update_epochs'"),
        (("run",), "needs a CONFIG"),
        (("config", "show", "nosuchpreset"), "unknown preset 'nosuchpreset'"),
        (("config", "show", "/nonexistent/x.yaml"), "config file /nonexistent/x.yaml not found"),
        (("nosuchcommand",), "invalid choice"),
    ]
    for args, message in cases:
        res = run_cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, res.stderr)
        assert "Traceback" not in res.stderr


def test_run_writes_a_complete_run_dir(cli, tmp_path):
    run_dir = tmp_path / "toy"
    res = cli("run", "toy", "--set", "toy.steps=10", "--set", "toy.checkpoint_every=5", "--set", "run.tensorboard=true",
              "--run-dir", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert f"run dir: {run_dir}" in res.stdout
    for name in ("config.yaml", "env.json", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["toy"]["steps"] == 10
    assert list((run_dir / "tb").iterdir())
    assert len(list((run_dir / "checkpoints").glob("step_*/manifest.json"))) == 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11)) and rows[-1]["loss"] < rows[0]["loss"]


def test_unreachable_address_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    res = run_cli("run", "ppo-cartpole", "--address", f"127.0.0.1:{port}")
    assert time.time() - t0 < 30
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach Ray cluster at 127.0.0.1:{port}" in lines[0], res.stderr


def test_refusals_before_ray_starts_are_one_line_exit_2():
    for args, message in [
        (("run", "ppo-cartpole", "--device", "cuda"), "no CUDA GPU is visible"),
        (("run", "ppo-cartpole", "--address", "http://[::1"), "cannot parse Ray address"),
        (("run", "toy", "--set", "run.num_cpus=-2"), "run.num_cpus=-2 must be >= 1"),
        (("run", "toy", "--set", "toy.learning_rate=nan"), "must be a finite number"),
    ]:
        t0 = time.time()
        res = run_cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr.strip().count("\n") == 0 and message in res.stderr, (args, res.stderr)
        assert time.time() - t0 < 30  # no Ray instance was started to find this out


def test_one_line_strips_colour_codes():
    from pipelines.cli import one_line

    assert one_line("\x1b[36mray::Worker\x1b[39m failed\n  more") == "ray::Worker failed"
