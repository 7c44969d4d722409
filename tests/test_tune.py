"""Tune sweeps: the search-expression parser, refusals before any trial starts, an ASHA sweep,
and an interrupted sweep that resumes (``reinforge tune --resume``)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.errors import ConfigError
from pipelines import tune as T
from tests.conftest import ROOT, run_cli


# --- the parser ---------------------------------------------------------------------------
@pytest.mark.parametrize("text,kind,args", [
    ("rl.learning_rate=loguniform(1e-5,1e-3)", "loguniform", (1e-5, 1e-3)),
    ("rl.batch_size=choice(32, 64)", "choice", (32, 64)),
    ("toy.noise=uniform(0, 0.5)", "uniform", (0, 0.5)),
    ("toy.dim=randint(2,6)", "randint", (2, 6)),
    ("rl.optimizer=grid(adam, 'sgd')", "grid", ("adam", "sgd")),
    ("a.flag=choice(true, False)", "choice", (True, False)),
])
def test_parse_search(text, kind, args):
    spec = T.parse_search(text)
    assert (spec.key, spec.kind, spec.args) == (text.split("=")[0], kind, args)


@pytest.mark.parametrize("text,needle", [
    ("toy.learning_rate=logunifrm(1e-3,1e-1)", "did you mean 'loguniform'"),
    ("toy.learning_rate=loguniform(1e-3", "cannot parse"),
    ("toy.learning_rate", "cannot parse"),
    ("toy.learning_rate=loguniform(0,1)", "0 < low"),
    ("toy.learning_rate=uniform(2,1)", "low < high"),
    ("toy.dim=randint(1.5,3)", "integers"),
    ("toy.dim=choice()", "at least one"),
    ("toy.dim=choice(x=1)", "cannot parse"),
    ("toy..dim=choice(1)", "dotted config key"),
])
def test_parse_search_refuses_with_one_line(text, needle):
    with pytest.raises(ConfigError) as err:
        T.parse_search(text)
    assert needle in str(err.value) and "\n" not in str(err.value)


def _sweep(search, sets=(), **flags):
    return T.sweep_from_sources("toy", None, {"storage_path": flags.pop("storage_path", "/nonexistent"), **flags},
                                list(search), list(sets))


@pytest.mark.parametrize("search,flags,needle", [
    (["toy.lr=loguniform(1e-3,1e-1)"], {}, "did you mean 'toy.learning_rate'"),
    (["toy.dim=uniform(1,4)"], {}, "expected int"),  # a float range on an int key
    (["toy.learning_rate=loguniform(1e-3,1e-1)"], {"metric": "los"}, "never reports metric 'los'"),
    (["toy.learning_rate=loguniform(1e-3,1e-1)"], {"metric": "grad_norm"}, "--mode"),
    (["toy.learning_rate=grid(0.1,0.2)"], {"scheduler": "pbt"}, "PBT cannot mutate grid"),
    ([], {}, "nothing to search"),
])
def test_plan_refuses_before_any_trial(search, flags, needle):
    with pytest.raises(ConfigError) as err:
        T.plan_sweep(_sweep(search, **flags))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cli_refusal_is_one_line_and_starts_nothing(tmp_path):
    res = run_cli("tune", "toy", "--search", "toy.learning_rate=logunifrm(1e-3,1e-1)", "--storage-path", str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "reinforge: error: unknown search function" in res.stderr
    assert not any(tmp_path.iterdir())
    res = run_cli("tune", "toy", "--search", "toy.learning_rate=uniform(0.01,0.1)", "--metric", "accuracy",
                  "--mode", "max", "--storage-path", str(tmp_path))
    assert res.returncode == 2 and "never reports metric 'accuracy'" in res.stderr
    assert not any(tmp_path.iterdir())
    res = run_cli("tune", "toy", "--search", "toy.learning_rate=uniform(0.01,0.1)", "--address", "127.0.0.1:1",
                  "--storage-path", str(tmp_path))
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0
    assert "cannot reach Ray cluster at 127.0.0.1:1" in res.stderr
    assert not any(tmp_path.iterdir())


def test_sweep_file_and_flags(tmp_path):
    f = tmp_path / "sweep.yaml"
    f.write_text("sweep:\n  preset: toy\n  set: [toy.steps=3]\n  search:\n    toy.learning_rate: loguniform(1e-3, 1e-1)\n"
                 "  num_samples: 3\n  scheduler: asha\n")
    layer = T.load_sweep_file(f)
    sweep = T.sweep_from_sources(str(f), layer, {"num_samples": 2}, ["toy.noise=choice(0.0, 0.1)"], ["toy.dim=2"])
    plan = T.plan_sweep(sweep)
    assert plan.sweep.num_samples == 2 and plan.sweep.scheduler == "asha"
    assert {s.key for s in plan.specs} == {"toy.learning_rate", "toy.noise"}
    assert plan.base["toy"]["steps"] == 3 and plan.base["toy"]["dim"] == 2
    assert (plan.metric, plan.mode) == ("loss", "min")
    f.write_text("sweep:\n  presett: toy\n")
    with pytest.raises(ConfigError, match="did you mean 'sweep.preset'"):
        T.sweep_from_sources(str(f), T.load_sweep_file(f), {}, [], [])


def test_rl_trial_reserves_its_rollout_workers():
    plan = T.plan_sweep(T.sweep_from_sources("ppo-cartpole", None, {"cpus_per_trial": 0.5},
                                             ["rl.learning_rate=choice(1e-4,3e-4)"],
                                             ["rollout.num_workers=3", "rollout.cpus_per_worker=0.25"]))
    assert plan.bundles == [{"CPU": 0.5}, {"CPU": 0.25}, {"CPU": 0.25}, {"CPU": 0.25}]


# --- sweeps on the session's Ray instance --------------------------------------------------
def test_more_gpus_than_cluster_refused_before_any_trial(ray_session, tmp_path):
    plan = T.plan_sweep(_sweep(["toy.learning_rate=loguniform(1e-3,1e-1)"], gpus_per_trial=1,
                               storage_path=str(tmp_path)))
    with pytest.raises(ConfigError, match="--gpus-per-trial 1 but the cluster has 0 GPUs"):
        T.run_sweep(plan, verbose=0)
    assert not any(tmp_path.iterdir())  # nothing written, no trial started


@pytest.mark.slow
def test_two_trial_asha_sweep_reports_best(ray_session, tmp_path, capsys):
    sweep = _sweep(["toy.learning_rate=grid(0.01, 0.3)"], ["toy.steps=8", "toy.checkpoint_every=4"],
                   scheduler="asha", cpus_per_trial=1, storage_path=str(tmp_path), name="asha")
    plan = T.plan_sweep(sweep)
    results = T.run_sweep(plan, verbose=0)
    summary = T.report(plan, results)
    out = capsys.readouterr().out
    assert summary["trials"] == 2 and summary["errored"] == 0
    assert summary["best"]["params"]["toy.learning_rate"] == 0.3  # the larger step gets closer in 8 steps
    assert "best trials by loss (min)" in out and "scheduler asha" in out
    assert (tmp_path / "asha" / "plots" / "loss.png").is_file()
    best_run = tmp_path / "asha" / summary["best"]["run_dir"].split("/asha/")[1]
    assert (best_run / "config.yaml").is_file() and (best_run / "metrics.jsonl").is_file()
    assert json.loads((tmp_path / "asha" / "best.json").read_text())["best"]["value"] == summary["best"]["value"]


@pytest.mark.slow
def test_interrupted_sweep_resumes(ray_session, tmp_path):
    """Ctrl-C a sweep once a trial has a checkpoint; ``--resume`` finishes it from there."""
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipelines.cli", "tune", "toy", "--search", "toy.learning_rate=choice(0.05)",
           "--set", "toy.steps=20", "--set", "toy.step_seconds=0.3", "--set", "toy.checkpoint_every=4",
           "--storage-path", str(tmp_path), "--name", "exp"]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.time()
        # A checkpoint's folder is on disk before Tune's driver records it with its result; a
        # sweep interrupted in between rightly restarts the trial from zero. The second folder
        # comes 4 steps (over 1 s) after the first, by which time the first is recorded.
        while not glob.glob(str(tmp_path / "exp" / "*" / "checkpoint_000001")):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            assert time.time() - t0 < 120, "no second checkpoint within 120 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert rc == 130, (tmp_path / "first.log").read_text()[-2000:]
    assert "reinforge tune --resume" in (tmp_path / "first.log").read_text()
    res = run_cli("tune", "--resume", str(tmp_path / "exp"), ray_address=ray_session, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "best trials by loss" in res.stdout
    rows = [json.loads(x) for x in open(glob.glob(str(tmp_path / "exp" / "*" / "run" / "metrics.jsonl"))[0])]
    assert rows[-1]["step"] == 20
    assert max(r["resumed_from"] for r in rows) >= 4  # continued from a checkpoint, not from scratch


@pytest.mark.slow
def test_pbt_exploits_through_checkpoints(ray_session, tmp_path):
    """PBT copies a better trial's checkpoint into the weaker trial's run dir and continues it."""
    sweep = _sweep(["toy.learning_rate=uniform(0.001, 0.3)"],
                   ["toy.steps=16", "toy.checkpoint_every=2", "toy.step_seconds=0.2", "toy.noise=0.0"],
                   scheduler="pbt", num_samples=2, perturbation_interval=4, cpus_per_trial=0.5,
                   storage_path=str(tmp_path), name="pbt")
    plan = T.plan_sweep(sweep)
    results = T.run_sweep(plan, verbose=0)
    assert all(r.error is None for r in results)
    log = tmp_path / "pbt" / "pbt_global.txt"  # PBT writes one line per exploit
    exploited = [line for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    assert exploited, "PBT never exploited"
    # the exploiting trial restarted from the other's checkpoint, copied into its own run dir,
    # and its rows after the restore reach the sweep's storage (not a staging folder)
    resumed = []
    for r in results:
        rows = [json.loads(x) for x in open(os.path.join(r.path, "run", "metrics.jsonl"))]
        assert rows[-1]["step"] == 16, (r.path, rows[-1])
        resumed += [x["resumed_from"] for x in rows if x["resumed_from"] > 0]
    assert max(resumed, default=0) >= 4, "no trial's run dir shows it continued from a checkpoint"


@pytest.mark.slow
def test_two_trial_asha_sweep_on_tiny_rl(ray_session, tmp_path):
    """rl-dqn on CartPole: each trial holds its driver and its 2 rollout actors in its group."""
    sweep = T.sweep_from_sources(
        "ddqn-cartpole", None,
        {"storage_path": str(tmp_path), "name": "rl", "scheduler": "asha", "cpus_per_trial": 0.5},
        ["rl.learning_rate=grid(0.0005, 0.001)"],
        ["rl.total_steps=1000", "rl.learning_starts=250", "rl.log_every=250", "rl.eval_episodes=0",
         "rl.checkpoint_every=500", "rollout.cpus_per_worker=0.25", "run.tensorboard=false"])
    plan = T.plan_sweep(sweep)
    assert plan.pipeline == "rl-dqn" and (plan.metric, plan.mode) == ("episode_return", "max")
    assert plan.bundles == [{"CPU": 0.5}, {"CPU": 0.25}, {"CPU": 0.25}]
    results = T.run_sweep(plan, verbose=0)
    summary = T.report(plan, results)
    assert summary["trials"] == 2 and summary["errored"] == 0 and summary["best"] is not None
    steps = sorted(r.metrics["env_steps"] for r in results)
    assert steps[-1] >= 1000  # the best one ran to the end; ASHA may have stopped the other early
    for r in results:
        assert (Path(r.path) / "run" / "metrics.jsonl").is_file() and (Path(r.path) / "run" / "placement.json").is_file()


def test_reporter_makes_rows_tune_safe():
    """Text NaNs (RunDir writes non-finite floats as text) become numbers; a missing or NaN
    metric is filled with its last finite value so schedulers compare numbers."""
    r = T._TuneReporter("episode_return")
    assert r._clean({"step": 1, "time": 5.0, "episode_return": "nan", "x": "inf"}) == {
        "step": 1, "x": float("inf"), "checkpoint_step": 0}
    assert r._clean({"step": 2, "episode_return": 3.0})["episode_return"] == 3.0
    assert r._clean({"step": 3, "episode_return": "nan"})["episode_return"] == 3.0
    assert r._clean({"step": 4, "eval_return": 9.0})["episode_return"] == 3.0


def test_rlhf_ppo_actor_bundles_follow_the_cluster():
    plan = T.plan_sweep(T.sweep_from_sources("rlhf-ppo", None, {"metric": "eval_gold_reward", "mode": "max"},
                                             ["ppo.learning_rate=choice(1e-4)"], ["ppo.num_rollout_workers=1"]))
    assert plan.bundles == [{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 0.5}]  # 1 rollout worker + the scorer
    T.fit_bundles_to_cluster(plan, {"CPU": 8.0})
    assert all("GPU" not in b for b in plan.bundles)
    T.fit_bundles_to_cluster(plan, {"CPU": 8.0, "GPU": 1.0})
    # the same share the actors ask for when PPO starts them (rlhf.ppo.actor_resources)
    from rlhf.ppo import PPOStageConfig, actor_resources

    res = actor_resources(PPOStageConfig(num_rollout_workers=1), 1.0)
    assert res.num_gpus > 0
    assert plan.bundles[1:] == [{"CPU": 0.5, "GPU": res.num_gpus}] * 2 and "GPU" not in plan.bundles[0]


def test_pbt_clock_moves_only_at_reports_that_carry_a_checkpoint(monkeypatch, tmp_path):
    """PBT's time_attr is checkpoint_step, in every report and changed only by a report with a
    checkpoint: Tune's save of a function trainable returns its latest report, so a decision at a
    report without one would find nothing to copy from the top trial."""
    from ray import tune

    reports = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append((metrics, checkpoint)))
    r = T._TuneReporter("loss", checkpoint_step=4)  # a trial restored from another's step-4 checkpoint
    for step in (5, 6):
        r.on_row({"step": step, "loss": 1.0 / step})
    (tmp_path / "ck").mkdir()
    r.on_checkpoint(tmp_path / "ck", {"step": 6})
    r.on_row({"step": 7, "loss": 0.1})
    r.finish({"loss": 0.1})
    clock = [(m["checkpoint_step"], c is not None) for m, c in reports]
    assert clock == [(4, False), (6, True), (6, False)], clock
    # restarted at its last checkpoint with nothing left to train: the metric still comes along
    reports.clear()
    r = T._TuneReporter("eval_loss", checkpoint_step=8)
    r.carry_from([{"step": 6, "eval_loss": 0.5}, {"step": 8, "train_loss": 0.2}, {"step": 8, "eval_loss": "nan"}])
    r.finish({"train_loss": 0.2})
    assert reports[0][0]["eval_loss"] == 0.5 and reports[0][0]["checkpoint_step"] == 8
    scheduler = T._scheduler(T.plan_sweep(_sweep(["toy.learning_rate=loguniform(1e-3,1e-1)"], scheduler="pbt")))
    assert scheduler._time_attr == "checkpoint_step"


@pytest.mark.parametrize("synch", [False, True])
def test_pbt_scheduler_takes_the_sweeps_synch_setting(synch):
    """``synch: true`` in a sweep file gives Ray's synchronous PBT (the whole population compared
    at every perturbation); the default is asynchronous."""
    flags = {"scheduler": "pbt", **({"synch": True} if synch else {})}
    plan = T.plan_sweep(_sweep(["toy.learning_rate=loguniform(1e-3,1e-1)"], **flags))
    scheduler = T._scheduler(plan)
    assert type(scheduler).__name__ == "PopulationBasedTraining" and scheduler._synch is synch
