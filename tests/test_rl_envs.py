"""Atari preprocessing on a real ALE game: shapes, dtypes, zero-padded stacks, max-pool, life
loss, reward clipping with the true score kept; plus the torso factory and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.errors import ReinforgeError
from rl.envs import EnvConfig, make_env, make_vector_env, rom_name


def test_rom_names():
    assert rom_name("ALE/Pong-v5") == "pong" and rom_name("ALE/SpaceInvaders-v5") == "space_invaders"


@pytest.mark.parametrize("backend", ["ale", "gymnasium"])
def test_vector_env_shapes_dtypes_and_zero_padded_stack(backend):
    env = make_vector_env(EnvConfig(id="ALE/Pong-v5", vector_backend=backend), 2, seed=0)
    obs = env.reset()
    assert env.backend == backend and obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    assert (obs[:, :3] == 0).all() and obs[:, 3].any()  # zero padding before the first frame
    nxt, r, term, trunc, info = env.step(np.zeros(2, np.int64))
    assert np.array_equal(nxt[:, :3], obs[:, 1:])  # the stack shifts by one frame per step
    assert r.dtype == np.float32 and term.dtype == bool and info["final_obs"].shape == obs.shape
    env.close()


def test_max_pool_matches_between_ale_vector_env_and_gymnasium_wrappers():
    """Both paths max-pool the last two frames of each skip and resize to 84x84; with no random
    no-ops and the same actions their frames agree up to resize rounding."""
    cfg = dict(id="ALE/Breakout-v5", noop_max=0, fire_reset=False)
    a = make_vector_env(EnvConfig(**cfg, vector_backend="ale"), 1, seed=0, training=False)
    b = make_env(EnvConfig(**cfg), seed=0, training=False)
    oa, (ob, _) = a.reset(), b.reset(seed=0)
    for t in range(30):
        act = [1, 3, 3, 2, 0][t % 5]
        oa, *_ = a.step(np.array([act]))
        ob, *_ = b.step(act)
    diff = np.abs(oa[0, -1].astype(int) - np.asarray(ob)[-1].astype(int))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 8
    a.close(), b.close()


def test_life_loss_terminates_without_ending_the_game_and_true_score_is_kept():
    env = make_vector_env(EnvConfig(id="ALE/Breakout-v5"), 2, seed=3)
    env.reset()
    rng = np.random.default_rng(0)
    life_losses = games = 0
    for _ in range(3000):
        obs, r, term, trunc, info = env.step(rng.integers(0, 4, 2))
        assert set(np.unique(r)) <= {-1.0, 0.0, 1.0}
        assert np.array_equal(r, np.sign(info["raw_reward"]))
        life_losses += int((term & ~info["game_over"]).sum())
        games += int(info["game_over"].sum())
        for e in np.flatnonzero(info["game_over"]):
            assert info["game_length"][e] > 0 and info["game_return"][e] >= 0
        if games >= 1 and life_losses >= 4:
            break
    assert life_losses >= 4 and games >= 1  # Breakout: 5 lives per game
    env.close()


def test_cartpole_and_refusals():
    env = make_vector_env(EnvConfig(id="CartPole-v1"), 3, seed=0)
    obs = env.reset()
    assert obs.shape == (3, 4) and env.frame_stack == 1
    env.close()
    with pytest.raises(ReinforgeError, match="unknown env id 'ALE/Pongg-v5'; did you mean 'ALE/Pong-v5'"):
        make_vector_env(EnvConfig(id="ALE/Pongg-v5"), 1, seed=0)


def test_torsos_and_cnn_refuses_vector_observations(tmp_path):
    import gymnasium as gym
    import torch
    from safetensors.torch import save_file

    from rl.networks import MLP, NatureCNN, QNetwork, load_torso, make_torso

    img = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    vec = gym.spaces.Box(-1, 1, (4,), np.float32)
    cnn = make_torso(img)
    assert isinstance(cnn, NatureCNN) and cnn(torch.zeros(2, 4, 84, 84, dtype=torch.uint8)).shape == (2, 512)
    assert isinstance(make_torso(vec), MLP)
    with pytest.raises(ReinforgeError, match=r"Nature CNN needs image observations .* got shape \(4,\)"):
        make_torso(vec, "cnn")
    q = QNetwork(make_torso(vec), 3, dueling=True)
    out = q(torch.randn(5, 4))
    assert out.shape == (5, 3)
    (tmp_path / "encoder").mkdir()
    ref = NatureCNN()
    save_file(ref.state_dict(), str(tmp_path / "encoder" / "torso.safetensors"))
    fresh = load_torso(NatureCNN(), tmp_path)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_continuous_actions_refused_before_any_actor_starts():
    import time

    from conftest import run_cli

    for algo in ("ppo", "ddqn"):
        t0 = time.time()
        res = run_cli("rl", "train", "--algo", algo, "--env", "Pendulum-v1", "--total-steps", "100")
        assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
        assert "needs discrete actions but Pendulum-v1 has Box actions" in res.stderr
        assert time.time() - t0 < 30
