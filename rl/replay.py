"""Replay memory: uniform or prioritized, n-step returns, each frame stored once.

Layout. Transitions arrive as per-env streams (one stream per rollout env). Each stream is a
circular buffer whose slot ``a`` holds the NEWEST frame of the observation s_a (uint8 84x84
for Atari), the action a_a, the (clipped) reward r_a, and flags ``first`` (s_a starts an
episode), ``terminated`` and ``truncated``. The stacked observation is rebuilt at sample time
from the slots a-k+1..a of the same stream, with frames from before an episode start zeroed
(exactly what the env's zero-padded frame stack showed the agent). So one Atari transition
costs 84*84 + a few bytes, not 4*84*84 (twice that with the next observation): 1M transitions
fit in about 7.1 GB.

n-step return (computed at sample time, so n and gamma need no rewrite of the buffer)::

    R_t^(n) = sum_{j<n} gamma^j r_{t+j} prod_{i<j} (1 - term_{t+i})
    done    = any term_{t+j}, j < n          bootstrap from s_{t+n} with discount gamma^n

A window that crosses an episode end that is not a termination (time-limit truncation, or a
restarted worker) is not sampled: its bootstrap observation was never stored.

Prioritized replay (Schaul et al. 2016, proportional): P(i) = p_i^alpha / sum_k p_k^alpha with
p_i = |delta_i| + eps, new transitions at the running max priority; importance weights
w_i = (N P(i))^-beta / max_j w_j, beta annealed to 1 by the learner.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cluster.errors import ConfigError


class SumTree:
    """Binary sum tree over ``capacity`` leaves, vectorised over batches with numpy. Written
    by hand: none of the installed libraries ships one (torchrl is not a dependency)."""

    def __init__(self, capacity: int):
        size = 1
        while size < capacity:
            size *= 2
        self.size = size
        self.tree = np.zeros(2 * size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def update(self, leaves: np.ndarray, values: np.ndarray) -> None:
        leaves = np.asarray(leaves, dtype=np.int64)
        # last write wins for duplicate leaves, then propagate sums level by level
        nodes = leaves + self.size
        self.tree[nodes] = values
        nodes = np.unique(nodes // 2)
        while nodes.size and nodes[0] >= 1:
            self.tree[nodes] = self.tree[2 * nodes] + self.tree[2 * nodes + 1]
            if nodes[0] == 1:
                break
            nodes = np.unique(nodes // 2)

    def get(self, leaves: np.ndarray) -> np.ndarray:
        return self.tree[np.asarray(leaves, dtype=np.int64) + self.size]

    def find(self, mass: np.ndarray) -> np.ndarray:
        """Leaf index whose prefix-sum interval holds each value of ``mass``."""
        mass = np.array(mass, dtype=np.float64)
        idx = np.ones(mass.shape, dtype=np.int64)
        while idx[0] < self.size:
            left = 2 * idx
            lv = self.tree[left]
            go_right = mass >= lv
            mass = np.where(go_right, mass - lv, mass)
            idx = np.where(go_right, left + 1, left)
        return idx - self.size


class ReplayMemory:
    def __init__(self, capacity: int, num_streams: int, frame_shape: tuple[int, ...], frame_stack: int = 1,
                 frame_dtype: Any = np.uint8, n_step: int = 1, gamma: float = 0.99, prioritized: bool = False,
                 alpha: float = 0.6, priority_eps: float = 1e-6, seed: int = 0):
        if num_streams < 1 or capacity < num_streams * (frame_stack + n_step + 2):
            raise ConfigError(f"replay capacity {capacity} is too small for {num_streams} env streams; "
                              f"use rl.buffer_size >= {num_streams * (frame_stack + n_step + 2)}")
        if n_step < 1:
            raise ConfigError(f"rl.n_step={n_step} must be >= 1")
        self.S, self.C = int(num_streams), int(capacity) // int(num_streams)
        self.k, self.n, self.gamma = int(frame_stack), int(n_step), float(gamma)
        self.frames = np.zeros((self.S, self.C, *frame_shape), dtype=frame_dtype)
        self.actions = np.zeros((self.S, self.C), dtype=np.int16)
        self.rewards = np.zeros((self.S, self.C), dtype=np.float32)
        self.first = np.zeros((self.S, self.C), dtype=bool)
        self.terminated = np.zeros((self.S, self.C), dtype=bool)
        self.truncated = np.zeros((self.S, self.C), dtype=bool)
        self.count = np.zeros(self.S, dtype=np.int64)  # slots ever written per stream
        self.alpha, self.priority_eps = float(alpha), float(priority_eps)
        self.tree = SumTree(self.S * self.C) if prioritized else None
        self.max_priority = 1.0
        self.rng = np.random.default_rng(seed)

    # --- size ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(np.minimum(self.count, self.C).sum())

    @property
    def nbytes(self) -> int:
        arrays = [self.frames, self.actions, self.rewards, self.first, self.terminated, self.truncated]
        return sum(a.nbytes for a in arrays) + (self.tree.tree.nbytes if self.tree is not None else 0)

    def bytes_per_transition(self) -> float:
        return self.nbytes / (self.S * self.C)

    # --- writing ---------------------------------------------------------------------------
    def add(self, stream: int, frames: np.ndarray, actions: np.ndarray, rewards: np.ndarray, first: np.ndarray,
            terminated: np.ndarray, truncated: np.ndarray) -> None:
        """Append T consecutive steps of one stream. ``frames[t]`` is the newest frame of s_t."""
        T = len(actions)
        pos = (self.count[stream] + np.arange(T)) % self.C
        self.frames[stream, pos] = frames
        self.actions[stream, pos] = actions
        self.rewards[stream, pos] = rewards
        self.first[stream, pos] = first
        self.terminated[stream, pos] = terminated
        self.truncated[stream, pos] = truncated
        self.count[stream] += T
        if self.tree is not None:
            self.tree.update(stream * self.C + pos, np.full(T, self.max_priority ** self.alpha))

    def add_segment(self, streams: list[int] | np.ndarray, seg: dict[str, Any]) -> int:
        """Append a rollout segment (see rl.rollout) whose env e feeds stream ``streams[e]``.
        Takes ``frames`` (newest frame per step, what DQN's workers send) or full ``obs``."""
        frames_only = "frames" in seg
        obs = seg["frames"] if frames_only else seg["obs"]
        for e, s in enumerate(streams):
            frames = obs[:, e] if frames_only or self.k == 1 else obs[:, e, -1]
            self.add(int(s), frames, seg["actions"][:, e], seg["rewards"][:, e], seg["first"][:, e],
                     seg["terminated"][:, e], seg["truncated"][:, e])
        return int(seg["actions"].size)

    # --- reading ---------------------------------------------------------------------------
    def _stack(self, s: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Stacked observation of absolute slots ``a`` in streams ``s``: (B, k, *frame)."""
        if self.k == 1:
            return self.frames[s, a % self.C]
        idx = a[:, None] - (self.k - 1) + np.arange(self.k)[None, :]  # (B, k) oldest..newest
        out = self.frames[s[:, None], idx % self.C]
        first = self.first[s[:, None], idx % self.C]
        # zero frame i if an episode starts at a later stack position j > i
        later_start = np.flip(np.cumsum(np.flip(first[:, 1:], axis=1), axis=1), axis=1) > 0
        zero = np.concatenate([later_start, np.zeros((len(a), 1), dtype=bool)], axis=1)
        out[zero] = 0
        return out

    def _window(self, s: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n-step return, done flag and validity of the windows starting at slots ``a``."""
        B = len(a)
        ret = np.zeros(B, dtype=np.float64)
        alive = np.ones(B, dtype=bool)
        valid = (a >= self.count[s] - self.C + self.k - 1) & (a + self.n <= self.count[s] - 1)
        for j in range(self.n):
            p = (a + j) % self.C
            r, term, trunc = self.rewards[s, p], self.terminated[s, p], self.truncated[s, p]
            nxt_first = self.first[s, (a + j + 1) % self.C]
            ret += np.where(alive, self.gamma**j * r, 0.0)
            valid &= ~(alive & ~term & (trunc | nxt_first))
            alive &= ~term
        return ret, ~alive, valid

    def _draw(self, batch_size: int) -> np.ndarray:
        """Candidate global indices (stream * C + slot position)."""
        if self.tree is not None:
            total = self.tree.total
            mass = (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)
            return np.minimum(self.tree.find(np.minimum(mass, total * (1 - 1e-12))), self.S * self.C - 1)
        filled = np.minimum(self.count, self.C)
        s = self.rng.choice(self.S, size=batch_size, p=filled / filled.sum())
        return s * self.C + self.rng.integers(0, filled[s])

    def sample(self, batch_size: int, beta: float = 0.4) -> dict[str, np.ndarray]:
        """A batch: obs, actions, returns (n-step), dones, next_obs, discounts (gamma^n),
        weights (importance sampling; ones when uniform) and indices (for update_priorities)."""
        if len(self) < self.S * (self.k + self.n + 1):
            raise ConfigError("replay memory has too few transitions to sample; raise rl.learning_starts")
        g = self._draw(batch_size)
        s, p = g // self.C, g % self.C
        a = self._absolute(s, p)
        ret, done, valid = self._window(s, a)
        for _ in range(20):  # rejection: redraw the (few) windows that cannot be used
            bad = np.flatnonzero(~valid)
            if not bad.size:
                break
            g2 = self._draw(len(bad))
            s2, p2 = g2 // self.C, g2 % self.C
            a2 = self._absolute(s2, p2)
            r2, d2, v2 = self._window(s2, a2)
            g[bad], s[bad], a[bad], ret[bad], done[bad], valid[bad] = g2, s2, a2, r2, d2, v2
        keep = np.flatnonzero(valid)
        if keep.size < len(g):  # still invalid after redraws: reuse valid rows
            fill = self.rng.choice(keep, size=len(g) - keep.size)
            idx = np.concatenate([keep, fill])
            g, s, a, ret, done = g[idx], s[idx], a[idx], ret[idx], done[idx]
        if self.tree is not None:
            probs = self.tree.get(g) / self.tree.total
            w = (len(self) * probs) ** (-beta)
            weights = (w / w.max()).astype(np.float32)
        else:
            weights = np.ones(len(g), dtype=np.float32)
        return {
            "obs": self._stack(s, a), "actions": self.actions[s, a % self.C].astype(np.int64),
            "returns": ret.astype(np.float32), "dones": done.astype(np.float32),
            "next_obs": self._stack(s, a + self.n), "discounts": np.full(len(g), self.gamma**self.n, np.float32),
            "weights": weights, "indices": g,
        }

    def _absolute(self, s: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Absolute slot number of ring position ``p`` in stream ``s`` (the newest one there)."""
        c = self.count[s]
        base = (c - 1) // self.C * self.C
        a = base + p
        return np.where(a > c - 1, a - self.C, a)

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        if self.tree is None:
            return
        pr = np.abs(np.asarray(td_errors, dtype=np.float64)) + self.priority_eps
        self.max_priority = max(self.max_priority, float(pr.max()))
        self.tree.update(indices, pr**self.alpha)


def atari_bytes_per_transition(frame_shape: tuple[int, ...] = (84, 84), prioritized: bool = True) -> float:
    """Bytes one transition costs in ``ReplayMemory`` (frame + action + reward + flags + tree)."""
    frame = int(np.prod(frame_shape))
    return frame + 2 + 4 + 3 + (16 if prioritized else 0)
