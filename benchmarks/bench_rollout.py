"""Rollout throughput on Pong with random actions, side by side on the same cores:
reinforge's Ray rollout layer (all workers together) vs ale-py AtariVectorEnv (same env count
and threads) vs gymnasium AsyncVectorEnv. Target: reinforge >= 0.85x AtariVectorEnv."""

from __future__ import annotations

import time

import numpy as np

from _common import Timer, parse_args, print_table, write_results


def bench_ale(num_envs: int, threads: int, steps: int) -> float:
    from ale_py.vector_env import AtariVectorEnv

    env = AtariVectorEnv("pong", num_envs, num_threads=threads, autoreset_mode="SameStep")
    env.reset(seed=np.arange(num_envs))
    rng = np.random.default_rng(0)
    with Timer() as t:
        for _ in range(steps):
            env.step(rng.integers(0, 6, num_envs))
    env.close()
    return steps * num_envs / t.seconds


def bench_async(num_envs: int, steps: int) -> float:
    import gymnasium as gym

    from rl.envs import EnvConfig, make_env

    cfg = EnvConfig(id="ALE/Pong-v5")
    env = gym.vector.AsyncVectorEnv([lambda: make_env(cfg, None, True) for _ in range(num_envs)])
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    with Timer() as t:
        for _ in range(steps):
            env.step(rng.integers(0, 6, num_envs))
    env.close()
    return steps * num_envs / t.seconds


def bench_reinforge(workers: int, envs_per_worker: int, threads: int, steps: int, seg: int) -> float:
    from cluster.runtime import connect, shutdown
    from rl.envs import EnvConfig
    from rl.rollout import RolloutConfig, RolloutGroup

    connect(num_cpus=2)
    group = RolloutGroup(EnvConfig(id="ALE/Pong-v5", num_threads=threads),
                         RolloutConfig(num_workers=workers, envs_per_worker=envs_per_worker, cpus_per_worker=0.5,
                                       steps_per_sample=seg), "rl.rollout:RandomPolicy", seed=0)
    group.sample()  # warm-up
    n = 0
    with Timer() as t:
        while n < steps * workers * envs_per_worker:
            n += sum(b["env_steps"] for b in group.sample())
    group.close()
    shutdown()
    return n / t.seconds


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    envs, steps = 8, (100 if args.quick else 1000)
    rows = []
    ale = bench_ale(envs, 2, steps)
    rows.append({"system": "ale-py AtariVectorEnv (8 envs, 2 threads)", "env_steps_per_s": ale, "vs_ale": 1.0})
    for workers, epw, thr in ((1, 8, 2), (2, 4, 1)):
        sps = bench_reinforge(workers, epw, thr, steps, 64 if not args.quick else 32)
        rows.append({"system": f"reinforge rollout ({workers} worker x {epw} envs, {thr} thread/worker)",
                     "env_steps_per_s": sps, "vs_ale": sps / ale})
    asy = bench_async(envs, max(50, steps // 2))
    rows.append({"system": "gymnasium AsyncVectorEnv (8 envs)", "env_steps_per_s": asy, "vs_ale": asy / ale})
    print_table(rows, ["system", "env_steps_per_s", "vs_ale"], title="Pong rollout throughput, random actions")
    print(f"wrote {write_results('rollout', rows, args.out, envs=envs, steps=steps)}")


if __name__ == "__main__":
    main()
