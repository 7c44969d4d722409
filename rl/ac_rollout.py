"""Actor-critic on the shared rollout layer (``rl.rollout``): the sampling policy the rollout
workers run, and the step from their T-step segments to the learner's flat batch.

Each ``RolloutWorker`` steps its vector env with an ``ActorCriticPolicy`` (a CPU copy of the
network) and returns ``[T, E]`` arrays: ``obs, actions, rewards, terminated, truncated``,
the policy's ``logprobs`` and ``values``, ``bootstrap_values`` (``V(final obs)`` where an
episode was *truncated*, computed on the worker with the same weights) and ``last_obs``.
The learner adds ``last_values = V(last_obs)``, runs GAE per segment (a terminated step is
never bootstrapped, a truncated one is bootstrapped from its real final observation; see
``rl.policy_gradient.gae``) and flattens ``[T, E] -> [T * E]``.

REINFORCE needs whole episodes instead, while the workers hand back fixed-length segments:
``WholeEpisodes`` keeps each env's unfinished episode between iterations and releases a step
only once its episode has ended, with its Monte-Carlo return. The steps of an episode that
spans several segments were chosen by weights up to a few updates old (a segment as long as
the episodes, ``rl.rollout_length``, removes that lag).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rl import policy_gradient as pg

BATCH_KEYS = ("obs", "actions", "logprobs", "values", "advantages", "returns")


def advantages_and_returns(segment: dict[str, Any], gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    return pg.gae(segment["rewards"], segment["values"], segment["last_values"], segment["terminated"],
                  segment["truncated"], gamma, lam, final_values=segment["bootstrap_values"])


def flatten_rollouts(segments: list[dict[str, Any]], gamma: float, lam: float) -> dict[str, np.ndarray]:
    """GAE per segment (each needs ``last_values``), then ``[T, E] -> [T * E_total]``."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in BATCH_KEYS}
    for seg in segments:
        adv, ret = advantages_and_returns(seg, gamma, lam)
        cols = {**{k: seg[k] for k in BATCH_KEYS[:4]}, "advantages": adv, "returns": ret}
        for k, v in cols.items():
            parts[k].append(v.reshape(-1, *v.shape[2:]))
    return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


EPISODE_KEYS = ("obs", "actions", "logprobs", "values", "rewards")


class WholeEpisodes:
    """The steps of every episode that ended, across segments, as one flat REINFORCE batch."""

    def __init__(self) -> None:
        self._open: dict[tuple[int, int], list[dict[str, np.ndarray]]] = {}  # (worker, env) -> pieces

    def _ended(self, seg: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        episodes = []
        done = np.asarray(seg["terminated"]) | np.asarray(seg["truncated"])
        for e in range(done.shape[1]):
            key = (int(seg["worker_index"]), e)
            if seg["first"][0, e]:  # a fresh episode; after a worker restart its old one is lost
                self._open.pop(key, None)
            start = 0
            for end in np.flatnonzero(done[:, e]):
                pieces = self._open.pop(key, []) + [{k: seg[k][start:end + 1, e] for k in EPISODE_KEYS}]
                episodes.append({k: np.concatenate([p[k] for p in pieces]) for k in EPISODE_KEYS})
                start = end + 1
            if start < done.shape[0]:
                self._open.setdefault(key, []).append({k: seg[k][start:, e] for k in EPISODE_KEYS})
        return episodes

    def batch(self, segments: list[dict[str, Any]], gamma: float) -> dict[str, np.ndarray]:
        """``obs, actions, logprobs, values, returns`` of the episodes that ended in
        ``segments`` (zero rows when none did)."""
        episodes = [ep for seg in segments for ep in self._ended(seg)]
        if not episodes:
            empty = {k: segments[0][k][:0, 0] for k in EPISODE_KEYS}
            return {**{k: v for k, v in empty.items() if k != "rewards"}, "returns": empty["rewards"]}
        flat = {k: np.concatenate([ep[k] for ep in episodes]) for k in EPISODE_KEYS}
        dones = np.zeros(len(flat["rewards"]), dtype=bool)
        dones[np.cumsum([len(ep["rewards"]) for ep in episodes]) - 1] = True
        flat["returns"] = pg.discounted_returns(flat.pop("rewards"), dones, gamma)
        return flat


class ActorCriticPolicy:
    """The sampling policy the shared rollout workers run (see ``rl.rollout``'s policy protocol):
    a CPU copy of the actor-critic network; ``act`` returns action, logprob and value."""

    def __init__(self, observation_space, action_space, *, ac_cfg, seed: int = 0, **_: Any):
        import torch

        from rl.actor_critic import build_actor_critic

        torch.manual_seed(seed)  # sampling noise differs per worker (seed = worker seed)
        self.model = build_actor_critic(observation_space, action_space, ac_cfg).eval()

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        import torch

        self.model.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})

    def act(self, obs: np.ndarray, greedy: bool = False) -> dict[str, np.ndarray]:
        action, logprob, value = self.model.act(obs, greedy=greedy)
        return {"action": action, "logprobs": logprob.astype(np.float32), "values": value.astype(np.float32)}

    def value(self, obs: np.ndarray) -> np.ndarray:
        return self.model.values(obs).astype(np.float32)
