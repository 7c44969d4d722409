"""Ray Jobs: ship the working directory to a cluster and run any reinforge command there.

A thin layer over ``ray.job_submission.JobSubmissionClient`` that adds what the CLI needs:
a fast one-line refusal of an unreachable or unauthenticated address, the token header for
clusters that use Ray's token authentication, a working_dir upload that leaves out run
outputs and virtual environments, and a ``follow`` loop that streams logs and returns the
job's final status.

Token authentication (Ray >= 2.5x): a cluster started with ``RAY_AUTH_MODE=token`` refuses
HTTP requests without ``Authorization: Bearer <token>``. The token is taken from, in order,
``token=`` (``--token-file``), ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``,
and ``~/.ray/auth_token`` (where ``ray.init``/``ray start`` write the generated token).
Never expose the dashboard port (8265) without token auth: the Jobs API runs arbitrary code.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

from cluster.errors import ConfigError, ConnectError, ReinforgeError

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
# Never uploaded: run outputs, environments, caches (the .gitignore is honoured as well).
UPLOAD_EXCLUDES = ["runs/", ".venv/", "venv/", ".git/", "bench-results/", "__pycache__/", "*.pyc",
                   ".pytest_cache/", "*.egg-info/", ".ruff_cache/", "ray_results/"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def dashboard_address(address: str | None = None) -> str:
    """``--address``, else RAY_API_SERVER_ADDRESS, else an http RAY_ADDRESS, else the local dashboard."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        env = os.environ.get("RAY_ADDRESS", "")
        address = env if env.startswith(("http://", "https://")) else DEFAULT_DASHBOARD
    if "://" not in address:
        address = f"http://{address}"
    return address.rstrip("/")


def find_token(token_file: str | None = None, token: str | None = None) -> str | None:
    """The cluster's auth token, or None when none is configured (see the module docstring)."""
    return find_token_source(token_file, token)[0]


def find_token_source(token_file: str | None = None, token: str | None = None) -> tuple[str | None, str, bool]:
    """(token, where it came from, explicit): ``explicit`` is False only for the local
    ``~/.ray/auth_token``, which was issued for this machine's own cluster."""
    if token:
        return token.strip(), "--token", True
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None, "RAY_AUTH_MODE=disabled", True
    if token_file:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"--token-file {token_file} not found; copy the cluster's ~/.ray/auth_token there")
        return path.read_text().strip() or None, f"--token-file {token_file}", True
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN", True
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path_env and Path(path_env).expanduser().is_file():
        return Path(path_env).expanduser().read_text().strip() or None, f"RAY_AUTH_TOKEN_PATH={path_env}", True
    local = Path.home() / ".ray" / "auth_token"
    if local.is_file():
        return local.read_text().strip() or None, str(local), False
    return None, "none", True


def is_loopback(url: str) -> bool:
    import ipaddress

    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_local_dashboard(url: str) -> bool:
    """The address ``~/.ray/auth_token`` was issued for: this machine's dashboard (loopback, at
    the port of DEFAULT_DASHBOARD or RAY_DASHBOARD_PORT)."""
    port = int(os.environ.get("RAY_DASHBOARD_PORT") or urlparse(DEFAULT_DASHBOARD).port or 8265)
    return is_loopback(url) and urlparse(url).port == port


