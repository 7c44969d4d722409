"""``reinforge rl``: train and evaluate RL agents on Atari (DQN, Double DQN, A2C, PPO)."""

from __future__ import annotations

from pipelines.commands.common import add_run_args, not_yet


def register(sub) -> None:
    p = sub.add_parser("rl", help="train and evaluate RL agents on Atari (DQN, Double DQN, A2C, PPO)")
    add_run_args(p)
    p.set_defaults(handler=not_yet("rl"))
