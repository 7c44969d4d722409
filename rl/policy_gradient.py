"""Policy-gradient losses for REINFORCE, A2C and PPO, one function per equation.

Shapes: rollouts are time-major, ``[T, N]`` (T steps of N parallel envs); the losses take
flat minibatches ``[B]``.

Generalised advantage estimation (Schulman et al. 2016)::

    delta_t = r_t + gamma * (1 - term_t) * V(s_{t+1}) - V(s_t)
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1},    done_t = term_t or trunc_t
    R_t     = A_t + V(s_t)                                           (the value target)

A *terminated* step (the game ended) has no future: it is not bootstrapped. A *truncated*
step (time limit) does have one: it is bootstrapped with the value of the episode's real
final observation, ``V(s_final)``, not with ``V`` of the next episode's first observation
that the vector env already returned. In both cases the recursion stops at the episode
boundary. With ``lambda = 1`` the same recursion gives A2C's n-step bootstrapped returns.

PPO's clipped surrogate (Schulman et al. 2017)::

    rho_t(theta) = pi_theta(a_t | s_t) / pi_old(a_t | s_t)
    L_clip       = - E[ min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t) ]

The total loss minimised by both algorithms is
``policy_loss + vf_coef * value_loss - ent_coef * entropy``.

REINFORCE (Williams 1992), on whole episodes: the Monte-Carlo return of each step, and the
score-function estimate of the policy gradient, with an optional baseline ``b(s_t)`` (a
learned ``V(s_t)``, trained by the same ``value_loss`` towards ``G_t``; it lowers the
variance and leaves the gradient's expectation unchanged)::

    G_t          = r_t + gamma * (1 - done_t) * G_{t+1}       (= sum_k gamma^k r_{t+k} to the episode's end)
    L_REINFORCE  = - E[ log pi(a_t | s_t) * (G_t - b(s_t)) ]   (b = 0 without a baseline)

Unlike A2C, nothing is bootstrapped: ``G_t`` is the return actually received (a time-limit
truncation ends the sum too), and ``V`` only ever serves as a baseline.
"""

from __future__ import annotations

import numpy as np
import torch


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    last_values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    gamma: float,
    lam: float,
    final_values: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and value targets ``(A, R)`` for a ``[T, N]`` rollout.

    ``values[t]`` is ``V(s_t)``; ``last_values`` (``[N]``) is ``V`` of the observation after the
    last step; ``final_values[t]`` is ``V`` of the true final observation of an episode that
    was truncated at step ``t`` (ignored elsewhere; zero if not given).
    """
    rewards = np.asarray(rewards, dtype=np.float32)
    values = np.asarray(values, dtype=np.float32)
    terminated = np.asarray(terminated, dtype=bool)
    truncated = np.asarray(truncated, dtype=bool) & ~terminated
    T = rewards.shape[0]
    if final_values is None:
        final_values = np.zeros_like(values)
    next_values = np.concatenate([values[1:], np.asarray(last_values, dtype=np.float32)[None]], axis=0)
    next_values = np.where(truncated, np.asarray(final_values, dtype=np.float32), next_values)
    not_terminal = 1.0 - terminated.astype(np.float32)
    not_done = 1.0 - (terminated | truncated).astype(np.float32)

    deltas = rewards + gamma * not_terminal * next_values - values
    advantages = np.zeros_like(values)
    running = np.zeros_like(values[0])
    for t in reversed(range(T)):
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + values


def discounted_returns(rewards: np.ndarray, dones: np.ndarray, gamma: float) -> np.ndarray:
    """``G_t`` along the first axis of ``rewards``; ``dones[t]`` marks the last step of an
    episode (several may follow each other), and the last row must end one."""
    rewards = np.asarray(rewards, dtype=np.float32)
    not_done = 1.0 - np.asarray(dones, dtype=np.float32)
    returns = np.zeros_like(rewards)
    running = np.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * not_done[t] * running
        returns[t] = running
    return returns


def reinforce_loss(logprobs: torch.Tensor, returns: torch.Tensor, baselines: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE's loss ``- E[ log pi(a_t|s_t) * (G_t - b(s_t)) ]``; the weights are constants
    (no gradient flows into the baseline through it)."""
    weights = returns if baselines is None else returns - baselines
    return -(logprobs * weights.detach()).mean()


def normalize_advantages(advantages: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-minibatch standardisation ``(A - mean) / (std + eps)`` (PPO's usual trick)."""
    if advantages.numel() < 2:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std() + eps)


def policy_gradient_loss(logprobs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """A2C's actor loss: ``- E[ log pi(a_t | s_t) * A_t ]`` (advantages are constants)."""
    return -(logprobs * advantages.detach()).mean()


def probability_ratio(new_logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    """``rho_t = pi_theta(a_t|s_t) / pi_old(a_t|s_t)``, computed in log space."""
    return torch.exp(new_logprobs - old_logprobs)


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO's actor loss ``- E[ min(rho A, clip(rho, 1-eps, 1+eps) A) ]`` (to be minimised)."""
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages
    return -torch.min(unclipped, clipped).mean()


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor | None = None,
    clip_range: float | None = None,
) -> torch.Tensor:
    """Critic loss ``0.5 * E[(V(s) - R)^2]``.

    With ``old_values`` and ``clip_range`` (PPO's value clipping), the prediction may not move
    more than ``clip_range`` from the value at collection time without losing its gradient::

        V_clip = V_old + clip(V - V_old, -eps, eps)
        L_V    = 0.5 * E[ max((V - R)^2, (V_clip - R)^2) ]
    """
    unclipped = (values - returns) ** 2
    if old_values is None or clip_range is None:
        return 0.5 * unclipped.mean()
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * torch.max(unclipped, (v_clipped - returns) ** 2).mean()


def entropy_bonus(entropy: torch.Tensor) -> torch.Tensor:
    """``E[ H(pi(. | s_t)) ]``; subtracted (times ``ent_coef``) from the loss to keep exploring."""
    return entropy.mean()


def k3_kl(logp_new: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    """The k3 estimator of ``KL(pi_old || pi_new)`` (Schulman, "Approximating KL divergence"):
    mean of ``(ratio - 1) - log(ratio)`` with ``ratio = exp(logp_new - logp_old)``, on samples
    drawn from ``pi_old``; unbiased and >= 0 for every sample. Logged as ``approx_kl``."""
    log_ratio = logp_new - logp_old
    return ((torch.exp(log_ratio) - 1.0) - log_ratio).mean()


def clip_fraction(ratio: torch.Tensor, clip_range: float) -> torch.Tensor:
    """Share of samples whose ratio left ``[1 - eps, 1 + eps]`` (their gradient is cut)."""
    return ((ratio - 1.0).abs() > clip_range).float().mean()


def explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """``1 - Var[R - V] / Var[R]``: 1 is a perfect critic, 0 no better than a constant."""
    var = float(np.var(returns))
    return float("nan") if var == 0 else 1.0 - float(np.var(returns - values)) / var
