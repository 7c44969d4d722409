"""The actor-critic training loop: Ray rollout actors -> GAE -> A2C/PPO update -> weights
(REINFORCE: -> whole episodes' returns -> REINFORCE update -> weights).

One iteration::

    weights --one ray.put--> N RolloutWorker actors (rl.rollout; each a vector env and a CPU
                             ActorCriticPolicy copy)
            <-- T-step segments (obs, actions, logprobs, values, rewards, terminated, truncated,
                                 bootstrap_values, last_obs, finished game returns)
    V(last_obs) -> GAE per segment -> flat batch -> a2c_update / ppo_update on the learner's
    device (the GPU when there is one)

A worker that dies mid-rollout is skipped for that iteration (Ray restarts it through
``rollout.max_restarts`` and it gets the weights again); training goes on with the others. Checkpoints hold the network, the
optimizer and the step counters; a resumed run continues from them (fresh env episodes).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from cluster.errors import ReinforgeError
from cluster.progress import progress
from rl.ac_rollout import ActorCriticPolicy, WholeEpisodes, flatten_rollouts
from rl.actor_critic import ACConfig, annealed_lr, build_actor_critic, make_optimizer, update
from rl.policy_gradient import explained_variance
from rl.threads import free_cores, learner_threads


def train(env_cfg, rollout_cfg, cfg: ACConfig, run_dir, seed: int = 0, device: str = "auto",
          keep_checkpoints: int = 3) -> dict[str, Any]:
    """Train and checkpoint; the final metrics (evaluation and plots are the pipeline's)."""
    from cluster.runtime import select_device

    dev = select_device(device)
    # synchronous: the workers wait for the new weights while the learner updates, so the update
    # gets every core; overlapped: they sample meanwhile, so only the cores they do not hold
    # (oversubscribing is far slower)
    running = rollout_cfg.num_workers if cfg.overlap_rollouts else 0
    cores = free_cores(running, rollout_cfg.cpus_per_worker) if dev.type == "cpu" else None
    with learner_threads(cores):
        return _train(env_cfg, rollout_cfg, cfg, run_dir, seed, dev, keep_checkpoints)


def _train(env_cfg, rollout_cfg, cfg: ACConfig, run_dir, seed: int, dev, keep_checkpoints: int) -> dict[str, Any]:
    import torch

    from cluster.checkpoint import load_checkpoint
    from rl.envs import make_vector_env
    from rl.rollout import RolloutGroup

    cfg.check_batch(rollout_cfg.num_workers * rollout_cfg.envs_per_worker)
    probe = make_vector_env(env_cfg, 1, seed=seed, training=True)
    obs_space, act_space = probe.single_observation_space, probe.single_action_space
    probe.close()
    model = build_actor_critic(obs_space, act_space, cfg).to(dev)
    optimizer = make_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(seed)
    env_steps = updates = games = 0
    latest = run_dir.latest_checkpoint()
    if latest is not None:
        ckpt = load_checkpoint(latest)
        model.load_state_dict(ckpt.objects["model"])
        optimizer.load_state_dict(ckpt.objects["optimizer"])
        state = ckpt.objects["state"]
        env_steps, updates, games = int(state["env_steps"]), int(state["updates"]), int(state.get("games", 0))
    if env_steps >= cfg.total_steps:
        raise ReinforgeError(f"run already finished ({env_steps} of rl.total_steps={cfg.total_steps} env steps); "
                             "raise rl.total_steps with --set to train further")

    def save() -> None:
        run_dir.save_checkpoint(env_steps, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                            "state": {"env_steps": env_steps, "updates": updates,
                                                      "games": games}},
                                keep=keep_checkpoints)

    # a resumed run gets fresh worker seeds (it does not replay the first run's episodes)
    group = RolloutGroup(env_cfg, rollout_cfg, ActorCriticPolicy, {"ac_cfg": cfg}, seed=seed + 1_000_003 * updates)
    episodes = WholeEpisodes()  # REINFORCE: each env's unfinished episode, kept between iterations
    recent = deque(maxlen=100)
    recent_len = deque(maxlen=100)
    last_ckpt = env_steps
    t_start = time.perf_counter()
    steps_at_start = env_steps
    row: dict[str, Any] = {}
    bar = progress(cfg.total_steps, f"{cfg.algo.upper()} {env_cfg.id}", unit="step", initial=env_steps)
    try:
        while env_steps < cfg.total_steps:
            t0 = time.perf_counter()
            lr = annealed_lr(cfg, env_steps)
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            if not cfg.overlap_rollouts:
                group.put_weights(model.state_dict())  # one ray.put, shared by every worker
            elif updates == 0 or not group.busy():  # the first rollout (or every request was lost)
                group.put_weights(model.state_dict())
            segments = group.sample(cfg.rollout_length)  # waits for the requests in flight
            if not segments:
                raise ReinforgeError("every rollout worker died in this iteration; "
                                     "check memory (fewer rollout.envs_per_worker) or raise rollout.max_restarts")
            t_roll = time.perf_counter() - t0
            sampled = sum(int(seg["env_steps"]) for seg in segments)
            if cfg.overlap_rollouts and env_steps + sampled < cfg.total_steps:
                # one step off-policy: the next rollout starts now, with the weights before this
                # update (sent before the bootstrap values and GAE, so the actor never waits on them)
                group.put_weights(model.state_dict())
                group.fill(1, cfg.rollout_length)
            for seg in segments:
                recent.extend(seg["game_returns"])
                recent_len.extend(seg["game_lengths"])
                games += len(seg["game_returns"])
                seg["last_values"] = model.values(seg["last_obs"])  # V(s_T) for bootstrapping, same weights
            if cfg.algo == "reinforce":
                batch = episodes.batch(segments, cfg.gamma)
                if not len(batch["actions"]):  # no episode ended yet: sample on with the same weights
                    env_steps += sampled
                    bar.update(sampled)
                    continue
            else:
                batch = flatten_rollouts(segments, cfg.gamma, cfg.gae_lambda)
            model.train()
            stats = update(model, optimizer, batch, cfg, dev, generator)
            model.eval()
            updates += 1
            env_steps += sampled
            dt = time.perf_counter() - t0
            episode_return = float(np.mean(recent)) if recent else float("nan")
            bar.update(sampled, episode_return=episode_return)
            if updates % cfg.log_every == 0 or env_steps >= cfg.total_steps:
                row = {
                    "env_steps": env_steps, "updates": updates, "games": games, "learning_rate": lr,
                    "episode_return": episode_return,
                    "episode_length": float(np.mean(recent_len)) if recent_len else float("nan"),
                    "explained_variance": explained_variance(batch["values"], batch["returns"]),
                    "env_steps_per_s": env_steps_per_s(env_steps - steps_at_start, t_start),
                    "iteration_s": dt, "rollout_s": t_roll, "worker_failures": group.failures, **stats,
                }
                run_dir.log(row, step=env_steps)
            if cfg.checkpoint_every and env_steps - last_ckpt >= cfg.checkpoint_every:
                save()
                last_ckpt = env_steps
    finally:
        bar.close()
        group.close()
    save()
    return {"env_steps": env_steps, "updates": updates, "games": games,
            "episode_return": row.get("episode_return", float("nan")),
            "episode_length": row.get("episode_length", float("nan")),
            "env_steps_per_s": env_steps_per_s(env_steps - steps_at_start, t_start),
            "worker_failures": group.failures}


def env_steps_per_s(steps: int, t_start: float) -> float:
    return steps / max(time.perf_counter() - t_start, 1e-9)
