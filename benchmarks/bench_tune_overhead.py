"""Tune overhead: N tiny trials as a Ray Tune sweep vs the same N runs one after another.

Each trial is the ``toy`` pipeline (a noisy quadratic, ``toy.steps`` rows of
``toy.step_seconds`` of sleep each, a checkpoint every 5 steps), so the work is known and the
difference is what Tune adds: a trial actor per trial, placement groups, result and
checkpoint persistence, the controller loop. All three run on the same local Ray instance:

* sequential: ``pipelines.registry.execute`` N times in this process (no Tune);
* Tune, 1 at a time (``max_concurrent=1``): the pure per-trial overhead;
* Tune, as many at once as the CPUs allow: what a user gets.

    python benchmarks/bench_tune_overhead.py [--quick] [--trials 8]
    reinforge bench tune_overhead
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import Timer, parse_args, print_table, write_results


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], extra=[
        (("--trials",), {"type": int, "default": 8, "help": "trials per mode (default 8)"}),
        (("--steps",), {"type": int, "default": 20, "help": "toy steps per trial (default 20)"}),
        (("--step-seconds",), {"type": float, "default": 0.05, "help": "sleep per step (default 0.05)"}),
        (("--cpus",), {"type": int, "default": 2, "help": "CPUs of the local Ray instance (default 2)"}),
    ])
    trials, steps, step_s = (4, 10, 0.02) if args.quick else (args.trials, args.steps, args.step_seconds)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from cluster.runtime import connect
    from pipelines import tune as T
    from pipelines.registry import execute, resolve

    work = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    lrs = [0.01 * (i + 1) for i in range(trials)]
    sets = [f"toy.steps={steps}", f"toy.step_seconds={step_s}", "run.tensorboard=false"]
    try:
        with Timer() as t_connect:
            connect(num_cpus=args.cpus)
        with Timer() as t_seq:
            for i, lr in enumerate(lrs):
                resolved = resolve(preset="toy", overrides=[*sets, f"toy.learning_rate={lr}",
                                                            f"run.run_dir={work / 'seq' / str(i)}"])
                execute(resolved)
        rows = [{"mode": "sequential (execute, no Tune)", "trials": trials, "wall_s": t_seq.seconds,
                 "per_trial_s": t_seq.seconds / trials, "vs_sequential": 1.0}]
        grid = "toy.learning_rate=grid(" + ",".join(f"{x:g}" for x in lrs) + ")"
        for label, concurrent in (("Tune sweep, 1 at a time", 1), (f"Tune sweep, up to {args.cpus} at once", 0)):
            sweep = T.sweep_from_sources("toy", None, {"storage_path": str(work), "name": f"tune-{concurrent}",
                                                       "max_concurrent": concurrent, "cpus_per_trial": 1},
                                         [grid], sets)
            plan = T.plan_sweep(sweep)
            with Timer() as t:
                results = T.run_sweep(plan, verbose=0)
            assert all(r.error is None for r in results), [str(r.error) for r in results if r.error]
            rows.append({"mode": label, "trials": trials, "wall_s": t.seconds, "per_trial_s": t.seconds / trials,
                         "vs_sequential": t.seconds / t_seq.seconds})
        work_s = steps * step_s
        for r in rows:
            r["overhead_per_trial_s"] = r["per_trial_s"] - work_s
        print_table(rows, ["mode", "trials", "wall_s", "per_trial_s", "overhead_per_trial_s", "vs_sequential"],
                    title=f"Tune overhead: {trials} toy trials of {steps} steps x {step_s}s sleep "
                          f"({work_s:.2f}s of work each); Ray start {t_connect.seconds:.1f}s not counted")
        path = write_results("tune_overhead", rows, args.out, trials=trials, steps=steps, step_seconds=step_s,
                             ray_start_s=t_connect.seconds, cpus=args.cpus,
                             ratio_tune_serial_vs_sequential=rows[1]["vs_sequential"],
                             ratio_tune_parallel_vs_sequential=rows[2]["vs_sequential"])
        print(f"results: {path}")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.0f} s")
