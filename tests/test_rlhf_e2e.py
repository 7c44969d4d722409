"""RLHF end to end on a tiny model through the CLI, as a user types it: SFT -> reward -> PPO,
DPO and eval, each stage reading the previous one's artifact; PPO on a toy reward learns; a
stage pointed at the wrong artifact is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DATA = ["--set", "data.max_songs=40", "--set", "data.max_tokens=96"]
TINY_SFT = ["--set", "sft.max_steps=25", "--set", "sft.n_embd=64", "--set", "sft.logging_steps=5"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return {"REINFORGE_CACHE": str(tmp_path_factory.mktemp("rlhf-cache"))}


@pytest.fixture(scope="module")
def sft_run(ray_session, cache, tmp_path_factory):
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("rlhf") / "sft"
    res = run_cli("rlhf", "sft", "--run-dir", str(out), *DATA, *TINY_SFT, env=cache, ray_address=ray_session)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def test_stages_chain_through_the_cli(sft_run, cli, cache, tmp_path):
    from rlhf.models import load_policy, load_reward_model

    sft = _result(sft_run)
    assert sft["eval_loss"] < 3.0  # cross-entropy fell from ln(55) = 4.0
    load_policy(sft_run / "model")

    rm_dir = tmp_path / "reward"
    res = cli("rlhf", "reward", "--sft", str(sft_run), "--run-dir", str(rm_dir), *DATA,
              "--set", "raters.completions_per_prompt=4", "--set", "raters.max_new_tokens=48", env=cache)
    assert res.returncode == 0, res.stderr[-2000:]
    rm = _result(rm_dir)
    assert 0.0 <= rm["heldout_accuracy"] <= 1.0 and "bayes_optimal_accuracy" in rm
    assert rm["train_accuracy"] > 0.5
    load_reward_model(rm_dir / "model")
    assert (rm_dir / "preferences" / "train" / "dataset_info.json").is_file()

    ppo_dir = tmp_path / "ppo"
    res = cli("rlhf", "ppo", "--sft", str(sft_run / "model"), "--reward", str(rm_dir), "--run-dir", str(ppo_dir), *DATA,
              "--set", "ppo.iterations=2", "--set", "ppo.batch_size=8", "--set", "ppo.minibatch_size=4",
              "--set", "ppo.max_new_tokens=32", "--set", "ppo.eval_every=1", "--set", "ppo.eval_prompts=4",
              "--set", "ppo.checkpoint_every=1", env=cache)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in (ppo_dir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    for k in ("proxy_reward", "gold_reward", "kl", "entropy", "clip_fraction", "value_loss", "eval_gold_reward",
              "eval_kl"):
        assert k in keys, k
    assert (ppo_dir / "plots" / "gold_vs_kl.png").is_file()
    assert json.loads((ppo_dir / "model" / "reinforge.json").read_text())["stage"] == "ppo"

    res = cli("rlhf", "eval", "--model", str(ppo_dir), "--run-dir", str(tmp_path / "eval"), *DATA,
              "--set", "eval.prompts=4", "--set", "eval.max_new_tokens=32", env=cache)
    assert res.returncode == 0, res.stderr[-2000:]
    ev = _result(tmp_path / "eval")
    assert {"gold_reward", "proxy_reward", "kl_to_reference"} <= set(ev)  # reference and reward found from lineage
    assert "gold_reward" in res.stdout and "kl_to_reference" in res.stdout

    res = cli("rlhf", "dpo", "--sft", str(sft_run), "--reward", str(rm_dir), "--run-dir", str(tmp_path / "dpo"),
              *DATA, "--set", "dpo.epochs=1", "--set", "eval.prompts=4", "--set", "eval.max_new_tokens=32", env=cache)
    assert res.returncode == 0, res.stderr[-2000:]
    dpo = _result(tmp_path / "dpo")
    assert "dpo_gold_reward" in dpo and "dpo_kl_to_reference" in dpo and "sft_gold_reward" in dpo


def test_wrong_artifacts_are_refused_in_one_line(sft_run, cli, cache, tmp_path):
    res = cli("rlhf", "ppo", "--sft", str(sft_run), "--reward", str(sft_run), "--run-dir", str(tmp_path / "x"),
              *DATA, env=cache)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("reinforge: error: --reward") and "expected a reward artifact" in lines[-1]
    assert "Traceback" not in res.stderr
    res = cli("rlhf", "reward", "--run-dir", str(tmp_path / "y"), *DATA, env=cache)
    assert res.returncode == 2 and "needs --sft DIR" in res.stderr
    bad = tmp_path / "prefs.jsonl"
    bad.write_text(json.dumps({"prompt": "<bos> <major> p60 d1 |", "rejected": " p60 d1 <eos>"}) + "\n")
    res = cli("rlhf", "reward", "--sft", str(sft_run), "--preferences", str(bad), "--run-dir", str(tmp_path / "z"),
              *DATA, env=cache)
    assert res.returncode == 1 and "missing column(s) chosen" in res.stderr.strip().splitlines()[-1]


def test_ppo_raises_a_toy_reward_within_a_few_iterations(sft_run, ray_session, cache, monkeypatch):
    """reward = number of 'd0.5' tokens in the completion: PPO must raise it."""
    import numpy as np
    from transformers import AutoModelForSequenceClassification

    from rlhf.melody import MelodyDataConfig, load_melodies, prompts
    from rlhf.models import limit_threads, load_policy
    from rlhf.ppo import PPOLearner, PPOStageConfig

    monkeypatch.setenv("REINFORGE_CACHE", cache["REINFORGE_CACHE"])
    limit_threads()
    data = load_melodies(MelodyDataConfig(max_songs=40, max_tokens=96), log=None)
    train = prompts(data["train"])
    policy, tok = load_policy(sft_run / "model")
    critic = AutoModelForSequenceClassification.from_pretrained(str(sft_run / "model"), num_labels=1)
    cfg = PPOStageConfig(batch_size=32, minibatch_size=16, max_new_tokens=24, learning_rate=1e-3,
                         critic_learning_rate=1e-3, kl_coef=0.01, missing_eos_penalty=0.0, ppo_epochs=4)
    learner = PPOLearner(cfg, policy, critic, tok, ("count", tok.convert_tokens_to_ids("d0.5")), 0.0, seed=0)
    try:
        rng = np.random.default_rng(0)
        rewards = []
        for _ in range(6):
            batch = [train[i] for i in rng.choice(len(train), cfg.batch_size)]
            rewards.append(learner.iteration(batch)["proxy_reward"])
    finally:
        learner.close()
    assert np.mean(rewards[-2:]) > rewards[0] + 1.0, rewards
