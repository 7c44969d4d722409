"""Actor-critic: the shared network and the learner updates for A2C, PPO and REINFORCE.

The network is a torso (Nature CNN for stacked Atari frames, MLP for vector observations,
both from ``rl.networks``) with two linear heads: policy logits ``pi(a|s)`` and a state
value ``V(s)``; orthogonal init as in the PPO/A2C reference implementations (torso gain
sqrt(2), policy head 0.01 so the first policy is near uniform, value head 1).

The learner consumes flat batches (see ``rl.ac_rollout.flatten_rollouts``) and applies:

* A2C: one gradient step on the whole rollout, ``L = L_pg + vf_coef L_V - ent_coef H``;
* PPO: ``update_epochs`` passes of shuffled minibatches on the clipped surrogate, with optional
  value clipping, advantage normalisation and an early stop when approx-KL > target_kl;
* REINFORCE: one gradient step on the whole episodes that ended (``rl.ac_rollout.WholeEpisodes``),
  ``L = L_REINFORCE + vf_coef L_V - ent_coef H``, with ``rl.baseline=value`` the value head as the
  baseline (trained towards ``G_t``, ``update_epochs`` steps per batch where the policy takes
  one) or ``none`` (the value head is left untrained). The advantages are not standardised
  (``rl.normalize_advantages`` is for A2C/PPO): subtracting the batch mean is itself a
  baseline and would blur the comparison of the two.

The equations themselves are in ``rl.policy_gradient``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from cluster.errors import ConfigError
from cluster.run_config import check_ranges
from rl import policy_gradient as pg

ALGOS = ("a2c", "ppo", "reinforce")
BASELINES = ("value", "none")
BACKENDS = ("native", "rllib")
OPTIMIZERS = ("adam", "rmsprop")


@dataclass
class ACConfig:
    """The ``rl`` section of an actor-critic experiment (defaults: PPO on Atari, Schulman 2017)."""

    algo: str = "ppo"  # ppo | a2c | reinforce
    baseline: str = "value"  # REINFORCE only: value (a learned V(s) baseline) | none
    backend: str = "native"  # native | rllib (RLlib's PPO on the same env preprocessing)
    total_steps: int = 10_000_000  # env steps (agent steps over all envs)
    rollout_length: int = 128  # T: steps per env per rollout
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True  # linear decay of the learning rate to 0 over total_steps
    optimizer: str = "adam"  # adam | rmsprop (A2C's classic choice)
    adam_eps: float = 1e-5
    gamma: float = 0.99
    gae_lambda: float = 0.95  # 1.0 gives plain n-step returns (classic A2C)
    update_epochs: int = 4  # PPO passes over each rollout (A2C: always 1; REINFORCE: the value baseline's steps)
    num_minibatches: int = 4  # PPO minibatches per epoch (A2C: always 1)
    clip_range: float = 0.1  # PPO ratio clip
    clip_value: bool = True  # PPO value clipping (with clip_range)
    normalize_advantages: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None  # stop the epochs early when approx-KL exceeds this
    hidden_sizes: tuple[int, ...] = (64, 64)  # MLP torso for vector observations
    shared_torso: bool = False  # MLP only: one torso for policy and value (the CNN is always shared)
    init_encoder: str | None = None  # safetensors torso (file or run dir with encoder/torso.safetensors)
    checkpoint_every: int = 100_000  # env steps between checkpoints (0: only at the end)
    log_every: int = 1  # updates between metric rows
    # true: the workers sample the next rollout during the update, acting with weights one
    # update old (more env steps/s; PPO's ratio is taken against the acting policy)
    overlap_rollouts: bool = False
    eval_episodes: int = 10  # greedy episodes at the end of training (0: skip)
    eval_epsilon: float = 0.0  # epsilon of the final evaluation (Atari: use 0.001-0.05)
    eval_max_steps: int = 108_000  # per evaluation episode

    def validate(self) -> None:
        if self.algo not in ALGOS:
            raise ConfigError(f"rl.algo={self.algo!r} is not an actor-critic algorithm; use one of {', '.join(ALGOS)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend rl.backend={self.backend!r}; use native or rllib")
        if self.baseline not in BASELINES:
            raise ConfigError(f"unknown baseline rl.baseline={self.baseline!r}; use value or none")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer rl.optimizer={self.optimizer!r}; use adam or rmsprop")
        check_ranges("rl", self, {
            **dict.fromkeys(("total_steps", "rollout_length", "update_epochs", "num_minibatches", "log_every",
                             "eval_max_steps"), ">= 1"),
            "gamma": "(0, 1]", "gae_lambda": "[0, 1]",
            "learning_rate": "> 0", "adam_eps": "> 0", "clip_range": "> 0", "max_grad_norm": "> 0",
            "ent_coef": ">= 0", "vf_coef": ">= 0",
            "target_kl": ("> 0", "or null for no early stop"),
            "hidden_sizes": (">= 1", "units per MLP layer"),
            "checkpoint_every": (">= 0", "0: only at the end"),
            "eval_episodes": (">= 0", "0: no final evaluation"), "eval_epsilon": "[0, 1]",
        })

    def check_batch(self, num_envs: int) -> None:
        """The rollout (T x envs) must split into equal minibatches."""
        batch = self.rollout_length * num_envs
        if self.algo == "ppo" and batch % self.num_minibatches:
            fits = [d for d in range(1, min(batch, 64) + 1) if batch % d == 0]
            near = min(fits, key=lambda d: abs(d - self.num_minibatches))
            raise ConfigError(
                f"rollout of {batch} steps (rl.rollout_length={self.rollout_length} x {num_envs} envs) does not "
                f"divide into rl.num_minibatches={self.num_minibatches}; use e.g. rl.num_minibatches={near} "
                "or change rl.rollout_length"
            )


# --- the network ----------------------------------------------------------------------------
def orthogonal_init(module: nn.Module, gain: float) -> nn.Module:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.orthogonal_(m.weight, gain)
            nn.init.zeros_(m.bias)
    return module


class ActorCritic(nn.Module):
    """``obs -> torso -> (policy logits, V(s))`` for a discrete action space."""

    def __init__(self, torso: nn.Module, num_actions: int, critic_torso: nn.Module | None = None):
        super().__init__()
        self.torso = orthogonal_init(torso, gain=float(np.sqrt(2.0)))
        # A separate critic torso (the MLP default): for small vector tasks the value loss's large
        # gradients otherwise swamp the policy's in a shared torso. Atari shares the CNN.
        self.critic_torso = orthogonal_init(critic_torso, float(np.sqrt(2.0))) if critic_torso is not None else None
        self.policy = orthogonal_init(nn.Linear(torso.out_features, num_actions), gain=0.01)
        self.value = orthogonal_init(nn.Linear(torso.out_features, 1), gain=1.0)
        self.num_actions = num_actions

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.torso(obs)
        hv = h if self.critic_torso is None else self.critic_torso(obs)
        return self.policy(h), self.value(hv).squeeze(-1)

    def distribution(self, obs: torch.Tensor) -> tuple[Categorical, torch.Tensor]:
        logits, value = self(obs)
        return Categorical(logits=logits, validate_args=False), value

    @torch.inference_mode()
    def act(self, obs: np.ndarray, greedy: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample (or argmax) actions for a batch of observations: ``(action, logprob, value)``."""
        dist, value = self.distribution(self._tensor(obs))
        action = dist.probs.argmax(-1) if greedy else dist.sample()
        return action.cpu().numpy(), dist.log_prob(action).cpu().numpy(), value.cpu().numpy()

    @torch.inference_mode()
    def values(self, obs: np.ndarray) -> np.ndarray:
        return self(self._tensor(obs))[1].cpu().numpy()

    def _tensor(self, obs: np.ndarray) -> torch.Tensor:
        obs = np.asarray(obs)
        if not obs.flags.writeable:  # zero-copy from Ray's object store: torch wants its own copy
            obs = obs.copy()
        return torch.as_tensor(obs, device=next(self.parameters()).device)


