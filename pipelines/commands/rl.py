"""``reinforge rl``: train and evaluate RL agents: DQN, Double DQN, A2C, PPO and REINFORCE on
Atari (or any Discrete gymnasium env) with Ray rollout workers; tabular Q-learning and SARSA on
the small discrete MDPs (FrozenLake, CliffWalking, Taxi) in one process.

    reinforge rl train --algo ddqn --env ALE/Pong-v5 --workers 2 --envs-per-worker 4 --total-steps 1e6
    reinforge rl train --config ddqn-cartpole
    reinforge rl train --algo qlearning --config qlearning-frozenlake
    reinforge rl train --resume runs/rl-dqn-20260101-120000
    reinforge rl eval --checkpoint runs/rl-dqn-20260101-120000 --episodes 10 [--epsilon 0.05] [--video]
"""

from __future__ import annotations

import argparse
from typing import Any

from cluster.errors import ConfigError
from pipelines.commands.common import add_run_args

# --algo -> registry pipeline
ALGO_PIPELINES: dict[str, str] = {"dqn": "rl-dqn", "ddqn": "rl-dqn", "a2c": "rl-ac", "ppo": "rl-ac",
                                  "reinforce": "rl-ac", "qlearning": "rl-tabular", "sarsa": "rl-tabular"}
# flags that set the Ray rollout layer, which the tabular pipeline does not have
ROLLOUT_FLAGS = (("workers", "--workers"), ("envs_per_worker", "--envs-per-worker"), ("backend", "--backend"))


def register(sub) -> None:
    p = sub.add_parser("rl", help="train and evaluate RL agents (DQN, Double DQN, A2C, PPO, REINFORCE; "
                                  "tabular Q-learning, SARSA)")
    rsub = p.add_subparsers(dest="rl_command", metavar="{train,eval}", parser_class=type(p))
    t = rsub.add_parser("train", help="train an agent (dqn, ddqn, a2c, ppo, reinforce with Ray rollout workers; "
                                      "qlearning, sarsa in one process)")
    t.add_argument("--algo", help="dqn | ddqn | a2c | ppo | reinforce | qlearning | sarsa "
                                  "(rl.algo; default from the config, else dqn)")
    t.add_argument("--env", help="gymnasium env id, e.g. ALE/Pong-v5 or CartPole-v1 (env.id)")
    t.add_argument("--workers", type=int, help="rollout worker actors (rollout.num_workers)")
    t.add_argument("--envs-per-worker", type=int, help="envs stepped by each worker (rollout.envs_per_worker)")
    t.add_argument("--total-steps", type=float, help="env steps to train for, e.g. 1e6 (rl.total_steps)")
    t.add_argument("--backend", help="native | rllib (rl.backend; rllib only for a2c/ppo)")
    add_run_args(t)
    t.set_defaults(handler=handle_train)
    e = rsub.add_parser("eval", help="evaluate a run's latest checkpoint on the raw game score")
    e.add_argument("--checkpoint", required=True, metavar="DIR", help="run dir (or its checkpoint dir)")
    e.add_argument("--episodes", type=int, default=10, help="whole games to play (default 10)")
    e.add_argument("--epsilon", type=float, help="epsilon-greedy evaluation (default rl.eval_epsilon, 0.05)")
    e.add_argument("--video", action="store_true", help="record the first episode under RUN_DIR/videos (moviepy)")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(handler=handle_eval)
    p.set_defaults(handler=lambda args: p.print_help() or 0)


def _algo_pipeline(algo: str) -> str:
    if algo not in ALGO_PIPELINES:
        from pipelines.config import nearest

        guess = nearest(algo, list(ALGO_PIPELINES))
        hint = f"; did you mean {guess!r}?" if guess else ""
        raise ConfigError(f"unknown --algo {algo!r}: use one of {', '.join(ALGO_PIPELINES)}{hint}")
    return ALGO_PIPELINES[algo]


