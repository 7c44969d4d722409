"""``reinforge gen``: generative pretraining with Ray Train: GANs, VAEs, DDPM, contrastive."""

from __future__ import annotations

from pipelines.commands.common import add_run_args, not_yet


def register(sub) -> None:
    p = sub.add_parser("gen", help="generative pretraining with Ray Train: GANs, VAEs, DDPM, contrastive")
    add_run_args(p)
    p.set_defaults(handler=not_yet("gen"))
