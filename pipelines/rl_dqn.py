"""The ``rl-dqn`` pipeline: DQN / Double DQN on Atari (or any Discrete gymnasium env) with Ray
rollout actors. ``reinforge rl train --algo dqn|ddqn`` and ``reinforge rl eval`` land here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.run_config import RunConfig
from pipelines.pipeline import Bar, DemoStep, Pipeline
from rl.dqn import DQNConfig
from rl.envs import EnvConfig, check_discrete_actions
from rl.rollout import RolloutConfig


@dataclass
class DQNExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rl: DQNConfig = field(default_factory=DQNConfig)

    def validate(self) -> None:
        from rl.dqn_learner import check_plan
        from rl.envs import check_env_id, check_env_memory

        check_env_id(self.env.id)
        check_env_memory(self.env, self.rollout.num_workers * self.rollout.envs_per_worker)
        check_plan(self.rl, self.env)  # CNN on vector obs, too-big replay: refused at plan time


def run(exp: DQNExperiment, run_dir, on_log=None) -> dict[str, Any]:
    """Train (rl.dqn_learner), then the final greedy evaluation and the plots."""
    from rl.dqn_learner import train
    from rl.evaluation import log_evaluation

    result = train(exp.env, exp.rollout, exp.rl, run_dir, seed=exp.run.seed, device=exp.run.device,
                   keep_checkpoints=exp.run.keep_checkpoints, on_log=on_log)
    if exp.rl.eval_episodes > 0:
        ev = evaluate(str(run_dir.path), exp, exp.rl.eval_episodes, seed=exp.run.seed + 12345)
        result.update(log_evaluation(run_dir, ev, step=int(result["env_steps"])))
    run_dir.plot("training", ["episode_return", "epsilon", "loss", "env_steps_per_s"], x="step",
                 title=f"{exp.rl.algo} on {exp.env.id}")
    return result


def load_policy(run_path: str | Path, experiment: DQNExperiment):
    """``(obs batch -> Q-values, checkpoint)`` from a DQN run's latest checkpoint."""
    import torch

    from cluster.checkpoint import load_checkpoint
    from rl.dqn_learner import load_q_network
    from rl.envs import make_env

    ckpt = load_checkpoint(run_path)
    probe = make_env(experiment.env, seed=0, training=False)
    net = load_q_network(ckpt, probe.observation_space)
    probe.close()

    def q_values(obs):
        with torch.no_grad():
            return net(torch.as_tensor(obs)).numpy()

    return q_values, ckpt


def evaluate(run_path: str | Path, experiment: DQNExperiment, episodes: int, epsilon: float | None = None,
             video: bool = False, seed: int = 0) -> dict[str, Any]:
    """Evaluate the latest checkpoint of a DQN run dir on the raw game score."""
    from rl.evaluation import evaluate_run

    eps = experiment.rl.eval_epsilon if epsilon is None else epsilon
    return evaluate_run(run_path, experiment.env, lambda p: load_policy(p, experiment), episodes, eps,
                        video=video, seed=seed)


METRICS = ("env_steps", "updates", "games", "episode_return", "episode_length", "epsilon", "env_steps_per_s",
           "replay_size", "worker_failures", "loss", "q_mean", "grad_norm", "eval_return", "eval_return_std",
           "eval_episodes", "eval_human_normalized")

PIPELINE = Pipeline(
    name="rl-dqn", experiment=DQNExperiment, run=run,
    description="DQN / Double DQN (dueling, n-step, prioritized replay) with Ray rollout actors",
    metrics=METRICS, tune_metric=("episode_return", "max"), actor_bundles=lambda exp, cluster: exp.rollout.bundles(), evaluate=evaluate,
    preflight=lambda exp: check_discrete_actions(exp.env, exp.rl.algo.upper()),
    demos=(DemoStep("rl-dqn", "ddqn-cartpole", "Double DQN on CartPole-v1 with 2 Ray rollout actors",
                    # the preset's 40k steps: 12k reached only ~220 greedy (about 80 s on 2 cores)
                    overrides={"rl": {"eval_episodes": 10, "log_every": 1_000}},
                    bars=(Bar("eval_return", ">=", 475),)),),
)
