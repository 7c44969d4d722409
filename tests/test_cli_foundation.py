"""The CLI as a user types it: help, config show, refusals, the plumbing run, bad addresses."""

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
    for cmd in ("demo", "rl", "rlhf", "gen", "tune", "submit", "jobs", "bench", "config"):
        assert cmd in res.stdout
    # --help must not import torch or ray (the budget is 1 s; allow slack for a loaded CI box)
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from pipelines.cli import build_parser; build_parser();"
         "print(any(m in sys.modules for m in ('torch', 'ray', 'transformers')))"],
        capture_output=True, text=True, cwd=ROOT)
    assert probe.stdout.strip() == "False", probe.stderr
    assert elapsed < 5


def test_config_show_prints_resolved_yaml():
    res = run_cli("config", "show", "demo", "--set", "demo.steps=3", "--set", "run.seed=9")
    assert res.returncode == 0, res.stderr
    data = yaml.safe_load(res.stdout)
    assert data["pipeline"] == "demo" and data["demo"]["steps"] == 3 and data["run"]["seed"] == 9
    assert "keep_checkpoints" in data["run"]
    listing = run_cli("config", "list")
    assert listing.returncode == 0 and "demo" in listing.stdout


def test_bad_input_is_one_line_exit_2():
    cases = [
        (("config", "show", "demo", "--set", "demo.stps=3"), "unknown key 'demo.stps'; did you mean 'demo.steps'?"),
        (("config", "show", "demo", "--set", "demo.steps=abc"), "expected int, got 'abc'"),
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


def test_plumbing_run_writes_a_complete_run_dir(cli, tmp_path):
    run_dir = tmp_path / "plumb"
    res = cli("demo", "--only", "plumbing", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "report:" in res.stdout and "plots:" in res.stdout
    run_dir = tmp_path / "plumbing"
    for name in ("config.yaml", "env.json", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "plots" / "pi_estimate.png").is_file()
    assert list((run_dir / "tb").iterdir())
    assert list((run_dir / "checkpoints").glob("step_*/manifest.json"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and abs(rows[-1]["pi_estimate"] - 3.1416) < 0.05
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["plumbing"]["metrics"]["distinct_worker_seeds"] == 2


def test_unreachable_address_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    res = run_cli("demo", "--only", "plumbing", "--address", f"127.0.0.1:{port}")
    assert time.time() - t0 < 30
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach Ray cluster at 127.0.0.1:{port}" in lines[0], res.stderr
