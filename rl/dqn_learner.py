"""The DQN learner loop: rollout actors feed a replay memory; the learner samples and updates.

    workers (Ray actors, rl.rollout) --segments--> ReplayMemory --batches--> q_update (rl.dqn)
          ^                                                                      |
          +---------------- weights (one ray.put per sync) -----------------------+

One request per worker stays in flight while the learner trains, so acting and learning
overlap; the learner keeps ``replay_ratio`` gradient updates per env step (when it falls
behind, workers wait with a finished segment). Resume: networks, optimizer, step and update
counters (hence the epsilon and beta schedules) come back from the latest checkpoint; the
replay memory is refilled (``learning_starts`` fresh steps) before updates continue.
"""

from __future__ import annotations

import copy
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cluster.checkpoint import load_checkpoint
from cluster.errors import ConfigError, ReinforgeError
from cluster.progress import progress
from rl.dqn import DQNConfig, QPolicy, build_q_network, hard_update, linear_epsilon, polyak_update, q_update
from rl.envs import EnvConfig, check_env_id, is_atari, make_env
from rl.networks import NatureCNN, load_torso
from rl.replay import ReplayMemory
from rl.rollout import RolloutConfig, RolloutGroup
from rl.threads import free_cores, learner_threads


def net_spec(cfg: DQNConfig) -> dict[str, Any]:
    return {"torso": cfg.torso, "hidden": list(cfg.hidden) if cfg.hidden else None, "dueling": cfg.dueling,
            "head_hidden": cfg.head_hidden}


def observation_space(env_cfg: EnvConfig):
    """The workers' observation space, known before any actor starts (Atari: from the config;
    other ids: a throwaway env)."""
    import gymnasium as gym

    if is_atari(env_cfg.id):
        size = env_cfg.screen_size
        return gym.spaces.Box(0, 255, (env_cfg.frame_stack, size, size), np.uint8)
    env = make_env(env_cfg, training=False)
    space = env.observation_space
    env.close()
    return space


def check_plan(cfg: DQNConfig, env_cfg: EnvConfig) -> None:
    """Plan-time refusals (before any actor starts): the torso fits the observations and the
    replay memory fits in free RAM."""
    from rl.networks import make_torso

    space = observation_space(env_cfg)
    make_torso(space, cfg.torso, tuple(cfg.hidden) if cfg.hidden else (256, 256))
    shape = space.shape[1:] if is_atari(env_cfg.id) and len(space.shape) == 3 else space.shape
    _check_replay_memory(cfg, int(np.prod(shape)) * np.dtype(space.dtype).itemsize)


def _check_replay_memory(cfg: DQNConfig, frame_bytes: int) -> None:
    import psutil

    need = cfg.buffer_size * (frame_bytes + 25)
    avail = psutil.virtual_memory().available
    if need > 0.8 * avail:
        fit = int(0.8 * avail // (frame_bytes + 25))
        raise ConfigError(f"rl.buffer_size={cfg.buffer_size} needs about {need / 2**30:.1f} GiB but only "
                          f"{avail / 2**30:.1f} GiB is free; use rl.buffer_size <= {fit}")


def _to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, device=device) for k, v in batch.items() if k != "indices"}


def train(env_cfg: EnvConfig, roll_cfg: RolloutConfig, cfg: DQNConfig, run_dir, seed: int = 0, device: str = "auto",
          keep_checkpoints: int = 3, on_log: Callable[[dict[str, Any], RolloutGroup], None] | None = None) -> dict[str, Any]:
    """Train and checkpoint; the final metrics (evaluation and plots are the pipeline's)."""
    from cluster.runtime import select_device

    dev = select_device(device)
    # leave the cores the workers reserved to them (``_train`` hands the learner the cores of
    # workers that wait for it, burst by burst)
    with learner_threads(free_cores(roll_cfg.num_workers, roll_cfg.cpus_per_worker) if dev.type == "cpu" else None):
        return _train(env_cfg, roll_cfg, cfg, run_dir, seed, dev, keep_checkpoints, on_log)