def build_actor_critic(observation_space, action_space, cfg: ACConfig) -> ActorCritic:
    """The network for these spaces; refuses continuous actions with one line."""
    import gymnasium as gym

    from rl.networks import NatureCNN, load_torso, make_torso

    if not isinstance(action_space, gym.spaces.Discrete):
        raise ConfigError(
            f"{cfg.algo.upper()} here needs a discrete action space, got {type(action_space).__name__}"
            f"{getattr(action_space, 'shape', '')}; pick an env with discrete actions (Atari, CartPole-v1)"
        )
    torso = make_torso(observation_space, hidden=tuple(cfg.hidden_sizes))
    critic = None
    if not cfg.shared_torso and not isinstance(torso, NatureCNN):
        critic = make_torso(observation_space, hidden=tuple(cfg.hidden_sizes))
    model = ActorCritic(torso, int(action_space.n), critic)
    if cfg.init_encoder:
        load_torso(model.torso, cfg.init_encoder)  # after the orthogonal init, so it is kept
    return model


def make_optimizer(model: nn.Module, cfg: ACConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=cfg.learning_rate, alpha=0.99, eps=cfg.adam_eps)
    return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)


def annealed_lr(cfg: ACConfig, env_steps: int) -> float:
    """Linear decay ``lr * (1 - steps / total_steps)`` when ``anneal_lr`` (floored just above 0)."""
    if not cfg.anneal_lr:
        return cfg.learning_rate
    return cfg.learning_rate * max(1.0 - env_steps / cfg.total_steps, 1e-3)


