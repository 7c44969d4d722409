"""RLHF on a user's own model and data, through the CLI as a user types it: Llama- and
Qwen2-family models built from configs here and saved with a tokenizer trained here (with a
chat template), data files in TRL's formats written here. Nothing is downloaded.

Each stage reads the previous one's artifact; every artifact loads with plain transformers;
TRL's trainers read ours and ours reads TRL's; bad input is refused in one line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|> {% generation %}"
            "{{ m['content'] }} <eos>{% endgeneration %} {% else %}<|user|> {{ m['content'] }} <|end|> {% endif %}"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
QA = [("what color is the sky", "blue", "green"), ("what color is the sea", "blue", "red"),
      ("what color is the sun", "yellow", "blue"), ("what color is the grass", "green", "red")]
WORDS = sorted({w for q, a, b in QA for w in (*q.split(), a, b)} | {"the", "is", "sky", "it"})
FAST = {
    "sft": ["--set", "sft.max_steps=3", "--set", "sft.batch_size=4", "--set", "sft.logging_steps=1"],
    "reward": ["--set", "reward.epochs=1"],
    "ppo": ["--set", "ppo.iterations=2", "--set", "ppo.batch_size=4", "--set", "ppo.minibatch_size=2",
            "--set", "ppo.max_new_tokens=6", "--set", "ppo.eval_every=1", "--set", "ppo.eval_prompts=4",
            "--set", "ppo.checkpoint_every=1"],
    "grpo": ["--set", "grpo.iterations=2", "--set", "grpo.batch_size=2", "--set", "grpo.group_size=3",
             "--set", "grpo.minibatch_size=3", "--set", "grpo.max_new_tokens=6", "--set", "grpo.eval_every=1",
             "--set", "grpo.eval_prompts=4"],
    "dpo": ["--set", "dpo.epochs=1", "--set", "eval.prompts=2", "--set", "eval.max_new_tokens=6"],
    "eval": ["--set", "eval.prompts=2", "--set", "eval.max_new_tokens=6"],
}


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def build_tokenizer():
    """A word-level tokenizer trained with `tokenizers` on the toy vocabulary, with a chat
    template that marks assistant turns (for assistant-only loss)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    core.train_from_iterator([" ".join(WORDS)] * 2, trainers.WordLevelTrainer(special_tokens=SPECIAL))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=SPECIAL[4:])
    tok.chat_template = TEMPLATE
    return tok


def save_model(arch: str, tok, path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(LlamaConfig(**common)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**common))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("any-model")
    tok = build_tokenizer()
    reps = range(5)
    files = {
        "text": [{"text": f"{q} it is {a}"} for q, a, _ in QA for _ in reps],
        "prompt_completion": [{"prompt": q, "completion": f" it is {a}"} for q, a, _ in QA for _ in reps],
        "conversational_prompt_completion": [{"prompt": [user(q)], "completion": [bot(a)]} for q, a, _ in QA
                                             for _ in reps],
        "messages": [{"messages": [user(q), bot(a)]} for q, a, _ in QA for _ in reps],
        "preferences": [{"prompt": q, "chosen": f" {a}", "rejected": f" {b}"} for q, a, b in QA for _ in reps],
        "implicit_conversational_preferences": [{"chosen": [user(q), bot(a)], "rejected": [user(q), bot(b)]}
                                                for q, a, b in QA for _ in reps],
        "prompts": [{"prompt": [user(q)], "answer": a} for q, a, _ in QA for _ in reps],
    }
    paths = {k: write_jsonl(root / f"{k}.jsonl", rows) for k, rows in files.items()}
    paths["llama"] = save_model("llama", tok, root / "llama")
    paths["qwen2"] = save_model("qwen2", tok, root / "qwen2")
    paths["root"] = root
    return paths


@pytest.fixture(scope="module")
def run(ray_session, world):
    """run(name, stage, *args) -> (run dir, CompletedProcess), each name run once per module,
    through the CLI's entry point in this process (tests/conftest.py ``run_cli_inprocess``;
    the melody end-to-end tests run the same stages as subprocesses)."""
    from tests.conftest import run_cli_inprocess

    done: dict[str, tuple[Path, object]] = {}

    def _run(name: str, stage: str, *args: str):
        if name not in done:
            out = world["root"] / "runs" / name
            done[name] = out, run_cli_inprocess("rlhf", stage, "--run-dir", str(out), *args, *FAST.get(stage, []))
        return done[name]

    return _run


def ok(res) -> None:
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def sft_llama(run, world) -> Path:
    out, res = run("sft-llama", "sft", "--model", str(world["llama"]), "--data",
                   str(world["conversational_prompt_completion"]))
    ok(res)
    return out


@pytest.fixture(scope="module")
def reward_llama(run, world, sft_llama) -> Path:
    out, res = run("reward-llama", "reward", "--sft", str(sft_llama), "--preferences",
                   str(world["implicit_conversational_preferences"]))
    ok(res)
    return out


