"""End-to-end PPO training throughput on Pong: reinforge (native) vs RLlib's PPO (new API stack),
side by side in one run on the same cores. Target: reinforge >= 3x RLlib env steps/s.

Matched on both sides (one ``ACConfig`` feeds both: RLlib's side is built by
``rl.rllib_backend.build_config``, the same code as ``--backend rllib``): 1 rollout actor
(RLlib: 1 env runner) x 8 envs with 1 CPU reserved, the learner in the driver process on the
CPU with one torch thread (the core the rollout actor does not hold; reinforge's learner sets
this itself, RLlib's local learner gets ``torch.set_num_threads(1)`` in the driver);
Atari preprocessing (no-op starts, frame skip 4 with max-pool, 84x84 gray, stack 4, episodic
life, fire reset, clipped rewards; RLlib's own ``wrap_atari_for_new_api_stack`` on a
``frameskip=1`` env); the Nature CNN conv stack with a 512-unit layer (RLlib: in each head);
rollout length 128 (batch 1024), minibatch 256, 1 epoch, Adam lr 2.5e-4, clip 0.1, GAE 0.95,
entropy 0.01, value coefficient 0.5, grad-norm clip 0.5. Both sides' rollout actors run at
nice 0 (Ray starts workers at nice 15; reinforge's rollout workers ask for 0 and the RLlib
env runner is given the same).

Measured: env steps/s over the iterations after the first (start-up, JIT-like warm-ups and
RLlib's env-runner creation are outside the window), each iteration sampling AND training.
``--quick`` uses rollouts of 32 steps (batch 256, minibatch 64) and 3 iterations a side: a
smoke run, numbers not comparable with the full run.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from bench_dqn import _nice0  # same nice-0 treatment of the RLlib env runner as the DQN benchmark

from _common import parse_args, print_table, write_results

ENV_ID = "ALE/Pong-v5"
ENVS = 8


def ac_config(rollout_length: int, iterations: int):
    from rl.actor_critic import ACConfig

    return ACConfig(algo="ppo", total_steps=rollout_length * ENVS * iterations, rollout_length=rollout_length,
                    learning_rate=2.5e-4, anneal_lr=True, update_epochs=1, num_minibatches=4, clip_range=0.1,
                    clip_value=True, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, checkpoint_every=0,
                    eval_episodes=0)


def rollout_config():
    from rl.rollout import RolloutConfig

    return RolloutConfig(num_workers=1, envs_per_worker=ENVS, cpus_per_worker=1.0)


def _window(marks: list[tuple[float, int]]) -> dict:
    """Rate between the first logged iteration and the last one."""
    if len(marks) < 2:
        return {"env_steps_per_s": math.nan, "timed_env_steps": 0, "seconds": 0.0}
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return {"env_steps_per_s": (s1 - s0) / (t1 - t0), "timed_env_steps": s1 - s0, "seconds": t1 - t0,
            "iterations": len(marks) - 1}


def bench_reinforge(rollout_length: int, iterations: int, seed: int = 0, overlap: bool = False) -> dict:
    from cluster.rundir import RunDir
    from rl.ac_train import train
    from rl.envs import EnvConfig

    marks: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as tmp, RunDir(Path(tmp) / "run", tensorboard=False) as rd:
        rd.add_listener(lambda row: marks.append((time.perf_counter(), int(row["env_steps"]))))
        cfg = ac_config(rollout_length, iterations + 1)
        cfg.overlap_rollouts = overlap
        train(EnvConfig(id=ENV_ID), rollout_config(), cfg, rd, seed=seed, device="cpu")
    return _window(marks)


def bench_update_bound(rollout_length: int, iterations: int, threads: int, seed: int = 0) -> dict:
    """The same update arithmetic alone: the PPO update (forward and backward over the same
    batch and minibatch shapes, same network, optimizer and epochs) on a synthetic batch, on
    ``threads`` torch threads, no env, no Ray. Its env steps/s (batch / update time) bounds
    what the whole loop can reach when sampling is fully hidden behind the update."""
    import numpy as np
    import torch

    from rl.actor_critic import build_actor_critic, make_optimizer, update
    from rl.envs import EnvConfig, make_vector_env
    from rl.threads import learner_threads

    probe = make_vector_env(EnvConfig(id=ENV_ID), 1, seed=seed, training=True)
    obs_space, act_space = probe.single_observation_space, probe.single_action_space
    probe.close()
    cfg = ac_config(rollout_length, iterations)
    model = build_actor_critic(obs_space, act_space, cfg)
    optimizer = make_optimizer(model, cfg)
    rng = np.random.default_rng(seed)
    B = rollout_length * ENVS
    batch = {"obs": rng.integers(0, 255, (B, *obs_space.shape), dtype=np.uint8),
             "actions": rng.integers(0, act_space.n, B), "logprobs": np.full(B, -np.log(act_space.n), np.float32),
             "values": rng.standard_normal(B).astype(np.float32),
             "advantages": rng.standard_normal(B).astype(np.float32),
             "returns": rng.standard_normal(B).astype(np.float32)}
    generator = torch.Generator().manual_seed(seed)
    with learner_threads(threads):
        update(model, optimizer, batch, cfg, torch.device("cpu"), generator)  # warm-up
        t0 = time.perf_counter()
        for _ in range(iterations):
            update(model, optimizer, batch, cfg, torch.device("cpu"), generator)
        secs = (time.perf_counter() - t0) / iterations
    return {"env_steps_per_s": B / secs, "timed_env_steps": B * iterations, "seconds": secs * iterations,
            "iterations": iterations, "threads": threads}


def bench_rllib(rollout_length: int, iterations: int, seed: int = 0) -> dict:
    import torch

    from rl.envs import EnvConfig
    from rl.rllib_backend import build_config

    torch.set_num_threads(1)  # the local learner lives in this process (see the docstring)
    cfg = ac_config(rollout_length, iterations + 1)
    algo = build_config(EnvConfig(id=ENV_ID), rollout_config(), cfg, seed=seed, device="cpu").build_algo()
    marks: list[tuple[float, int]] = []
    try:
        algo.env_runner_group.foreach_env_runner(_nice0, local_env_runner=False)
        for _ in range(iterations + 1):
            result = algo.train()
            marks.append((time.perf_counter(), int(result["env_runners"]["num_env_steps_sampled_lifetime"])))
    finally:
        algo.stop()
    return _window(marks)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    from cluster.runtime import connect, shutdown

    rollout_length, ours_iters, rllib_iters = (32, 3, 2) if args.quick else (128, 8, 4)
    from rl.threads import all_cores, free_cores

    connect(num_cpus=2)
    try:
        rllib = bench_rllib(rollout_length, rllib_iters)
        ours = bench_reinforge(rollout_length, ours_iters)
        overlapped = bench_reinforge(rollout_length, ours_iters, overlap=True)
    finally:
        shutdown()
    roll = rollout_config()
    sync_bound = bench_update_bound(rollout_length, ours_iters, all_cores())
    overlap_bound = bench_update_bound(rollout_length, ours_iters, free_cores(roll.num_workers, roll.cpus_per_worker))
    rows = [
        {"system": "reinforge PPO (1 actor x 8 envs + learner on every core)", **ours,
         "bound": sync_bound["env_steps_per_s"]},
        {"system": "reinforge PPO, rollouts overlapped (one step off-policy)", **overlapped,
         "bound": overlap_bound["env_steps_per_s"]},
        {"system": "RLlib PPO new stack (1 env runner x 8 envs + local learner)", **rllib},
        {"system": f"bound: the update alone, {sync_bound['threads']} threads", **sync_bound},
        {"system": f"bound: the update alone, {overlap_bound['threads']} thread(s)", **overlap_bound},
    ]
    for r in rows:
        r["vs_rllib"] = r["env_steps_per_s"] / rllib["env_steps_per_s"]
        if "bound" in r:
            r["of_bound"] = r["env_steps_per_s"] / r["bound"]
    batch = rollout_length * ENVS
    print_table(rows, ["system", "env_steps_per_s", "timed_env_steps", "seconds", "vs_rllib", "of_bound"],
                title=f"Pong PPO training throughput (batch {batch}, minibatch {batch // 4}, 1 epoch; "
                      "timed after the first iteration)")
    print(f"wrote {write_results('ppo', rows, args.out, env=ENV_ID, envs=ENVS, batch=batch, minibatch=batch // 4, update_epochs=1, quick=args.quick)}")


if __name__ == "__main__":
    main()
