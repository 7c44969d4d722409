"""Fault tolerance of RL training: a rollout actor killed with ``ray.kill`` is restarted by Ray
(``rollout.max_restarts``) while the learner carries on; a driver killed with SIGKILL is
continued with ``--resume``, losing only the work since its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

TINY = ["rl.total_steps=2000", "rl.learning_starts=250", "rl.log_every=250", "rl.eval_episodes=0",
        "rl.checkpoint_every=1000", "rl.replay_ratio=0.25", "rollout.cpus_per_worker=0.25"]


def test_ray_kill_of_a_rollout_actor_mid_training(ray_session, tmp_path):
    import ray

    from cluster.rundir import RunDir
    from pipelines.registry import resolve
    from rl.dqn_learner import train

    # long enough after the kill for Ray's restart (tens of seconds on a loaded machine) to be
    # seen from inside the run
    exp = resolve(preset="ddqn-cartpole", overrides=[*TINY, "rl.total_steps=6000"]).experiment
    assert exp.rollout.max_restarts >= 1
    seen: dict[str, list] = {"killed": [], "after": []}

    def kill_one(row, group):
        if not seen["killed"] and row["env_steps"] >= 750:
            seen["killed"] = group.worker_pids()
            ray.kill(group.workers[0], no_restart=False)  # Ray restarts it (max_restarts)
        elif seen["killed"] and not seen["after"]:
            try:
                seen["after"] = group.worker_pids()
            except ray.exceptions.ActorUnavailableError:
                pass  # still restarting: ask again at the next log row

    with RunDir(tmp_path / "run", tensorboard=False) as rd:
        result = train(exp.env, exp.rollout, exp.rl, rd, seed=exp.run.seed, on_log=kill_one)
    assert seen["killed"], "never reached the kill point"
    assert result["env_steps"] >= 2000  # the learner carried on to the end
    # worker 0 is a new process (restarted by Ray); worker 1 was never touched
    assert seen["after"][0] != seen["killed"][0] and seen["after"][1] == seen["killed"][1]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["env_steps"] >= 2000 and rd.latest_checkpoint() is not None


def test_killed_driver_resumes_from_its_last_checkpoint(ray_session, tmp_path):
    run = tmp_path / "r"
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": str(ROOT)}
    sets = [a for s in TINY for a in ("--set", s)]
    cmd = [sys.executable, "-m", "pipelines.cli", "rl", "train", "--config", "ddqn-cartpole", "--run-dir", str(run),
           *sets, "--set", "rl.checkpoint_every=500"]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.time()
        while not list((run / "checkpoints").glob("step_*/manifest.json")):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            assert time.time() - t0 < 180, "no checkpoint within 180 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)  # the driver dies without any chance to clean up
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    ckpt_step = max(int(p.parent.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*/manifest.json"))
    assert ckpt_step < 2000
    # the resume drops the rows the killed driver logged after that checkpoint (RunDir
    # truncates them), so the resumed run's rows start after the rows up to its step
    before = 0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            before += int(json.loads(line).get("step", 0)) <= ckpt_step
        except ValueError:
            pass  # a half-written last line
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "rl", "train", "--resume", str(run)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in rows[before:] if "env_steps" in r]
    assert resumed and resumed[-1]["env_steps"] >= 2000
    first = resumed[0]["env_steps"]
    assert ckpt_step < first <= ckpt_step + 250 + 64  # continued at the checkpoint, not from zero
