"""``reinforge submit`` and ``reinforge jobs``: run any reinforge command as a Ray job."""

from __future__ import annotations

from pipelines.commands.common import not_yet


def register(sub) -> None:
    p = sub.add_parser("submit", help="submit a reinforge command to a Ray cluster through the Jobs API")
    p.add_argument("--address", help="Ray dashboard address, e.g. http://HOST:8265")
    p.set_defaults(handler=not_yet("submit"))
    j = sub.add_parser("jobs", help="list, inspect, follow and stop Ray jobs")
    j.set_defaults(handler=not_yet("jobs"))
