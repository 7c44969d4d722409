"""The thread handover between rollout workers and the learner: a synchronous A2C/PPO update
gets every core (its workers wait for the new weights), an overlapped one only the cores the
running workers do not hold; the caller's torch thread count comes back afterwards; and the
one-step-off (overlapped) variant learns CartPole to the on-policy bar."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from rl.threads import all_cores, free_cores, learner_threads


def test_free_cores_counts_only_running_workers():
    n = os.cpu_count() or 1
    assert all_cores() == n
    assert free_cores(0, 1.0) == n  # every worker waits for the learner: every core is free
    assert free_cores(1, 0.5) == max(1, n - 1)  # a fraction of a core counts whole
    assert free_cores(64, 1.0) == 1  # never fewer than one


def test_learner_threads_restores_the_callers_setting_even_on_error():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(RuntimeError):
            with learner_threads(3):
                assert torch.get_num_threads() == 3
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 1
        with learner_threads(None):  # None: leave it as it is
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("overlap", [False, True])
def test_the_update_gets_the_free_cores_and_the_caller_gets_its_threads_back(ray_session, tmp_path, monkeypatch,
                                                                           overlap):
    import rl.ac_train
    from pipelines.registry import execute, resolve

    seen: list[int] = []
    original = rl.ac_train.update

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(rl.ac_train, "update", spy)
    exp = resolve(preset="ppo-cartpole", overrides=["rl.total_steps=3072", "rl.eval_episodes=0",
                                                     f"rl.overlap_rollouts={str(overlap).lower()}"],
                  extra={"run": {"run_dir": str(tmp_path / "run")}})
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, result = execute(exp)
        assert torch.get_num_threads() == 1  # the caller's setting is back
    finally:
        torch.set_num_threads(before)
    assert result["env_steps"] >= 3072 and len(seen) == 3
    roll = exp.experiment.rollout
    want = free_cores(roll.num_workers, roll.cpus_per_worker) if overlap else all_cores()
    assert set(seen) == {want}, (seen, want)


@pytest.mark.slow
def test_one_step_off_ppo_learns_cartpole_to_the_on_policy_bar(cli, tmp_path):
    run = tmp_path / "overlap"
    res = cli("rl", "train", "--config", "ppo-cartpole", "--set", "rl.overlap_rollouts=true", "--run-dir", str(run))
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    final_eval = [r for r in rows if "eval_return" in r][-1]
    # the on-policy test's bar (tests/test_rl_ac.py): greedy 475 of 500 within 50k env steps
    assert final_eval["eval_return"] >= 475, final_eval
    assert not any(math.isnan(r.get("policy_loss", 0.0)) for r in rows)
