"""Tabular RL on small discrete MDPs (FrozenLake, CliffWalking, Taxi): value iteration on the
env's own transition table, and Q-learning / SARSA from experience, checked against it.

Gymnasium's toy-text envs expose their MDP as ``env.unwrapped.P``::

    P[s][a] = [(p, s_next, r, done), ...]       # every outcome of action a in state s

Bellman optimality (value iteration iterates it to a fixed point)::

    Q*(s, a) = sum_{(p, s', r, done)} p * (r + gamma * (1 - done) * max_a' Q*(s', a'))

Temporal-difference control, one update per env step (Watkins 1989; Rummery & Niranjan 1994)::

    Q-learning: Q(s, a) <- Q(s, a) + alpha * (r + gamma * (1 - term) * max_a' Q(s', a') - Q(s, a))
    SARSA:      Q(s, a) <- Q(s, a) + alpha * (r + gamma * (1 - term) * Q(s', a')       - Q(s, a))

where ``a'`` in SARSA is the action the epsilon-greedy behaviour policy then takes in ``s'``
(on-policy: it learns the value of the exploring policy; Q-learning learns Q* whatever the
behaviour). A time-limit truncation is not a terminal state: its target still bootstraps.
Written by hand (no tabular RL library) because the point is to read the equations.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from cluster.errors import ConfigError, ReinforgeError
from cluster.run_config import check_ranges

ALGOS = ("qlearning", "sarsa")
EPISODE_CAP = 1000  # steps per episode for envs registered without a time limit (CliffWalking)
OPTIMAL_TOL = 1e-9  # actions within this of max_a Q*(s, a) are all optimal (ties are exact)


@dataclass
class TabularEnvConfig:
    """The ``env`` section: a gymnasium toy-text id and the few settings those envs take."""

    id: str = "FrozenLake-v1"
    is_slippery: bool | None = None  # FrozenLake (default true) and CliffWalking (default false)
    map_name: str | None = None  # FrozenLake: 4x4 or 8x8
    max_episode_steps: int | None = None  # None: the env's own limit (FrozenLake 100, Taxi 200), else 1000

    def validate(self) -> None:
        check_ranges("env", self, {"max_episode_steps": (">= 1", "or null for the env's own limit")})


@dataclass
class TabularConfig:
    """The ``rl`` section of a tabular experiment."""

    algo: str = "qlearning"  # qlearning | sarsa
    total_steps: int = 50_000  # env steps (whole episodes: the last one may run past it)
    learning_rate: float = 0.1  # alpha, the TD step size
    gamma: float = 0.99
    epsilon_start: float = 1.0  # epsilon-greedy behaviour, linear from start to end
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 20_000
    value_iteration_tol: float = 1e-10  # stop when no Q*(s, a) moves by more than this
    log_every: int = 100  # episodes between metric rows
    checkpoint_every: int = 0  # episodes between checkpoints (0: only at the end)
    eval_episodes: int = 100  # greedy episodes at the end of training (0: skip)
    eval_epsilon: float = 0.0

    def validate(self) -> None:
        if self.algo not in ALGOS:
            raise ConfigError(f"rl.algo={self.algo!r} is not a tabular algorithm; use one of {', '.join(ALGOS)}")
        check_ranges("rl", self, {
            "total_steps": ">= 1", "epsilon_decay_steps": ">= 1", "log_every": ">= 1",
            "learning_rate": ("(0, 1]", "alpha, the TD step size"), "gamma": "(0, 1]",
            "epsilon_start": "[0, 1]", "epsilon_end": "[0, 1]", "eval_epsilon": "[0, 1]",
            "value_iteration_tol": "> 0",
            "checkpoint_every": (">= 0", "0: only at the end"),
            "eval_episodes": (">= 0", "0: no final evaluation"),
        })


# --- the env ---------------------------------------------------------------------------------
def make_tabular_env(cfg: TabularEnvConfig):
    """``gym.make`` with the settings given; refuses, in one line, an env that is not a small
    discrete MDP with a transition table (continuous observations, no ``P``)."""
    import gymnasium as gym

    from rl.envs import check_env_id

    check_env_id(cfg.id)
    kwargs = {k: v for k, v in (("is_slippery", cfg.is_slippery), ("map_name", cfg.map_name)) if v is not None}
    steps = cfg.max_episode_steps or (None if gym.spec(cfg.id).max_episode_steps else EPISODE_CAP)
    if steps:
        kwargs["max_episode_steps"] = steps
    try:
        env = gym.make(cfg.id, **kwargs)
    except TypeError as exc:  # a setting the env does not take, e.g. env.map_name for Taxi
        raise ConfigError(f"{cfg.id} does not take {', '.join(k for k in kwargs if k != 'max_episode_steps')}: "
                          f"{exc}; drop those env.* settings") from None
    obs, act = env.observation_space, env.action_space
    if not (isinstance(obs, gym.spaces.Discrete) and isinstance(act, gym.spaces.Discrete)):
        env.close()
        raise ConfigError(f"tabular methods need discrete states and actions but {cfg.id} has "
                          f"{type(obs).__name__} observations and {type(act).__name__} actions; "
                          "use FrozenLake-v1, CliffWalking-v1 or Taxi-v3")
    if not hasattr(env.unwrapped, "P"):
        env.close()
        raise ConfigError(f"{cfg.id} has no transition table (env.unwrapped.P) to compute Q* from; "
                          "use FrozenLake-v1, CliffWalking-v1 or Taxi-v3")
    return env


# --- planning: value iteration on the transition table ----------------------------------------
def value_iteration(P: dict, n_states: int, n_actions: int, gamma: float, tol: float = 1e-10,
                    max_sweeps: int = 100_000) -> np.ndarray:
    """Q* as an ``[S, A]`` array, by iterating the Bellman optimality operator until no entry
    moves by more than ``tol``."""
    reward = np.zeros((n_states, n_actions))  # E[r | s, a]
    going_on = np.zeros((n_states, n_actions, n_states))  # P(s', not done | s, a)
    for s in range(n_states):
        for a in range(n_actions):
            for p, s_next, r, done in P[s][a]:
                reward[s, a] += p * r
                if not done:
                    going_on[s, a, int(s_next)] += p
    q = np.zeros((n_states, n_actions))
    for _ in range(max_sweeps):
        q_new = reward + gamma * going_on @ q.max(axis=1)
        if np.max(np.abs(q_new - q)) <= tol:
            return q_new
        q = q_new
    raise ReinforgeError(f"value iteration did not converge within {max_sweeps} sweeps at gamma={gamma}; "
                         "use rl.gamma < 1")


def decision_states(P: dict, initial: np.ndarray, n_actions: int) -> np.ndarray:
    """The states an episode can be in when an action is chosen: those reachable from the
    start distribution through transitions that do not end the episode (holes, the goal and
    unreachable cells are left out: no action is ever taken there)."""
    frontier = [int(s) for s in np.flatnonzero(initial)]
    seen = set(frontier)
    while frontier:
        s = frontier.pop()
        for a in range(n_actions):
            for p, s_next, _, done in P[s][a]:
                if p > 0 and not done and int(s_next) not in seen:
                    seen.add(int(s_next))
                    frontier.append(int(s_next))
    return np.array(sorted(seen))


def compare_to_optimal(q: np.ndarray, q_star: np.ndarray, states: np.ndarray) -> tuple[float, float]:
    """``(q_error, policy_agreement)`` over ``states``: ``max |Q - Q*|``, and the fraction of
    them where ``argmax_a Q(s, a)`` is an optimal action under Q*."""
    q_error = float(np.max(np.abs(q[states] - q_star[states])))
    greedy = q[states].argmax(axis=1)
    best = q_star[states].max(axis=1)
    optimal = q_star[states, greedy] >= best - OPTIMAL_TOL * np.maximum(1.0, np.abs(best))
    return q_error, float(optimal.mean())


# --- learning: TD control -------------------------------------------------------------------
def q_learning_update(q: np.ndarray, s: int, a: int, r: float, s_next: int, terminated: bool,
                      alpha: float, gamma: float) -> float:
    """One Q-learning step on ``q`` (in place); returns the TD error."""
    target = r + (0.0 if terminated else gamma * q[s_next].max())
    td_error = target - q[s, a]
    q[s, a] += alpha * td_error
    return float(td_error)


def sarsa_update(q: np.ndarray, s: int, a: int, r: float, s_next: int, a_next: int, terminated: bool,
                 alpha: float, gamma: float) -> float:
    """One SARSA step on ``q`` (in place), with ``a_next`` the action taken in ``s_next``."""
    target = r + (0.0 if terminated else gamma * q[s_next, a_next])
    td_error = target - q[s, a]
    q[s, a] += alpha * td_error
    return float(td_error)


def greedy_action(q_row: np.ndarray, rng: np.random.Generator) -> int:
    """``argmax_a Q(s, a)``, ties broken at random (an all-zero row must not always pick 0)."""
    best = np.flatnonzero(q_row == q_row.max())
    return int(best[0]) if len(best) == 1 else int(rng.choice(best))


def epsilon_greedy(q_row: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    if rng.random() < epsilon:
        return int(rng.integers(len(q_row)))
    return greedy_action(q_row, rng)


def linear_epsilon(cfg: TabularConfig, env_steps: int) -> float:
    frac = min(1.0, env_steps / cfg.epsilon_decay_steps)
    return cfg.epsilon_start + frac * (cfg.epsilon_end - cfg.epsilon_start)


def run_episode(env, q: np.ndarray, cfg: TabularConfig, env_steps: int, rng: np.random.Generator,
                seed: int | None = None) -> tuple[float, int]:
    """One training episode of Q-learning or SARSA; returns ``(return, length)``."""
    s, _ = env.reset(seed=seed)
    a = epsilon_greedy(q[s], linear_epsilon(cfg, env_steps), rng)
    total, steps, done = 0.0, 0, False
    while not done:
        s_next, r, terminated, truncated, _ = env.step(a)
        steps += 1
        a_next = epsilon_greedy(q[s_next], linear_epsilon(cfg, env_steps + steps), rng)
        if cfg.algo == "sarsa":
            sarsa_update(q, s, a, float(r), s_next, a_next, terminated, cfg.learning_rate, cfg.gamma)
        else:
            q_learning_update(q, s, a, float(r), s_next, terminated, cfg.learning_rate, cfg.gamma)
        total += float(r)
        s, a, done = s_next, a_next, terminated or truncated
    return total, steps


def train(env_cfg: TabularEnvConfig, cfg: TabularConfig, run_dir, seed: int = 0,
          keep_checkpoints: int = 3) -> dict[str, Any]:
    """Episodes until ``total_steps`` env steps, logging the TD learner against value
    iteration's Q*; checkpoints the Q table (and resumes from the latest one)."""
    from cluster.checkpoint import load_checkpoint

    env = make_tabular_env(env_cfg)
    n_states, n_actions = int(env.observation_space.n), int(env.action_space.n)
    P = env.unwrapped.P
    q_star = value_iteration(P, n_states, n_actions, cfg.gamma, cfg.value_iteration_tol)
    states = decision_states(P, env.unwrapped.initial_state_distrib, n_actions)
    q = np.zeros((n_states, n_actions))
    env_steps = games = 0
    latest = run_dir.latest_checkpoint()
    if latest is not None:
        ckpt = load_checkpoint(latest)
        q = np.array(ckpt.objects["q"], dtype=np.float64)
        env_steps, games = int(ckpt.objects["state"]["env_steps"]), int(ckpt.objects["state"]["games"])
    if env_steps >= cfg.total_steps:
        raise ReinforgeError(f"run already finished ({env_steps} of rl.total_steps={cfg.total_steps} env steps); "
                             "raise rl.total_steps with --set to train further")

    def save() -> None:
        run_dir.save_checkpoint(env_steps, {"q": q, "state": {"env_steps": env_steps, "games": games}},
                                keep=keep_checkpoints)

    rng = np.random.default_rng([seed, games])  # a resumed run does not replay the first one's draws
    recent, recent_len = deque(maxlen=100), deque(maxlen=100)
    t_start, steps_at_start = time.perf_counter(), env_steps
    row: dict[str, Any] = {}
    first = True
    while env_steps < cfg.total_steps:
        ret, length = run_episode(env, q, cfg, env_steps, rng, seed=seed + games if first else None)
        first = False
        env_steps += length
        games += 1
        recent.append(ret)
        recent_len.append(length)
        if games % cfg.log_every == 0 or env_steps >= cfg.total_steps:
            q_error, agreement = compare_to_optimal(q, q_star, states)
            row = {"env_steps": env_steps, "updates": env_steps, "games": games,
                   "episode_return": float(np.mean(recent)), "episode_length": float(np.mean(recent_len)),
                   "epsilon": linear_epsilon(cfg, env_steps),
                   "env_steps_per_s": (env_steps - steps_at_start) / max(time.perf_counter() - t_start, 1e-9),
                   "q_error": q_error, "policy_agreement": agreement}
            run_dir.log(row, step=env_steps)
        if cfg.checkpoint_every and games % cfg.checkpoint_every == 0:
            save()
    env.close()
    save()
    return {k: row[k] for k in ("env_steps", "updates", "games", "episode_return", "episode_length",
                                "env_steps_per_s", "q_error", "policy_agreement")}


def evaluate_q(env_cfg: TabularEnvConfig, q: np.ndarray, episodes: int, epsilon: float = 0.0,
               seed: int = 0) -> dict[str, Any]:
    """Play ``episodes`` with the (epsilon-)greedy policy of ``q``; the same keys as
    ``rl.evaluation.evaluate_policy`` (``eval_return``, ``returns``, ...)."""
    env = make_tabular_env(env_cfg)
    rng = np.random.default_rng(seed)
    returns, lengths = [], []
    for ep in range(episodes):
        s, _ = env.reset(seed=int(seed) * 1000 + ep)
        total, steps, done = 0.0, 0, False
        while not done:
            s, r, terminated, truncated, _ = env.step(epsilon_greedy(q[s], epsilon, rng))
            total += float(r)
            steps += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(steps)
    env.close()
    return {"eval_return": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
            "eval_episodes": episodes, "epsilon": epsilon, "returns": returns, "lengths": lengths}
