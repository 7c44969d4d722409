"""``reinforge rlhf``: RLHF stages: sft, reward, ppo, dpo, all, eval."""

from __future__ import annotations

from pipelines.commands.common import add_run_args, not_yet


def register(sub) -> None:
    p = sub.add_parser("rlhf", help="RLHF stages: sft, reward, ppo, dpo, all, eval")
    add_run_args(p)
    p.set_defaults(handler=not_yet("rlhf"))
