"""End-to-end Double DQN training throughput on Pong: reinforge vs RLlib's DQN (new API stack),
side by side in one run on the same cores. Target: reinforge >= 3x RLlib env steps/s.

Matched on both sides: 1 rollout actor (RLlib: 1 env runner) x 8 envs with 1 CPU reserved,
the learner in the driver process on the CPU; Atari preprocessing (no-op starts, frame skip 4
with max-pool, 84x84 gray, stack 4, episodic life, fire reset, clipped rewards; RLlib's own
``wrap_atari_for_new_api_stack`` on a ``frameskip=1`` env); the Nature CNN (3 conv layers,
512-unit hidden layer, linear Q head, no dueling); Double-Q Huber loss, Adam (lr 6.25e-5,
eps 1.5e-4), grad-norm clip 10, gamma 0.99, 1-step returns, uniform replay of 10k
transitions, batch 32, replay ratio 0.25 (one update of 32 per 4 env steps; RLlib:
``training_intensity`` chosen so its round-robin does 8 updates per 32 sampled steps), target
copy every 8000 env steps, learning after 1000 env steps, the same linear epsilon schedule.
Both sides' rollout actors run at nice 0 (Ray starts workers at nice 15; reinforge's rollout
workers ask for 0, and the RLlib env runner is given the same), and both learners use one
torch thread (the core the rollout actor does not hold; reinforge's learner sets this itself,
RLlib's local learner gets ``torch.set_num_threads(1)`` in the driver; with torch's default of
2 threads next to a busy env runner the RLlib learner oversubscribes the 2 cores and is far
slower, which would flatter reinforge).

Measured: env steps/s over a timed window that starts only after learning has begun (so both
sides are sampling AND training), plus the updates per env step actually achieved, so a
faster side cannot win by training less.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

from _common import parse_args, print_table, write_results

ENV_ID = "ALE/Pong-v5"
ENVS = 8
BATCH = 32
REPLAY_RATIO = 0.25
LEARNING_STARTS = 1_000
BUFFER = 10_000
LR, ADAM_EPS, GAMMA, GRAD_CLIP = 6.25e-5, 1.5e-4, 0.99, 10.0
TARGET_EVERY_STEPS = 8_000
EPS_DECAY = 250_000


def bench_reinforge(timed_steps: int, seed: int = 0) -> dict:
    from cluster.rundir import RunDir
    from rl.dqn import DQNConfig
    from rl.dqn_learner import train
    from rl.envs import EnvConfig
    from rl.rollout import RolloutConfig

    warm = LEARNING_STARTS + 512
    cfg = DQNConfig(algo="ddqn", total_steps=warm + timed_steps, learning_rate=LR, adam_eps=ADAM_EPS, gamma=GAMMA,
                    batch_size=BATCH, buffer_size=BUFFER, learning_starts=LEARNING_STARTS, replay_ratio=REPLAY_RATIO,
                    target_update_every=int(TARGET_EVERY_STEPS * REPLAY_RATIO), max_grad_norm=GRAD_CLIP,
                    epsilon_decay_steps=EPS_DECAY, log_every=256, checkpoint_every=10**9, eval_episodes=0)
    roll = RolloutConfig(num_workers=1, envs_per_worker=ENVS, cpus_per_worker=1.0, steps_per_sample=32)
    marks: list[tuple[float, int, int]] = []
    with tempfile.TemporaryDirectory() as tmp, RunDir(Path(tmp) / "run", tensorboard=False) as rd:
        train(EnvConfig(id=ENV_ID), roll, cfg, rd, seed=seed,
              on_log=lambda row, _g: marks.append((time.perf_counter(), row["env_steps"], row["updates"])))
    return _window(marks, warm)


def bench_update_bound(updates: int, threads: int, seed: int = 0) -> dict:
    """The same update arithmetic alone: Double-Q Huber steps on batches of 32 Pong stacks
    (the online and target Nature CNNs, Adam, grad clip), on ``threads`` torch threads, no env,
    no Ray. At one update per 1/replay_ratio env steps this bounds the loop's env steps/s."""
    import copy

    import numpy as np
    import torch

    from rl.dqn import DQNConfig, build_q_network, q_update
    from rl.dqn_learner import net_spec
    from rl.envs import EnvConfig, make_vector_env
    from rl.threads import learner_threads

    probe = make_vector_env(EnvConfig(id=ENV_ID), 1, seed=seed, training=True)
    obs_space, n = probe.single_observation_space, int(probe.single_action_space.n)
    probe.close()
    online = build_q_network(obs_space, n, **net_spec(DQNConfig(algo="ddqn")))
    target = copy.deepcopy(online).requires_grad_(False)
    opt = torch.optim.Adam(online.parameters(), lr=LR, eps=ADAM_EPS)
    rng = np.random.default_rng(seed)
    shape = (BATCH, *obs_space.shape)
    batch = {"obs": torch.as_tensor(rng.integers(0, 255, shape, dtype=np.uint8)),
             "next_obs": torch.as_tensor(rng.integers(0, 255, shape, dtype=np.uint8)),
             "actions": torch.as_tensor(rng.integers(0, n, BATCH)), "returns": torch.randn(BATCH),
             "dones": torch.zeros(BATCH), "discounts": torch.full((BATCH,), GAMMA), "weights": torch.ones(BATCH)}
    with learner_threads(threads):
        for _ in range(8):
            q_update(online, target, opt, batch, True, GRAD_CLIP)
        t0 = time.perf_counter()
        for _ in range(updates):
            q_update(online, target, opt, batch, True, GRAD_CLIP)
        secs = time.perf_counter() - t0
    return {"env_steps_per_s": updates / secs / REPLAY_RATIO, "updates_per_s": updates / secs,
            "updates_per_env_step": REPLAY_RATIO, "timed_env_steps": int(updates / REPLAY_RATIO), "seconds": secs,
            "threads": threads}