def _pipeline_of_config(args: argparse.Namespace) -> str | None:
    from pathlib import Path

    from pipelines.config import load_yaml, preset_path

    path = None
    if getattr(args, "resume", None):
        path = Path(args.resume) / "config.yaml"
    elif args.config:
        path = preset_path(args.config) if not args.config.endswith((".yaml", ".yml")) else Path(args.config)
    if path is None:
        return None
    name = load_yaml(path).get("pipeline")
    return name if isinstance(name, str) else None


def handle_train(args: argparse.Namespace) -> int:
    from pipelines.commands.common import run_pipeline

    extra: dict[str, Any] = {}
    if args.algo:
        extra.setdefault("rl", {})["algo"] = args.algo
    if args.backend:
        extra.setdefault("rl", {})["backend"] = args.backend
    if args.total_steps is not None:
        if args.total_steps != int(args.total_steps) or args.total_steps < 1:
            raise ConfigError(f"--total-steps {args.total_steps:g} must be a positive whole number of env steps")
        extra.setdefault("rl", {})["total_steps"] = int(args.total_steps)
    if args.env:
        extra["env"] = {"id": args.env}
    if args.workers is not None:
        extra.setdefault("rollout", {})["num_workers"] = args.workers
    if args.envs_per_worker is not None:
        extra.setdefault("rollout", {})["envs_per_worker"] = args.envs_per_worker
    from_config = _pipeline_of_config(args)
    if args.algo:
        pipeline = _algo_pipeline(args.algo)
        if from_config and from_config != pipeline and not args.resume:
            raise ConfigError(f"--algo {args.algo} runs the {pipeline!r} pipeline but --config is a {from_config!r} config")
    else:
        pipeline = from_config or "rl-dqn"
    if pipeline == "rl-tabular":
        for attr, flag in ROLLOUT_FLAGS:
            if getattr(args, attr) is not None:
                raise ConfigError(f"{flag}: tabular Q-learning and SARSA run in one process, without rollout "
                                  f"workers or backends; drop {flag}")
    if pipeline not in set(ALGO_PIPELINES.values()):
        raise ConfigError(f"this config is for the {pipeline!r} pipeline, not an RL one; use `reinforge {pipeline} ...`")
    run_pipeline(pipeline, args, extra=extra)
    return 0


def handle_eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from cluster.checkpoint import resolve_checkpoint
    from cluster.errors import ReinforgeError
    from pipelines.registry import get_pipeline, resolve

    if args.episodes < 1:
        raise ConfigError(f"--episodes {args.episodes} must be >= 1")
    if args.epsilon is not None and not 0.0 <= args.epsilon <= 1.0:  # NaN fails both comparisons
        raise ConfigError(f"--epsilon {args.epsilon:g} must be in [0, 1] (the probability of a random action)")
    ckpt = resolve_checkpoint(args.checkpoint)
    run_path = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else Path(args.checkpoint)
    if not (run_path / "config.yaml").is_file():
        raise ReinforgeError(f"{run_path} has no config.yaml; pass the run directory written by `reinforge rl train`")
    resolved = resolve(config_file=str(run_path / "config.yaml"))
    pipe = get_pipeline(resolved.pipeline.name)
    if pipe.evaluate is None:
        raise ConfigError(f"{run_path} is a {pipe.name!r} run, not an RL one")
    out = pipe.evaluate(str(run_path), resolved.experiment, args.episodes, epsilon=args.epsilon,
                          video=args.video, seed=args.seed)
    shown = {k: v for k, v in out.items() if k not in ("returns", "lengths")}
    for k, v in shown.items():
        print(f"  {k:<16}  {v:.4g}" if isinstance(v, float) else f"  {k:<16}  {v}")
    (run_path / "eval.json").write_text(json.dumps(out, indent=2, default=str))
    print(f"returns: {' '.join(f'{r:g}' for r in out['returns'])}")
    return 0
