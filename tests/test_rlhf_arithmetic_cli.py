"""The arithmetic task end to end through the CLI's entry point (in this process, see
tests/conftest.py ``run_cli_inprocess``), as a user runs it: SFT on partly wrong sums,
then GRPO and PPO with the exact-match gold as the reward function, then eval; every artifact
says it is the arithmetic task, and the gold (held-out exact match) is reported throughout."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

SMALL = ["--set", "data.arithmetic.train_size=400", "--set", "data.arithmetic.eval_size=40"]
RL = {"grpo": ["--set", "grpo.iterations=2", "--set", "grpo.batch_size=4", "--set", "grpo.group_size=4",
               "--set", "grpo.max_new_tokens=8", "--set", "grpo.eval_every=1", "--set", "grpo.eval_prompts=16"],
      "ppo": ["--set", "ppo.iterations=2", "--set", "ppo.batch_size=8", "--set", "ppo.minibatch_size=4",
              "--set", "ppo.max_new_tokens=8", "--set", "ppo.eval_every=1", "--set", "ppo.eval_prompts=16"]}


@pytest.fixture
def cli(ray_session):
    from tests.conftest import run_cli_inprocess

    return run_cli_inprocess


@pytest.fixture(scope="module")
def sft(ray_session, tmp_path_factory):
    from tests.conftest import run_cli_inprocess

    out = tmp_path_factory.mktemp("arith") / "sft"
    res = run_cli_inprocess("rlhf", "sft", "--config", "rlhf-arithmetic-sft", "--set", "sft.max_steps=40", *SMALL,
                            "--run-dir", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_sft_artifact_is_the_arithmetic_task_with_a_chat_template(sft):
    from transformers import AutoTokenizer

    stamp = json.loads((sft / "model" / "reinforge.json").read_text())
    assert stamp["task"]["name"] == "arithmetic" and stamp["data_format"] == "prompt_completion"
    assert stamp["task"]["config"]["arithmetic"]["train_size"] == 400
    tok = AutoTokenizer.from_pretrained(sft / "model")
    assert tok.apply_chat_template([{"role": "user", "content": "2+3="}], add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_rl_with_the_exact_match_reward_reports_held_out_accuracy(sft, cli, tmp_path, stage):
    out = tmp_path / stage
    res = cli("rlhf", stage, "--sft", str(sft), "--reward-fn", "gold", *RL[stage], "--run-dir", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    for who in ("sft", stage):
        assert 0.0 <= result[f"{who}_gold_reward"] <= 1.0  # exact-match accuracy
    assert "gold_gain" in result
    stamp = json.loads((out / "model" / "reinforge.json").read_text())
    assert stamp["task"]["name"] == "arithmetic" and stamp["parent"]["reward_fn"] == "gold"
    # the task (and its settings) came from the SFT artifact: eval needs nothing else either
    ev = cli("rlhf", "eval", "--model", str(out), "--set", "eval.prompts=8", "--set", "eval.max_new_tokens=8",
             "--run-dir", str(tmp_path / f"eval-{stage}"))
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert 0.0 <= json.loads((tmp_path / f"eval-{stage}" / "result.json").read_text())["gold_reward"] <= 1.0


def test_gold_reward_on_a_task_without_gold_is_refused(cli, tmp_path):
    from rlhf.melody import build_tokenizer
    from rlhf.models import save_artifact, tiny_gpt2

    tok = build_tokenizer()
    save_artifact(tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2), tok, tmp_path / "sft" / "model", "sft",
                  task={"name": "text", "data": {}, "config": {}})
    res = cli("rlhf", "grpo", "--sft", str(tmp_path / "sft"), "--reward-fn", "gold", "--run-dir", str(tmp_path / "x"))
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "the text task has no gold" in last, res.stderr[-1000:]
    assert not (tmp_path / "x").exists()  # refused before the run dir is made
