"""One module per CLI command; each has ``register(subparsers)`` and imports heavy things lazily."""

from pipelines.commands import bench, config_cmd, demo, gen, jobs, rl, rlhf, run, tune

COMMANDS = [demo, run, rl, rlhf, gen, tune, jobs, bench, config_cmd]
