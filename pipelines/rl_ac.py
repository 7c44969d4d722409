"""The ``rl-ac`` pipeline: A2C and PPO on Atari (or any Discrete gymnasium env) with Ray rollout
actors; ``rl.backend=rllib`` runs RLlib's PPO on the same env settings into the same run dir.
``reinforge rl train --algo a2c|ppo`` and ``reinforge rl eval`` land here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError
from cluster.run_config import RunConfig
from pipelines.pipeline import Bar, DemoStep, Pipeline
from rl.actor_critic import ACConfig
from rl.envs import EnvConfig
from rl.rollout import RolloutConfig

# every name the rows and the final result hold (both backends log these names)
METRICS = ("env_steps", "updates", "learning_rate", "episode_return_mean", "episode_length_mean",
                    "explained_variance", "env_steps_per_s", "iteration_s", "policy_loss", "value_loss", "entropy",
                    "approx_kl", "clip_fraction", "grad_norm", "epochs_run", "rollout_s", "workers_failed",
                    "eval_mean_return", "eval_std_return")


@dataclass
class ACExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rl: ACConfig = field(default_factory=ACConfig)

    def validate(self) -> None:
        from rl.envs import check_env_id

        check_env_id(self.env.id)
        self.rl.check_batch(self.rollout.num_workers * self.rollout.envs_per_worker)
        if self.rl.backend == "rllib" and self.rl.algo != "ppo":
            raise ConfigError(f"rl.backend=rllib runs PPO only, not {self.rl.algo}; use --algo ppo or --backend native")


def run(exp: ACExperiment, run_dir) -> dict[str, Any]:
    if exp.rl.backend == "rllib":
        from rl.rllib_backend import train as train_rllib

        result = train_rllib(exp.env, exp.rollout, exp.rl, run_dir, seed=exp.run.seed, device=exp.run.device,
                             keep_checkpoints=exp.run.keep_checkpoints)
    else:
        from rl.ac_train import train

        result = train(exp.env, exp.rollout, exp.rl, run_dir, seed=exp.run.seed, device=exp.run.device,
                       keep_checkpoints=exp.run.keep_checkpoints)
    run_dir.plot("episode_return", ["episode_return_mean"], x="env_steps",
                 title=f"{exp.rl.algo.upper()} ({exp.rl.backend}) on {exp.env.id}: mean game return (last 100)")
    if exp.rl.backend == "native":
        run_dir.plot("losses", ["policy_loss", "value_loss", "entropy"], x="env_steps", title="actor-critic losses")
        if exp.rl.algo == "ppo":
            run_dir.plot("ppo_trust_region", ["approx_kl", "clip_fraction"], x="env_steps", title="PPO approx-KL, clip fraction")
    if exp.rl.eval_episodes > 0 and run_dir.latest_checkpoint() is not None:
        ev = evaluate(str(run_dir.path), exp, exp.rl.eval_episodes, epsilon=exp.rl.eval_epsilon, seed=exp.run.seed)
        result.update(eval_mean_return=ev["mean_return"], eval_std_return=ev["std_return"])
        if ev["human_normalized"] == ev["human_normalized"]:  # not NaN: an Atari game with a table entry
            result["eval_human_normalized"] = ev["human_normalized"]
        run_dir.log({"eval_mean_return": ev["mean_return"], "eval_std_return": ev["std_return"],
                     "eval_episodes": ev["episodes"]}, step=int(result.get("env_steps", 0)))
    return result


def load_policy(path: str | Path, experiment: ACExperiment):
    """``(obs batch -> logits, checkpoint)`` from a run's latest checkpoint (native or RLlib)."""
    import torch

    from cluster.checkpoint import load_checkpoint
    from rl.actor_critic import build_actor_critic
    from rl.envs import make_env

    ckpt = load_checkpoint(path)
    if experiment.rl.backend == "rllib":
        from rl.rllib_backend import load_rllib_policy

        return load_rllib_policy(ckpt, experiment.env, experiment.rollout, experiment.rl), ckpt
    probe = make_env(experiment.env, seed=0, training=False)
    cfg = ACConfig(**{**experiment.rl.__dict__, "init_encoder": None})  # weights come from the checkpoint
    model = build_actor_critic(probe.observation_space, probe.action_space, cfg)
    probe.close()
    model.load_state_dict(ckpt.objects["model"])
    model.eval()

    def logits(obs):
        with torch.no_grad():
            return model(torch.as_tensor(obs))[0].numpy()

    return logits, ckpt


def evaluate(run_path: str | Path, experiment: ACExperiment, episodes: int, epsilon: float | None = None,
             video: bool = False, seed: int = 0) -> dict[str, Any]:
    """Play whole games with the greedy policy (argmax of the logits; epsilon-greedy if asked)
    from the latest checkpoint, on the raw game score with no-op starts."""
    from rl.evaluation import evaluate_policy

    logits, ckpt = load_policy(run_path, experiment)
    eps = experiment.rl.eval_epsilon if epsilon is None else epsilon
    video_dir = Path(run_path) / "videos" if video and Path(run_path).is_dir() else None
    out = evaluate_policy(experiment.env, logits, episodes, epsilon=eps, seed=seed, video_dir=video_dir,
                          max_steps=experiment.rl.eval_max_steps)
    out["checkpoint"] = str(ckpt.path)
    out["step"] = ckpt.step
    return out


def rollout_bundles(experiment, cluster: dict[str, float]) -> list[dict[str, float]]:
    """The rollout workers a run starts (one bundle each)."""
    r = experiment.rollout
    return [{"CPU": float(r.cpus_per_worker)}] * int(r.num_workers)


PIPELINE = Pipeline(
    name="rl-ac", experiment=ACExperiment, run=run,
    description="A2C / PPO actor-critic with Ray rollout actors (or RLlib's PPO as a backend)",
    metrics=METRICS, tune_metric=("episode_return_mean", "max"), actor_bundles=rollout_bundles, evaluate=evaluate,
    demos=(DemoStep("rl-ppo", "ppo-cartpole", "PPO on CartPole-v1 with 2 Ray rollout actors",
                    overrides={"rl": {"total_steps": 30_000, "eval_episodes": 5}},
                    bars=(Bar("eval_mean_return", ">=", 475),)),),
)
