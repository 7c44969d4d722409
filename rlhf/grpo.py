"""GRPO, group relative policy optimisation (Shao et al. 2024, DeepSeekMath; the recipe of
DeepSeek-R1), written by hand beside PPO on the same rollout and scoring actors. No critic:
the baseline is the group of G completions sampled for the same prompt.

For each prompt x, completions y_1..y_G ~ pi_old(. | x) with rewards r_1..r_G:

    A_i    = (r_i - mean(r)) / (std(r) + eps)          (group_advantages; Dr. GRPO: A_i = r_i - mean(r))
    rho_t  = pi(y_t | x, y_<t) / pi_old(y_t | x, y_<t)
    k3_t   = pi_ref(y_t) / pi(y_t) - log(pi_ref(y_t) / pi(y_t)) - 1          (k3_kl: KL(pi || pi_ref))
    L      = -mean_t min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps) A_i)  +  beta * mean_t k3_t

the means over every real completion token of the minibatch. The KL to the frozen reference
is a loss term with coefficient beta (``grpo.kl_coef``, 0 allowed), not a reward penalty as in
PPO.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cluster.errors import ConfigError
from rlhf.models import PolicyTraining
from rlhf.ppo import (
    PolicyLearner,
    RLLoopSettings,
    _unshared,
    as_prompts,
    gradient_step,
    k3_kl,
    masked_mean,
    minibatches,
)

# --- the equations ------------------------------------------------------------------------


def group_advantages(rewards, group_size: int, scale_rewards: bool = True, eps: float = 1e-4):
    """(r_i - mean of its group) / (std of its group + eps) for rewards laid out group after
    group (B = prompts x G); without ``scale_rewards`` (Dr. GRPO, Liu et al. 2025) the std
    division is left out. Returns B advantages, one per completion."""
    r = rewards.view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale_rewards:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip: float = 0.2, beta: float = 0.0):
    """The clipped surrogate over tokens plus beta times the k3 KL to the reference. ``logp``,
    ``old_logp``, ``ref_logp``, ``mask``: B x L; ``advantages``: B (one per completion).
    Returns (loss, policy loss, KL to the reference, clip fraction)."""
    import torch

    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    surrogate = torch.min(ratio * a, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * a)
    policy_loss = -masked_mean(surrogate, mask)
    kl = k3_kl(ref_logp, logp, mask)  # ratio pi_ref / pi over samples of pi: KL(pi || pi_ref)
    clipfrac = masked_mean(((ratio - 1.0).abs() > clip).float(), mask)
    return policy_loss + beta * kl, policy_loss, kl, clipfrac


# --- the configuration --------------------------------------------------------------------


@dataclass
class GRPOStageConfig(PolicyTraining, RLLoopSettings):
    iterations: int = 40
    batch_size: int = 8  # prompts per iteration; each sampled group_size times
    group_size: int = 8  # G completions per prompt
    max_new_tokens: int = 112
    update_epochs: int = 1  # passes over each iteration's completions
    minibatch_size: int = 32  # completions per gradient step
    learning_rate: float = 1e-4
    clip_range: float = 0.2
    kl_coef: float = 0.04  # beta of the KL-to-reference loss term; 0 drops it
    scale_rewards: bool = True  # divide by the group's std; false = Dr. GRPO
    missing_eos_penalty: float = 0.0  # subtracted from the reward of completions without <eos>

    def validate(self) -> None:
        for k in ("iterations", "batch_size", "max_new_tokens", "update_epochs", "minibatch_size",
                  "num_rollout_workers", "eval_every", "eval_prompts", "checkpoint_every"):
            if getattr(self, k) < 1:
                raise ConfigError(f"grpo.{k} must be >= 1, got {getattr(self, k)}")
        if self.group_size < 2:
            raise ConfigError(f"grpo.group_size must be >= 2 (the group is the baseline), got {self.group_size}")
        if self.learning_rate <= 0 or self.max_grad_norm <= 0 or self.actor_cpus <= 0:
            raise ConfigError("grpo.learning_rate, grpo.max_grad_norm and grpo.actor_cpus must be > 0")
        if not 0 < self.clip_range < 1 or self.kl_coef < 0:
            raise ConfigError("need 0 < grpo.clip_range < 1 and grpo.kl_coef >= 0")
        if self.missing_eos_penalty < 0:
            raise ConfigError(f"grpo.missing_eos_penalty must be >= 0, got {self.missing_eos_penalty}")
        self.validate_policy_training("grpo")


# --- the learner --------------------------------------------------------------------------


class GRPOLearner(PolicyLearner):
    """The policy and the frozen-prior actors; ``iteration()`` = G samples per prompt, group
    advantages, the clipped update."""

    def rollout(self, prompts) -> dict[str, Any]:
        import torch

        from rlhf.models import autocast, completion_logprobs

        ro = self.rollouts.sample(prompts, self.cfg.max_new_tokens, self.device)
        with torch.no_grad(), autocast(self.device):
            logp, entropy = completion_logprobs(self.policy, ro["batch"])
        mask = ro["batch"]["completion_mask"]
        return {**ro, "logp": logp, "kl_seq": ((logp - ro["ref_logp"]) * mask).sum(1),
                "entropy": masked_mean(entropy, mask), "lengths": mask.sum(1).float()}

    def update(self, ro: dict[str, Any], advantages) -> dict[str, float]:

        from rlhf.models import autocast, completion_logprobs

        cfg = self.cfg
        B = ro["logp"].shape[0]
        stats: dict[str, list[float]] = {"policy_loss": [], "kl_loss": [], "clip_fraction": [], "approx_kl": []}
        self.policy.train()
        for idx, mb, mask in minibatches(self.rng, ro["batch"], B, cfg.update_epochs, cfg.minibatch_size):
            with autocast(self.device):
                logp, _ = completion_logprobs(self.policy, mb)
            loss, pg, kl, clipfrac = grpo_loss(logp, ro["logp"][idx], ro["ref_logp"][idx], advantages[idx], mask,
                                               cfg.clip_range, cfg.kl_coef)
            gradient_step(self.policy, self.opt_pi, loss, cfg.max_grad_norm)
            approx_kl = k3_kl(logp.detach(), ro["logp"][idx], mask)
            for k, x in zip(stats, (pg, kl, clipfrac, approx_kl)):
                stats[k].append(float(x.detach()))
        self.policy.eval()
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def iteration(self, prompts) -> dict[str, float]:
        t0 = time.perf_counter()
        ro = self.rollout(as_prompts(prompts).repeat_each(self.cfg.group_size))
        t1 = time.perf_counter()
        adv = group_advantages(ro["penalised"], self.cfg.group_size, self.cfg.scale_rewards)
        stats = self.update(ro, adv)
        self.push_weights()
        self.iteration_done += 1
        groups = ro["scores"].view(-1, self.cfg.group_size)
        out = {"proxy_reward": float(ro["scores"].mean()), "reward_std": float(groups.std(dim=1).mean()),
               "kl": float(ro["kl_seq"].mean()), "entropy": float(ro["entropy"]),
               "eos_fraction": float(ro["has_eos"].mean()), "completion_length": float(ro["lengths"].mean()),
               "rollout_s": t1 - t0, "iteration_s": time.perf_counter() - t0, **stats}
        if ro["gold"] is not None:  # evaluation only: the policy never sees it
            out["gold_reward"] = float(np.mean(ro["gold"]))
        return out

    def state(self) -> dict[str, Any]:
        return {"model": _unshared(self.policy.state_dict()), "optimizer": self.opt_pi.state_dict(),
                "state": {"iteration": self.iteration_done, "rng": self.rng.bit_generator.state}}

    def restore(self, objects: dict[str, Any]) -> None:
        self.policy.load_state_dict(objects["model"], strict=False)
        self.policy.tie_weights()
        self.opt_pi.load_state_dict(objects["optimizer"])
        self.iteration_done = int(objects["state"]["iteration"])
        self.rng.bit_generator.state = objects["state"]["rng"]
        self.use_config_hyperparameters()
        self.push_weights()


def train_grpo(cfg: GRPOStageConfig, sft_dir: Path, reward_dir: Path | None, train, held, out_dir: Path,
               run_dir=None, seed: int = 0, device: str = "auto", log=print, reward=None, task=None,
               allow_pickle: bool = False) -> dict[str, Any]:
    """Run GRPO from the SFT artifact against the reward (model, function or both); save the
    policy as a ``grpo`` artifact. Resumes from the run dir's latest checkpoint."""
    from cluster.runtime import select_device
    from rlhf.models import load_policy
    from rlhf.ppo import run_and_save
    from rlhf.rewards import reward_model_spec

    dev = select_device(device)
    policy, tok = load_policy(sft_dir, "--sft", allow_pickle)
    reward_spec, offset = None, 0.0
    if reward_dir is not None:
        _, reward_spec, offset = reward_model_spec(reward_dir, tok, sft_dir, allow_pickle)
    learner = GRPOLearner(cfg, policy, tok, reward_spec, offset, reward=reward, task=task, seed=seed, device=str(dev))
    return run_and_save(learner, "grpo", train, held, out_dir, run_dir, log, sft_dir, reward_dir, task,
                        group_size=cfg.group_size)
