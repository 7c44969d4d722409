"""DQN and Double DQN: the update, in the notation of the papers.

    DQN (Mnih et al. 2015), n-step:
        y = R^(n) + gamma^n (1 - done) max_a' Q_target(s', a')                  td_target
    Double DQN (van Hasselt et al. 2015): the online network selects, the target evaluates
        a* = argmax_a' Q_online(s', a')
        y  = R^(n) + gamma^n (1 - done) Q_target(s', a*)                          double_q_target
    loss = mean_i w_i * huber(Q_online(s_i, a_i) - y_i)   (w_i: importance weights, 1 if uniform)
    target network: hard copy every C updates, or Polyak  theta' <- tau theta + (1 - tau) theta'

Exploration: epsilon-greedy with a global linear decay (default) or the fixed per-worker
ladder of Ape-X (Horgan et al. 2018): epsilon_i = base^(1 + alpha * i / (N - 1)).
The distributed loop that feeds this update lives in ``rl.dqn_learner``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cluster.errors import ConfigError
from cluster.run_config import check_ranges
from rl.networks import QNetwork, make_torso

ALGOS = ("dqn", "ddqn")


@dataclass
class DQNConfig:
    algo: str = "dqn"  # dqn | ddqn (Double DQN target)
    backend: str = "native"  # only native here (RLlib is offered for a2c/ppo)
    total_steps: int = 10_000_000  # env steps (agent steps, all envs together)
    learning_rate: float = 6.25e-5
    adam_eps: float = 1.5e-4
    gamma: float = 0.99
    batch_size: int = 32
    buffer_size: int = 1_000_000
    learning_starts: int = 20_000  # env steps before the first update
    replay_ratio: float = 0.25  # gradient updates per env step (Nature DQN: 1 per 4 steps)
    n_step: int = 1
    prioritized: bool = False
    alpha: float = 0.6  # priority exponent
    beta_start: float = 0.4  # importance-sampling exponent, annealed to 1 over total_steps
    dueling: bool = False
    target_update_every: int = 2_000  # learner updates between hard target copies (if tau == 0)
    tau: float = 0.0  # > 0: Polyak update after every learner update instead
    max_grad_norm: float = 10.0
    exploration: str = "linear"  # linear | apex
    epsilon_start: float = 1.0
    epsilon_end: float = 0.01
    epsilon_decay_steps: int = 250_000  # env steps of the linear decay
    apex_base: float = 0.4
    apex_alpha: float = 7.0
    torso: str = "auto"  # auto | cnn | mlp
    hidden: list[int] | None = None  # MLP torso sizes (default 256, 256)
    head_hidden: int = 0  # hidden layer in the Q head (0: linear head)
    sync_weights_every: int = 100  # learner updates between weight broadcasts to the workers
    init_encoder: str | None = None  # run dir or .safetensors with a pretrained NatureCNN torso
    checkpoint_every: int = 100_000  # env steps
    log_every: int = 5_000  # env steps
    eval_episodes: int = 10  # greedy episodes at the end of training (0: none)
    eval_epsilon: float = 0.05

    def validate(self) -> None:
        if self.algo not in ALGOS:
            import difflib

            close = difflib.get_close_matches(self.algo, ALGOS + ("a2c", "ppo"), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown algo {self.algo!r} for the DQN pipeline: use dqn or ddqn{hint}")
        if self.backend != "native":
            raise ConfigError(f"rl.backend={self.backend!r}: DQN runs only on the native backend; "
                              "drop --backend (RLlib is available for --algo a2c|ppo)")
        check_ranges("rl", self, {
            **dict.fromkeys(("total_steps", "batch_size", "buffer_size", "n_step", "target_update_every",
                             "sync_weights_every", "checkpoint_every", "log_every"), ">= 1"),
            "epsilon_decay_steps": (">= 0", "0: epsilon_end from the first step"),
            "learning_rate": "> 0", "adam_eps": "> 0", "replay_ratio": "> 0", "max_grad_norm": "> 0",
            "gamma": "(0, 1]", "tau": ("[0, 1)", "0: hard target copies"),
            "alpha": ("[0, 1]", "0: uniform replay"), "beta_start": "[0, 1]",
            "epsilon_start": "[0, 1]", "epsilon_end": "[0, 1]", "eval_epsilon": "[0, 1]",
            "apex_base": "(0, 1]", "apex_alpha": ">= 0",
            "hidden": (">= 1", "units per MLP layer"), "head_hidden": (">= 0", "0: linear head"),
            "eval_episodes": (">= 0", "0: no final evaluation"),
        })
        if self.learning_starts < self.batch_size:
            raise ConfigError(f"rl.learning_starts={self.learning_starts} must be >= rl.batch_size={self.batch_size}")
        if self.exploration not in ("linear", "apex"):
            raise ConfigError(f"rl.exploration={self.exploration!r}: use linear or apex")

    @property
    def double_q(self) -> bool:
        return self.algo == "ddqn"


# --- targets and loss -------------------------------------------------------------------------
def td_target(returns: torch.Tensor, dones: torch.Tensor, discounts: torch.Tensor,
              next_q_target: torch.Tensor) -> torch.Tensor:
    """y = R + gamma^n (1 - done) max_a' Q_target(s', a')."""
    return returns + discounts * (1.0 - dones) * next_q_target.max(dim=1).values


