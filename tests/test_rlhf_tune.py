"""Population-based training over a tiny RLHF PPO stage: the weaker trial takes the stronger
one's checkpoint (a PBT exploit), continues from its iteration with perturbed settings, and
both trials finish with every row in their run dirs under the sweep's storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import run_cli

pytestmark = pytest.mark.slow

ITERATIONS = 8


@pytest.fixture(scope="module")
def sft_run(ray_session, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rlhf-pbt")
    out = root / "sft"
    res = run_cli("rlhf", "sft", "--run-dir", str(out), "--set", "data.melody.max_songs=30",
                  "--set", "sft.max_steps=20", "--set", "sft.n_embd=32", "--set", "sft.logging_steps=10",
                  env={"REINFORGE_CACHE": str(root / "cache")}, ray_address=ray_session)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def test_pbt_over_rlhf_ppo_exploits_and_finishes(ray_session, sft_run, tmp_path):
    from pipelines import tune as T

    # Synchronous PBT compares the two trials at every checkpoint (every 2nd PPO iteration); with two trials the lower
    # one (ties broken by Tune) always takes the upper one's latest checkpoint.
    flags = {"storage_path": str(tmp_path), "name": "pbt", "scheduler": "pbt", "synch": True,
             "num_samples": 2, "perturbation_interval": 2, "cpus_per_trial": 0.5, "seed": 0,
             "metric": "eval_proxy_reward", "mode": "max"}
    base = [f"inputs.sft={sft_run}", "data.melody.max_songs=30", "ppo.toy_reward_token=p60",
            f"ppo.iterations={ITERATIONS}", "ppo.checkpoint_every=2", "ppo.eval_every=2", "ppo.eval_prompts=4",
            "ppo.batch_size=8", "ppo.minibatch_size=4", "ppo.max_new_tokens=16", "ppo.actor_cpus=0.25",
            "run.tensorboard=false"]
    plan = T.plan_sweep(T.sweep_from_sources("rlhf-ppo", None, flags,
                                             ["ppo.learning_rate=loguniform(1e-7, 3e-3)"], base))
    results = T.run_sweep(plan, verbose=0)
    assert all(r.error is None for r in results), [str(r.error)[-1500:] for r in results if r.error]
    log = plan.experiment_dir / "pbt_global.txt"  # one line per exploit
    exploits = [line for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    assert exploits, "PBT never exploited"
    exploited = 0
    for r in results:
        run = Path(r.path) / "run"
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        assert json.loads((run / "result.json").read_text())["iterations"] == ITERATIONS
        # every PPO iteration once: a restore drops the rows logged after the copied checkpoint
        assert [x["step"] for x in rows if "proxy_reward" in x] == list(range(1, ITERATIONS + 1)), rows
        # every restart (a synchronous PBT pause, an exploit) keeps the earlier config under
        # history/; an exploit's new config has the other trial's perturbed learning rate
        configs = [*sorted(run.glob("history/config-*.yaml")), run / "config.yaml"]
        lrs = [yaml.safe_load(p.read_text())["ppo"]["learning_rate"] for p in configs]
        exploited += len(set(lrs)) > 1
    assert exploited >= 1, "no trial's run dir shows it took another trial's settings"
