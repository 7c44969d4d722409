"""The ``rl-ac`` pipeline: A2C, PPO and REINFORCE (with or without a value baseline) on Atari
(or any Discrete gymnasium env) with Ray rollout actors; ``rl.backend=rllib`` runs RLlib's PPO
on the same env settings into the same run dir. ``reinforge rl train --algo a2c|ppo|reinforce``
and ``reinforge rl eval`` land here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError
from cluster.run_config import RunConfig
from pipelines.pipeline import Bar, DemoStep, Pipeline
from rl.actor_critic import ACConfig
from rl.envs import EnvConfig, check_discrete_actions
from rl.rollout import RolloutConfig

# every name the rows and the final result hold (both backends log these names)
METRICS = ("env_steps", "updates", "games", "learning_rate", "episode_return", "episode_length",
           "explained_variance", "env_steps_per_s", "iteration_s", "policy_loss", "value_loss", "entropy",
           "approx_kl", "clip_fraction", "grad_norm", "epochs_run", "rollout_s", "worker_failures",
           "eval_return", "eval_return_std", "eval_episodes", "eval_human_normalized")


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
    """Train (rl.ac_train or rl.rllib_backend), then the final greedy evaluation and the plots."""
    from rl.evaluation import log_evaluation

    if exp.rl.backend == "rllib":
        from rl.rllib_backend import train as train_rllib

        result = train_rllib(exp.env, exp.rollout, exp.rl, run_dir, seed=exp.run.seed, device=exp.run.device,
                             keep_checkpoints=exp.run.keep_checkpoints)
    else:
        from rl.ac_train import train

        result = train(exp.env, exp.rollout, exp.rl, run_dir, seed=exp.run.seed, device=exp.run.device,
                       keep_checkpoints=exp.run.keep_checkpoints)
    if exp.rl.eval_episodes > 0 and run_dir.latest_checkpoint() is not None:
        ev = evaluate(str(run_dir.path), exp, exp.rl.eval_episodes, seed=exp.run.seed)
        result.update(log_evaluation(run_dir, ev, step=int(result.get("env_steps", 0))))
    run_dir.plot("episode_return", ["episode_return"], x="env_steps",
                 title=f"{exp.rl.algo.upper()} ({exp.rl.backend}) on {exp.env.id}: mean game return (last 100)")
    if exp.rl.backend == "native":
        run_dir.plot("losses", ["policy_loss", "value_loss", "entropy"], x="env_steps", title="actor-critic losses")
        if exp.rl.algo == "ppo":
            run_dir.plot("ppo_trust_region", ["approx_kl", "clip_fraction"], x="env_steps", title="PPO approx-KL, clip fraction")
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
             video: bool = False, seed: int = 0, frames: list | None = None) -> dict[str, Any]:
    """Play whole games with the greedy policy (argmax of the logits; epsilon-greedy if asked)
    from the latest checkpoint, on the raw game score with no-op starts."""
    from rl.evaluation import evaluate_run

    eps = experiment.rl.eval_epsilon if epsilon is None else epsilon
    return evaluate_run(run_path, experiment.env, lambda p: load_policy(p, experiment), episodes, eps,
                        video=video, seed=seed, max_steps=experiment.rl.eval_max_steps, frames=frames)


GIF_EVERY = 2  # keep every 2nd rendered frame: a smaller GIF, still smooth at 15 fps


def atari_gif(run_path: Path, experiment: ACExperiment, result: dict[str, Any]) -> dict[str, Any]:
    """Demo finish: one greedy evaluation episode (capped at rl.eval_max_steps) as a GIF."""
    from PIL import Image

    frames: list = []
    ev = evaluate(run_path, experiment, 1, seed=experiment.run.seed, frames=frames)
    gif = Path(run_path) / "eval_episode.gif"
    shown = [Image.fromarray(f) for f in frames[::GIF_EVERY]]
    if shown:
        shown[0].save(gif, save_all=True, append_images=shown[1:], duration=66, loop=0)
    return {"artifacts": [gif] if shown else [],
            "metrics": {"eval_return": ev["eval_return"], "eval_episodes": 1, "eval_length": ev["lengths"][0],
                        "gif_frames": len(shown)}}


PIPELINE = Pipeline(
    name="rl-ac", experiment=ACExperiment, run=run,
    description="A2C / PPO actor-critic and REINFORCE with Ray rollout actors (or RLlib's PPO as a backend)",
    metrics=METRICS, tune_metric=("episode_return", "max"), actor_bundles=lambda exp, cluster: exp.rollout.bundles(), evaluate=evaluate,
    preflight=lambda exp: check_discrete_actions(exp.env, exp.rl.algo.upper()),
    demos=(DemoStep("rl-ppo", "ppo-cartpole", "PPO on CartPole-v1 with 2 Ray rollout actors",
                    # the preset's 50k steps (tuned on seeds 0-3; about 20 s on 2 cores)
                    overrides={"rl": {"eval_episodes": 10}},
                    bars=(Bar("eval_return", ">=", 475),)),
           DemoStep("rl-atari", "ppo-pong",
                    "PPO on Pong through 2 Ray rollout actors (a few thousand env steps: far from learning "
                    "the game), then one greedy evaluation game, capped at 500 agent steps, saved as a GIF",
                    overrides={"rl": {"total_steps": 4096, "checkpoint_every": 0, "eval_episodes": 0,
                                      "eval_max_steps": 500}},
                    keep=("env_steps", "env_steps_per_s", "games", "eval_return", "eval_length",
                          "gif_frames"),
                    bars=(Bar("gif_frames", ">=", 1),), finish=atari_gif)),
)
