"""The shared Ray rollout layer: N worker actors, each stepping a vector env with a local
policy copy, returning fixed-length segments. DQN turns segments into replay transitions;
A2C/PPO use them as on-policy rollouts.

Pluggable policy (a plain class, importable in the worker, passed as the class itself)::

    class MyPolicy:
        def __init__(self, observation_space, action_space, *, worker_index, num_workers, seed, **policy_kwargs): ...
        def set_weights(self, weights: dict[str, np.ndarray]) -> None: ...
        def act(self, obs: np.ndarray, **act_kwargs) -> dict[str, np.ndarray]:
            # at least {"action": (E,) int}; any other (E,)-shaped outputs ("logprob", "value",
            # "epsilon", ...) are stored per step under the same key
        def value(self, obs: np.ndarray) -> np.ndarray:   # optional: bootstrap values for
            ...                                           # truncated steps (actor-critic)

Segment returned by ``RolloutWorker.sample(T)`` (E = envs per worker; arrays are (T, E, ...))::

    obs            observation the action was taken in (uint8 frame stacks for Atari); with
                   ``newest_frame_only=True`` (DQN: its replay stores each frame once) the key is
                   ``frames`` instead: only the newest frame of each stack, (T, E, 84, 84), a
                   quarter of the bytes to copy and ship
    first          obs[t] starts an episode (reset, or the worker's first step)
    actions        (T, E) int64
    rewards        (T, E) float32 learning reward (clipped when env.clip_rewards)
    terminated     (T, E) bool  true termination (incl. life loss in training)
    truncated      (T, E) bool  time limit: bootstrap from the final obs
    <policy keys>  whatever ``act`` returned besides "action" (e.g. logprobs, values)
    bootstrap_values (T, E) float32  policy.value(final obs) where truncated, else 0 (only if
                   the policy has ``value``)
    last_obs       (E, ...) obs after the segment (actor-critic bootstraps V(last_obs); the next
                   segment starts there)
    game_returns, game_lengths  lists: true (unclipped, whole-game) scores of games that ended
    worker_index, version (weights version used), env_steps, seconds

Throughput: ``group.fill(depth=2, ...)`` keeps ``depth`` requests queued per worker, so a
worker starts its next segment the moment it hands one back (env stepping overlaps transfer
and learning); segments of one worker still arrive in order (``ready`` sorts by request).
Segments travel as numpy arrays, which Ray's object store hands to the learner zero-copy.

Weights: the learner calls ``group.put_weights(state_dict)`` once per sync (one ``ray.put``)
and the ref goes to every worker with its next request; a worker only loads weights whose
version it has not seen. A worker that dies is restarted by Ray (``max_restarts``); its
in-flight request is dropped and counted in ``group.failures``, and it rejoins with the
current weights on its next request.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cluster.errors import ConfigError, ReinforgeError
from rl.envs import EnvConfig, check_env_id, check_env_memory, make_vector_env


@dataclass
class RolloutConfig:
    num_workers: int = 2
    envs_per_worker: int = 4
    cpus_per_worker: float = 1.0
    max_restarts: int = 3  # Ray restarts a dead worker this many times
    steps_per_sample: int = 32  # T: vector steps per request (DQN transitions = T x envs_per_worker)
    queue_depth: int = 2  # requests kept in flight per worker by asynchronous consumers (DQN)

    def validate(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"rollout.num_workers={self.num_workers}: need at least 1 rollout worker; use --workers 1 or more")
        if self.envs_per_worker < 1:
            raise ConfigError(f"rollout.envs_per_worker={self.envs_per_worker}: need at least 1; use --envs-per-worker 1 or more")
        if self.cpus_per_worker < 0:
            raise ConfigError(f"rollout.cpus_per_worker={self.cpus_per_worker} must be >= 0")
        if self.steps_per_sample < 1:
            raise ConfigError(f"rollout.steps_per_sample={self.steps_per_sample} must be >= 1")
        if self.queue_depth < 1:
            raise ConfigError(f"rollout.queue_depth={self.queue_depth} must be >= 1 (2 overlaps acting with learning)")
        if self.max_restarts < 0:
            raise ConfigError(f"rollout.max_restarts={self.max_restarts} must be >= 0 (-1 is not allowed here)")

    def bundles(self) -> list[dict[str, float]]:
        """Ray resources of the rollout workers a run starts, one bundle each."""
        return [{"CPU": float(self.cpus_per_worker)}] * int(self.num_workers)


def _default_priority() -> None:
    """Ray starts worker processes at nice 15 (its ``worker_niceness``) so they cannot starve
    the raylet; a rollout actor is the hot loop and would then lose the cores to the learner
    and anything else running, so it asks for nice 0 back (quietly keeps 15 where the OS
    refuses). Ray's own job drivers do the same (RAY_worker_niceness=0)."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except (OSError, AttributeError):
        pass


