"""``reinforge run CONFIG``: run any pipeline from a preset or YAML file.

The pipeline-specific commands (``rl train``, ``gen train``, ``rlhf STAGE``) add flags of
their own; this one takes only the shared ones, so it runs every pipeline the same way,
e.g. ``reinforge run toy --set toy.steps=50`` or ``reinforge run ppo-cartpole --seed 3``.
"""

from __future__ import annotations

import argparse

from pipelines.commands.common import add_run_args


def register(sub) -> None:
    p = sub.add_parser("run", help="run any pipeline from a preset or YAML config (see 'reinforge config list')")
    p.add_argument("target", nargs="?", metavar="CONFIG",
                   help="preset name or YAML path (not needed with --resume)")
    add_run_args(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from cluster.errors import ConfigError
    from pipelines.commands.common import run_pipeline

    if args.config and args.target:
        raise ConfigError("give the config once: as CONFIG or with --config")
    if args.target:
        args.config = args.target
    if not args.config and not args.resume:
        raise ConfigError("reinforge run needs a CONFIG (a preset name or YAML path) or --resume RUN_DIR")
    run_pipeline(None, args)
    return 0
