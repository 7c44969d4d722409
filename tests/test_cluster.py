"""The runtime layer: Ray connection, actors and resources, seeding, run directories."""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pytest
import yaml

from cluster import runtime
from cluster.errors import ConfigError, ConnectError, ReinforgeError
from cluster.rundir import RunDir, read_metrics
from cluster.seeding import derive_seed, seed_everything, worker_seed
from conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connect_to_local_instance(ray_session):
    import ray

    resources = runtime.connect()  # already connected: returns the same cluster at once
    assert resources["CPU"] == 2 and ray.is_initialized()
    assert runtime.cluster_gpus() == 0.0


def test_unreachable_address_fails_fast_with_one_line():
    addr = f"127.0.0.1:{_free_port()}"
    t0 = time.time()
    with pytest.raises(ConnectError) as info:
        runtime._probe(addr, timeout_s=5)
    assert time.time() - t0 < 30
    assert addr in str(info.value) and "\n" not in str(info.value)
    for bad in ("no-port-here", "http://[::1", "127.0.0.1:99999"):  # bad input (exit 2), not "cannot reach"
        with pytest.raises(ConfigError, match="cannot parse Ray address"):
            runtime._probe(bad, timeout_s=1)


class Counter:
    def __init__(self, start: int):
        self.value = start

    def incr(self) -> int:
        self.value += 1
        return self.value

    def pid(self) -> int:
        import os

        return os.getpid()


def test_make_actor_with_resources_and_restart(ray_session):
    import ray

    actor = runtime.make_actor(Counter, 10, resources=runtime.Resources(num_cpus=0.5), max_restarts=1,
                               max_task_retries=1)
    assert ray.get(actor.incr.remote()) == 11
    pid = ray.get(actor.pid.remote())
    ray.kill(actor, no_restart=False)
    deadline = time.time() + 60
    while True:  # wait for Ray to restart it in a new process
        try:
            if ray.get(actor.pid.remote(), timeout=30) != pid:
                break
        except ray.exceptions.RayActorError:
            pass
        assert time.time() < deadline, "actor was not restarted"
        time.sleep(0.5)
    assert ray.get(actor.incr.remote()) == 11  # the constructor ran again: state starts over
    ray.kill(actor)


def test_resources_validation():
    assert runtime.Resources(num_cpus=1, num_gpus=0.25).ray_options() == {"num_cpus": 1, "num_gpus": 0.25}
    with pytest.raises(ReinforgeError, match="fractions are allowed only below 1"):
        runtime.Resources(num_gpus=1.5).validate()
    with pytest.raises(ReinforgeError, match="negative"):
        runtime.Resources(num_cpus=-1).validate()


def test_device_selection():
    assert str(runtime.select_device("auto")) in ("cpu", "cuda")
    assert str(runtime.select_device("cpu")) == "cpu"
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ReinforgeError, match="no CUDA GPU is visible"):
            runtime.select_device("cuda")
    with pytest.raises(ReinforgeError, match="unknown device"):
        runtime.select_device("tpu9")


def test_seeds_differ_per_worker_and_env_and_are_reproducible():
    seeds = {worker_seed(0, w, e) for w in range(16) for e in range(8)}
    assert len(seeds) == 128
    assert worker_seed(3, 1, 2) == worker_seed(3, 1, 2) != worker_seed(4, 1, 2)
    assert 0 <= derive_seed(2**40, 7) < 2**31
    import torch

    seed_everything(123)
    a = (np.random.rand(), torch.rand(1).item())
    seed_everything(123)
    assert (np.random.rand(), torch.rand(1).item()) == a


def test_run_dir_contents(tmp_path):
    import torch

    rd = RunDir(tmp_path / "run", config={"pipeline": "toy", "run": {"seed": 3}}, seed=3, device="cpu")
    for step in range(1, 4):
        rd.log({"loss": 1.0 / step, "tensor": torch.tensor(2.0), "nan": float("nan")}, step=step)
    rd.save_checkpoint(3, {"model": {"w": torch.ones(2)}})
    png = rd.plot("loss", ["loss"])
    rd.close()
    root = tmp_path / "run"
    assert yaml.safe_load((root / "config.yaml").read_text())["run"]["seed"] == 3
    env = json.loads((root / "env.json").read_text())
    assert env["seed"] == 3 and env["device"] == "cpu"
    for lib in ("torch", "ray", "transformers", "trl", "gymnasium", "ale-py"):
        assert lib in env["versions"]
    rows = read_metrics(root)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["tensor"] == 2.0 and rows[0]["nan"] == "nan"
    assert any((root / "tb").iterdir())
    assert png is not None and png.stat().st_size > 1000
    assert rd.latest_checkpoint().name == "step_000000003"


def test_embedded_instance_removes_its_session_dir_and_sweeps_stale_ones(tmp_path):
    import subprocess
    import sys

    from cluster.runtime import TEMP_PREFIX, sweep_stale_temp_dirs

    stale = tmp_path / f"{TEMP_PREFIX}999999999-abc"  # no such pid
    (stale / "session_x").mkdir(parents=True)
    live = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-abc"
    live.mkdir()
    assert sweep_stale_temp_dirs(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.is_dir()
    code = ("import os, glob, tempfile; from cluster.runtime import connect; connect(num_cpus=1); "
            "print(glob.glob(os.path.join(tempfile.gettempdir(), f'reinforge-ray-{os.getpid()}-*'))[0])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT,
                         env={**os.environ, "RAY_ADDRESS": ""})
    assert res.returncode == 0, res.stderr[-2000:]
    session = res.stdout.strip().splitlines()[-1]
    assert "reinforge-ray-" in session and not os.path.exists(session)
