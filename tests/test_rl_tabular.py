"""Tabular RL (rl.tabular, the rl-tabular pipeline): value iteration, the Q-learning and SARSA
updates worked by hand, Q-learning reaching Q* on deterministic FrozenLake, the CLI, refusals."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from cluster.errors import ConfigError, ReinforgeError
from conftest import run_cli
from rl.tabular import (
    TabularEnvConfig,
    compare_to_optimal,
    decision_states,
    make_tabular_env,
    q_learning_update,
    sarsa_update,
    value_iteration,
)

# A 2-state MDP. State 0: action 0 stays (r 0), action 1 moves to state 1 (r 1). State 1:
# action 0 ends the episode with r 2; action 1 goes back to 0 or ends, each with p 0.5 (r 0).
TWO_STATES = {
    0: {0: [(1.0, 0, 0.0, False)], 1: [(1.0, 1, 1.0, False)]},
    1: {0: [(1.0, 1, 2.0, True)], 1: [(0.5, 0, 0.0, False), (0.5, 1, 0.0, True)]},
}


def test_value_iteration_on_a_two_state_mdp_by_hand():
    # gamma 0.9: V(1) = max(2, 0.5 * 0.9 * V(0)) = 2; Q(0,1) = 1 + 0.9 * 2 = 2.8 = V(0);
    # Q(0,0) = 0.9 * 2.8 = 2.52; Q(1,1) = 0.45 * 2.8 = 1.26
    q_star = value_iteration(TWO_STATES, 2, 2, gamma=0.9, tol=1e-12)
    np.testing.assert_allclose(q_star, [[2.52, 2.8], [2.0, 1.26]], atol=1e-9)
    assert q_star.argmax(axis=1).tolist() == [1, 0]  # move on, then take the sure 2


def test_q_learning_and_sarsa_updates_by_hand():
    q = np.array([[0.0, 0.0], [1.0, 3.0]])
    td = q_learning_update(q, s=0, a=0, r=1.0, s_next=1, terminated=False, alpha=0.5, gamma=0.9)
    assert td == pytest.approx(1 + 0.9 * 3)  # bootstraps on max_a' Q(1, a') = 3
    assert q[0, 0] == pytest.approx(0.5 * 3.7)
    q = np.array([[0.0, 0.0], [1.0, 3.0]])
    td = sarsa_update(q, s=0, a=0, r=1.0, s_next=1, a_next=0, terminated=False, alpha=0.5, gamma=0.9)
    assert td == pytest.approx(1 + 0.9 * 1)  # bootstraps on the action taken, Q(1, 0) = 1
    assert q[0, 0] == pytest.approx(0.95)
    q = np.array([[0.5, 0.0], [1.0, 3.0]])
    q_learning_update(q, 0, 0, 1.0, 1, terminated=True, alpha=0.5, gamma=0.9)
    sarsa_update(q, 0, 1, 1.0, 1, 1, terminated=True, alpha=0.5, gamma=0.9)
    assert q[0].tolist() == [0.75, 0.5]  # a terminal step's target is r alone


def test_decision_states_and_comparison_on_deterministic_frozenlake():
    env = make_tabular_env(TabularEnvConfig(id="FrozenLake-v1", is_slippery=False))
    u = env.unwrapped
    states = decision_states(u.P, u.initial_state_distrib, 4)
    # SFFF / FHFH / FFFH / HFFG: holes 5 7 11 12 and the goal 15 are never acted in
    assert states.tolist() == [0, 1, 2, 3, 4, 6, 8, 9, 10, 13, 14]
    q_star = value_iteration(u.P, 16, 4, gamma=0.9)
    assert q_star[14, 2] == pytest.approx(1.0) and q_star[0].max() == pytest.approx(0.9 ** 5)
    assert compare_to_optimal(q_star, q_star, states) == (0.0, 1.0)
    wrong = q_star.copy()
    wrong[14, 3] += 2.0  # 14 greedy "up" instead of "right"; off by 2
    q_error, agreement = compare_to_optimal(wrong, q_star, states)
    assert q_error == pytest.approx(2.0) and agreement == pytest.approx(10 / 11)
    env.close()


@pytest.mark.slow
def test_q_learning_reaches_value_iterations_q_star_on_deterministic_frozenlake(tmp_path):
    """The preset's Q table (30k env steps, about a second of training): on every state an episode can be in,
    its greedy action is optimal under Q* and every Q(s, a) is within 1e-3 of Q*(s, a)
    (measured: 1e-9 to 1e-7 on seeds 0-3; a step size of 0.5 with epsilon held at 0.2 visits every pair)."""
    from cluster.checkpoint import load_checkpoint
    from pipelines.registry import execute, resolve

    run = tmp_path / "ql"
    _, result = execute(resolve(preset="qlearning-frozenlake", extra={"run": {"run_dir": str(run)}}))
    env = gym.make("FrozenLake-v1", is_slippery=False)
    u = env.unwrapped
    q_star = value_iteration(u.P, 16, 4, gamma=0.95)
    states = decision_states(u.P, u.initial_state_distrib, 4)
    q = load_checkpoint(run)["q"]
    best = q_star[states].max(axis=1)
    assert np.all(q_star[states, q[states].argmax(axis=1)] >= best - 1e-9), "a greedy action is not optimal"
    assert np.max(np.abs(q[states] - q_star[states])) < 1e-3
    assert result["policy_agreement"] == 1.0 and result["q_error"] < 1e-3
    assert result["eval_return"] == 1.0  # the greedy policy reaches the goal every time
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["policy_agreement"] < 1.0 and rows[0]["q_error"] > 0.5  # it did have to learn
    env.close()


def test_cli_trains_qlearning_writes_its_run_dir_and_evaluates(tmp_path, capsys):
    from pipelines.cli import main

    run = tmp_path / "cli"
    res = run_cli("rl", "train", "--algo", "qlearning", "--config", "qlearning-frozenlake", "--total-steps", "5000",
                  "--run-dir", str(run))
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "q_error" in r]
    assert {"env_steps", "updates", "games", "episode_return", "episode_length", "env_steps_per_s", "epsilon",
            "q_error", "policy_agreement"} <= set(train_rows[-1])
    assert train_rows[-1]["env_steps"] >= 5000 and rows[-1]["eval_episodes"] == 20
    assert (run / "config.yaml").is_file() and list((run / "checkpoints").glob("step_*/*.safetensors"))
    assert {p.name for p in (run / "plots").glob("*.png")} == {"episode_return.png", "optimality.png"}
    assert main(["rl", "eval", "--checkpoint", str(run), "--episodes", "3"]) == 0
    out = json.loads((run / "eval.json").read_text())
    assert len(out["returns"]) == 3 and out["eval_return"] == 1.0
    capsys.readouterr()


@pytest.mark.parametrize(("argv", "needle"), [
    (["--algo", "qlearning", "--env", "CartPole-v1"], "need discrete states and actions"),
    (["--algo", "sarsa", "--env", "CliffWalking-v1", "--set", "env.map_name=8x8"], "does not take map_name"),
    (["--config", "qlearning-taxi", "--workers", "2"], "--workers: tabular"),
    (["--algo", "sarsa", "--config", "qlearning-taxi", "--set", "rl.learning_rate=1.5"], "rl.learning_rate=1.5"),
])
def test_bad_input_is_one_line_exit_2_before_anything_starts(tmp_path, capsys, argv, needle):
    from pipelines.cli import main

    run = tmp_path / "bad"
    assert main(["rl", "train", *argv, "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not run.exists()  # refused before the run dir was made


def test_an_unknown_tabular_algo_is_refused():
    from pipelines.registry import resolve

    with pytest.raises(ConfigError, match="not a tabular algorithm"):
        resolve(preset="qlearning-taxi", overrides=["rl.algo=dqn"])


def test_resume_continues_the_q_table_and_the_counters(tmp_path):
    from cluster.checkpoint import load_checkpoint
    from pipelines.registry import execute, resolve

    run = tmp_path / "resume"
    first = resolve(preset="qlearning-frozenlake", overrides=["rl.total_steps=2000", "rl.eval_episodes=0"],
                    extra={"run": {"run_dir": str(run), "tensorboard": False}})
    _, r1 = execute(first)
    q1 = load_checkpoint(run)["q"]
    again = resolve(config_file=str(run / "config.yaml"), overrides=["rl.total_steps=4000"],
                    extra={"run": {"run_dir": str(run), "tensorboard": False}})
    _, r2 = execute(again, resume=str(run))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "q_error" in x]
    steps = [r["env_steps"] for r in rows]
    assert steps == sorted(steps) and steps[0] < r1["env_steps"] < steps[-1]
    assert r2["games"] > r1["games"] and r2["env_steps"] >= 4000
    assert r2["q_error"] < r1["q_error"] and not np.array_equal(load_checkpoint(run)["q"], q1)
    with pytest.raises(ReinforgeError, match="already finished"):
        execute(resolve(config_file=str(run / "config.yaml"), extra={"run": {"run_dir": str(run)}}), resume=str(run))
