"""``reinforge tune``: Ray Tune sweeps over any pipeline."""

from __future__ import annotations

from pipelines.commands.common import add_run_args, not_yet


def register(sub) -> None:
    p = sub.add_parser("tune", help="Ray Tune sweeps over any pipeline")
    add_run_args(p)
    p.set_defaults(handler=not_yet("tune"))