def _window(marks: list[tuple[float, int, int]], warm: int) -> dict:
    """Rate between the first mark at or past ``warm`` env steps and the last mark."""
    start = next((m for m in marks if m[1] >= warm), None)
    end = marks[-1]
    if start is None or end[1] <= start[1]:
        return {"env_steps_per_s": math.nan, "updates_per_env_step": math.nan, "timed_env_steps": 0, "seconds": 0.0}
    steps, updates, secs = end[1] - start[1], end[2] - start[2], end[0] - start[0]
    return {"env_steps_per_s": steps / secs, "updates_per_env_step": updates / steps, "timed_env_steps": steps,
            "seconds": secs, "updates_per_s": updates / secs}


def _rllib_env(ctx=None):
    from rl.envs import EnvConfig
    from rl.rllib_backend import make_rllib_env

    return make_rllib_env(EnvConfig(id=ENV_ID), clip_rewards=True)


def _nice0(_runner) -> int:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass
    return os.getpriority(os.PRIO_PROCESS, 0)


def rllib_config(seed: int = 0):
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.tune.registry import register_env

    from rl.rllib_backend import NATURE_CONV

    register_env("reinforge-bench-pong", _rllib_env)
    fragment, runners = 4, 1
    sampled_per_iter = fragment * ENVS * runners  # 32 env steps per round-robin turn
    updates_per_turn = REPLAY_RATIO * sampled_per_iter  # 8 updates of 32
    native_ratio = BATCH / (fragment * ENVS * (runners + 1))  # RLlib's calculate_rr_weights
    return (
        DQNConfig()
        .environment(env="reinforge-bench-pong")
        .env_runners(num_env_runners=runners, num_envs_per_env_runner=ENVS, rollout_fragment_length=fragment,
                     num_cpus_per_env_runner=1)
        .learners(num_learners=0, num_gpus_per_learner=0)
        .training(lr=LR, adam_epsilon=ADAM_EPS, gamma=GAMMA, grad_clip=GRAD_CLIP, grad_clip_by="global_norm",
                  train_batch_size_per_learner=BATCH, double_q=True, dueling=False, n_step=1, num_atoms=1,
                  noisy=False, td_error_loss_fn="huber", target_network_update_freq=TARGET_EVERY_STEPS,
                  num_steps_sampled_before_learning_starts=LEARNING_STARTS,
                  training_intensity=updates_per_turn * native_ratio,
                  replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": BUFFER},
                  epsilon=[(0, 1.0), (EPS_DECAY, 0.01)])
        .rl_module(model_config=DefaultModelConfig(conv_filters=NATURE_CONV, conv_activation="relu",
                                                   head_fcnet_hiddens=[512], head_fcnet_activation="relu"))
        .reporting(min_sample_timesteps_per_iteration=64)
        .debugging(seed=seed, log_level="ERROR")
    )


