"""``rl.backend=rllib``: RLlib's PPO (new API stack) with the settings of a native run, into the
same run directory with the same metric names, so the two backends compare on one harness.

What is matched: env id and Atari preprocessing (RLlib's own ``wrap_atari_for_new_api_stack``
on a ``frameskip=1`` env: no-op starts, frame skip 4 with max-pool, 84x84 grayscale, frame
stack 4, episodic life, fire reset; rewards clipped to their sign like ours), the number of
env runners and envs per runner (``rollout.num_workers`` x ``rollout.envs_per_worker``), the
rollout length, batch (= T x envs), minibatch (batch / num_minibatches), epochs, learning rate
(and its linear annealing), gamma, lambda, clip, value clip, entropy and value coefficients,
gradient clipping, and the network: the Nature-CNN conv stack with a 512-unit hidden layer,
or the MLP hidden sizes for vector observations.

What differs, honestly: RLlib's ``vf_clip_param`` clips the value *loss* (at its default 10)
rather than the value prediction (``clip_value`` maps to that, or to no clipping); RLlib puts the 512-unit layer in each head (policy and value) rather
than in the shared torso, and its ``episode_return_mean`` (logged as ``episode_return``) is per life-loss episode of the
clipped reward (for Pong the same as the game score; for games with lives it is not).

Checkpoints: the RLModule's weights in reinforge's safetensors format (``rllib_module`` in
``checkpoints/step_*``), never RLlib's own checkpoints, which always pickle; ``rl eval``
rebuilds the module from the config and loads them. ``--resume`` is refused for this backend
(restoring RLlib's optimizer state and counters would need its pickled checkpoints).
"""

from __future__ import annotations

import math
import time
from typing import Any

from cluster.errors import CheckpointError, ReinforgeError
from cluster.progress import progress
from rl.actor_critic import ACConfig

RLLIB_VF_CLIP = 10.0  # RLlib clips the value *loss* at this (its default), not the prediction
NATURE_CONV = [[32, 8, 4], [64, 4, 2], [64, 3, 1]]  # [filters, kernel, stride], valid padding


def make_rllib_env(env_cfg, clip_rewards: bool = True):
    """One env as RLlib's env runners see it (channels-last frames for its CNN encoder)."""
    import gymnasium as gym

    from rl.envs import _register, check_env_id, is_atari

    check_env_id(env_cfg.id)
    if not is_atari(env_cfg.id):
        return gym.make(env_cfg.id)
    from ray.rllib.env.wrappers.atari_wrappers import wrap_atari_for_new_api_stack

    _register()
    env = gym.make(env_cfg.id, frameskip=1, repeat_action_probability=env_cfg.sticky_actions,
                   full_action_space=False)
    env = wrap_atari_for_new_api_stack(env, dim=env_cfg.screen_size, frameskip=env_cfg.frame_skip,
                                       framestack=env_cfg.frame_stack)
    if clip_rewards:  # the helper leaves reward clipping to the caller
        import numpy as np

        env = gym.wrappers.TransformReward(env, lambda r: float(np.sign(r)))
    return env


