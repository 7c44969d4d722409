"""Trial placement on a simulated two-node cluster (``ray.cluster_utils.Cluster``).

A separate cluster cannot share a process with the test session's Ray instance, so the
scenario runs as a script in a subprocess that starts and shuts down its own cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import ray
    from ray.cluster_utils import Cluster

    from cluster.errors import ConfigError
    from pipelines import tune as T

    out = Path(sys.argv[1])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)  # a logical GPU: placement only, no CUDA
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    report = {"gpu_node": gpu_node.node_id}
    try:
        def sweep(name, **flags):
            plan = T.plan_sweep(T.sweep_from_sources(
                "toy", None, {"storage_path": str(out), "name": name, **flags},
                ["toy.learning_rate=grid(0.05, 0.1)"], ["toy.steps=6", "toy.step_seconds=0.3"]))
            results = T.run_sweep(plan, verbose=0)
            assert all(r.error is None for r in results), [str(r.error) for r in results]
            return [json.loads((Path(r.path) / "run" / "placement.json").read_text()) for r in results]

        # one CPU per node and one CPU per trial: two concurrent trials land on both nodes
        report["cpu_trials"] = sweep("cpu", cpus_per_trial=1)
        # half a GPU each: both trials share the only GPU node
        report["gpu_trials"] = sweep("gpu", cpus_per_trial=0.5, gpus_per_trial=0.5)
        try:
            plan = T.plan_sweep(T.sweep_from_sources("toy", None, {"storage_path": str(out), "name": "toomany",
                                "gpus_per_trial": 2}, ["toy.learning_rate=choice(0.1)"], []))
            T.run_sweep(plan, verbose=0)
            report["refusal"] = None
        except ConfigError as exc:
            report["refusal"] = str(exc)
        report["toomany_written"] = (out / "toomany").exists()
    finally:
        ray.shutdown()
        cluster.shutdown()
    (out / "report.json").write_text(json.dumps(report))
""")


@pytest.mark.slow
def test_trials_are_placed_across_simulated_nodes(tmp_path):
    script = tmp_path / "two_nodes.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    cpu_nodes = {t["node_id"] for t in report["cpu_trials"]}
    assert len(cpu_nodes) == 2, report  # spread over both nodes
    assert all(t["node_id"] == report["gpu_node"] for t in report["gpu_trials"]), report
    assert all(t["gpu_ids"] and t["cuda_visible_devices"] is not None for t in report["gpu_trials"]), report
    assert "--gpus-per-trial 2 but the cluster has 1 GPUs" in report["refusal"]
    assert not report["toomany_written"]
