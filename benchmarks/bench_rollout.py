"""Rollout throughput on Pong with random actions, side by side on the same cores:
reinforge's Ray rollout layer (all workers together) vs ale-py AtariVectorEnv (same env count,
threads and preprocessing) vs gymnasium AsyncVectorEnv. Target: reinforge >= 0.85x AtariVectorEnv.

The systems are measured in alternating rounds (ale, reinforge 1x8, reinforge 2x4, ale, ...)
so that load from other processes hits them alike; the table reports each system's median
and the median of the per-round ratios to ale-py, which is steadier than absolute numbers on a
shared machine. reinforge runs the way the DQN learner drives it: every worker keeps two
requests queued (``group.fill(2)``) and ships only the newest 84x84 frame per step.
"""

from __future__ import annotations

import statistics

import numpy as np

from _common import Timer, parse_args, print_table, write_results

ENV_ID = "ALE/Pong-v5"
SEG = 128  # vector steps per request (1,024 env steps for 8 envs)


def env_cfg(threads: int):
    from rl.envs import EnvConfig

    return EnvConfig(id=ENV_ID, num_threads=threads)


class Ale:
    """Bare ale-py AtariVectorEnv with exactly the arguments reinforge's workers use."""

    def __init__(self, num_envs: int, threads: int):
        from ale_py.vector_env import AtariVectorEnv

        from rl.envs import ale_vector_kwargs

        self.env = AtariVectorEnv(**ale_vector_kwargs(env_cfg(threads), num_envs))
        self.env.reset(seed=np.arange(num_envs))
        self.n = num_envs
        self.rng = np.random.default_rng(0)

    def measure(self, env_steps: int) -> float:
        steps = max(1, env_steps // self.n)
        with Timer() as t:
            for _ in range(steps):
                self.env.step(self.rng.integers(0, 6, self.n))
        return steps * self.n / t.seconds

    def close(self) -> None:
        self.env.close()


class Reinforge:
    def __init__(self, workers: int, envs_per_worker: int, threads: int, seg: int):
        from rl.rollout import RandomPolicy, RolloutConfig, RolloutGroup

        self.group = RolloutGroup(env_cfg(threads), RolloutConfig(
            num_workers=workers, envs_per_worker=envs_per_worker, cpus_per_worker=0.5, steps_per_sample=seg),
            RandomPolicy, seed=0, newest_frame_only=True)
        self.group.sample()  # warm-up: actors started, envs reset

    def measure(self, env_steps: int) -> float:
        g = self.group
        n = 0
        with Timer() as t:
            g.fill(2)
            while n < env_steps:
                for _, seg in g.ready(num_returns=1):
                    n += seg["env_steps"]
                g.fill(2)
            # the clock stops at the last segment needed; queued requests drain untimed
        while g._inflight:
            g.ready(num_returns=len(g._inflight))
        return n / t.seconds

    def close(self) -> None:
        self.group.close()


def bench_async(num_envs: int, steps: int) -> float:
    import gymnasium as gym

    from rl.envs import make_env

    cfg = env_cfg(1)
    env = gym.vector.AsyncVectorEnv([lambda: make_env(cfg, None, True) for _ in range(num_envs)])
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    with Timer() as t:
        for _ in range(steps):
            env.step(rng.integers(0, 6, num_envs))
    env.close()
    return steps * num_envs / t.seconds


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], [(("--rounds",), {"type": int, "default": None,
                                                              "help": "alternating measurement rounds"})])
    from cluster.runtime import connect, shutdown

    envs = 8
    rounds = args.rounds or (1 if args.quick else 5)
    per_round = 2_048 if args.quick else 8_192  # env steps per system per round
    connect(num_cpus=2)  # its own local instance, or RAY_ADDRESS when set
    systems = {
        "ale-py AtariVectorEnv (8 envs, 2 threads)": Ale(envs, 2),
        "reinforge rollout (1 worker x 8 envs, 2 threads)": Reinforge(1, 8, 2, SEG),
        "reinforge rollout (2 workers x 4 envs, 1 thread each)": Reinforge(2, 4, 1, SEG),
    }
    samples: dict[str, list[float]] = {k: [] for k in systems}
    try:
        for r in range(rounds):
            for name, system in systems.items():
                samples[name].append(system.measure(per_round))
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{v[-1]:,.0f}" for v in samples.values()), flush=True)
    finally:
        for system in systems.values():
            system.close()
        shutdown()
    ale_name = next(iter(systems))
    rows = []
    for name, vals in samples.items():
        ratios = [v / a for v, a in zip(vals, samples[ale_name])]
        rows.append({"system": name, "env_steps_per_s": statistics.median(vals), "vs_ale": statistics.median(ratios),
                     "rounds": [round(v) for v in vals]})
    asy = bench_async(envs, 50 if args.quick else 250)
    rows.append({"system": "gymnasium AsyncVectorEnv (8 envs)", "env_steps_per_s": asy,
                 "vs_ale": asy / statistics.median(samples[ale_name]), "rounds": [round(asy)]})
    print_table(rows, ["system", "env_steps_per_s", "vs_ale"],
                title=f"Pong rollout throughput, random actions (median of {rounds} alternating rounds)")
    print(f"wrote {write_results('rollout', rows, args.out, envs=envs, rounds=rounds, env_steps_per_round=per_round)}")


if __name__ == "__main__":
    main()