@pytest.mark.parametrize("fmt", ["text", "prompt_completion", "conversational_prompt_completion", "messages"])
def test_sft_reads_each_trl_format_and_writes_a_plain_transformers_model(run, world, fmt):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.data import file_hash

    out, res = run(f"sft-{fmt}", "sft", "--model", str(world["llama"]), "--data", str(world[fmt]))
    ok(res)
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert AutoTokenizer.from_pretrained(out / "model").chat_template == TEMPLATE
    stamp = json.loads((out / "model" / "reinforge.json").read_text())
    kind = {"text": "language_modeling"}.get(fmt, fmt.removeprefix("conversational_"))
    assert stamp["task"]["name"] == "text" and stamp["data_format"] == kind
    assert stamp["task"]["data"]["path"]["sha256"] == file_hash(world[fmt])
    assert stamp["task"]["data"]["path"]["rows"] == 20


def test_lora_on_qwen2_saved_as_an_adapter_and_read_by_the_next_stage(run, world):
    out, res = run("sft-qwen2-lora", "sft", "--model", str(world["qwen2"]), "--data", str(world["messages"]),
                   "--set", "sft.lora_r=4", "--set", "sft.merge_lora=false")
    ok(res)
    assert (out / "model" / "adapter_config.json").is_file()
    g, res = run("grpo-qwen2-lora", "grpo", "--sft", str(out), "--reward-fn", "rlhf_toy_rewards:says_blue",
                 "--prompts", str(world["prompts"]), "--set", "grpo.lora_r=4")
    ok(res)
    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(g / "model")).__name__ == "Qwen2ForCausalLM"


def test_reward_model_on_implicit_conversational_pairs_is_a_plain_sequence_classifier(reward_llama):
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(reward_llama / "model")
    assert rm.config.num_labels == 1
    stamp = json.loads((reward_llama / "model" / "reinforge.json").read_text())
    # Llama's final norm has no bias and its score head none either: the offset stays in the stamp
    assert stamp["offset_folded"] is False and "reward_offset" in stamp
    result = json.loads((reward_llama / "result.json").read_text())
    assert result["train_pairs"] + result["heldout_pairs"] == 20


def test_ppo_on_a_reward_model_and_a_reward_function_combined(run, world, sft_llama, reward_llama):
    out, res = run("ppo-llama", "ppo", "--sft", str(sft_llama), "--reward", str(reward_llama),
                   "--reward-fn", "rlhf_toy_rewards:says_blue", "--set", "inputs.reward_fn_weight=2",
                   "--prompts", str(world["prompts"]))
    ok(res)
    result = json.loads((out / "result.json").read_text())
    assert result["iterations"] == 2 and "ppo_proxy_reward" in result and "gold_gain" not in result  # no gold
    stamp = json.loads((out / "model" / "reinforge.json").read_text())
    assert stamp["parent"]["reward_fn"] == "rlhf_toy_rewards:says_blue"


def test_grpo_hands_extra_columns_to_the_reward_function(run, world, sft_llama):
    out, res = run("grpo-llama", "grpo", "--sft", str(sft_llama), "--reward-fn", "rlhf_toy_rewards:matches_answer",
                   "--prompts", str(world["prompts"]))
    ok(res)
    assert "GRPO: 2/2 it (100%)" in res.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("reward_std" in r for r in rows)


def test_dpo_and_eval_on_user_data(run, world, sft_llama):
    out, res = run("dpo-llama", "dpo", "--sft", str(sft_llama), "--preferences", str(world["preferences"]))
    ok(res)
    result = json.loads((out / "result.json").read_text())
    assert "dpo_kl_to_reference" in result and "dpo_gold_reward" not in result
    out, res = run("eval-llama", "eval", "--model", str(out), "--reward-fn", "rlhf_toy_rewards:says_blue")
    ok(res)
    result = json.loads((out / "result.json").read_text())
    assert "proxy_reward" in result and "kl_to_reference" in result


