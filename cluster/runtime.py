"""Where things run: connecting to Ray, resources for actors and trials, device choice.

Algorithms never call ``ray.init`` or ``ray.remote`` themselves; they call ``connect`` and
``make_actor`` here, so the same code runs on an embedded local instance, a laptop cluster
or a multi-node GPU cluster.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from cluster.errors import ConfigError, ConnectError, ReinforgeError

DEFAULT_CONNECT_TIMEOUT_S = 10.0


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of a Ray address (HOST:PORT or a URL); bad input is a ConfigError."""
    try:
        parsed = urlparse(address if "://" in address else f"tcp://{address}")
        host, port = parsed.hostname, parsed.port
    except ValueError:  # e.g. 'http://[::1' or a port out of range
        host = port = None
    if not host or not port:
        raise ConfigError(
            f"cannot parse Ray address {address!r}; expected HOST:PORT (e.g. 127.0.0.1:6379) or ray://HOST:10001"
        )
    return host, port


def _probe(address: str, timeout_s: float) -> None:
    """Fail fast with one line if nothing listens at ``address`` (host:port or URL).

    ``ray.init`` on a dead address retries for a long time; a TCP probe answers in seconds.
    """
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConnectError(
            f"cannot reach Ray cluster at {address} ({reason}); check the address and that the head is "
            "running (`ray start --head`), or unset RAY_ADDRESS to use an embedded local instance"
        ) from None


def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    quiet: bool = True,
) -> dict[str, float]:
    """Connect to Ray and return the cluster's resources.

    ``address`` (or ``RAY_ADDRESS``) joins an existing cluster; without one an embedded local
    instance is started with ``num_cpus``/``num_gpus``. Already connected: returns at once.
    """
    import ray

    if ray.is_initialized():
        return dict(ray.cluster_resources())
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"log_to_driver": not quiet, "logging_level": "ERROR" if quiet else "INFO"}
    if address:
        if address != "auto":
            _probe(address, timeout_s)
        try:
            with _loopback_node_ip():  # keeps 127.0.0.1:PORT (an embedded instance's address) as given
                ray.init(address=address, **kwargs)
        except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConnectError(f"cannot connect to Ray cluster at {address}: {first}") from None
    else:
        # address="local": always start our own instance. Without it Ray 2.60 joins whatever
        # cluster /tmp/ray/ray_current_cluster names (e.g. someone's `ray start` head).
        # Its session files go to a private temp dir, removed when this process exits.
        with _loopback_node_ip():
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     _temp_dir=_private_temp_dir(), **kwargs)
    _private_token_file()
    return dict(ray.cluster_resources())


@contextlib.contextmanager
def _loopback_node_ip():
    """Make the embedded instance a single-machine one that listens on 127.0.0.1 only.

    Ray's servers (GCS, raylet, object manager, every worker's gRPC server, the dashboard
    agent with its metrics port, the runtime-env agent) bind loopback when the node's IP is
    127.0.0.1, and all interfaces otherwise. On Linux the head takes its IP from the default
    route (``ray._private.services.get_node_ip_address``) unless
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's own single-machine mode (the macOS and
    Windows default), which answers 127.0.0.1. ``ray.init(_node_ip_address="127.0.0.1")``
    cannot do it: ``services.resolve_ip_for_localhost`` turns a loopback address back into
    the routed one, and for the same reason a driver joining ``127.0.0.1:PORT`` would dial
    the routed IP, where a loopback instance does not listen. Ray reads that variable once,
    into ``ray_constants.ENABLE_RAY_CLUSTER``, when it is first imported, so the constant is
    set for the ``ray.init`` call and restored afterwards. Only the head asks for its own IP
    (raylet, workers and agents are handed it; a joining driver takes its node's), so joining
    any other cluster is unchanged."""
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


TEMP_PREFIX = "reinforge-ray-"


def _private_temp_dir() -> str:
    """A fresh ``/tmp/reinforge-ray-<pid>-XXXX`` for the embedded instance's session files
    (sockets, logs), removed at exit; dirs left by killed processes are swept first.
    A short path: Ray's unix socket paths inside it must stay under 107 bytes."""
    import atexit
    import shutil
    import tempfile

    root = tempfile.gettempdir()
    sweep_stale_temp_dirs(root)
    path = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=root)

    def _remove() -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(path, ignore_errors=True)

    atexit.register(_remove)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temp_dirs(root: str) -> list[str]:
    """Remove the ``reinforge-ray-<pid>-*`` dirs whose process is gone (killed before its exit
    handler ran). Returns the removed paths."""
    import shutil

    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(TEMP_PREFIX):
            continue
        try:
            pid = int(name[len(TEMP_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        path = os.path.join(root, name)
        if not _pid_alive(pid) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _private_token_file() -> None:
    """Ray writes the generated ``~/.ray/auth_token`` with the default umask (often 0644):
    readable by every user of the machine. Make it owner-only."""
    path = os.path.expanduser("~/.ray/auth_token")
    try:
        if os.path.isfile(path) and os.stat(path).st_uid == os.getuid() and os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
    except OSError:
        pass


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def cluster_gpus() -> float:
    """GPUs the connected cluster offers (0 when not connected)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0


@dataclass(frozen=True)
class Resources:
    """What one actor or trial asks for. ``num_gpus`` may be fractional (e.g. 0.25)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_bytes: int | None = None

    def validate(self) -> Resources:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ReinforgeError(f"negative resources requested: {self}")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ReinforgeError(f"num_gpus={self.num_gpus}: fractions are allowed only below 1")
        return self

    def ray_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_bytes:
            opts["memory"] = self.memory_bytes
        return opts

    def tune_resources(self) -> dict[str, float]:
        return {"cpu": self.num_cpus, "gpu": self.num_gpus}


def make_actor(
    cls: type,
    *args: Any,
    resources: Resources | None = None,
    max_restarts: int = 0,
    max_task_retries: int = 0,
    name: str | None = None,
    **kwargs: Any,
):
    """Start ``cls`` as a Ray actor with the given resources; returns the actor handle.

    ``max_restarts`` > 0 makes Ray restart a dead actor (its constructor runs again), which is
    how rollout workers survive being killed.
    """
    import ray

    res = (resources or Resources()).validate()
    opts = res.ray_options()
    opts.update(max_restarts=max_restarts, max_task_retries=max_task_retries)
    if name:
        opts["name"] = name
    remote_cls = cls if hasattr(cls, "remote") else ray.remote(cls)
    return remote_cls.options(**opts).remote(*args, **kwargs)


def select_device(preference: str = "auto"):
    """``auto``: CUDA when present, else CPU. ``cpu``/``cuda``/``cuda:1``/``mps`` force one."""
    import torch

    pref = (preference or "auto").lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {preference!r} requested but no CUDA GPU is visible; use --device auto or cpu")
    try:
        return torch.device(pref)
    except RuntimeError:
        raise ReinforgeError(f"unknown device {preference!r}; use auto, cpu, cuda or cuda:N") from None
