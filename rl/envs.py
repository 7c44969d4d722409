"""Environments: Atari with the Nature-DQN preprocessing, and any gymnasium id for tests.

Two entry points:

* ``make_env(cfg, seed, training=True)`` -> one gymnasium env (evaluation, video, debugging).
  ALE ids get gymnasium's ``AtariPreprocessing`` (no-op reset up to ``noop_max``, frame skip
  with max-pool over the last two frames, 84x84 grayscale), fire reset, episodic life and
  reward clipping when ``training``, and ``FrameStackObservation`` (zero padding, like ALE's
  own vector env). Other ids (``CartPole-v1``) are plain ``gym.make``.
* ``make_vector_env(cfg, num_envs, seed, training=True)`` -> ``VecEnv``: ale-py's
  ``AtariVectorEnv`` (C++ threads, same preprocessing) for ALE ids, gymnasium's
  ``SyncVectorEnv`` of ``make_env`` otherwise. Autoreset is SAME_STEP: when an episode ends,
  ``step`` returns the first observation of the next one and the last one in
  ``info["final_obs"]``.

True game score (documented contract, used by DQN and actor-critic alike): ``VecEnv.step``
returns the reward used for learning (clipped to its sign when ``training`` and
``clip_rewards``), and ``terminated`` includes life losses when ``training`` and
``terminal_on_life_loss``. The raw score lives in the infos::

    info["raw_reward"]   (num_envs,) float  unclipped reward of this step
    info["game_over"]    (num_envs,) bool   a whole game ended this step (not a life loss)
    info["game_return"]  (num_envs,) float  unclipped whole-game return, NaN where no game ended
    info["game_length"]  (num_envs,) int    agent steps of that game, 0 where no game ended
    info["reset_mask"]   (num_envs,) bool   the returned obs starts a new episode (env reset)
    info["final_obs"]    (num_envs, *obs)   last obs of an ended episode (valid where
                                            terminated | truncated; equal to obs elsewhere)

Sticky actions are off by default (``sticky_actions=0.0``, the Nature-DQN setting); set
``env.sticky_actions=0.25`` for the Machado et al. (2018) protocol.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from cluster.errors import ConfigError, ReinforgeError
from cluster.run_config import check_ranges

# Bytes one env costs inside a rollout worker (ALE emulator state, frame buffers, stacks);
# measured roughly with AtariVectorEnv on Pong; used to refuse absurd env counts up front.
ATARI_ENV_BYTES = 24 * 2**20
OTHER_ENV_BYTES = 1 * 2**20


@dataclass
class EnvConfig:
    id: str = "ALE/Pong-v5"
    frame_skip: int = 4
    noop_max: int = 30
    frame_stack: int = 4
    screen_size: int = 84
    terminal_on_life_loss: bool = True  # training only: a life loss ends the episode for the loss
    fire_reset: bool = True  # press FIRE after reset in games that need it
    clip_rewards: bool = True  # training only: reward -> sign(reward); the raw score is logged
    sticky_actions: float = 0.0  # repeat_action_probability; 0.25 for the Machado et al. protocol
    max_episode_frames: int = 108_000  # emulator frames per game (30 min at 60 Hz)
    vector_backend: str = "auto"  # auto: ale-py AtariVectorEnv for ALE ids; "gymnasium": SyncVectorEnv
    num_threads: int = 0  # AtariVectorEnv threads per worker; 0 = min(envs, 2)

    def validate(self) -> None:
        check_ranges("env", self, {
            "frame_skip": ">= 1", "frame_stack": ">= 1", "screen_size": ">= 8",
            "noop_max": (">= 0", "30 is the Nature-DQN value"),
            "sticky_actions": ("[0, 1)", "use 0.25 for sticky actions"),
            "max_episode_frames": (">= 1", "108000 is 30 minutes of play"),
            "num_threads": (">= 0", "0: min(envs, 2)"),
        })
        if self.vector_backend not in ("auto", "ale", "gymnasium"):
            raise ConfigError(f"env.vector_backend={self.vector_backend!r}: use auto, ale or gymnasium")


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def rom_name(env_id: str) -> str:
    """``ALE/SpaceInvaders-v5`` -> ``space_invaders`` (the ROM name ale-py expects)."""
    game = env_id.split("/", 1)[1].rsplit("-v", 1)[0]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", game).lower()


def _register() -> None:
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)


def check_env_id(env_id: str) -> None:
    """Refuse an unknown env id with one line and the nearest registered id."""
    import difflib

    import gymnasium as gym

    _register()
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else "; use e.g. ALE/Pong-v5 or CartPole-v1"
    raise ConfigError(f"unknown env id {env_id!r}{hint}")


def check_discrete_actions(cfg: EnvConfig, algo: str) -> None:
    """Refuse an env whose actions are not Discrete (every algorithm here picks one of N
    actions) with one line, before any rollout actor starts."""
    import gymnasium as gym

    _register()
    spec = gym.spec(cfg.id)
    try:
        probe = gym.make(spec.id, **({"frameskip": 1} if is_atari(cfg.id) else {}))
    except Exception:  # noqa: BLE001 - whatever make() needs (a ROM...) is reported by the actors
        return
    space = probe.action_space
    probe.close()
    if not isinstance(space, gym.spaces.Discrete):
        raise ConfigError(f"{algo} needs discrete actions but {cfg.id} has {type(space).__name__} actions {space}; "
                          "use a Discrete env such as CartPole-v1 or ALE/Pong-v5")


def check_env_memory(cfg: EnvConfig, total_envs: int) -> None:
    """Refuse an env count that cannot fit in this machine's memory (one line, with the fix)."""
    import psutil

    per_env = ATARI_ENV_BYTES if is_atari(cfg.id) else OTHER_ENV_BYTES
    need = per_env * total_envs
    avail = psutil.virtual_memory().available
    if need > 0.8 * avail:
        fit = max(1, int(0.8 * avail // per_env))
        raise ConfigError(
            f"{total_envs} envs of {cfg.id} need about {need / 2**30:.1f} GiB but only {avail / 2**30:.1f} GiB is free; "
            f"use at most {fit} envs in total (rollout.num_workers x rollout.envs_per_worker)"
        )


# --- single env (gymnasium wrappers) ---------------------------------------------------------
def _gym_wrappers():
    import gymnasium as gym

    class FireReset(gym.Wrapper):
        """Press FIRE (then action 2) after reset for games that wait for it. gymnasium has no
        such wrapper; this is the 10-line classic from the DQN baselines."""

        def reset(self, **kwargs):
            obs, info = self.env.reset(**kwargs)
            for action in (1, 2):
                obs, _, terminated, truncated, info = self.env.step(action)
                if terminated or truncated:
                    obs, info = self.env.reset(**kwargs)
            return obs, info

    class EpisodicLife(gym.Wrapper):
        """A life loss ends the episode for learning; the game itself goes on (the next reset is
        a no-op step, not a new game). gymnasium's AtariPreprocessing(terminal_on_life_loss)
        resets the whole game on every life loss instead, so this one is written here."""

        def __init__(self, env):
            super().__init__(env)
            self.lives = 0
            self.real_done = True

        def step(self, action):
            obs, reward, terminated, truncated, info = self.env.step(action)
            self.real_done = terminated or truncated
            lives = self.env.unwrapped.ale.lives()
            if 0 < lives < self.lives:
                terminated = True
            self.lives = lives
            info["game_over"] = self.real_done
            return obs, reward, terminated, truncated, info

        def reset(self, **kwargs):
            if self.real_done:
                obs, info = self.env.reset(**kwargs)
            else:
                obs, _, terminated, truncated, info = self.env.step(0)
                if terminated or truncated:
                    obs, info = self.env.reset(**kwargs)
            self.lives = self.env.unwrapped.ale.lives()
            return obs, info

    return FireReset, EpisodicLife


def make_env(cfg: EnvConfig, seed: int | None = None, training: bool = True, clip_rewards: bool | None = None,
             render_mode: str | None = None):
    """One preprocessed env. ``clip_rewards`` defaults to ``training and cfg.clip_rewards``."""
    import gymnasium as gym

    check_env_id(cfg.id)
    clip = (training and cfg.clip_rewards) if clip_rewards is None else clip_rewards
    if not is_atari(cfg.id):
        env = gym.make(cfg.id, render_mode=render_mode)
    else:
        FireReset, EpisodicLife = _gym_wrappers()
        env = gym.make(cfg.id, frameskip=1, repeat_action_probability=cfg.sticky_actions,
                       max_num_frames_per_episode=cfg.max_episode_frames, render_mode=render_mode)
        env = gym.wrappers.AtariPreprocessing(env, noop_max=cfg.noop_max, frame_skip=cfg.frame_skip,
                                              screen_size=cfg.screen_size, terminal_on_life_loss=False)
        if training and cfg.terminal_on_life_loss:
            env = EpisodicLife(env)
        if cfg.fire_reset and "FIRE" in env.unwrapped.get_action_meanings():
            env = FireReset(env)
        env = gym.wrappers.FrameStackObservation(env, cfg.frame_stack, padding_type="zero")
        if clip:
            env = gym.wrappers.TransformReward(env, lambda r: float(np.sign(r)))
    if seed is not None:
        env.reset(seed=int(seed))
        env.action_space.seed(int(seed))
    return env


# --- vector env ------------------------------------------------------------------------------
def ale_vector_kwargs(cfg: EnvConfig, num_envs: int, training: bool = True) -> dict[str, Any]:
    """The ``AtariVectorEnv`` arguments for ``cfg`` (shared with the rollout benchmark, so the
    bare ale-py baseline runs exactly the same preprocessing)."""
    return dict(
        game=rom_name(cfg.id), num_envs=int(num_envs),
        num_threads=cfg.num_threads or min(int(num_envs), 2),
        max_num_frames_per_episode=cfg.max_episode_frames,
        repeat_action_probability=cfg.sticky_actions,
        autoreset_mode="SameStep", img_height=cfg.screen_size, img_width=cfg.screen_size,
        stack_num=cfg.frame_stack, frameskip=cfg.frame_skip, maxpool=True, noop_max=cfg.noop_max,
        episodic_life=False, life_loss_info=training and cfg.terminal_on_life_loss, reward_clipping=False,
        use_fire_reset=cfg.fire_reset,
    )


class VecEnv:
    """A vector env with SAME_STEP autoreset and the true-score infos described above.

    Attributes: ``num_envs``, ``single_observation_space``, ``single_action_space``,
    ``backend`` ("ale" or "gymnasium"), ``frame_stack`` (frames per obs; 1 for vector obs).
    """

    def __init__(self, cfg: EnvConfig, num_envs: int, seed: int, training: bool = True):
        import gymnasium as gym

        check_env_id(cfg.id)
        self.cfg, self.num_envs, self.seed, self.training = cfg, int(num_envs), int(seed), training
        self.clip = training and cfg.clip_rewards
        use_ale = is_atari(cfg.id) and cfg.vector_backend in ("auto", "ale")
        if use_ale:
            from ale_py.vector_env import AtariVectorEnv

            self.env = AtariVectorEnv(**ale_vector_kwargs(cfg, self.num_envs, training))
            self.backend = "ale"
        else:
            from gymnasium.vector import AutoresetMode, SyncVectorEnv

            fns = [lambda i=i: make_env(cfg, None, training, clip_rewards=False) for i in range(self.num_envs)]
            self.env = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
            self.backend = "gymnasium"
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        if not isinstance(self.single_action_space, gym.spaces.Discrete):
            raise ReinforgeError(f"{cfg.id} has a {type(self.single_action_space).__name__} action space; "
                                 "the RL algorithms here need a Discrete one (Atari, CartPole-v1, ...)")
        shape = self.single_observation_space.shape
        self.frame_stack = cfg.frame_stack if is_atari(cfg.id) and len(shape) == 3 else 1
        self._ret = np.zeros(self.num_envs)
        self._len = np.zeros(self.num_envs, dtype=np.int64)
        self._frame = np.zeros(self.num_envs, dtype=np.int64)

    def reset(self, seed: int | None = None) -> np.ndarray:
        base = self.seed if seed is None else int(seed)
        from cluster.seeding import derive_seed

        seeds = [derive_seed(base, i) for i in range(self.num_envs)]
        if self.backend == "ale":
            obs, info = self.env.reset(seed=np.asarray(seeds, dtype=np.int64))
            self._frame = np.asarray(info["episode_frame_number"], dtype=np.int64)
        else:
            obs, info = self.env.reset(seed=seeds)
            self.env.action_space.seed(base)
        self._ret[:] = 0.0
        self._len[:] = 0
        return obs

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self.send(actions)
        return self.recv()

    def send(self, actions: np.ndarray) -> None:
        """Start a step (ale-py: the emulator threads run while the caller does other work)."""
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        if self.backend == "ale":
            self.env.send(actions)
        else:
            self._actions = actions

    def recv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Finish the step started by ``send``: (obs, learn reward, terminated, truncated, info)."""
        if self.backend == "ale":
            obs, reward, terminated, truncated, info = self.env.recv()
        else:
            obs, reward, terminated, truncated, info = self.env.step(self._actions)
        raw = np.asarray(reward, dtype=np.float64)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        ended = terminated | truncated
        if self.backend == "ale":
            # life-loss terminations keep playing; a real game over resets the emulator, which
            # shows as the episode frame counter starting again
            frame = np.asarray(info["episode_frame_number"], dtype=np.int64)
            reset_mask = ended & (frame < self._frame)
            self._frame = frame
            game_over = reset_mask.copy()
            final = info.get("final_obs")
        else:
            reset_mask = ended.copy()
            go = info.get("final_info", {}).get("game_over") if "final_info" in info else None
            game_over = ended & (np.asarray(go, dtype=bool) if go is not None else True)
            final = info.get("final_obs")
        final_obs = obs  # no copy unless an episode ended (a 225 KB copy per Pong step otherwise)
        if final is not None and ended.any():
            final_obs = obs.copy()
            for i in np.flatnonzero(ended):
                if final[i] is not None:
                    final_obs[i] = final[i]
        self._ret += raw
        self._len += 1
        game_return = np.full(self.num_envs, np.nan)
        game_length = np.zeros(self.num_envs, dtype=np.int64)
        game_return[game_over] = self._ret[game_over]
        game_length[game_over] = self._len[game_over]
        self._ret[game_over] = 0.0
        self._len[game_over] = 0
        out = {"raw_reward": raw, "game_over": game_over, "game_return": game_return, "game_length": game_length,
               "reset_mask": reset_mask, "final_obs": final_obs}
        learn_reward = np.sign(raw) if self.clip else raw
        return obs, learn_reward.astype(np.float32), terminated, truncated, out

    def close(self) -> None:
        self.env.close()


def make_vector_env(cfg: EnvConfig, num_envs: int, seed: int, training: bool = True) -> VecEnv:
    if num_envs < 1:
        raise ConfigError(f"num_envs={num_envs}: a vector env needs at least 1 env")
    return VecEnv(cfg, num_envs, seed, training)
