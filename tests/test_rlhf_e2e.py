"""RLHF end to end on a tiny model through the CLI, as a user types it: SFT -> reward -> PPO,
DPO and eval, each stage reading the previous one's artifact and checked by its own test (so
a failure names its stage); PPO on a toy reward learns; a stage pointed at the wrong artifact
is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DATA = ["--set", "data.melody.max_songs=40", "--set", "data.melody.max_tokens=96"]
TINY_SFT = ["--set", "sft.max_steps=25", "--set", "sft.n_embd=64", "--set", "sft.logging_steps=5"]
# 8 completions per prompt (28 pairs each) and 12 epochs: held-out accuracy 0.58-0.64 over run.seed 0-3
# on about 110 held-out pairs (Bayes-optimal 0.70-0.83); 4 completions gave 24 pairs and 0.54-0.58.
RATERS = ["--set", "raters.completions_per_prompt=8", "--set", "raters.max_new_tokens=48", "--set", "reward.epochs=12"]
HELDOUT_ACCURACY_BAR = 0.55
TINY_PPO = ["--set", "ppo.iterations=2", "--set", "ppo.batch_size=8", "--set", "ppo.minibatch_size=4",
            "--set", "ppo.max_new_tokens=32", "--set", "ppo.eval_every=1", "--set", "ppo.eval_prompts=4",
            "--set", "ppo.checkpoint_every=1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return {"REINFORGE_CACHE": str(tmp_path_factory.mktemp("rlhf-cache"))}


class Stage:
    """One stage run through the CLI: its run dir and the finished process."""

    def __init__(self, run_dir: Path, res):
        self.dir, self.res = run_dir, res

    def ok(self) -> bool:
        return self.res.returncode == 0

    def result(self) -> dict:
        return json.loads((self.dir / "result.json").read_text())


@pytest.fixture(scope="module")
def stages(ray_session, cache, tmp_path_factory):
    """Run each stage once for the whole module, the first time a test asks for it, so every
    stage's test reuses the earlier stage's artifact; a stage whose input stage failed is
    skipped (the failure is reported once, by that stage's own test)."""
    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("rlhf")
    done: dict[str, Stage] = {}
    argv = {
        "sft": lambda: ["sft", *TINY_SFT],
        "reward": lambda: ["reward", "--sft", str(done["sft"].dir), *RATERS],
        "ppo": lambda: ["ppo", "--sft", str(done["sft"].dir / "model"), "--reward", str(done["reward"].dir), *TINY_PPO],
        "eval": lambda: ["eval", "--model", str(done["ppo"].dir), "--set", "eval.prompts=4",
                         "--set", "eval.max_new_tokens=32"],
        "dpo": lambda: ["dpo", "--sft", str(done["sft"].dir), "--reward", str(done["reward"].dir), "--set", "dpo.epochs=1",
                        "--set", "dpo.max_pairs=120", "--set", "eval.prompts=4", "--set", "eval.max_new_tokens=32"],
    }
    needs = {"sft": (), "reward": ("sft",), "ppo": ("sft", "reward"), "eval": ("ppo",), "dpo": ("sft", "reward")}

    def get(name: str) -> Stage:
        if name not in done:
            for need in needs[name]:
                if not get(need).ok():
                    pytest.skip(f"needs the {need} stage, which failed")
            cmd, *rest = argv[name]()
            out = root / name
            done[name] = Stage(out, run_cli("rlhf", cmd, "--run-dir", str(out), *rest, *DATA, env=cache,
                                            ray_address=ray_session))
        return done[name]

    return get


def _passed(stage: Stage) -> Stage:
    assert stage.ok(), stage.res.stderr[-2000:]
    return stage


@pytest.fixture(scope="module")
def sft_run(stages) -> Path:
    return _passed(stages("sft")).dir


def test_sft_learns_the_corpus_and_shows_its_progress(stages):
    from rlhf.models import load_policy

    sft = _passed(stages("sft"))
    assert sft.result()["eval_loss"] < 3.0  # cross-entropy fell from ln(55) = 4.0
    load_policy(sft.dir / "model")
    # stderr is not a terminal here: the progress bar falls back to plain lines
    assert "sft: 25/25 step (100%)" in sft.res.stderr and "done" in sft.res.stderr


def test_reward_model_ranks_held_out_pairs_above_chance(stages):
    from rlhf.models import load_reward_model

    rm_stage = _passed(stages("reward"))
    rm = rm_stage.result()
    assert rm["heldout_pairs"] >= 100
    # chance is 0.5; the gold's own (Bayes-optimal) ranking of these noisy labels is the ceiling
    assert rm["heldout_accuracy"] >= HELDOUT_ACCURACY_BAR, rm
    assert rm["heldout_accuracy"] <= rm["bayes_optimal_accuracy"] + 0.1, rm
    assert rm["train_accuracy"] > rm["heldout_accuracy"] - 0.05
    load_reward_model(rm_stage.dir / "model")
    assert (rm_stage.dir / "preferences" / "train" / "dataset_info.json").is_file()


def test_ppo_logs_its_curve_and_saves_a_ppo_artifact(stages):
    ppo = _passed(stages("ppo"))
    rows = [json.loads(line) for line in (ppo.dir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    for k in ("proxy_reward", "gold_reward", "kl", "entropy", "clip_fraction", "value_loss", "approx_kl",
              "eval_gold_reward", "eval_kl"):
        assert k in keys, k
    assert all(r["approx_kl"] >= 0.0 for r in rows if "approx_kl" in r)  # k3 is never negative
    res = ppo.result()
    assert res["gold_gain"] == pytest.approx(res["ppo_gold_reward"] - res["sft_gold_reward"])
    assert (ppo.dir / "plots" / "gold_vs_kl.png").is_file()
    assert json.loads((ppo.dir / "model" / "reinforge.json").read_text())["stage"] == "ppo"
    assert "PPO: 2/2 it (100%)" in ppo.res.stderr and "reward=" in ppo.res.stderr


def test_eval_finds_reference_and_reward_from_the_lineage(stages):
    ev = _passed(stages("eval"))
    assert {"gold_reward", "proxy_reward", "kl_to_reference"} <= set(ev.result())
    assert "gold_reward" in ev.res.stdout and "kl_to_reference" in ev.res.stdout


def test_dpo_reports_gold_and_kl_beside_the_sft_model(stages):
    dpo = _passed(stages("dpo")).result()
    assert "dpo_gold_reward" in dpo and "dpo_kl_to_reference" in dpo and "sft_gold_reward" in dpo
    assert dpo["sft_kl_to_reference"] == pytest.approx(0.0, abs=1e-6)  # the SFT model is its own reference


def test_wrong_artifacts_are_refused_in_one_line(sft_run, cli, cache, tmp_path):
    res = cli("rlhf", "ppo", "--sft", str(sft_run), "--reward", str(sft_run), "--run-dir", str(tmp_path / "x"),
              *DATA, env=cache)
    assert res.returncode == 2  # bad input, refused before Ray starts
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reinforge: error: --reward") and "expected a reward artifact" in lines[0]
    assert "Traceback" not in res.stderr
    res = cli("rlhf", "reward", "--run-dir", str(tmp_path / "y"), *DATA, env=cache)
    assert res.returncode == 2 and "needs --sft DIR" in res.stderr
    bad = tmp_path / "prefs.jsonl"
    bad.write_text(json.dumps({"prompt": "<bos> <major> p60 d1 |", "rejected": " p60 d1 <eos>"}) + "\n")
    res = cli("rlhf", "reward", "--sft", str(sft_run), "--preferences", str(bad), "--run-dir", str(tmp_path / "z"),
              *DATA, env=cache)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "chosen" in last and "columns found" in last, res.stderr[-500:]


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
                         critic_learning_rate=1e-3, kl_coef=0.01, missing_eos_penalty=0.0, update_epochs=4)
    learner = PPOLearner(cfg, policy, critic, tok, ("count", tok.convert_tokens_to_ids("d0.5")), 0.0, seed=0)
    assert learner.rollouts.reward.has_model  # the toy count comes from the scorer
    try:
        rng = np.random.default_rng(0)
        rewards = []
        for _ in range(6):
            batch = [train[i] for i in rng.choice(len(train), cfg.batch_size)]
            rewards.append(learner.iteration(batch)["proxy_reward"])
    finally:
        learner.close()
    assert np.mean(rewards[-2:]) > rewards[0] + 1.0, rewards
