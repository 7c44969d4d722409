"""``reinforge``: the command line. Kept import-light (no torch, no ray at import time) so
``reinforge --help`` answers at once; each command imports what it needs when it runs."""

from __future__ import annotations

import argparse
import os
import re
import sys

from cluster.errors import ReinforgeError
from pipelines.commands import COMMANDS


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="reinforge",
        description="Distributed deep RL, generative pretraining and checkable RLHF on Ray.",
        epilog="Set RAY_ADDRESS (or pass --address) to run on a Ray cluster; default is an embedded local instance.",
    )
    parser.add_argument("--version", action="version", version=f"reinforge {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for module in COMMANDS:
        module.register(sub)
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("reinforge")
    except metadata.PackageNotFoundError:
        return "dev"


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def one_line(text: str) -> str:
    """An error for the terminal: colour codes (Ray's actor errors carry them) removed, the
    first non-empty line only."""
    lines = [ln.strip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.handler(args) or 0)
    except ReinforgeError as exc:
        sys.stderr.write(f"reinforge: error: {one_line(str(exc))}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("reinforge: interrupted\n")
        return 130
    except Exception as exc:  # last resort: one line, full traceback only on request
        if os.environ.get("REINFORGE_DEBUG"):
            raise
        first = one_line(str(exc))
        sys.stderr.write(
            f"reinforge: error: unexpected {type(exc).__name__}: {first} (set REINFORGE_DEBUG=1 for the traceback)\n"
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