def _find(d, *keys, default=0):
    """First of ``keys`` found anywhere in RLlib's nested result dict."""
    stack = [d]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            for k in keys:
                if k in cur and not isinstance(cur[k], dict):
                    return cur[k]
            stack.extend(v for v in cur.values() if isinstance(v, dict))
    return default


def bench_rllib(timed_steps: int, max_seconds: float, seed: int = 0) -> dict:
    """Train until ``timed_steps`` env steps past the warm-up, or ``max_seconds`` of the window."""
    import torch

    torch.set_num_threads(1)  # the local learner lives in this process (see the docstring)
    algo = rllib_config(seed).build_algo()
    try:
        algo.env_runner_group.foreach_env_runner(_nice0, local_env_runner=False)
        warm = LEARNING_STARTS + 64
        marks: list[tuple[float, int, int]] = []
        t_warm = None
        while not marks or (marks[-1][1] < warm + timed_steps and
                            (t_warm is None or time.perf_counter() - t_warm < max_seconds)):
            result = algo.train()
            steps = int(_find(result.get("env_runners", {}), "num_env_steps_sampled_lifetime"))
            trained = int(_find(result.get("learners", {}), "num_module_steps_trained_lifetime",
                                "num_env_steps_trained_lifetime"))
            marks.append((time.perf_counter(), steps, trained // BATCH))
            if t_warm is None and steps >= warm:
                t_warm = marks[-1][0]
    finally:
        algo.stop()
    return _window(marks, warm)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])

    from cluster.runtime import connect, shutdown

    ours_steps, rllib_steps, rllib_s = (2_048, 1_024, 40.0) if args.quick else (8_192, 4_096, 180.0)
    from rl.threads import all_cores, free_cores

    connect(num_cpus=2)
    try:
        rllib = bench_rllib(rllib_steps, rllib_s)
        ours = bench_reinforge(ours_steps)
    finally:
        shutdown()
    # the learner runs on the cores its actor does not hold while the actor samples, and on
    # every core while the actor waits for it: the bound is the update alone on every core
    n = 256 if args.quick else 1024
    bound, bound_free = bench_update_bound(n, all_cores()), bench_update_bound(n, free_cores(1, 1.0))
    rows = [
        {"system": "reinforge DDQN (1 actor x 8 envs + learner)", **ours, "of_bound": ours["env_steps_per_s"]
         / bound["env_steps_per_s"]},
        {"system": "RLlib DQN new stack (1 env runner x 8 envs + local learner)", **rllib,
         "of_bound": rllib["env_steps_per_s"] / bound["env_steps_per_s"]},
        {"system": f"bound: the update alone, {bound['threads']} threads, 4 env steps per update", **bound},
        {"system": f"the update alone, {bound_free['threads']} thread(s)", **bound_free},
    ]
    for r in rows:
        r["vs_rllib"] = r["env_steps_per_s"] / rllib["env_steps_per_s"]
    print_table(rows, ["system", "env_steps_per_s", "updates_per_env_step", "timed_env_steps", "vs_rllib",
                       "of_bound"],
                title="Pong Double DQN training throughput (timed after learning starts)")
    print(f"wrote {write_results('dqn', rows, args.out, env=ENV_ID, envs=ENVS, batch=BATCH, replay_ratio=REPLAY_RATIO)}")


if __name__ == "__main__":
    main()