def token_for(url: str, token_file: str | None = None, token: str | None = None,
              allow_insecure_token: bool = False) -> tuple[str | None, str | None]:
    """The token to send to ``url``, by these rules: the local ``~/.ray/auth_token`` goes only to
    this machine's dashboard (the cluster it was issued for); any token goes over plain
    http only to a loopback address unless ``allow_insecure_token``. Returns (token, a line
    saying which source was used or skipped, for the caller to print once connected)."""
    value, source, explicit = find_token_source(token_file, token)
    if value is None:
        return None, None
    if not explicit and not _is_local_dashboard(url):
        return None, (f"reinforge: not sending the local token ({source}) to {url}, which is not this machine's "
                      "Ray dashboard; pass --token-file or --token for that cluster")
    if urlparse(url).scheme == "http" and not is_loopback(url) and not allow_insecure_token:
        raise ConfigError(f"refusing to send the auth token from {source} to {url} over plain http (anyone on the "
                          "path can read it); use an https:// address, an SSH tunnel to 127.0.0.1, or "
                          "--allow-insecure-token")
    return value, f"reinforge: using the auth token from {source}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class Jobs:
    """A connected Jobs API client (``Jobs.connect(address)``)."""

    client: Any
    address: str

    @classmethod
    def connect(cls, address: str | None = None, token_file: str | None = None, timeout_s: float = 10.0,
                token: str | None = None, allow_insecure_token: bool = False) -> Jobs:
        from cluster.runtime import _probe

        url = dashboard_address(address)
        token, note = token_for(url, token_file, token, allow_insecure_token)  # bad token input: refused first
        _probe(url, timeout_s)  # a dead address fails in seconds, not after minutes of retries
        if token is None:
            # Ray's client attaches ~/.ray/auth_token by itself whenever token auth is on; the
            # rules above decided no token goes to this address, so turn that off (before ray
            # is imported: Ray reads the mode once).
            os.environ["RAY_AUTH_MODE"] = "disabled"
        from ray.job_submission import JobSubmissionClient

        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            client = JobSubmissionClient(url, headers=headers)
        except Exception as exc:  # ConnectionError, RuntimeError (auth), ValueError...
            msg = _first_line(exc)
            if re.search(r"401|403|[Aa]uthenticat|[Uu]nauthori", str(exc)):
                raise ConnectError(
                    f"the Ray cluster at {url} refused the request ({msg}); it uses token auth: set RAY_AUTH_TOKEN "
                    "or pass --token-file with the cluster's ~/.ray/auth_token"
                ) from None
            raise ConnectError(f"cannot use the Jobs API at {url}: {msg}; is it a Ray dashboard address "
                               "(http://HOST:8265)?") from None
        if note:  # said once connected, so that a refusal stays one line
            print(note, file=sys.stderr, flush=True)
        return cls(client, url)

    # --- submit -------------------------------------------------------------------------------
    def submit(self, entrypoint: str, working_dir: str | os.PathLike = ".", env_vars: dict[str, str] | None = None,
               submission_id: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
               excludes: list[str] | None = None) -> str:
        runtime_env: dict[str, Any] = {"working_dir": str(Path(working_dir).resolve()),
                                       "excludes": list(UPLOAD_EXCLUDES) + list(excludes or [])}
        if env_vars:
            runtime_env["env_vars"] = dict(env_vars)
        try:
            return self.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id,
                                          entrypoint_num_cpus=num_cpus, entrypoint_num_gpus=num_gpus)
        except Exception as exc:
            raise ReinforgeError(f"job submission to {self.address} failed: {_first_line(exc)}") from None

    # --- inspect ------------------------------------------------------------------------------
    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:
            msg = _first_line(exc)
            if "does not exist" in msg or "404" in msg:
                raise ReinforgeError(f"no job {args[0] if args else ''!s} on {self.address}; "
                                     "see 'reinforge jobs list'") from None
            raise ReinforgeError(f"{what} failed on {self.address}: {msg}") from None

    def status(self, job_id: str) -> str:
        return str(self._call("job status", self.client.get_job_status, job_id))

    def info(self, job_id: str):
        return self._call("job info", self.client.get_job_info, job_id)

    def logs(self, job_id: str) -> str:
        return self._call("job logs", self.client.get_job_logs, job_id)

    def stop(self, job_id: str) -> bool:
        return bool(self._call("job stop", self.client.stop_job, job_id))

    def list(self) -> list[Any]:
        return list(self._call("job list", self.client.list_jobs))

    def follow(self, job_id: str, out: TextIO | None = None, poll_s: float = 1.0,
               timeout_s: float | None = None) -> str:
        """Stream the job's logs to ``out`` until it ends; returns its final status.

        Polls ``get_job_logs`` (plain HTTP) rather than the websocket tail, which some
        proxies in front of dashboards do not pass.
        """
        out = out or sys.stdout
        shown = 0
        t0 = time.monotonic()
        while True:
            status = self.status(job_id)
            text = self.logs(job_id)
            if len(text) > shown:
                out.write(text[shown:])
                out.flush()
                shown = len(text)
            if status in TERMINAL:
                return status
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise ReinforgeError(f"job {job_id} still {status} after {timeout_s:.0f} s; "
                                     f"'reinforge jobs logs {job_id} --follow' to keep watching")
            time.sleep(poll_s)

    def failure(self, job_id: str) -> str:
        """One line saying why a job failed (its message, else the last log line)."""
        info = self.info(job_id)
        message = (getattr(info, "message", None) or "").strip()
        first = message.splitlines()[0] if message else ""
        tail = [ln for ln in self.logs(job_id).strip().splitlines() if ln.strip()]
        last = tail[-1].strip() if tail else ""
        if first and last and last not in first:
            return f"{first.rstrip(',:; ')}; last log line: {last}"
        return first or last or "no message"


def entrypoint_command(argv: list[str], python: str = "python") -> str:
    """The shell command a job runs: a leading ``reinforge`` becomes ``python -m pipelines.cli``
    (the uploaded working dir is the job's cwd, so this needs no install on the cluster)."""
    import shlex

    if not argv:
        raise ReinforgeError("nothing to submit: put the command after '--', e.g. reinforge submit -- reinforge demo")
    if argv[0] == "reinforge":
        argv = [python, "-m", "pipelines.cli", *argv[1:]]
    return shlex.join(argv)