# --- the updates ----------------------------------------------------------------------------
def _loss_terms(model: ActorCritic, mb: dict[str, torch.Tensor], cfg: ACConfig):
    dist, values = model.distribution(mb["obs"])
    logprobs = dist.log_prob(mb["actions"])
    adv = pg.normalize_advantages(mb["advantages"]) if cfg.normalize_advantages else mb["advantages"]
    entropy = pg.entropy_bonus(dist.entropy())
    return logprobs, values, adv, entropy


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, cfg: ACConfig) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    return float(grad_norm)


def a2c_update(model: ActorCritic, optimizer, batch: dict[str, torch.Tensor], cfg: ACConfig) -> dict[str, float]:
    """One synchronous advantage actor-critic step on the whole rollout."""
    logprobs, values, adv, entropy = _loss_terms(model, batch, cfg)
    policy_loss = pg.policy_gradient_loss(logprobs, adv)
    v_loss = pg.value_loss(values, batch["returns"])
    loss = policy_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
    grad_norm = _step(model, optimizer, loss, cfg)
    return {"policy_loss": policy_loss.item(), "value_loss": v_loss.item(), "entropy": entropy.item(),
            "grad_norm": grad_norm}


def reinforce_update(model: ActorCritic, optimizer, batch: dict[str, torch.Tensor], cfg: ACConfig) -> dict[str, float]:
    """One REINFORCE step on whole episodes: ``G_t - V(s_t)`` (or ``G_t``) weighs ``log pi``."""
    dist, values = model.distribution(batch["obs"])
    logprobs = dist.log_prob(batch["actions"])
    with_baseline = cfg.baseline == "value"
    policy_loss = pg.reinforce_loss(logprobs, batch["returns"], values if with_baseline else None)
    v_loss = pg.value_loss(values, batch["returns"])
    entropy = pg.entropy_bonus(dist.entropy())
    loss = policy_loss - cfg.ent_coef * entropy + (cfg.vf_coef * v_loss if with_baseline else 0.0)
    grad_norm = _step(model, optimizer, loss, cfg)
    # the policy takes one step (after it, the batch is off-policy); the baseline is a regression
    # onto G_t and may take more (one Adam step cannot follow returns that grow into the hundreds)
    for _ in range(cfg.update_epochs - 1 if with_baseline else 0):
        _step(model, optimizer, cfg.vf_coef * pg.value_loss(model(batch["obs"])[1], batch["returns"]), cfg)
    return {"policy_loss": policy_loss.item(), "value_loss": v_loss.item(), "entropy": entropy.item(),
            "grad_norm": grad_norm}


def ppo_update(model: ActorCritic, optimizer, batch: dict[str, torch.Tensor], cfg: ACConfig,
               generator: torch.Generator | None = None) -> dict[str, float]:
    """``update_epochs`` x ``num_minibatches`` clipped-surrogate steps; early stop on ``target_kl``."""
    n = batch["actions"].shape[0]
    mb_size = n // cfg.num_minibatches
    sums: dict[str, float] = {}
    count = 0
    epochs_run = 0
    for _ in range(cfg.update_epochs):
        epochs_run += 1
        perm = torch.randperm(n, generator=generator).to(batch["actions"].device)
        epoch_kl = []
        for start in range(0, mb_size * cfg.num_minibatches, mb_size):
            mb = {k: v[perm[start:start + mb_size]] for k, v in batch.items()}
            logprobs, values, adv, entropy = _loss_terms(model, mb, cfg)
            ratio = pg.probability_ratio(logprobs, mb["logprobs"])
            policy_loss = pg.clipped_surrogate(ratio, adv, cfg.clip_range)
            v_loss = pg.value_loss(values, mb["returns"], mb["values"] if cfg.clip_value else None, cfg.clip_range)
            loss = policy_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
            grad_norm = _step(model, optimizer, loss, cfg)
            with torch.no_grad():
                kl = float(pg.k3_kl(logprobs, mb["logprobs"]))
                row = {"policy_loss": policy_loss.item(), "value_loss": v_loss.item(), "entropy": entropy.item(),
                       "approx_kl": kl, "clip_fraction": float(pg.clip_fraction(ratio, cfg.clip_range)),
                       "grad_norm": grad_norm}
            for k, v in row.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            epoch_kl.append(kl)
        if cfg.target_kl is not None and float(np.mean(epoch_kl)) > cfg.target_kl:
            break
    out = {k: v / count for k, v in sums.items()}
    out["epochs_run"] = epochs_run
    return out


def update(model: ActorCritic, optimizer, batch: dict[str, Any], cfg: ACConfig, device: torch.device,
           generator: torch.Generator | None = None) -> dict[str, float]:
    """Move a flat numpy batch to ``device`` and run the algorithm's update."""
    tensors = {k: torch.as_tensor(v, device=device) for k, v in batch.items()}
    if cfg.algo == "a2c":
        return a2c_update(model, optimizer, tensors, cfg)
    if cfg.algo == "reinforce":
        return reinforce_update(model, optimizer, tensors, cfg)
    return ppo_update(model, optimizer, tensors, cfg, generator)
