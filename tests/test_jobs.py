"""``reinforge submit`` / ``reinforge jobs`` against a real head (``ray start --head`` on
127.0.0.1, random free ports, token auth on, a private temp dir), stopped at the end by
killing its process group — never ``ray stop``, which would kill every Ray on the machine."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cluster.jobs import UPLOAD_EXCLUDES, dashboard_address, entrypoint_command, find_token
from tests.conftest import ROOT, run_cli

VENV_BIN = str(Path(sys.executable).parent)


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _kill_head(proc: subprocess.Popen, temp: str) -> None:
    """SIGTERM the head's process group, SIGKILL what is left; then any stray process of ours
    whose command line names our private temp dir (by PID)."""
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            try:  # the group may outlive its leader for a moment
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        break
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().decode(errors="ignore")
        except OSError:
            continue
        if temp in cmdline:
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head with token auth; yields (dashboard URL, token)."""
    gcs, dash, client, nm, om, agent_listen, agent_grpc, rt_env, metrics = _free_ports(9)
    temp = tempfile.mkdtemp(prefix="rfjob-", dir="/tmp")  # short: Ray's socket paths have a length limit
    token = secrets.token_hex(16)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}  # the cluster's `python` is this venv's
    env.pop("RAY_ADDRESS", None)
    cmd = [f"{VENV_BIN}/ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
           f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--dashboard-agent-listen-port={agent_listen}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={rt_env}",
           f"--metrics-export-port={metrics}", "--min-worker-port=0", "--max-worker-port=0", "--num-cpus=2",
           "--include-dashboard=true", f"--temp-dir={temp}", "--disable-usage-stats"]
    log = open(Path(temp) / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        t0 = time.time()
        while True:
            try:
                req = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
                urllib.request.urlopen(req, timeout=2)
                break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.time() - t0 > 120:
                    raise RuntimeError("ray head did not come up: " + (Path(temp) / "head.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield url, token
    finally:
        log.close()
        _kill_head(proc, temp)


def _cli(*args, token: str | None, timeout: float = 300):
    env = {"RAY_AUTH_TOKEN": token} if token else {}
    return run_cli(*args, env=env, timeout=timeout)


# --- without a cluster ----------------------------------------------------------------------
def test_entrypoint_and_excludes():
    assert entrypoint_command(["reinforge", "rl", "train", "--set", "rl.lr=1e-3"]) == \
        "python -m pipelines.cli rl train --set rl.lr=1e-3"
    assert entrypoint_command(["python", "x.py", "a b"]) == "python x.py 'a b'"
    assert {"runs/", ".venv/"} <= set(UPLOAD_EXCLUDES)


def test_address_and_token_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a GCS address is not the Jobs API
    assert dashboard_address() == "http://127.0.0.1:8265"
    assert dashboard_address("10.0.0.5:8265") == "http://10.0.0.5:8265"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert find_token() == "abc"
    (tmp_path / "tok").write_text("fromfile\n")
    assert find_token(str(tmp_path / "tok")) == "fromfile"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert find_token() is None


def test_unreachable_address_is_one_line():
    (port,) = _free_ports(1)
    res = run_cli("submit", "--address", f"http://127.0.0.1:{port}", "--", "reinforge", "run", "toy", timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and "cannot reach Ray cluster" in res.stderr
    res = run_cli("jobs", "list", "--address", f"http://127.0.0.1:{port}", timeout=60)
    assert res.returncode == 1 and "cannot reach Ray cluster" in res.stderr


# --- against the real head ------------------------------------------------------------------
@pytest.mark.slow
def test_submit_follow_runs_a_pipeline(ray_head, tmp_path):
    url, token = ray_head
    res = _cli("submit", "--address", url, "--follow", "--", "reinforge", "run", "toy", "--set", "toy.steps=5",
               "--run-dir", "runs/job-toy", token=token)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "submitted job raysubmit_" in res.stdout
    assert "run dir: runs/job-toy" in res.stdout and "SUCCEEDED" in res.stdout
    job_id = res.stdout.split("submitted job ")[1].split()[0]
    status = _cli("jobs", "status", job_id, "--address", url, token=token)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    listing = _cli("jobs", "list", "--address", url, token=token)
    assert job_id in listing.stdout
    logs = _cli("jobs", "logs", job_id, "--address", url, token=token)
    assert "resumed_from" in logs.stdout and "loss" in logs.stdout


@pytest.mark.slow
def test_upload_leaves_out_runs_and_venv(ray_head):
    url, token = ray_head
    # a fresh file under runs/ (a job's own outputs may already sit in the cluster's copy of runs/)
    marker = ROOT / "runs" / f".upload-probe-{secrets.token_hex(4)}"
    marker.parent.mkdir(exist_ok=True)
    marker.write_text("must not be uploaded")
    try:
        probe = (f"import os; print('HAS', os.path.exists('runs/{marker.name}'), os.path.isdir('.venv'), "
                 "os.path.isdir('pipelines'))")
        res = _cli("submit", "--address", url, "--follow", "--", "python", "-c", probe, token=token)
    finally:
        marker.unlink()
    assert res.returncode == 0, res.stderr[-2000:]
    assert "HAS False False True" in res.stdout


@pytest.mark.slow
def test_bad_entrypoint_fails_with_the_jobs_error(ray_head):
    url, token = ray_head
    res = _cli("submit", "--address", url, "--follow", "--", "reinforge", "no-such-command", token=token)
    assert res.returncode == 1
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("reinforge: error: job raysubmit_")]
    assert len(errors) == 1, res.stdout[-1500:] + res.stderr[-1500:]
    assert "FAILED" in errors[0] and "no-such-command" in errors[0]


@pytest.mark.slow
def test_wrong_token_is_refused_in_one_line(ray_head):
    url, _ = ray_head
    res = _cli("jobs", "list", "--address", url, token="not-the-token")
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and "token auth" in res.stderr


class _Recorder:
    """A fake dashboard on 127.0.0.1 that records the Authorization header of every request."""

    def __init__(self):
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                seen.append(self.headers.get("Authorization"))
                self.send_response(404)
                self.end_headers()

            do_POST = do_GET  # noqa: N815

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_local_token_goes_only_to_the_local_dashboard(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("local-secret\n")
    env = {"HOME": str(home), "RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": ""}
    rec = _Recorder()
    try:
        res = run_cli("jobs", "list", "--address", f"http://127.0.0.1:{rec.port}", env=env, timeout=60)
    finally:
        rec.close()
    assert res.returncode == 1  # the fake answers 404: not a Jobs API
    assert rec.seen and all(h is None for h in rec.seen), rec.seen
    assert res.stderr.strip().count("\n") == 0  # the refusal stays one line


def test_token_never_goes_over_plain_http_to_another_host(tmp_path):
    (tmp_path / "tok").write_text("s3cret\n")
    res = run_cli("submit", "--address", "http://192.0.2.10:8265", "--token-file", str(tmp_path / "tok"),
                  "--", "reinforge", "run", "toy", timeout=60)
    assert res.returncode == 2 and "over plain http" in res.stderr and "--allow-insecure-token" in res.stderr
    assert res.stderr.strip().count("\n") == 0
    res = run_cli("jobs", "list", "--token-file", str(tmp_path / "missing"), timeout=60)
    assert res.returncode == 2 and "--token-file" in res.stderr and "not found" in res.stderr


def test_explicit_token_is_sent_and_its_source_named(tmp_path):
    (tmp_path / "tok").write_text("s3cret\n")
    rec = _Recorder()
    try:
        res = run_cli("jobs", "list", "--address", f"http://127.0.0.1:{rec.port}", "--token-file",
                      str(tmp_path / "tok"), timeout=60)
    finally:
        rec.close()
    assert "Bearer s3cret" in rec.seen and res.returncode == 1


def test_token_rules_say_which_source_they_used(tmp_path, monkeypatch):
    from cluster.jobs import token_for

    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("local\n")
    monkeypatch.setenv("HOME", str(home))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_DASHBOARD_PORT"):
        monkeypatch.delenv(var, raising=False)
    token, note = token_for("http://127.0.0.1:8265")
    assert token == "local" and "from " + str(home / ".ray" / "auth_token") in note
    token, note = token_for("http://127.0.0.1:18265")
    assert token is None and "not sending the local token" in note
    token, note = token_for("https://head.example:8265")
    assert token is None and "not sending" in note
    (tmp_path / "tok").write_text("s3cret\n")
    token, note = token_for("https://head.example:8265", token_file=str(tmp_path / "tok"))
    assert token == "s3cret" and "--token-file" in note
