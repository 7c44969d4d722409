"""The embedded local Ray instance listens on loopback only: every listening TCP socket of its
processes (driver, GCS, raylet, workers, dashboard agent and its metrics port, runtime-env
agent), read from /proc/net/tcp{,6} and mapped to the process tree through /proc/PID/fd."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")

# A driver that starts the embedded instance, runs a task and an actor (so worker processes
# with their own gRPC servers exist), says "up", and shuts down when its stdin closes.
DRIVER = """
import sys
import ray
from cluster.runtime import connect

connect(num_cpus=1)

@ray.remote
def task():
    return 1

@ray.remote
class Actor:
    def ping(self):
        return 2

actor = Actor.remote()
assert ray.get(task.remote()) == 1 and ray.get(actor.ping.remote()) == 2
print("up", flush=True)
sys.stdin.read()
"""


def _listening() -> dict[str, tuple[str, int]]:
    """socket inode -> (ip, port) of every TCP socket in state LISTEN."""
    out = {}
    for name, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not os.path.exists(name):
            continue
        for line in Path(name).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A":  # TCP_LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            raw = bytes.fromhex(hex_ip)
            if family == socket.AF_INET:
                ip = socket.inet_ntop(family, struct.pack("<I", int(hex_ip, 16)))
            else:  # four host-order 32-bit words
                ip = socket.inet_ntop(family, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            out[inode] = (ip, int(hex_port, 16))
    return out


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _tree(root: int) -> list[int]:
    kids, found = _children(), [root]
    for pid in found:
        found += kids.get(pid, [])
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _name(pid: int) -> str:
    try:
        # the whole command line: a deep checkout (/check/work/...) pushes the binary's name
        # past any fixed cut, so nothing is truncated here
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
    except OSError:
        return "?"


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1, a dual-stack socket bound to IPv4 loopback
    return addr.is_loopback


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited; only its parent's wait is missing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_embedded_instance_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own instance, not the session's
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    pids: list[int] = [proc.pid]
    try:
        assert proc.stdout.readline().strip() == "up", "the embedded instance did not start"
        pids = _tree(proc.pid)
        listening = _listening()
        bound = [(pid, *listening[inode]) for pid in pids for inode in _socket_inodes(pid) if inode in listening]
        names = {pid: _name(pid) for pid, _, _ in bound}
        # the walk found Ray's servers, so the assertion below is about them
        seen = sorted({names[pid].split()[0].rsplit("/", 1)[-1] for pid, _, _ in bound})
        assert any("gcs_server" in names[pid] for pid, _, _ in bound), seen
        assert any("raylet" in names[pid] for pid, _, _ in bound), seen
        assert any("DashboardAgent" in names[pid] for pid, _, _ in bound), seen
        exposed = [(ip, port, names[pid][:120]) for pid, ip, port in bound if not _is_loopback(ip)]
        assert not exposed, f"listening beyond loopback: {exposed}"
    finally:
        proc.stdin.close()  # the driver's exit handler shuts Ray down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.5)
        leftover = [(p, _name(p)) for p in pids if _alive(p)]
        for pid, _ in leftover:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not leftover, f"processes left running: {leftover}"


def test_a_driver_joining_the_loopback_instance_runs_tasks(ray_session):
    """The CLI's subprocesses join the session's instance through RAY_ADDRESS: with the head on
    127.0.0.1 they find its raylet and run work there."""
    code = ("import ray; from cluster.runtime import connect; connect(); "
            "print(ray.get(ray.remote(lambda: ray.util.get_node_ip_address()).remote()))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RAY_ADDRESS": ray_session})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "127.0.0.1"
    assert ray_session.startswith("127.0.0.1:")
