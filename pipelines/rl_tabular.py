"""The ``rl-tabular`` pipeline: Q-learning and SARSA on gymnasium's small discrete MDPs
(FrozenLake, CliffWalking, Taxi), measured against value iteration's Q* from the env's own
transition table. One process, no Ray. ``reinforge rl train --algo qlearning|sarsa`` and
``reinforge rl eval`` land here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.run_config import RunConfig
from pipelines.pipeline import Pipeline
from rl.tabular import TabularConfig, TabularEnvConfig

METRICS = ("env_steps", "updates", "games", "episode_return", "episode_length", "epsilon", "env_steps_per_s",
           "q_error", "policy_agreement", "eval_return", "eval_return_std", "eval_episodes")


@dataclass
class TabularExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    env: TabularEnvConfig = field(default_factory=TabularEnvConfig)
    rl: TabularConfig = field(default_factory=TabularConfig)

    def validate(self) -> None:
        from rl.envs import check_env_id

        check_env_id(self.env.id)


def preflight(exp: TabularExperiment) -> None:
    """A discrete MDP with a transition table (one line otherwise), before the run dir is made."""
    from rl.tabular import make_tabular_env

    make_tabular_env(exp.env).close()


def run(exp: TabularExperiment, run_dir) -> dict[str, Any]:
    """Train (rl.tabular), then the final greedy evaluation and the plots."""
    from rl.evaluation import log_evaluation
    from rl.tabular import train

    result = train(exp.env, exp.rl, run_dir, seed=exp.run.seed, keep_checkpoints=exp.run.keep_checkpoints)
    if exp.rl.eval_episodes > 0:
        ev = evaluate(str(run_dir.path), exp, exp.rl.eval_episodes, seed=exp.run.seed + 12345)
        result.update(log_evaluation(run_dir, ev, step=int(result["env_steps"])))
    name = {"qlearning": "Q-learning", "sarsa": "SARSA"}[exp.rl.algo]
    run_dir.plot("episode_return", ["episode_return"], x="env_steps",
                 title=f"{name} on {exp.env.id}: mean episode return (last 100)")
    run_dir.plot("optimality", ["q_error", "policy_agreement"], x="env_steps",
                 title=f"{name} against value iteration: max |Q - Q*|, greedy actions optimal")
    return result


def evaluate(run_path: str | Path, experiment: TabularExperiment, episodes: int, epsilon: float | None = None,
             video: bool = False, seed: int = 0) -> dict[str, Any]:
    """Play the greedy policy of the latest checkpoint's Q table."""
    import numpy as np

    from cluster.checkpoint import load_checkpoint
    from rl.tabular import evaluate_q

    ckpt = load_checkpoint(run_path)
    eps = experiment.rl.eval_epsilon if epsilon is None else epsilon
    out = evaluate_q(experiment.env, np.asarray(ckpt.objects["q"]), episodes, eps, seed=seed)
    out.update({"checkpoint": str(ckpt.path), "step": ckpt.step})
    if video:
        out["video_note"] = "video skipped: tabular runs record no video"
    return out


PIPELINE = Pipeline(
    name="rl-tabular", experiment=TabularExperiment, run=run,
    description="tabular Q-learning / SARSA on FrozenLake, CliffWalking, Taxi, against value iteration's Q*",
    metrics=METRICS, tune_metric=("episode_return", "max"), uses_ray=False, evaluate=evaluate,
    preflight=preflight,
)