def double_q_target(returns: torch.Tensor, dones: torch.Tensor, discounts: torch.Tensor,
                    next_q_online: torch.Tensor, next_q_target: torch.Tensor) -> torch.Tensor:
    """y = R + gamma^n (1 - done) Q_target(s', argmax_a' Q_online(s', a'))."""
    a_star = next_q_online.argmax(dim=1, keepdim=True)
    return returns + discounts * (1.0 - dones) * next_q_target.gather(1, a_star).squeeze(1)


def huber_loss(q: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    per = F.smooth_l1_loss(q, y, reduction="none")  # Huber with delta = 1
    return (per * weights).mean() if weights is not None else per.mean()


def hard_update(target: torch.nn.Module, online: torch.nn.Module) -> None:
    target.load_state_dict(online.state_dict())


@torch.no_grad()
def polyak_update(target: torch.nn.Module, online: torch.nn.Module, tau: float) -> None:
    """theta' <- tau theta + (1 - tau) theta'."""
    for tp, op in zip(target.parameters(), online.parameters()):
        tp.mul_(1.0 - tau).add_(op, alpha=tau)


def q_update(online: torch.nn.Module, target: torch.nn.Module, optimizer: torch.optim.Optimizer,
             batch: dict[str, torch.Tensor], double_q: bool, max_grad_norm: float) -> tuple[dict[str, float], np.ndarray]:
    """One gradient step on the Huber TD loss; returns metrics and |TD errors| for priorities."""
    q = online(batch["obs"]).gather(1, batch["actions"].unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        next_q_target = target(batch["next_obs"])
        if double_q:
            y = double_q_target(batch["returns"], batch["dones"], batch["discounts"], online(batch["next_obs"]), next_q_target)
        else:
            y = td_target(batch["returns"], batch["dones"], batch["discounts"], next_q_target)
    loss = huber_loss(q, y, batch.get("weights"))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(online.parameters(), max_grad_norm)
    optimizer.step()
    td = (q - y).detach().abs().cpu().numpy()
    return {"loss": float(loss.detach()), "q_mean": float(q.mean().detach()), "grad_norm": float(grad_norm)}, td


# --- exploration -------------------------------------------------------------------------------
def linear_epsilon(step: int, start: float, end: float, decay_steps: int) -> float:
    frac = min(1.0, max(0.0, step / max(1, decay_steps)))
    return start + frac * (end - start)


def apex_epsilon(worker_index: int, num_workers: int, base: float = 0.4, alpha: float = 7.0) -> float:
    """epsilon_i = base^(1 + alpha * i / (N - 1)) (Ape-X's fixed per-worker ladder)."""
    if num_workers <= 1:
        return base
    return base ** (1.0 + alpha * worker_index / (num_workers - 1))


# --- networks and the rollout policy ------------------------------------------------------------
def build_q_network(observation_space, num_actions: int, torso: str = "auto", hidden: list[int] | None = None,
                    dueling: bool = False, head_hidden: int = 0) -> QNetwork:
    body = make_torso(observation_space, torso, tuple(hidden) if hidden else (256, 256))
    return QNetwork(body, num_actions, dueling=dueling, hidden=head_hidden)


class QPolicy:
    """Epsilon-greedy policy for rollout workers (see rl.rollout for the interface)."""

    def __init__(self, observation_space, action_space, *, worker_index: int = 0, num_workers: int = 1,
                 seed: int = 0, net: dict[str, Any] | None = None, exploration: str = "linear",
                 apex_base: float = 0.4, apex_alpha: float = 7.0):
        self.n = int(action_space.n)
        self.net = build_q_network(observation_space, self.n, **(net or {}))
        self.net.eval()
        self.rng = np.random.default_rng(seed)
        self.fixed_epsilon = (apex_epsilon(worker_index, num_workers, apex_base, apex_alpha)
                              if exploration == "apex" else None)

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})

    @torch.no_grad()
    def act(self, obs: np.ndarray, epsilon: float = 0.0) -> dict[str, np.ndarray]:
        eps = self.fixed_epsilon if self.fixed_epsilon is not None else float(epsilon)
        greedy = self.net(torch.as_tensor(obs)).argmax(dim=1).numpy()
        explore = self.rng.random(len(obs)) < eps
        action = np.where(explore, self.rng.integers(0, self.n, size=len(obs)), greedy)
        return {"action": action, "epsilon": np.full(len(obs), eps, dtype=np.float32)}
