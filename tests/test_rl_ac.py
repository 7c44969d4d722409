"""Actor-critic (A2C/PPO): network, update, refusals, learning on CartPole, CLI, resume, RLlib."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from cluster.errors import ConfigError, ReinforgeError
from rl.ac_rollout import flatten_rollouts
from rl.actor_critic import ACConfig, build_actor_critic, make_optimizer, update

CARTPOLE_OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
ATARI_OBS = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
SHARED_KEYS = {"env_steps", "updates", "games", "learning_rate", "episode_return", "episode_length",
               "explained_variance", "env_steps_per_s", "iteration_s", "policy_loss", "value_loss", "entropy",
               "approx_kl"}


def test_network_heads_shapes_and_near_uniform_initial_policy():
    torch.manual_seed(0)
    model = build_actor_critic(ATARI_OBS, gym.spaces.Discrete(6), ACConfig())
    assert model.critic_torso is None  # the CNN torso is shared by policy and value
    obs = np.random.default_rng(0).integers(0, 255, (3, 4, 84, 84), dtype=np.uint8)
    logits, value = model(torch.as_tensor(obs))
    assert logits.shape == (3, 6) and value.shape == (3,)
    probs = torch.softmax(logits, -1)
    assert (probs - 1 / 6).abs().max().item() < 0.02  # policy head gain 0.01
    a, logp, v = model.act(obs)
    assert a.shape == logp.shape == v.shape == (3,)
    mlp = build_actor_critic(CARTPOLE_OBS, gym.spaces.Discrete(2), ACConfig())
    assert mlp.critic_torso is not None  # separate value MLP by default


def test_continuous_action_space_is_refused_with_one_line():
    with pytest.raises(ConfigError) as exc:
        build_actor_critic(CARTPOLE_OBS, gym.spaces.Box(-1, 1, (1,), np.float32), ACConfig(algo="a2c"))
    msg = str(exc.value)
    assert "discrete action space" in msg and "\n" not in msg


def _fake_segment(T=16, E=4, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(T, E, 4)).astype(np.float32)
    return {"obs": obs, "actions": (obs[..., 0] > 0).astype(np.int64),  # "good" action: sign of x0
            "rewards": np.ones((T, E), np.float32), "terminated": np.zeros((T, E), bool),
            "truncated": np.zeros((T, E), bool), "bootstrap_values": np.zeros((T, E), np.float32),
            "last_values": np.zeros(E, np.float32)}


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_update_raises_probability_of_positive_advantage_actions(algo):
    torch.manual_seed(0)
    cfg = ACConfig(algo=algo, learning_rate=3e-3, update_epochs=4, num_minibatches=2, normalize_advantages=False)
    model = build_actor_critic(CARTPOLE_OBS, gym.spaces.Discrete(2), cfg)
    seg = _fake_segment()
    with torch.no_grad():
        _, logp, v = model.act(seg["obs"].reshape(-1, 4))
    seg["logprobs"], seg["values"] = logp.reshape(16, 4), np.zeros((16, 4), np.float32)
    batch = flatten_rollouts([seg], gamma=0.9, lam=0.95)
    batch["advantages"] = np.where(batch["actions"] == (batch["obs"][:, 0] > 0), 1.0, -1.0).astype(np.float32)
    obs_t, act_t = torch.as_tensor(batch["obs"]), torch.as_tensor(batch["actions"])

    def logp_taken():
        with torch.no_grad():
            return float(model.distribution(obs_t)[0].log_prob(act_t).mean())

    before = logp_taken()
    opt = make_optimizer(model, cfg)
    for _ in range(5):
        stats = update(model, opt, batch, cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert logp_taken() > before + 0.05
    if algo == "ppo":
        assert stats["approx_kl"] >= 0 and 0 <= stats["clip_fraction"] <= 1 and stats["epochs_run"] == 4


def test_target_kl_stops_epochs_early():
    torch.manual_seed(0)
    cfg = ACConfig(learning_rate=0.05, update_epochs=10, num_minibatches=2, target_kl=1e-4)
    model = build_actor_critic(CARTPOLE_OBS, gym.spaces.Discrete(2), cfg)
    seg = _fake_segment()
    _, logp, v = model.act(seg["obs"].reshape(-1, 4))
    seg["logprobs"], seg["values"] = logp.reshape(16, 4), v.reshape(16, 4)
    stats = update(model, make_optimizer(model, cfg), flatten_rollouts([seg], 0.9, 0.95), cfg, torch.device("cpu"))
    assert stats["epochs_run"] < 10


@pytest.mark.parametrize("override, needle", [
    ("rl.num_minibatches=3", "does not divide into rl.num_minibatches=3"),
    ("rl.backend=tensorflow", "unknown backend"),
    ("rl.algo=sac", "not an actor-critic algorithm"),
])
def test_bad_config_is_refused_with_one_line(override, needle):
    from pipelines.registry import resolve

    with pytest.raises(ConfigError) as exc:
        resolve(preset="ppo-cartpole", overrides=[override])
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_cli_refuses_continuous_env_and_unknown_backend(cli, tmp_path):
    res = cli("rl", "train", "--algo", "ppo", "--env", "Pendulum-v1", "--run-dir", str(tmp_path / "p"))
    assert res.returncode != 0
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reinforge: error:") and "Discrete" in err[0], res.stderr
    res = cli("rl", "train", "--algo", "ppo", "--env", "CartPole-v1", "--backend", "jax")
    assert res.returncode == 2 and "unknown backend" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_ppo_solves_cartpole_with_two_rollout_actors_and_evals_from_cli(cli, tmp_path):
    run = tmp_path / "ppo"
    res = cli("rl", "train", "--config", "ppo-cartpole", "--workers", "2", "--run-dir", str(run))
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "policy_loss" in r]
    assert SHARED_KEYS | {"clip_fraction", "epochs_run"} <= set(train_rows[-1])
    assert train_rows[-1]["env_steps"] >= 50_000 and train_rows[-1]["worker_failures"] == 0
    assert train_rows[-1]["episode_return"] > 5 * train_rows[0]["episode_return"]
    final_eval = [r for r in rows if "eval_return" in r][-1]
    assert final_eval["eval_return"] >= 475 and final_eval["eval_episodes"] == 10, final_eval
    assert {p.name for p in (run / "plots").glob("*.png")} >= {"episode_return.png", "losses.png",
                                                               "ppo_trust_region.png"}
    res = cli("rl", "eval", "--checkpoint", str(run), "--episodes", "5")
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads((run / "eval.json").read_text())
    assert out["eval_return"] >= 475 and len(out["returns"]) == 5


@pytest.mark.slow
def test_a2c_learns_cartpole_resumes_and_survives_a_killed_actor(ray_session, tmp_path, monkeypatch):
    import os
    import signal

    import rl.rollout
    from pipelines.registry import execute, resolve

    groups = []
    original_init = rl.rollout.RolloutGroup.__init__

    def spy(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        groups.append(self)

    monkeypatch.setattr(rl.rollout.RolloutGroup, "__init__", spy)
    killed = []

    def kill_one_actor(row):  # SIGKILL one rollout actor's process mid-run (second phase)
        if len(groups) == 2 and not killed and row.get("updates", 0) >= 120:
            pid = groups[-1].worker_pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    run = tmp_path / "a2c"
    first = resolve(preset="a2c-cartpole", overrides=["rl.total_steps=12000", "rl.eval_episodes=0"],
                    extra={"run": {"run_dir": str(run)}})
    _, r1 = execute(first)
    assert r1["env_steps"] >= 12000
    steps_after_first = r1["env_steps"]
    # resume: same run dir, more steps; counters and optimizer continue from the checkpoint
    again = resolve(config_file=str(run / "config.yaml"), overrides=["rl.total_steps=30000", "rl.eval_episodes=10"],
                    extra={"run": {"run_dir": str(run)}})
    _, r2 = execute(again, resume=str(run), listeners=[kill_one_actor])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["env_steps"] for r in rows if "policy_loss" in r]
    assert steps == sorted(steps) and steps[0] < steps_after_first < steps[-1]
    assert r2["updates"] > r1["updates"] and r2["env_steps"] >= 30000
    last_train = [r for r in rows if "policy_loss" in r][-1]
    # detected, skipped, restarted: one kill is one failure, however many requests its restart dropped
    assert killed and last_train["worker_failures"] == len(killed)
    assert r2["eval_return"] >= 100, r2  # random play scores about 22


@pytest.mark.slow
def test_rllib_backend_runs_and_writes_the_same_metrics(ray_session, tmp_path):
    from pipelines.registry import execute, resolve
    from rl.rllib_backend import build_config, make_rllib_env

    run = tmp_path / "rllib"
    resolved = resolve(preset="ppo-cartpole", overrides=[
        "rl.backend=rllib", "rl.total_steps=1500", "rl.rollout_length=64", "rl.update_epochs=2", "rollout.num_workers=1",
        "rollout.cpus_per_worker=1",
    ], extra={"run": {"run_dir": str(run)}})
    _, result = execute(resolved)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "policy_loss" in r]  # training rows (the last one is the final eval)
    assert len(rows) >= 2 and rows[-1]["env_steps"] >= 1500
    assert SHARED_KEYS <= set(rows[-1])
    assert np.isfinite(rows[-1]["policy_loss"]) and rows[-1]["episode_return"] > 0
    assert (run / "plots" / "episode_return.png").is_file()
    assert result["env_steps_per_s"] > 0
    # its checkpoint is the RLModule's weights as safetensors (no RLlib pickles); eval rebuilds the
    # module and loads them: the loaded policy differs from a freshly initialised one, and the
    # reported evaluation is the mean of the games it played
    from pipelines.rl_ac import load_policy

    exp = resolved.experiment
    logits, _ = load_policy(str(run), exp)
    obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    fresh = build_config(exp.env, exp.rollout, exp.rl, seed=exp.run.seed + 1, device="cpu")
    fresh_module = fresh.get_rl_module_spec(env=make_rllib_env(exp.env), inference_only=True).build()
    with torch.no_grad():
        fresh_logits = fresh_module.forward_inference({"obs": torch.as_tensor(obs)})["action_dist_inputs"].numpy()
    assert not np.allclose(logits(obs), fresh_logits, atol=1e-4)
    ev = [r for r in (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()) if "eval_return" in r]
    assert ev and ev[-1]["eval_episodes"] == exp.rl.eval_episodes == result["eval_episodes"]
    assert result["eval_return"] == ev[-1]["eval_return"] >= 8  # CartPole's shortest game is 8 steps
    assert not (run / "rllib").exists()


def test_rllib_backend_refuses_a2c():
    from pipelines.registry import resolve

    with pytest.raises(ConfigError, match="runs PPO only"):
        resolve(preset="a2c-cartpole", overrides=["rl.backend=rllib"])


def test_resume_of_a_finished_run_is_refused(tmp_path):
    # env_steps >= total_steps in the checkpoint: one line telling how to train further
    from cluster.rundir import RunDir
    from rl.ac_train import train
    from rl.envs import EnvConfig
    from rl.rollout import RolloutConfig

    rd = RunDir(tmp_path / "done", tensorboard=False)
    cfg = ACConfig(total_steps=100)
    model = build_actor_critic(CARTPOLE_OBS, gym.spaces.Discrete(2), cfg)
    rd.save_checkpoint(100, {"model": model.state_dict(), "optimizer": make_optimizer(model, cfg).state_dict(),
                             "state": {"env_steps": 100, "updates": 1}})
    with pytest.raises(ReinforgeError, match="already finished"):
        train(EnvConfig(id="CartPole-v1"), RolloutConfig(num_workers=1, envs_per_worker=1), cfg, rd)
    rd.close()
    assert Path(rd.path / "checkpoints").is_dir()


def test_init_encoder_loads_pretrained_torso_weights(tmp_path):
    from safetensors.torch import save_file

    from rl.networks import NatureCNN

    torch.manual_seed(1)
    pretrained = NatureCNN().state_dict()
    (tmp_path / "encoder").mkdir()
    save_file({k: v.contiguous() for k, v in pretrained.items()}, str(tmp_path / "encoder" / "torso.safetensors"))
    model = build_actor_critic(ATARI_OBS, gym.spaces.Discrete(4), ACConfig(init_encoder=str(tmp_path)))
    for k, v in model.torso.state_dict().items():
        assert torch.equal(v, pretrained[k]), k
