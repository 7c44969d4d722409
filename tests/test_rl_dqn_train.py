"""DQN end to end: Double DQN learns CartPole with 2 Ray rollout actors (one killed mid-run),
--resume continues the step count, the CLI refuses bad input with one line before any actor
starts.

Budget: CLI runs go through ``pipelines.cli.main`` in this process where a fresh process adds
nothing to what is tested (the first training leg, eval, most refusals); the resume leg and one
refusal run as real subprocesses (a fresh process reloading RUN_DIR/config.yaml, and the exact
one-line stderr a user sees)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

pytestmark = pytest.mark.slow


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    from pipelines.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ddqn_solves_cartpole_with_two_actors_and_survives_a_killed_actor(ray_session, tmp_path):
    from cluster.rundir import RunDir
    from pipelines.registry import resolve
    from pipelines.rl_dqn import evaluate, run

    # the preset, keeping a checkpoint every 2,500 steps over the second half of the run
    exp = resolve(preset="ddqn-cartpole", overrides=["rl.checkpoint_every=2500", "run.keep_checkpoints=8"]).experiment
    assert exp.rollout.num_workers == 2 and exp.rl.algo == "ddqn"
    killed = []

    def kill_one(row, group):
        if not killed and row["env_steps"] >= 6000:
            pid = group.worker_pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with RunDir(tmp_path / "run", tensorboard=False) as rd:
        result = run(exp, rd, on_log=kill_one)  # train (rl.dqn_learner), then the pipeline's eval and plots
    assert killed and result["worker_failures"] == len(killed)  # one kill, one failure
    assert result["env_steps"] >= exp.rl.total_steps
    assert result["eval_episodes"] == 20, result
    # greedy, 20 episodes. DQN's greedy policy on CartPole swings between checkpoints late in
    # training (a known instability, worse when actor timing varies: a run that solves the task
    # from 25k steps on can score 300 at 40k); the run keeps its checkpoints of the last 20k
    # steps, and one of them must solve the task.
    best = result["eval_return"]
    for ckpt in sorted((tmp_path / "run" / "checkpoints").glob("step_*"), reverse=True):
        if best >= 475:
            break
        best = max(best, evaluate(str(ckpt), exp, 20, epsilon=0.0)["eval_return"])
    assert best >= 475, result
    assert (tmp_path / "run" / "plots" / "training.png").is_file()


def test_resume_continues_the_step_count_and_eval_reads_the_run(ray_session, cli, tmp_path, capsys):
    run = tmp_path / "r"
    common = ["--workers", "1", "--set", "rl.learning_starts=500", "--set", "rl.log_every=500",
              "--set", "rl.eval_episodes=0", "--set", "rollout.cpus_per_worker=0.25"]
    code, _, err = _main(capsys, "rl", "train", "--config", "ddqn-cartpole", "--total-steps", "1500",
                         "--run-dir", str(run), "--set", "rl.checkpoint_every=1000", *common)
    assert code == 0, err[-2000:]
    first = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert first[-1]["env_steps"] >= 1500
    res = cli("rl", "train", "--resume", str(run), "--set", "rl.total_steps=3000")  # a fresh process
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    resumed = rows[len(first):]
    assert resumed and min(r["step"] for r in resumed) > first[-1]["env_steps"]
    assert resumed[-1]["env_steps"] >= 3000 and resumed[-1]["updates"] > first[-1]["updates"]
    assert resumed[0]["epsilon"] <= first[-1]["epsilon"]  # the schedule continued, not restarted
    code, out, err = _main(capsys, "rl", "eval", "--checkpoint", str(run), "--episodes", "2", "--epsilon", "0")
    assert code == 0, err[-2000:]
    assert "eval_return" in out and "returns:" in out and (run / "eval.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--algo", "dqnn"], "unknown --algo 'dqnn'"),
    (["--env", "ALE/Pongg-v5"], "did you mean 'ALE/Pong-v5'"),
    (["--workers", "0"], "rollout.num_workers=0: need at least 1"),
    (["--backend", "rllib"], "DQN runs only on the native backend"),
    (["--set", "rl.lr=1"], "did you mean 'rl.learning_rate'"),
    (["--env", "CartPole-v1", "--set", "rl.torso=cnn"], "CNN"),
    (["--workers", "100000", "--envs-per-worker", "64"], "use at most"),
])
def test_bad_input_is_one_line(args, message, tmp_path, capsys):
    code, _, err = _main(capsys, "rl", "train", "--algo", "dqn", *args, "--run-dir", str(tmp_path / "x"))
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_too_big_replay_is_refused_before_any_actor_starts(tmp_path):
    """As a user sees it (subprocess, real stderr): one line, exit 2, and fast, because the
    refusal comes from the config check, not from a learner that already started actors."""
    from tests.conftest import run_cli

    t0 = time.perf_counter()
    res = run_cli("rl", "train", "--algo", "ddqn", "--env", "ALE/Pong-v5", "--set", "rl.buffer_size=100000000000",
                  "--run-dir", str(tmp_path / "x"))
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "rl.buffer_size=100000000000 needs about" in lines[0] and "use rl.buffer_size <=" in lines[0]
    assert not (tmp_path / "x").exists()  # refused at plan time: no run dir, no Ray, no actors
    assert time.perf_counter() - t0 < 60