def test_a_reward_model_trained_by_trl_drives_our_ppo_as_it_is(run, world, sft_llama):
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(sft_llama / "model")
    rm = AutoModelForSequenceClassification.from_pretrained(sft_llama / "model", num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    rows = [json.loads(line) for line in world["preferences"].read_text().splitlines()]
    args = RewardConfig(output_dir=str(world["root"] / "trl-rm-out"), max_steps=2, per_device_train_batch_size=4,
                        use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True)
    RewardTrainer(model=rm, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok).train()
    trl_dir = world["root"] / "trl-rm"
    rm.save_pretrained(trl_dir)
    tok.save_pretrained(trl_dir)
    out, res = run("ppo-trl-rm", "ppo", "--sft", str(sft_llama), "--reward", str(trl_dir),
                   "--prompts", str(world["prompts"]))
    ok(res)
    assert json.loads((out / "result.json").read_text())["iterations"] == 2


def test_trl_dpo_trainer_accepts_our_sft_model_and_preference_set(world, reward_llama, sft_llama):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    pairs = datasets.load_from_disk(str(reward_llama / "preferences" / "train"))
    assert {"prompt", "chosen", "rejected"} <= set(pairs.column_names)
    model = AutoModelForCausalLM.from_pretrained(sft_llama / "model")
    args = DPOConfig(output_dir=str(world["root"] / "trl-dpo"), max_steps=1, per_device_train_batch_size=2,
                     use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True)
    result = DPOTrainer(model=model, args=args, train_dataset=pairs,
                        processing_class=AutoTokenizer.from_pretrained(sft_llama / "model")).train()
    assert result.global_step == 1


# --- bad input: one line, exit 2, nothing half-written --------------------------------------
def _bad_files(world) -> dict[str, Path]:
    root = world["root"] / "bad"
    if root.is_dir():
        return {p.stem: p for p in root.iterdir()}
    root.mkdir()
    no_tok = save_model("llama", build_tokenizer(), root / "no-tokenizer")
    for f in no_tok.glob("tokenizer*"):
        f.unlink()
    (no_tok / "special_tokens_map.json").unlink(missing_ok=True)
    pickled = save_model("llama", build_tokenizer(), root / "pickled")
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    two = root / "two-labels"
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(world["llama"], num_labels=2).save_pretrained(two)
    build_tokenizer().save_pretrained(two)
    plain = build_tokenizer()
    plain.chat_template = None
    no_template = save_model("llama", plain, root / "no-template")
    long_prompts = write_jsonl(root / "long.jsonl", [{"prompt": " ".join(["sky"] * 40)}] * 4)
    return {"no-tokenizer": no_tok, "pickled": pickled, "two-labels": two, "no-template": no_template,
            "columns": write_jsonl(root / "columns.jsonl", [{"question": "a", "answer": "b"}] * 4),
            "roles": write_jsonl(root / "roles.jsonl", [{"messages": [{"speaker": "x", "text": "y"}]}] * 4),
            "long": long_prompts}


BAD = {
    "missing columns": (lambda w, b, s: ["sft", "--model", str(w["llama"]), "--data", str(b["columns"])],
                        "columns found"),
    "messages without role": (lambda w, b, s: ["sft", "--model", str(w["llama"]), "--data", str(b["roles"])],
                              "role"),
    "no chat template": (lambda w, b, s: ["sft", "--model", str(b["no-template"]), "--data", str(w["messages"])],
                         "data.chat_template"),
    "no tokenizer": (lambda w, b, s: ["sft", "--model", str(b["no-tokenizer"]), "--data", str(w["text"])],
                     "tokenizer"),
    "pickled weights": (lambda w, b, s: ["sft", "--model", str(b["pickled"]), "--data", str(w["text"])],
                        "--allow-pickle"),
    "reward fn not importable": (lambda w, b, s: ["grpo", "--sft", str(s), "--reward-fn", "no_such_mod:f",
                                                  "--prompts", str(w["prompts"])], "cannot import"),
    "reward fn wrong length": (lambda w, b, s: ["grpo", "--sft", str(s), "--reward-fn", "rlhf_toy_rewards:too_few",
                                                "--prompts", str(w["prompts"])], "rewards for"),
    "reward fn not finite": (lambda w, b, s: ["grpo", "--sft", str(s), "--reward-fn", "rlhf_toy_rewards:not_finite",
                                              "--prompts", str(w["prompts"])], "non-finite"),
    "two-label reward model": (lambda w, b, s: ["ppo", "--sft", str(s), "--reward", str(b["two-labels"]),
                                                "--prompts", str(w["prompts"])], "2 labels"),
    "prompts all too long": (lambda w, b, s: ["grpo", "--sft", str(s), "--reward-fn", "rlhf_toy_rewards:says_blue",
                                              "--prompts", str(b["long"]), "--set", "data.max_prompt_length=8"],
                             "data.max_prompt_length"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_with_exit_status_2(run, world, sft_llama, case):
    argv, needle = BAD[case]
    bad = _bad_files(world)
    out, res = run(f"bad-{case.replace(' ', '-')}", *argv(world, bad, sft_llama))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-2000:]
    assert lines[-1].startswith("reinforge: error:") and needle in lines[-1], lines[-1]
    assert "Traceback" not in res.stderr
    assert not (out / "model").exists()  # nothing half-written


def test_allow_pickle_loads_a_pickled_model_dir(run, world):
    bad = _bad_files(world)
    out, res = run("sft-pickled", "sft", "--model", str(bad["pickled"]), "--data", str(world["text"]),
                   "--allow-pickle")
    ok(res)
    assert (out / "model" / "model.safetensors").is_file()  # what reinforge writes is safetensors