class RolloutWorker:
    """One rollout actor: a vector env and a local policy copy. Plain class; the group makes it
    a Ray actor through ``cluster.runtime.make_actor``."""

    def __init__(self, worker_index: int, num_workers: int, env_cfg: EnvConfig, num_envs: int, policy: type,
                 policy_kwargs: dict[str, Any] | None, seed: int, training: bool = True,
                 newest_frame_only: bool = False):
        import torch

        from cluster.seeding import seed_everything, worker_seed

        torch.set_num_threads(1)  # many workers share few cores: one intra-op thread each
        _default_priority()
        self.worker_index = worker_index
        self.seed = worker_seed(seed, worker_index)
        seed_everything(self.seed)
        self.env = make_vector_env(env_cfg, num_envs, self.seed, training=training)
        self.policy = policy(
            self.env.single_observation_space, self.env.single_action_space,
            worker_index=worker_index, num_workers=num_workers, seed=self.seed, **(policy_kwargs or {}),
        )
        self.version = -1
        self.obs = self.env.reset()
        self.first = np.ones(num_envs, dtype=bool)
        self.num_envs = num_envs
        # stacked frame obs (E, k, H, W): ship only obs[:, -1] per step when asked
        self.frames_only = bool(newest_frame_only) and self.env.frame_stack > 1

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "worker_index": self.worker_index, "version": self.version,
                "observation_space": self.env.single_observation_space, "action_space": self.env.single_action_space,
                "frame_stack": self.env.frame_stack, "backend": self.env.backend}

    def set_weights(self, weights: dict[str, np.ndarray], version: int) -> None:
        if version != self.version:
            self.policy.set_weights(weights)
            self.version = version

    def sample(self, num_steps: int, weights: dict[str, np.ndarray] | None = None, version: int = -1,
               **act_kwargs: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        if weights is not None:
            self.set_weights(weights, version)
        T, E = int(num_steps), self.num_envs
        obs_shape = self.obs.shape[2:] if self.frames_only else self.obs.shape[1:]
        obs_buf = np.empty((T, E, *obs_shape), dtype=self.obs.dtype)
        first = np.empty((T, E), dtype=bool)
        actions = np.empty((T, E), dtype=np.int64)
        rewards = np.empty((T, E), dtype=np.float32)
        terminated = np.empty((T, E), dtype=bool)
        truncated = np.empty((T, E), dtype=bool)
        extras: dict[str, np.ndarray] = {}
        has_value = hasattr(self.policy, "value")
        boot = np.zeros((T, E), dtype=np.float32) if has_value else None
        game_returns, game_lengths = [], []
        for t in range(T):
            out = self.policy.act(self.obs, **act_kwargs)
            actions[t] = out["action"]
            self.env.send(actions[t])
            # the emulator threads step now; record s_t meanwhile (recv returns fresh arrays)
            obs_buf[t] = self.obs[:, -1] if self.frames_only else self.obs
            first[t] = self.first
            for k, v in out.items():
                if k != "action":
                    if k not in extras:
                        extras[k] = np.empty((T, E), dtype=np.asarray(v).dtype)
                    extras[k][t] = v
            nxt, r, term, trunc, info = self.env.recv()
            rewards[t], terminated[t], truncated[t] = r, term, trunc
            if has_value and trunc.any():
                idx = np.flatnonzero(trunc)
                boot[t, idx] = self.policy.value(info["final_obs"][idx])
            for e in np.flatnonzero(info["game_over"]):
                game_returns.append(float(info["game_return"][e]))
                game_lengths.append(int(info["game_length"][e]))
            self.obs = nxt
            self.first = info["reset_mask"].copy()
        batch: dict[str, Any] = {
            ("frames" if self.frames_only else "obs"): obs_buf, "first": first, "actions": actions, "rewards": rewards,
            "terminated": terminated, "truncated": truncated,
            "last_obs": self.obs.copy(),
            "game_returns": game_returns, "game_lengths": game_lengths,
            "worker_index": self.worker_index, "version": self.version, "env_steps": T * E,
            "seconds": time.perf_counter() - t0,
        }
        if boot is not None:
            batch["bootstrap_values"] = boot
        batch.update(extras)
        return batch

    def pid(self) -> int:
        return os.getpid()


class RandomPolicy:
    """Uniform random actions (benchmarks, smoke tests)."""

    def __init__(self, observation_space, action_space, *, seed: int = 0, **_: Any):
        self.n = int(action_space.n)
        self.rng = np.random.default_rng(seed)

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        pass

    def act(self, obs: np.ndarray, **_: Any) -> dict[str, np.ndarray]:
        return {"action": self.rng.integers(0, self.n, size=len(obs))}


class RolloutGroup:
    """N ``RolloutWorker`` actors placed through ``cluster.runtime.make_actor``.

    Synchronous use (actor-critic): ``batches = group.sample(T, weights_ref)``.
    Asynchronous use (DQN): ``group.request(i, T, ...)`` keeps one request in flight per
    worker; ``group.ready()`` returns the finished ones (dead workers' requests are dropped).
    """

    def __init__(self, env_cfg: EnvConfig, cfg: RolloutConfig, policy: type,
                 policy_kwargs: dict[str, Any] | None = None, seed: int = 0, training: bool = True,
                 newest_frame_only: bool = False):
        from cluster.runtime import Resources, make_actor

        cfg.validate()
        check_env_id(env_cfg.id)
        check_env_memory(env_cfg, cfg.num_workers * cfg.envs_per_worker)
        self.cfg = cfg
        self.workers = [
            make_actor(RolloutWorker, i, cfg.num_workers, env_cfg, cfg.envs_per_worker, policy, policy_kwargs, seed,
                       training, newest_frame_only, resources=Resources(num_cpus=cfg.cpus_per_worker), max_restarts=cfg.max_restarts)
            for i in range(cfg.num_workers)
        ]
        self._inflight: dict[Any, tuple[int, int]] = {}  # ref -> (worker index, request number)
        self._requests = 0
        self._known: list[int] = [-1] * cfg.num_workers  # weights version each worker has
        self._weights_ref = None
        self._version = -1
        self.failures = 0  # worker outages (a crash and its restart count once)
        self._down: list[bool] = [False] * cfg.num_workers
        self._info = self._get(self.workers[0].info.remote())

    def _get(self, ref):
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            raise ReinforgeError(f"rollout worker failed to start: {str(exc).splitlines()[0]}") from None

    # --- what the workers see -------------------------------------------------------------
    @property
    def observation_space(self):
        return self._info["observation_space"]

    @property
    def action_space(self):
        return self._info["action_space"]

    @property
    def frame_stack(self) -> int:
        return int(self._info["frame_stack"])

    @property
    def num_envs(self) -> int:
        return self.cfg.num_workers * self.cfg.envs_per_worker

    # --- weights ---------------------------------------------------------------------------
    def put_weights(self, state_dict: dict[str, Any]) -> int:
        """One ``ray.put`` of the weights (as numpy, read zero-copy by workers); returns the version."""
        import ray

        weights = {k: v.detach().to("cpu").numpy() if hasattr(v, "detach") else np.asarray(v)
                   for k, v in state_dict.items()}
        self._version += 1
        self._weights_ref = ray.put(weights)
        return self._version

    def _weights_for(self, i: int) -> tuple[Any, int]:
        if self._weights_ref is None or self._known[i] == self._version:
            return None, self._version
        return self._weights_ref, self._version

    # --- requests --------------------------------------------------------------------------
    def request(self, i: int, num_steps: int | None = None, **act_kwargs: Any) -> None:
        ref_w, version = self._weights_for(i)
        ref = self.workers[i].sample.remote(num_steps or self.cfg.steps_per_sample, ref_w, version, **act_kwargs)
        if ref_w is not None:
            self._known[i] = version
        self._inflight[ref] = (i, self._requests)
        self._requests += 1

    def pending(self, i: int) -> int:
        """Requests queued or running on worker ``i``."""
        return sum(1 for w, _ in self._inflight.values() if w == i)

    def busy(self) -> bool:
        """Whether any request is queued or running."""
        return bool(self._inflight)

    def running_workers(self) -> int:
        """How many workers have a request queued or running (the rest wait for the learner)."""
        return len({w for w, _ in self._inflight.values()})

    def idle_workers(self) -> list[int]:
        busy = {w for w, _ in self._inflight.values()}
        return [i for i in range(len(self.workers)) if i not in busy]

    def fill(self, depth: int = 2, num_steps: int | None = None, **act_kwargs: Any) -> int:
        """Queue requests until every worker has ``depth`` in flight (depth 2: the worker never
        waits for the learner between segments). Returns the number of requests sent."""
        sent = 0
        for i in range(len(self.workers)):
            for _ in range(depth - self.pending(i)):
                self.request(i, num_steps, **act_kwargs)
                sent += 1
        return sent

    def ready(self, timeout: float | None = None, num_returns: int = 1) -> list[tuple[int, dict[str, Any]]]:
        """Finished requests as (worker index, segment); a dead worker's request is dropped."""
        import ray

        if not self._inflight:
            return []
        refs = list(self._inflight)
        done, _ = ray.wait(refs, num_returns=min(num_returns, len(refs)), timeout=timeout)
        out = []
        for ref in sorted(done, key=lambda r: self._inflight[r][1]):  # a worker's segments in order
            i, _ = self._inflight.pop(ref)
            try:
                out.append((i, ray.get(ref)))
                self._down[i] = False
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                # one failure per outage: the requests dropped while Ray restarts the actor
                # are not failures of their own
                self.failures += 0 if self._down[i] else 1
                self._down[i] = True
                self._known[i] = -1  # restarted actor: send it the weights again
        return out

    def sample(self, num_steps: int | None = None, **act_kwargs: Any) -> list[dict[str, Any]]:
        """One segment from every live worker (synchronous); dead workers' segments are skipped."""
        for i in self.idle_workers():
            self.request(i, num_steps, **act_kwargs)
        out: list[tuple[int, dict[str, Any]]] = []
        while self._inflight:
            out += self.ready(num_returns=len(self._inflight))
        return [b for _, b in sorted(out, key=lambda x: x[0])]

    def worker_pids(self) -> list[int]:
        import ray

        return ray.get([w.pid.remote() for w in self.workers])

    def close(self) -> None:
        import ray

        for w in self.workers:
            try:
                ray.kill(w, no_restart=True)
            except Exception:  # already gone
                pass
        self.workers = []
        self._inflight.clear()
