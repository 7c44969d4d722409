"""Nothing saved is lost: reused run dirs, same-second runs, damaged checkpoints, resumes."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest
import torch

from cluster.checkpoint import load_checkpoint, save_checkpoint
from cluster.errors import CheckpointError, ConfigError
from cluster.rundir import RunDir, create_default_run_dir
from conftest import run_cli
from pipelines.registry import execute, resolve


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _toy(run_dir, steps=6, resume=None):
    resolved = resolve(preset="toy", overrides=[f"toy.steps={steps}", "toy.checkpoint_every=3",
                                                "run.tensorboard=false", f"run.run_dir={run_dir}"])
    return execute(resolved, resume=resume)


def test_reused_run_dir_is_refused_and_left_byte_identical(tmp_path):
    run = tmp_path / "run"
    _toy(run)
    before = _snapshot(run)
    res = run_cli("run", "toy", "--run-dir", str(run), "--set", "toy.steps=3")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and f"--resume {run}" in res.stderr
    assert _snapshot(run) == before


def test_refused_resume_leaves_the_run_untouched(tmp_path):
    run = tmp_path / "run"
    _toy(run)
    for ck in (run / "checkpoints").glob("step_*"):  # damage every checkpoint
        (ck / "model.safetensors").write_bytes(b"garbage")
    before = _snapshot(run)
    res = run_cli("run", "--resume", str(run))
    assert res.returncode == 2 and "truncated or altered" in res.stderr, res.stderr
    assert _snapshot(run) == before


def test_damaged_newest_checkpoint_falls_back_and_resume_does_not_double_rows(tmp_path, capsys):
    run = tmp_path / "run"
    _toy(run, steps=6)  # checkpoints at 3 and 6
    newest = sorted((run / "checkpoints").glob("step_*"))[-1]
    (newest / "model.safetensors").write_bytes(b"x")
    # rows 4..6 were logged after the checkpoint resume falls back to (step 3)
    _, result = _toy(run, steps=6, resume=str(run))
    assert result["resumed_from"] == 3
    assert "skipping damaged checkpoint" in capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (run / "history" / "config-1.yaml").is_file() and (run / "history" / "env-1.json").is_file()


def _make(root, q):
    q.put(str(create_default_run_dir("same", root)))


def test_runs_started_together_get_their_own_dirs(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_make, args=(tmp_path, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    dirs = {q.get(timeout=5) for _ in procs}
    assert len(dirs) == 4


@pytest.mark.parametrize("files", [{"../../../../etc/hostname": {"bytes": 1, "sha256": "x"}},
                                   {"sub/model.safetensors": {"bytes": 1, "sha256": "x"}},
                                   ["model.safetensors"]])
def test_manifest_may_name_only_files_inside_its_checkpoint(tmp_path, files):
    ck = save_checkpoint(tmp_path / "ck", 1, {"model": {"w": torch.zeros(2)}})
    manifest = json.loads((ck / "manifest.json").read_text())
    manifest["files"] = files
    (ck / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ck)
    assert "hostname" not in str(info.value) or "refusing" in str(info.value)


def test_rundir_records_the_log_step_of_each_checkpoint(tmp_path):
    rd = RunDir(tmp_path / "r", tensorboard=False)
    rd.log({"x": 1}, step=10)
    ck = rd.save_checkpoint(4, {"model": {"w": torch.zeros(1)}})
    rd.close()
    assert json.loads((ck / "manifest.json").read_text())["metadata"]["log_step"] == 10


def test_missing_run_dir_flag_value_is_config_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        _toy(tmp_path / "f")


def test_a_diverged_update_stops_the_run_and_saves_no_checkpoint(tmp_path):
    from cluster.errors import DivergedError

    rd = RunDir(tmp_path / "r", tensorboard=False)
    rd.log({"loss": 1.0, "episode_return": float("nan"), "eval_loss": float("nan")}, step=1)  # fine
    with pytest.raises(DivergedError, match="training diverged at step 2: policy_loss is nan"):
        rd.log({"policy_loss": float("nan")}, step=2)
    with pytest.raises(DivergedError, match="step 3: grad_norm is inf"):
        rd.log({"grad_norm": float("inf")}, step=3)
    with pytest.raises(DivergedError, match=r"step 4: model\.w holds NaN"):
        rd.save_checkpoint(4, {"model": {"w": torch.tensor([1.0, float("nan")])}, "state": {"step": 4}})
    assert not list((tmp_path / "r" / "checkpoints").iterdir())
    rd.save_checkpoint(5, {"model": {"w": torch.ones(2)}, "state": {"step": 5}})
    rd.close()
    assert len(list((tmp_path / "r" / "checkpoints").glob("step_*"))) == 1


def test_huge_learning_rate_ends_in_one_line_and_no_nan_checkpoint(tmp_path):
    run = tmp_path / "toy"
    res = run_cli("run", "toy", "--run-dir", str(run), "--set", "toy.learning_rate=1e300", "--set", "toy.steps=20",
                  "--set", "toy.checkpoint_every=1")
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "training diverged" in res.stderr
    for ck in (run / "checkpoints").glob("step_*"):
        assert torch.isfinite(load_checkpoint(ck)["model"]["x"]).all()
