"""Atari learning at real budgets: one algorithm on one game with its preset's standard
settings, the true game score (last 100 whole games, unclipped) against env steps and
wall-clock time, the final policy evaluated (30 no-op starts, human-normalised), and the
published reference points drawn in.

    python benchmarks/bench_atari_learning.py --algo ppo --game Breakout --steps 1e6 [--minutes M]
        [--resume] [--seed S] [--out DIR]          (or: reinforge bench atari-learning -- ARGS)

The run lives in ``OUT/atari-<algo>-<game>-seed<S>/`` (a normal reinforge run dir: metrics,
checkpoints, plots); ``--resume`` continues it from its latest checkpoint with the step counter
it had. A wall-clock budget (``--minutes``) ends training at the first update past the
deadline, with a checkpoint, so the next ``--resume`` continues from there. Writes
``OUT/atari_learning_<algo>_<game>.json`` (rows of env_steps, wall_s, episode_return) and a plot
with the reference points.

Reference points (10M env steps): CleanRL's ppo_atari / dqn_atari reports and Mnih et al. 2015
(Nature DQN, 50M frames = 12.5M steps; drawn at 10M for comparison).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from _common import parse_args, print_table, write_results

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REFERENCES = {  # (algo family, game) -> [(source, score at 10M env steps)]
    ("ppo", "Pong"): [("CleanRL PPO", 20.36)], ("ppo", "Breakout"): [("CleanRL PPO", 414.7)],
    ("ppo", "BeamRider"): [("CleanRL PPO", 1916.0)],
    ("dqn", "Pong"): [("CleanRL DQN", 20.25), ("Mnih et al. 2015", 18.9)],
    ("dqn", "Breakout"): [("CleanRL DQN", 366.9), ("Mnih et al. 2015", 401.2)],
    ("dqn", "BeamRider"): [("CleanRL DQN", 6673.0)],
}
RESUME_GAP_S = 600  # rows further apart than this are an interrupted run and its resume
FAMILY = {"ppo": "ppo", "a2c": "ppo", "dqn": "dqn", "ddqn": "dqn"}
BASE_PRESET = {"ppo": "ppo-breakout", "a2c": "a2c-pong", "dqn": "dqn-pong", "ddqn": "ddqn-pong"}


def fail(msg: str) -> None:
    """Bad input: one line, exit status 2."""
    import sys

    print(f"bench atari-learning: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def check_game(game: str) -> str:
    import difflib

    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    games = sorted({k.split("/")[1].rsplit("-v", 1)[0] for k in gym.registry if k.startswith("ALE/")})
    if game not in games:
        close = difflib.get_close_matches(game, games, n=1)
        fail(f"unknown game {game!r}" + (f"; did you mean {close[0]!r}?" if close else f"; e.g. {', '.join(games[:5])}"))
    return f"ALE/{game}-v5"


def preset_for(algo: str, game: str) -> str:
    from pipelines.config import list_presets

    own = f"{algo}-{game.lower()}"
    return own if own in list_presets() else BASE_PRESET[algo]


def curve(run: Path) -> list[dict]:
    """(env_steps, wall_s, episode_return) of every training row of the run dir; wall_s is
    training time, the gaps between an interrupted run and its resume left out."""
    rows, wall, last = [], 0.0, None
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        r = json.loads(line)
        if "episode_return" not in r or "env_steps" not in r or "eval_return" in r:
            continue
        if last is not None and 0 < r["time"] - last < RESUME_GAP_S:
            wall += r["time"] - last
        last = r["time"]
        score = float(r["episode_return"])  # NaN (written as "nan") until a first game ends
        if not math.isnan(score):
            rows.append({"env_steps": r["env_steps"], "wall_s": round(wall, 1), "episode_return": score,
                         "env_steps_per_s": r.get("env_steps_per_s")})
    return rows


def plot(rows: list[dict], refs: list[tuple[str, float]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["env_steps"] for r in rows], [r["episode_return"] for r in rows], label="reinforge (last 100 games)")
    for (name, score), marker in zip(refs, "o^s"):
        ax.plot([10_000_000], [score], marker, label=f"{name} @ 10M: {score:g}")
    ax.set_xscale("log")
    ax.set_xlabel("env steps (agent steps, frame skip 4)")
    ax.set_ylabel("game score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], [
        (("--algo",), {"default": "ppo", "help": "ppo | a2c | dqn | ddqn"}),
        (("--game",), {"default": "Breakout", "help": "an ALE game name, e.g. Pong, Breakout, BeamRider"}),
        (("--steps",), {"type": float, "default": 1e6, "help": "env-step budget (total, across resumes)"}),
        (("--minutes",), {"type": float, "default": None, "help": "wall-clock budget of this invocation"}),
        (("--resume",), {"action": "store_true", "help": "continue the run in OUT from its latest checkpoint"}),
        (("--seed",), {"type": int, "default": 0}),
        (("--eval-episodes",), {"type": int, "default": 30, "help": "final evaluation games (30 no-op starts)"}),
        (("--checkpoint-every",), {"type": int, "default": 50_000,
                                   "help": "env steps between checkpoints (what a killed run can lose)"}),
    ])
    if args.algo not in FAMILY:
        fail(f"unknown --algo {args.algo!r}; use one of {', '.join(FAMILY)}")
    if not (args.steps >= 1) or (args.minutes is not None and not args.minutes > 0):
        fail("the budget must be positive: --steps >= 1 and --minutes > 0")
    env_id = check_game(args.game)
    steps = int(args.steps) if not args.quick else 4096
    minutes = args.minutes if not args.quick else 1.0
    from pipelines.registry import execute, resolve

    out = Path(args.out)
    run = out / f"atari-{args.algo}-{args.game.lower()}-seed{args.seed}"
    preset = preset_for(args.algo, args.game)
    overrides = [f"env.id={env_id}", f"rl.algo={args.algo}", f"rl.total_steps={steps}",
                 f"rl.eval_episodes={0 if args.quick else args.eval_episodes}",
                 f"rl.checkpoint_every={args.checkpoint_every}"]
    if args.resume and (run / "config.yaml").is_file():
        resolved = resolve(config_file=str(run / "config.yaml"), overrides=overrides, extra={"run": {"run_dir": str(run)}})
    else:
        if run.exists() and not args.resume:
            fail(f"{run} already holds a run; pass --resume to continue it or --out DIR for a new one")
        resolved = resolve(preset=preset, overrides=overrides, extra={"run": {"run_dir": str(run), "seed": args.seed}})
    rl = resolved.experiment.rl
    t_start = time.perf_counter()
    deadline = t_start + 60 * minutes if minutes else None

    def on_row(row: dict) -> None:
        # a wall-clock budget: end at the first update past the deadline; the loop then saves a
        # checkpoint, without the final evaluation (that would run past the budget; evaluate with
        # `reinforge rl eval --checkpoint RUN --episodes 30`; a later --resume goes on)
        if deadline is not None and "env_steps" in row and time.perf_counter() > deadline:
            rl.total_steps = min(rl.total_steps, int(row["env_steps"]))
            rl.eval_episodes = 0

    print(f"{args.algo} on {env_id} ({preset}), budget {steps:,} env steps"
          + (f" / {minutes:g} min" if minutes else "") + f", run dir {run}", flush=True)
    _, result = execute(resolved, resume=str(run) if args.resume and run.exists() else None, listeners=[on_row])
    wall = time.perf_counter() - t_start
    rows = curve(run)
    refs = REFERENCES.get((FAMILY[args.algo], args.game), [])
    name = f"atari_learning_{args.algo}_{args.game.lower()}"
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, refs, f"{args.algo.upper()} on {args.game}: game score vs env steps", out / f"{name}.png")
    summary = {"algo": args.algo, "game": args.game, "preset": preset, "seed": args.seed,
               "env_steps": result.get("env_steps"), "wall_s_this_invocation": wall,
               "episode_return": result.get("episode_return"), "eval_return": result.get("eval_return"),
               "eval_return_std": result.get("eval_return_std"), "eval_episodes": result.get("eval_episodes"),
               "eval_human_normalized": result.get("eval_human_normalized"),
               "env_steps_per_s": result.get("env_steps_per_s"), "references": refs}
    print_table([summary], ["algo", "game", "env_steps", "episode_return", "eval_return", "eval_human_normalized",
                            "env_steps_per_s"], title="Atari learning")
    for source, score in refs:
        print(f"  reference: {source} at 10M env steps: {score:g}")
    path = write_results(name, rows, args.out, summary=summary, run_dir=str(run))
    print(f"wrote {path} and {out / (name + '.png')}")


if __name__ == "__main__":
    main()