def build_config(env_cfg, rollout_cfg, cfg: ACConfig, seed: int = 0, device: str = "auto"):
    """An RLlib ``PPOConfig`` with the same hyperparameters as the native run."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.tune.registry import register_env

    from cluster.runtime import select_device
    from rl.envs import is_atari

    if cfg.algo != "ppo":
        raise ReinforgeError(f"rl.backend=rllib runs PPO only, not {cfg.algo}; use --algo ppo or --backend native")
    name = f"reinforge-{env_cfg.id.replace('/', '-')}"
    register_env(name, lambda _ctx, e=env_cfg, c=env_cfg.clip_rewards: make_rllib_env(e, clip_rewards=c))
    num_envs = rollout_cfg.num_workers * rollout_cfg.envs_per_worker
    batch = cfg.rollout_length * num_envs
    lr: Any = cfg.learning_rate
    if cfg.anneal_lr:  # piecewise-linear schedule [[timestep, value], ...]
        lr = [[0, cfg.learning_rate], [cfg.total_steps, cfg.learning_rate * 1e-3]]
    if is_atari(env_cfg.id):
        model = DefaultModelConfig(conv_filters=NATURE_CONV, conv_activation="relu", head_fcnet_hiddens=[512],
                                   head_fcnet_activation="relu", vf_share_layers=True)
    else:
        model = DefaultModelConfig(fcnet_hiddens=list(cfg.hidden_sizes), fcnet_activation="relu",
                                   vf_share_layers=cfg.shared_torso)
    # the learner is local (num_learners=0): it needs a CUDA device in this process, whatever
    # GPUs the cluster advertises elsewhere
    use_gpu = select_device(device).type == "cuda"
    return (
        PPOConfig()
        .environment(env=name)
        .env_runners(num_env_runners=rollout_cfg.num_workers, num_envs_per_env_runner=rollout_cfg.envs_per_worker,
                     rollout_fragment_length=cfg.rollout_length, num_cpus_per_env_runner=rollout_cfg.cpus_per_worker)
        .learners(num_learners=0, num_gpus_per_learner=1 if use_gpu else 0)
        .training(lr=lr, gamma=cfg.gamma, lambda_=cfg.gae_lambda, clip_param=cfg.clip_range,
                  vf_clip_param=RLLIB_VF_CLIP if cfg.clip_value else math.inf, entropy_coeff=cfg.ent_coef,
                  vf_loss_coeff=cfg.vf_coef, grad_clip=cfg.max_grad_norm, grad_clip_by="global_norm",
                  num_epochs=cfg.update_epochs, minibatch_size=batch // cfg.num_minibatches,
                  train_batch_size_per_learner=batch,
                  # KL term computed (so approx_kl is reported) but weighted 0, like the native loss
                  use_kl_loss=True, kl_coeff=0.0)
        .rl_module(model_config=model)
        .debugging(seed=seed, log_level="ERROR")
        .reporting(metrics_num_episodes_for_smoothing=100)
    )


def _get(d: dict[str, Any], *path: str, default: Any = float("nan")) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def metrics_row(result: dict[str, Any], steps_at_start: int, t_start: float, iteration_s: float) -> dict[str, Any]:
    """RLlib's result dict under the native backend's metric names."""
    env_steps = int(_get(result, "env_runners", "num_env_steps_sampled_lifetime", default=0) or
                    _get(result, "num_env_steps_sampled_lifetime", default=0))
    learner = _get(result, "learners", "default_policy", default={})
    return {
        "env_steps": env_steps,
        "updates": int(result.get("training_iteration", 0)),
        "games": int(_get(result, "env_runners", "num_episodes_lifetime", default=0) or 0),
        "learning_rate": _get(learner, "default_optimizer_learning_rate"),
        "episode_return": _get(result, "env_runners", "episode_return_mean"),
        "episode_length": _get(result, "env_runners", "episode_len_mean"),
        "explained_variance": _get(learner, "vf_explained_var"),
        "env_steps_per_s": (env_steps - steps_at_start) / max(time.perf_counter() - t_start, 1e-9),
        "iteration_s": iteration_s,
        "policy_loss": _get(learner, "policy_loss"),
        "value_loss": _get(learner, "vf_loss"),
        "entropy": _get(learner, "entropy"),
        # RLlib reports the exact KL(old || new) of the action distributions, not the k3 sample estimate
        "approx_kl": _get(learner, "mean_kl_loss"),
    }


def train(env_cfg, rollout_cfg, cfg: ACConfig, run_dir, seed: int = 0, device: str = "auto",
          keep_checkpoints: int = 3) -> dict[str, Any]:
    if run_dir.latest_checkpoint() is not None:
        raise ReinforgeError("--resume is supported by the native backend only (RLlib's own checkpoints pickle); "
                             "start a new run with --backend rllib")
    algo = build_config(env_cfg, rollout_cfg, cfg, seed, device).build_algo()

    def save(env_steps: int) -> None:
        # the env runners' inference-only module (policy + what acting needs), synced after every update
        run_dir.save_checkpoint(env_steps, {"rllib_module": algo.get_module().state_dict(),
                                            "state": {"env_steps": env_steps, "backend": "rllib"}},
                                keep=keep_checkpoints)

    try:
        t_start = time.perf_counter()  # after build_algo: env-runner start-up is not counted
        row: dict[str, Any] = {"env_steps": 0}
        last_ckpt = 0
        bar = progress(cfg.total_steps, f"PPO (RLlib) {env_cfg.id}", unit="step")
        while row["env_steps"] < cfg.total_steps:
            t0 = time.perf_counter()
            result = algo.train()
            steps_before = row["env_steps"]
            row = metrics_row(result, 0, t_start, time.perf_counter() - t0)
            bar.update(row["env_steps"] - steps_before, episode_return=row["episode_return"])
            # a loss RLlib did not report this iteration is left out, not logged as NaN (which
            # the run dir reads as a diverged update)
            run_dir.log({k: v for k, v in row.items() if not ("loss" in k and v != v)}, step=row["env_steps"])
            if cfg.checkpoint_every and row["env_steps"] - last_ckpt >= cfg.checkpoint_every:
                save(row["env_steps"])
                last_ckpt = row["env_steps"]
        bar.close()
        save(row["env_steps"])
    finally:
        algo.stop()
    return {"env_steps": row.get("env_steps", 0), "updates": row.get("updates", 0), "games": row.get("games", 0),
            "episode_return": row.get("episode_return", float("nan")),
            "env_steps_per_s": row.get("env_steps_per_s", float("nan"))}


def load_rllib_policy(ckpt, env_cfg, rollout_cfg, cfg: ACConfig):
    """``obs batch (reinforge layout) -> logits`` from an RLlib-backend checkpoint's module weights."""
    import numpy as np
    import torch

    from rl.envs import is_atari

    if "rllib_module" not in ckpt.objects:
        raise CheckpointError(f"{ckpt.path} holds no RLlib module weights; was this run trained with --backend rllib?")
    env = make_rllib_env(env_cfg)
    module = build_config(env_cfg, rollout_cfg, cfg, device="cpu").get_rl_module_spec(env=env, inference_only=True).build()
    env.close()
    module.load_state_dict(ckpt.objects["rllib_module"])
    module.eval()
    atari = is_atari(env_cfg.id)

    def logits(obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs)
        if atari:  # reinforge frames (N, C, H, W) uint8 -> RLlib's (N, H, W, C) in [-1, 1]
            x = np.moveaxis(x, 1, -1).astype(np.float32) / 128.0 - 1.0
        with torch.no_grad():
            out = module.forward_inference({"obs": torch.as_tensor(x, dtype=torch.float32)})
        return out["action_dist_inputs"].numpy()

    return logits
