"""Encoder transfer: does a torso pretrained on Atari frames help an RL agent's early learning?

1. ``gen`` pipeline: MoCo (or VAE) on frame stacks recorded by ``rl.envs.make_env`` from the game
   -> RUN_DIR/encoder/torso.safetensors (keys of ``rl.networks.NatureCNN(in_channels=4)``);
2. ``rl-ac`` pipeline (PPO), same seed and budget, twice: random torso vs ``rl.init_encoder=RUN_DIR``;
3. the table: mean game return over the last episodes and along the run (area under the curve).

A short budget measures *early* learning only; a nil difference is a valid (and likely) result.

    python benchmarks/bench_gen_transfer.py [--quick] [--model moco|vae] [--game ALE/Breakout-v5]
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from _common import Timer, parse_args, print_table, write_results


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], extra=[
        (("--model",), {"default": "moco", "choices": ["moco", "vae", "simclr"]}),
        (("--game",), {"default": "ALE/Breakout-v5"}),
        (("--steps",), {"type": int, "default": 0, "help": "RL env steps per run (default 40000, quick 4000)"}),
    ])
    from cluster.rundir import read_metrics
    from cluster.runtime import connect
    from pipelines.registry import execute, resolve

    connect(num_cpus=2)
    out = Path(tempfile.mkdtemp(prefix="bench-gen-transfer-"))
    steps = args.steps or (4000 if args.quick else 40000)
    gen_over = {"model": args.model, "data": "atari-frames", "atari_game": args.game,
                "atari_frames": 500 if args.quick else 3000, "epochs": 1 if args.quick else 5, "workers": 1}
    with Timer() as t:
        _, gres = execute(resolve(pipeline="gen", preset=f"gen-{args.model}-atari-frames",
                                  extra={"run": {"run_dir": str(out / "encoder"), "tensorboard": False},
                                         "gen": gen_over}))
    print(f"encoder: {gres.get('encoder')} ({t.seconds:.0f} s)", flush=True)
    rows = []
    for label, init in (("random torso", None), (f"{args.model} torso", str(out / "encoder"))):
        rl = {"total_steps": steps, "eval_episodes": 0, "checkpoint_every": 0, "init_encoder": init}
        resolved = resolve(preset="ppo-breakout" if "Breakout" in args.game else "ppo-pong",
                           extra={"run": {"run_dir": str(out / label.replace(" ", "-")), "tensorboard": False,
                                          "seed": 0},
                                  "env": {"id": args.game},
                                  "rl": rl})
        with Timer() as t:
            rd, res = execute(resolved)
        curve = [r["episode_return"] for r in read_metrics(rd.path)
                 if isinstance(r.get("episode_return"), float) and not math.isnan(r["episode_return"])]
        rows.append({"torso": label, "env_steps": res.get("env_steps"),
                     "final_return_mean": res.get("episode_return"),
                     "mean_return_along_run": sum(curve) / len(curve) if curve else float("nan"),
                     "seconds": round(t.seconds, 1)})
        print(rows[-1], flush=True)
    print_table(rows, ["torso", "env_steps", "final_return_mean", "mean_return_along_run", "seconds"],
                f"PPO on {args.game}: early learning with and without the pretrained torso (seed 0)")
    path = write_results("gen_transfer", rows, args.out, quick=args.quick, encoder=gres, game=args.game)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