def _train(env_cfg: EnvConfig, roll_cfg: RolloutConfig, cfg: DQNConfig, run_dir, seed: int, dev: torch.device,
           keep_checkpoints: int, on_log) -> dict[str, Any]:
    torch.manual_seed(seed)
    spec = net_spec(cfg)
    check_env_id(env_cfg.id)
    check_plan(cfg, env_cfg)  # refuse before any actor starts
    group = RolloutGroup(env_cfg, roll_cfg, QPolicy,
                         {"net": spec, "exploration": cfg.exploration, "apex_base": cfg.apex_base,
                          "apex_alpha": cfg.apex_alpha}, seed=seed, newest_frame_only=True)
    bar = None
    try:
        obs_space, n_actions = group.observation_space, int(group.action_space.n)
        online = build_q_network(obs_space, n_actions, **spec)
        if cfg.init_encoder:
            if not isinstance(online.torso, NatureCNN):
                raise ConfigError("rl.init_encoder loads a NatureCNN torso, but this env has vector observations; drop it")
            load_torso(online.torso, cfg.init_encoder)
        online.to(dev)
        target = copy.deepcopy(online).requires_grad_(False)
        optimizer = torch.optim.Adam(online.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
        env_steps = updates = games = 0
        ckpt_path = run_dir.latest_checkpoint()
        if ckpt_path is not None:
            ckpt = load_checkpoint(ckpt_path)
            online.load_state_dict(ckpt["model"])
            target.load_state_dict(ckpt["target"])
            optimizer.load_state_dict(ckpt["optimizer"])
            state = ckpt["state"]
            env_steps, updates, games = int(state["env_steps"]), int(state["updates"]), int(state["games"])
        start_steps = env_steps
        k = group.frame_stack
        frame_shape = tuple(obs_space.shape[1:]) if k > 1 else tuple(obs_space.shape)
        replay = ReplayMemory(cfg.buffer_size, group.num_envs, frame_shape, k, obs_space.dtype, cfg.n_step, cfg.gamma,
                              cfg.prioritized, cfg.alpha, seed=seed)
        E = roll_cfg.envs_per_worker
        max_lag = max(16.0, roll_cfg.steps_per_sample * E * cfg.replay_ratio)
        group.put_weights(online.state_dict())

        def epsilon() -> float:
            return linear_epsilon(env_steps, cfg.epsilon_start, cfg.epsilon_end, cfg.epsilon_decay_steps)

        def beta() -> float:
            return min(1.0, cfg.beta_start + (1.0 - cfg.beta_start) * env_steps / cfg.total_steps)

        recent = deque(maxlen=100)  # episode_return: the last 100 games
        recent_len = deque(maxlen=100)
        last_metrics: dict[str, float] = {}
        fill_target = cfg.learning_starts
        collected = 0  # env steps since this process started (the replay refills on resume)
        due = 0.0  # updates owed under replay_ratio
        t_start = time.perf_counter()
        next_log = (env_steps // cfg.log_every + 1) * cfg.log_every
        next_ckpt = (env_steps // cfg.checkpoint_every + 1) * cfg.checkpoint_every
        bar = progress(cfg.total_steps, f"{cfg.algo.upper()} {env_cfg.id}", unit="step", initial=env_steps)
        row: dict[str, Any] = {}

        def log_now() -> None:
            nonlocal row
            elapsed = time.perf_counter() - t_start
            row = {
                "env_steps": env_steps, "updates": updates, "games": games,
                "episode_return": float(np.mean(recent)) if recent else math.nan,
                "episode_length": float(np.mean(recent_len)) if recent_len else math.nan,
                "epsilon": epsilon() if cfg.exploration == "linear" else cfg.apex_base,
                "env_steps_per_s": (env_steps - start_steps) / max(elapsed, 1e-9),
                "replay_size": len(replay), "worker_failures": group.failures, **last_metrics,
            }
            run_dir.log(row, step=env_steps)
            if on_log is not None:
                on_log(row, group)

        def checkpoint() -> None:
            run_dir.save_checkpoint(env_steps, {
                "model": online.state_dict(), "target": target.state_dict(), "optimizer": optimizer.state_dict(),
                "state": {"env_steps": env_steps, "updates": updates, "games": games, "algo": cfg.algo,
                          "epsilon": epsilon(), "net": spec, "num_actions": n_actions},
            }, keep=keep_checkpoints)

        depth = roll_cfg.queue_depth
        group.fill(depth, epsilon=epsilon())
        while env_steps < cfg.total_steps:
            can_train = collected >= fill_target and due >= 1.0
            for i, seg in group.ready(timeout=0 if can_train else 30.0, num_returns=roll_cfg.num_workers if can_train else 1):
                n = replay.add_segment(range(i * E, (i + 1) * E), seg)
                env_steps += n
                collected += n
                if collected >= fill_target:
                    due += n * cfg.replay_ratio
                recent.extend(seg["game_returns"])
                recent_len.extend(seg["game_lengths"])
                games += len(seg["game_returns"])
                bar.update(n)
            # keep the replay ratio: a worker gets its next request only once the learner has
            # caught up (restarted workers whose requests were lost get new ones here too)
            if due <= max_lag:
                group.fill(depth, epsilon=epsilon())
            if dev.type == "cpu" and due >= 1.0:  # the cores of workers that wait for the learner are free
                cores = free_cores(group.running_workers(), roll_cfg.cpus_per_worker)
                if cores != torch.get_num_threads():
                    torch.set_num_threads(cores)
            for _ in range(min(int(due), 16)):
                batch = replay.sample(cfg.batch_size, beta())
                last_metrics, td = q_update(online, target, optimizer, _to_device(batch, dev), cfg.double_q,
                                            cfg.max_grad_norm)
                replay.update_priorities(batch["indices"], td)
                updates += 1
                due -= 1.0
                if cfg.tau > 0:
                    polyak_update(target, online, cfg.tau)
                elif updates % cfg.target_update_every == 0:
                    hard_update(target, online)
                if updates % cfg.sync_weights_every == 0:
                    group.put_weights(online.state_dict())
            if env_steps >= next_log:
                log_now()
                next_log = (env_steps // cfg.log_every + 1) * cfg.log_every
                bar.update(0, episode_return=row["episode_return"], epsilon=row["epsilon"])
            if env_steps >= next_ckpt:
                checkpoint()
                next_ckpt = (env_steps // cfg.checkpoint_every + 1) * cfg.checkpoint_every
        log_now()
        checkpoint()
    finally:
        if bar is not None:
            bar.close()
        group.close()
    seconds = time.perf_counter() - t_start
    return {
        "env_steps": env_steps, "updates": updates, "games": games,
        "episode_return": row.get("episode_return", math.nan),
        "env_steps_per_s": (env_steps - start_steps) / max(seconds, 1e-9), "worker_failures": group.failures,
    }


def load_q_network(checkpoint, observation_space) -> torch.nn.Module:
    """Rebuild the online Q-network stored in a checkpoint written by ``train``."""
    state = checkpoint["state"]
    net = build_q_network(observation_space, int(state["num_actions"]), **state["net"])
    try:
        net.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise ReinforgeError(f"checkpoint {checkpoint.path} does not match this env's network: "
                             f"{str(exc).splitlines()[0]}") from None
    return net.eval()
