"""``reinforge tune``: Ray Tune sweeps over any pipeline.

    reinforge tune toy --search 'toy.learning_rate=loguniform(1e-3,3e-1)' --num-samples 4 --scheduler asha
    reinforge tune sweep-toy                      # a sweep file (pipelines/presets/sweep-*.yaml or a path)
    reinforge tune --resume runs/sweeps/toy-sweep-20260101-120000
"""

from __future__ import annotations

import argparse

EPILOG = """search expressions: loguniform(a,b) uniform(a,b) randint(a,b) (high exclusive)
choice(v1,v2,...) grid(v1,v2,...); e.g. --search 'rl.batch_size=choice(32,64)'.
A sweep file is YAML with one top-level 'sweep:' mapping holding the same keys as the flags
(preset, set, search, num_samples, scheduler, metric, mode, cpus_per_trial, gpus_per_trial, ...)."""


def register(sub) -> None:
    p = sub.add_parser("tune", help="Ray Tune sweeps over any pipeline", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", nargs="?", metavar="PRESET",
                   help="base config (a preset name or YAML path) or a sweep file with a 'sweep:' section")
    p.add_argument("--search", action="append", default=[], metavar="KEY=EXPR",
                   help="a searched config key, e.g. 'rl.learning_rate=loguniform(1e-5,1e-3)' (repeatable)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one value of the base config for every trial (repeatable)")
    p.add_argument("--num-samples", type=int, help="trials to sample (times the grid size); default 1")
    p.add_argument("--scheduler", choices=["fifo", "asha", "pbt"], help="trial scheduler (default fifo)")
    p.add_argument("--metric", help="metric to optimise (default: the pipeline's own)")
    p.add_argument("--mode", choices=["min", "max"], help="minimise or maximise --metric")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs for each trial's driver (default 1); actors are added")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, fractions allowed (default 0)")
    p.add_argument("--max-concurrent", type=int, help="at most K trials at once (default: as resources allow)")
    p.add_argument("--max-failures", type=int, help="retries of a crashed trial from its checkpoint (default 2)")
    p.add_argument("--name", help="experiment name (default <pipeline>-sweep-<timestamp>)")
    p.add_argument("--storage-path", help="where experiments go (default runs/sweeps; shared storage on a cluster)")
    p.add_argument("--top", type=int, help="rows of the final best-trials table (default 5)")
    p.add_argument("--resume", metavar="EXPERIMENT_DIR", help="continue an interrupted sweep (Tuner.restore)")
    p.add_argument("--address", help="Ray cluster address (default RAY_ADDRESS, else an embedded local instance)")
    p.add_argument("--dry-run", action="store_true", help="check the sweep and print its plan; start no trial")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from cluster.errors import ConfigError
    from pipelines import tune

    if args.resume:
        if args.target or args.search or args.overrides:
            raise ConfigError("--resume takes the sweep from its experiment dir; drop PRESET, --search and --set")
        plan, results = tune.resume_sweep(args.resume, address=args.address)
        tune.report(plan, results, top=args.top)
        return 0
    if not args.target:
        raise ConfigError("give a preset, config or sweep file, e.g. 'reinforge tune toy --search ...', or --resume DIR")
    file_layer = None
    from pathlib import Path

    from pipelines.config import PRESET_DIR

    for candidate in (Path(args.target), PRESET_DIR / f"{args.target}.yaml"):
        if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
            file_layer = tune.load_sweep_file(candidate)
            break
    flags = {"num_samples": args.num_samples, "scheduler": args.scheduler, "metric": args.metric, "mode": args.mode,
             "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
             "max_concurrent": args.max_concurrent, "max_failures": args.max_failures, "name": args.name,
             "storage_path": args.storage_path, "top": args.top}
    sweep = tune.sweep_from_sources(args.target, file_layer, flags, args.search, args.overrides)
    plan = tune.plan_sweep(sweep)
    print(f"sweep {plan.sweep.name}: pipeline {plan.pipeline}, {plan.sweep.num_samples} sample(s), "
          f"scheduler {plan.sweep.scheduler}, {plan.metric} ({plan.mode}), trial bundles {plan.bundles}"
          + (f" + outside its group {plan.outside} (limits concurrency)" if plan.outside else ""))
    for spec in plan.specs:
        print(f"  search {spec}")
    if args.dry_run:
        return 0
    results = tune.run_sweep(plan, address=args.address)
    tune.report(plan, results, top=args.top)
    return 0
