"""Encoder transfer: does a torso pretrained on Atari frames help an RL agent's early learning?

Per seed (default 3 seeds):
1. ``gen`` pipeline, one run per encoder in --models (byol, simsiam, moco, simclr: the
   gen-moco-atari-frames preset's settings with gen.model set; vae: gen-vae-atari-frames) on
   frame stacks recorded by ``rl.envs.make_env`` from the game
   -> RUN_DIR/encoder/torso.safetensors (keys of ``rl.networks.NatureCNN(in_channels=4)``);
2. ``rl-ac`` pipeline (PPO), same seed and budget, once per arm: a random torso, and
   ``rl.init_encoder=RUN_DIR`` for each encoder;
3. the table: per arm, the mean over seeds (and its standard error) of the mean game return
   over the last episodes and along the run (area under the learning curve / steps).

A short budget measures *early* learning only; a nil difference is a valid (and likely) result:
an arm helps only where its mean exceeds the random torso's by more than ~2 standard errors.

    python benchmarks/bench_gen_transfer.py [--quick] [--seeds 3] [--models byol,moco] [--game ALE/Breakout-v5]
    # or: reinforge bench gen-transfer [-- --seeds 3 --models byol,simsiam,moco]
"""

from __future__ import annotations

import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _common import Timer, parse_args, print_table, write_results

ENCODERS = ("byol", "simsiam", "moco", "simclr", "vae")


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean over seeds (nan where undefined)."""
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    se = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else float("nan")
    return statistics.fmean(vals), se


def pretrain(model: str, game: str, seed: int, run_dir: Path, quick: bool) -> dict[str, Any]:
    from pipelines.registry import execute, resolve

    preset = "gen-vae-atari-frames" if model == "vae" else "gen-moco-atari-frames"
    gen = {"model": model, "atari_game": game, "atari_frames": 500 if quick else 3000, "epochs": 1 if quick else 5,
           "workers": 1}
    _, res = execute(resolve(pipeline="gen", preset=preset, extra={
        "run": {"run_dir": str(run_dir), "tensorboard": False, "seed": seed}, "gen": gen}))
    return res


def ppo_run(game: str, seed: int, steps: int, init: str | None, run_dir: Path) -> dict[str, Any]:
    from cluster.rundir import read_metrics
    from pipelines.registry import execute, resolve

    rl = {"total_steps": steps, "eval_episodes": 0, "checkpoint_every": 0, "init_encoder": init}
    resolved = resolve(preset="ppo-breakout" if "Breakout" in game else "ppo-pong",
                       extra={"run": {"run_dir": str(run_dir), "tensorboard": False, "seed": seed},
                              "env": {"id": game}, "rl": rl})
    with Timer() as t:
        rd, res = execute(resolved)
    curve = [r["episode_return"] for r in read_metrics(rd.path)
             if isinstance(r.get("episode_return"), float) and not math.isnan(r["episode_return"])]
    return {"env_steps": res.get("env_steps"), "final_return_mean": res.get("episode_return"),
            "mean_return_along_run": sum(curve) / len(curve) if curve else float("nan"),
            "seconds": round(t.seconds, 1)}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], extra=[
        (("--models",), {"default": "byol,moco", "help": "comma-separated encoders to pretrain: " + ", ".join(ENCODERS)}),
        (("--seeds",), {"type": int, "default": 3, "help": "seeds per arm (pretraining and PPO use the same seed)"}),
        (("--game",), {"default": "ALE/Breakout-v5"}),
        (("--steps",), {"type": int, "default": 0, "help": "RL env steps per run (default 40000, quick 4000)"}),
    ])
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(ENCODERS))
    if unknown or not models or args.seeds < 1:
        raise SystemExit(f"bench gen-transfer: --models from {', '.join(ENCODERS)} (got {args.models!r}), "
                         f"--seeds >= 1 (got {args.seeds})")
    from cluster.runtime import connect

    connect(num_cpus=2)
    out = Path(tempfile.mkdtemp(prefix="bench-gen-transfer-"))
    steps = args.steps or (4000 if args.quick else 40000)
    arms = ["random torso", *(f"{m} torso" for m in models)]
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    encoders: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        inits: dict[str, str | None] = {"random torso": None}
        for m in models:
            with Timer() as t:
                res = pretrain(m, args.game, seed, out / f"{m}-encoder-s{seed}", args.quick)
            inits[f"{m} torso"] = str(out / f"{m}-encoder-s{seed}")
            encoders.append({"model": m, "seed": seed, "encoder": res.get("encoder"), "loss": res.get("loss"),
                             "seconds": round(t.seconds, 1)})
            print(f"seed {seed}: {m} encoder {res.get('encoder')} ({t.seconds:.0f} s)", flush=True)
        for arm in arms:
            row = {"arm": arm, "seed": seed, **ppo_run(args.game, seed, steps, inits[arm],
                                                       out / f"{arm.replace(' ', '-')}-s{seed}")}
            runs[arm].append(row)
            print(row, flush=True)
    rows = []
    for arm in arms:
        final_m, final_se = mean_and_stderr([r["final_return_mean"] for r in runs[arm]])
        along_m, along_se = mean_and_stderr([r["mean_return_along_run"] for r in runs[arm]])
        rows.append({"torso": arm, "seeds": len(runs[arm]), "env_steps": runs[arm][0]["env_steps"],
                     "final_return": final_m, "final_return_se": final_se,
                     "return_along_run": along_m, "return_along_run_se": along_se,
                     "per_seed_along_run": [round(r["mean_return_along_run"], 2) for r in runs[arm]],
                     "seconds_per_run": round(statistics.fmean(r["seconds"] for r in runs[arm]), 1)})
    print_table(rows, ["torso", "seeds", "env_steps", "final_return", "final_return_se", "return_along_run",
                       "return_along_run_se", "per_seed_along_run", "seconds_per_run"],
                f"PPO on {args.game}: early learning with and without a pretrained torso "
                f"(mean and standard error over {args.seeds} seed(s))")
    path = write_results("gen_transfer", rows, args.out, quick=args.quick, game=args.game, seeds=args.seeds,
                         encoders=encoders, runs=runs)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
