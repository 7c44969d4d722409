"""SFT, reward and DPO stages save resumable checkpoints (safetensors + JSON) every
``checkpoint_every`` optimizer steps, and a stage stopped after one continues from its step:
the resumed run ends with the same weights as the run that was never stopped.

A stop is made by hand: the finished run's artifact, result and newest checkpoint are taken
away, so the run dir looks as it did when a kill landed between two checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli_inprocess

pytestmark = pytest.mark.slow

DATA = ["--set", "data.melody.max_songs=30", "--set", "run.tensorboard=false"]
SFT = ["--set", "sft.max_steps=10", "--set", "sft.checkpoint_every=3", "--set", "sft.n_embd=32",
       "--set", "sft.dropout=0.0", "--set", "sft.logging_steps=2"]
RATERS = ["--set", "raters.completions_per_prompt=4", "--set", "raters.max_new_tokens=24",
          "--set", "raters.train_prompts=12"]
REWARD = ["--set", "reward.epochs=2", "--set", "reward.texts_per_batch=8", "--set", "reward.checkpoint_every=3",
          "--set", "reward.eval_every=3", "--set", "reward.logging_steps=2"]
DPO = ["--set", "dpo.epochs=1", "--set", "dpo.max_pairs=40", "--set", "dpo.batch_size=4",
       "--set", "dpo.checkpoint_every=3", "--set", "eval.prompts=2", "--set", "eval.max_new_tokens=8"]


def _steps(run: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("step_")) for p in (run / "checkpoints").glob("step_*"))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def _stop_after_last_but_one_checkpoint(run: Path, keep_aside: Path) -> int:
    """Move the finished artifact aside and drop result.json and the newest checkpoint."""
    shutil.move(str(run / "model"), str(keep_aside))
    (run / "result.json").unlink()
    steps = _steps(run)
    assert len(steps) >= 2, f"expected at least two checkpoints, got {steps}"
    shutil.rmtree(run / "checkpoints" / f"step_{steps[-1]:09d}")
    return steps[-2]


def _resume_and_compare(run: Path, stage: str, tmp_path: Path, resumed_line: str) -> dict:
    aside = tmp_path / f"{stage}-uninterrupted-model"
    at = _stop_after_last_but_one_checkpoint(run, aside)
    res = run_cli_inprocess("rlhf", stage, "--resume", str(run))
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{resumed_line} {at} from" in res.stdout + res.stderr, (res.stdout + res.stderr)[-2000:]
    before = load_file(str(aside / "model.safetensors"))
    after = _weights(run)
    assert before.keys() == after.keys()
    worst = max(float((before[k].float() - after[k].float()).abs().max()) for k in before)
    assert worst < 1e-5, f"{stage}: the resumed run ends {worst:g} away from the uninterrupted one"
    return json.loads((run / "result.json").read_text())


@pytest.fixture(scope="module")
def sft_run(ray_session, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "sft"
    res = run_cli_inprocess("rlhf", "sft", "--run-dir", str(run), *SFT, *DATA)
    assert res.returncode == 0, res.stderr[-2000:]
    return run


@pytest.fixture(scope="module")
def reward_run(sft_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "reward"
    res = run_cli_inprocess("rlhf", "reward", "--sft", str(sft_run), "--run-dir", str(run), *RATERS, *REWARD)
    assert res.returncode == 0, res.stderr[-2000:]
    return run


def test_sft_checkpoints_hold_weights_optimizer_and_trainer_state(sft_run):
    from cluster.checkpoint import load_checkpoint

    assert _steps(sft_run) == [6, 9]  # every 3 steps, the newest two kept; step 10 is the artifact
    ckpt = load_checkpoint(sft_run / "checkpoints" / "step_000000009")
    assert json.loads(ckpt["trainer"]["state_json"])["global_step"] == 9
    assert ckpt["optimizer"]["state"] and set(ckpt["rng"]) >= {"python", "numpy", "cpu"}


def test_resumed_sft_continues_its_step_count_to_the_same_weights(sft_run, tmp_path):
    copy = tmp_path / "sft"
    shutil.copytree(sft_run, copy)
    result = _resume_and_compare(copy, "sft", tmp_path, "resumed at step")
    assert result["steps"] == 10


def test_resumed_reward_model_continues_to_the_same_weights_and_logs_heldout_accuracy(reward_run, tmp_path):
    rows = [json.loads(x) for x in (reward_run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    periodic = [r["step"] for r in rows if "heldout_accuracy" in r]
    assert periodic[:2] == [3, 6], periodic  # the rows ASHA stops trials on
    copy = tmp_path / "reward"
    shutil.copytree(reward_run, copy)
    first = json.loads((reward_run / "result.json").read_text())
    result = _resume_and_compare(copy, "reward", tmp_path, "resumed the reward model at step")
    assert result["heldout_accuracy"] == pytest.approx(first["heldout_accuracy"])
    assert result["train_loss"] == pytest.approx(first["train_loss"], rel=1e-5)


def test_resumed_dpo_continues_its_step_count_to_the_same_weights(sft_run, reward_run, tmp_path):
    run = tmp_path / "dpo"
    res = run_cli_inprocess("rlhf", "dpo", "--sft", str(sft_run), "--reward", str(reward_run), "--run-dir", str(run),
                            *DPO, *DATA)
    assert res.returncode == 0, res.stderr[-2000:]
    steps = json.loads((run / "result.json").read_text())["steps"]
    result = _resume_and_compare(run, "dpo", tmp_path, "resumed at step")
    assert result["steps"] == steps == 10

