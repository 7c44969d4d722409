"""``reinforge config show|list``: print a fully resolved config."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("config", help="show resolved configs and list presets")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = csub.add_parser("show", help="print the fully resolved config of a preset or YAML file")
    show.add_argument("preset", help="preset name (see 'reinforge config list') or a YAML path")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.set_defaults(handler=show_config)
    ls = csub.add_parser("list", help="list the built-in presets")
    ls.set_defaults(handler=list_configs)


def show_config(args: argparse.Namespace) -> int:
    from pipelines.registry import resolve

    print(resolve(preset=args.preset, overrides=args.overrides).to_yaml(), end="")
    return 0


def list_configs(args: argparse.Namespace) -> int:
    from pipelines.config import list_presets, list_sweeps, load_yaml, preset_path

    for name in list_presets():
        data = load_yaml(preset_path(name))
        print(f"{name:<28} {data.get('pipeline', '?')}")
    for name in list_sweeps():  # reinforge tune NAME
        sweep = load_yaml(preset_path(name))["sweep"]
        print(f"{name:<28} tune {sweep.get('preset', '?')} ({sweep.get('scheduler', 'fifo')})")
    return 0
