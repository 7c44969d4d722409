"""Evaluation on the raw game score, and human-normalised scores.

Protocol (Mnih et al. 2015): each episode starts with a random number (up to ``noop_max`` =
30) of no-op actions (done by ``AtariPreprocessing`` at reset), then the policy acts
epsilon-greedily (epsilon 0.05 by default; 0 for a purely greedy policy). The score is the
raw, unclipped return of a whole game (all lives), capped at 108,000 frames.

``human_normalized_score(env_id, score) = (score - random) / (human - random)`` with the
published random and professional-human scores for the Atari-57 set (Mnih et al. 2015; van
Hasselt et al. 2016; Badia et al. 2020), as tabulated in DeepMind's DQN Zoo.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rl.envs import EnvConfig, is_atari, make_env

# game (ALE ROM name): (random score, human score)
ATARI_SCORES: dict[str, tuple[float, float]] = {
    "alien": (227.8, 7127.7), "amidar": (5.8, 1719.5), "assault": (222.4, 742.0),
    "asterix": (210.0, 8503.3), "asteroids": (719.1, 47388.7), "atlantis": (12850.0, 29028.1),
    "bank_heist": (14.2, 753.1), "battle_zone": (2360.0, 37187.5), "beam_rider": (363.9, 16926.5),
    "berzerk": (123.7, 2630.4), "bowling": (23.1, 160.7), "boxing": (0.1, 12.1),
    "breakout": (1.7, 30.5), "centipede": (2090.9, 12017.0), "chopper_command": (811.0, 7387.8),
    "crazy_climber": (10780.5, 35829.4), "defender": (2874.5, 18688.9), "demon_attack": (152.1, 1971.0),
    "double_dunk": (-18.6, -16.4), "enduro": (0.0, 860.5), "fishing_derby": (-91.7, -38.7),
    "freeway": (0.0, 29.6), "frostbite": (65.2, 4334.7), "gopher": (257.6, 2412.5),
    "gravitar": (173.0, 3351.4), "hero": (1027.0, 30826.4), "ice_hockey": (-11.2, 0.9),
    "jamesbond": (29.0, 302.8), "kangaroo": (52.0, 3035.0), "krull": (1598.0, 2665.5),
    "kung_fu_master": (258.5, 22736.3), "montezuma_revenge": (0.0, 4753.3), "ms_pacman": (307.3, 6951.6),
    "name_this_game": (2292.3, 8049.0), "phoenix": (761.4, 7242.6), "pitfall": (-229.4, 6463.7),
    "pong": (-20.7, 14.6), "private_eye": (24.9, 69571.3), "qbert": (163.9, 13455.0),
    "riverraid": (1338.5, 17118.0), "road_runner": (11.5, 7845.0), "robotank": (2.2, 11.9),
    "seaquest": (68.4, 42054.7), "skiing": (-17098.1, -4336.9), "solaris": (1236.3, 12326.7),
    "space_invaders": (148.0, 1668.7), "star_gunner": (664.0, 10250.0), "surround": (-10.0, 6.5),
    "tennis": (-23.8, -8.3), "time_pilot": (3568.0, 5229.2), "tutankham": (11.4, 167.6),
    "up_n_down": (533.4, 11693.2), "venture": (0.0, 1187.5), "video_pinball": (16256.9, 17667.9),
    "wizard_of_wor": (563.5, 4756.5), "yars_revenge": (3092.9, 54576.9), "zaxxon": (32.5, 9173.3),
}


def game_key(env_id: str) -> str:
    """``ALE/SpaceInvaders-v5`` / ``SpaceInvadersNoFrameskip-v4`` -> ``space_invaders``."""
    name = env_id.split("/", 1)[-1]
    name = re.sub(r"-v\d+$", "", name)
    name = re.sub(r"(NoFrameskip|Deterministic)$", "", name)
    key = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    return {"montezumas_revenge": "montezuma_revenge", "montezuma_revenge": "montezuma_revenge"}.get(key, key)


def human_normalized_score(env_id: str, score: float) -> float:
    """(score - random) / (human - random); NaN for games outside the table (e.g. CartPole)."""
    entry = ATARI_SCORES.get(game_key(env_id))
    if entry is None:
        return math.nan
    random, human = entry
    return (score - random) / (human - random)


def evaluate_policy(env_cfg: EnvConfig, q_fn: Callable[[np.ndarray], np.ndarray], episodes: int,
                    epsilon: float = 0.05, seed: int = 0, video_dir: str | Path | None = None,
                    max_steps: int | None = None, frames: list | None = None) -> dict[str, Any]:
    """Play ``episodes`` whole games epsilon-greedily on ``q_fn(obs_batch) -> scores``.

    ``q_fn`` returns per-action scores (Q-values or logits) for a batch of observations; the
    argmax is the greedy action. Returns the raw per-game ``returns`` and ``lengths``,
    ``eval_return`` (mean), ``eval_return_std``, ``eval_episodes`` and, for Atari games in the
    table, ``eval_human_normalized``. ``video_dir`` records the first episode with gymnasium's
    RecordVideo (needs moviepy; without it a one-line note is returned instead); a ``frames``
    list receives the first episode's rendered RGB frames (for a GIF).
    """
    render = "rgb_array" if video_dir or frames is not None else None
    env = make_env(env_cfg, seed=None, training=False, render_mode=render)
    note = None
    if video_dir:
        try:
            import moviepy  # noqa: F401
        except ImportError:
            note = "video skipped: moviepy is not installed (pip install moviepy)"
        else:
            import gymnasium as gym

            env = gym.wrappers.RecordVideo(env, str(video_dir), episode_trigger=lambda i: i == 0,
                                           name_prefix="eval", disable_logger=True)
    rng = np.random.default_rng(seed)
    n_actions = int(env.action_space.n)
    returns, lengths = [], []
    limit = max_steps or (env_cfg.max_episode_frames // max(1, env_cfg.frame_skip) if is_atari(env_cfg.id) else 10**9)
    for ep in range(episodes):
        obs, _ = env.reset(seed=int(seed) * 1000 + ep)
        total, steps, done = 0.0, 0, False
        while not done and steps < limit:
            if rng.random() < epsilon:
                action = int(rng.integers(n_actions))
            else:
                action = int(np.argmax(q_fn(np.asarray(obs)[None])[0]))
            obs, reward, terminated, truncated, _ = env.step(action)
            if frames is not None and ep == 0:
                frames.append(env.render())
            total += float(reward)
            steps += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(steps)
    env.close()
    mean = float(np.mean(returns)) if returns else math.nan
    out: dict[str, Any] = {
        "eval_return": mean, "eval_return_std": float(np.std(returns)) if returns else math.nan,
        "eval_episodes": episodes, "epsilon": epsilon, "returns": returns, "lengths": lengths,
    }
    hns = human_normalized_score(env_cfg.id, mean)
    if not math.isnan(hns):  # an Atari game with a table entry
        out["eval_human_normalized"] = hns
    if note:
        out["video_note"] = note
    elif video_dir:
        out["video_dir"] = str(video_dir)
    return out


# (run_path) -> (obs batch -> per-action scores, the checkpoint it came from)
PolicyLoader = Callable[[str | Path], tuple[Callable[[np.ndarray], np.ndarray], Any]]


def evaluate_run(run_path: str | Path, env_cfg: EnvConfig, load_policy: PolicyLoader, episodes: int,
                 epsilon: float, video: bool = False, seed: int = 0, max_steps: int | None = None,
                 frames: list | None = None) -> dict[str, Any]:
    """Play ``episodes`` games with the policy of a run's latest checkpoint (each pipeline
    supplies ``load_policy``: Q-network or actor-critic logits); ``eval_return`` etc., the
    per-game ``returns`` and ``lengths``, and which checkpoint was played."""
    policy, ckpt = load_policy(run_path)
    video_dir = Path(run_path) / "videos" if video and Path(run_path).is_dir() else None
    out = evaluate_policy(env_cfg, policy, episodes, epsilon=epsilon, seed=seed, video_dir=video_dir,
                          max_steps=max_steps, frames=frames)
    out["checkpoint"] = str(ckpt.path)
    out["step"] = ckpt.step
    return out


EVAL_METRICS = ("eval_return", "eval_return_std", "eval_episodes", "eval_human_normalized")


def log_evaluation(run_dir, ev: dict[str, Any], step: int) -> dict[str, Any]:
    """The final evaluation's metrics, logged as one row at ``step``; returned for the result."""
    row = {k: ev[k] for k in EVAL_METRICS if k in ev}
    run_dir.log(row, step=step)
    return row
