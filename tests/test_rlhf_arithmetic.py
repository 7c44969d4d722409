"""The built-in arithmetic task (rlhf/arithmetic.py): tokenizer and chat template, the data's
determinism, disjointness and error rate, and the exact-match gold."""

from __future__ import annotations

import re

import pytest

from cluster.errors import ConfigError
from rlhf.arithmetic import (
    ArithmeticConfig,
    _problem,
    build_tokenizer,
    exact_match,
    final_answer,
    pool_size,
    preference_dataset,
    prompt_dataset,
    sft_dataset,
)

SMALL = dict(train_size=400, eval_size=100)
PROMPT = re.compile(r"^(\d+)([-+*])(\d+)=$")


def solve(prompt_messages) -> int:
    """The correct result, read back from the prompt text independently of the module."""
    a, op, b = PROMPT.match(prompt_messages[0]["content"]).groups()
    return {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def prompt_texts(ds) -> list[str]:
    return [p[0]["content"] for p in ds["prompt"]]


@pytest.fixture(scope="module", params=[False, True], ids=["answer", "worked"])
def cfg(request):
    return ArithmeticConfig(digits=2, operations=["+", "-", "*"], error_rate=0.25, worked=request.param, **SMALL)


@pytest.fixture(scope="module")
def tok(cfg):
    return build_tokenizer(cfg)


@pytest.fixture(scope="module")
def data(cfg):
    return sft_dataset(cfg)


# --- tokenizer and chat template -----------------------------------------------------------
def test_tokenizer_round_trips_with_chat_template_and_spells_everything(cfg, tok, data, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(str(tmp_path))
    back = AutoTokenizer.from_pretrained(str(tmp_path))
    assert back.get_vocab() == tok.get_vocab()
    assert back.chat_template == tok.chat_template and "{% generation %}" in back.chat_template
    assert back.padding_side == "left"
    assert (back.bos_token, back.eos_token, back.pad_token, back.unk_token) == ("<bos>", "<eos>", "<pad>", "<unk>")
    pairs = preference_dataset(cfg, "train")
    texts = (prompt_texts(data["train"]) + prompt_texts(data["validation"])
             + [c[0]["content"] for split in data.values() for c in split["completion"]]
             + [r[0]["content"] for r in pairs["rejected"]])
    for t in (tok, back):
        ids = t(texts, add_special_tokens=False)["input_ids"]
        assert all(t.unk_token_id not in row for row in ids)
        assert t.batch_decode(ids) == texts  # character level: decoding gives the text back exactly
    msgs = data["train"][0]["prompt"] + data["train"][0]["completion"]
    assert back.apply_chat_template(msgs, tokenize=False) == tok.apply_chat_template(msgs, tokenize=False)


def test_tokenizer_is_deterministic(cfg, tok):
    assert build_tokenizer(cfg).get_vocab() == tok.get_vocab()


def test_chat_template_prompt_is_a_prefix_and_assistant_ends_with_eos(tok, data):
    for row in data["train"].select(range(20)):
        prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        assert prompt == "<bos>" + row["prompt"][0]["content"]
        assert full == prompt + row["completion"][0]["content"] + tok.eos_token


def test_assistant_mask_marks_exactly_the_reply_and_eos(tok, data):
    row = data["train"][0]
    out = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    reply = tok(row["completion"][0]["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n_prompt = len(out["input_ids"]) - len(reply)
    assert out["assistant_masks"] == [0] * n_prompt + [1] * len(reply)
    assert out["input_ids"][n_prompt:] == reply


def test_trl_sft_trains_on_the_reply_and_eos_only(tok, data, tmp_path):
    """TRL's own preprocessing of the conversational prompt-completion set, with
    assistant_only_loss: labels are -100 on the prompt and equal the reply + <eos> tokens."""
    from trl import SFTConfig, SFTTrainer

    from rlhf.models import tiny_gpt2

    model = tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, n_positions=64, dropout=0.0)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none", save_strategy="no",
                     max_length=64, assistant_only_loss=True, dataloader_num_workers=0, disable_tqdm=True)
    train = data["train"].select(range(8))
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok)
    row = trainer.train_dataset[0]
    batch = trainer.data_collator([row])
    labels = batch["labels"][0].tolist()
    reply = tok(train[0]["completion"][0]["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert [t for t in labels if t != -100] == reply
    assert labels[-len(reply):] == reply and all(t == -100 for t in labels[:-len(reply)])


# --- data ------------------------------------------------------------------------------------
def test_data_is_deterministic_for_a_seed(cfg, data):
    again = sft_dataset(cfg)
    for split in ("train", "validation"):
        assert again[split].to_dict() == data[split].to_dict()
    other = sft_dataset(ArithmeticConfig(**{**cfg.__dict__, "seed": cfg.seed + 1}))
    assert prompt_texts(other["train"]) != prompt_texts(data["train"])
    assert preference_dataset(cfg, "train").to_dict() == preference_dataset(cfg, "train").to_dict()


def test_train_and_validation_prompts_are_disjoint_and_distinct(cfg, data):
    train, val = prompt_texts(data["train"]), prompt_texts(data["validation"])
    assert len(train) == cfg.train_size and len(val) == cfg.eval_size
    assert len(set(train)) == len(train) and len(set(val)) == len(val)
    assert not set(train) & set(val)
    for split in ("train", "validation"):
        assert prompt_texts(prompt_dataset(cfg, split)) == prompt_texts(data[split])
        assert prompt_texts(preference_dataset(cfg, split)) == prompt_texts(data[split])
    ops = {PROMPT.match(p).group(2) for p in train}
    assert ops == {"+", "-", "*"}


def test_error_rate_is_realised_and_mistakes_are_plausible(cfg, data):
    train = data["train"]
    assert all(a == str(solve(p)) for p, a in zip(train["prompt"], train["answer"]))
    shown = [final_answer(c) for c in train["completion"]]
    wrong = [(int(s), int(a)) for s, a in zip(shown, train["answer"]) if s != a]
    assert len(wrong) == round(cfg.error_rate * cfg.train_size)
    for s, a in wrong:  # a dropped carry/borrow or one digit off by one: off by exactly a power of ten
        assert s >= 0 and str(abs(s - a)).strip("0") == "1"
    val = data["validation"]
    assert all(final_answer(c) == a == str(solve(p)) for p, c, a in zip(val["prompt"], val["completion"], val["answer"]))


def test_worked_reply_spells_the_answer_reversed_first(cfg, data):
    for c, a in zip(data["validation"]["completion"][:50], data["validation"]["answer"][:50]):
        text = c[0]["content"]
        assert text == (f"{a[::-1]} {a}" if cfg.worked else a)


def test_error_rate_extremes():
    for rate, n_wrong in ((0.0, 0), (1.0, 50)):
        train = sft_dataset(ArithmeticConfig(train_size=50, eval_size=10, error_rate=rate))["train"]
        assert sum(final_answer(c) != a for c, a in zip(train["completion"], train["answer"])) == n_wrong


def test_preference_pairs_chosen_right_rejected_wrong(cfg):
    for split in ("train", "validation"):
        pairs = preference_dataset(cfg, split)
        assert len(pairs) == (cfg.train_size if split == "train" else cfg.eval_size)
        assert exact_match(None, pairs["chosen"], pairs["answer"]) == [1.0] * len(pairs)
        assert exact_match(None, pairs["rejected"], pairs["answer"]) == [0.0] * len(pairs)
        assert all(a == str(solve(p)) for p, a in zip(pairs["prompt"], pairs["answer"]))


def test_problem_pool_enumerates_each_pair_once():
    cfg = ArithmeticConfig(digits=1, operations=["-", "+", "*"], train_size=1, eval_size=1)
    problems = [_problem(cfg, i) for i in range(pool_size(cfg))]
    assert len(set(problems)) == len(problems) == 55 + 100 + 100
    assert all(0 <= a <= 9 and 0 <= b <= 9 for a, _, b in problems)
    assert all(a >= b for a, op, b in problems if op == "-")


# --- the gold --------------------------------------------------------------------------------
def test_final_answer_parsing():
    assert final_answer("85") == "85"
    assert final_answer("58 85") == "85"
    assert final_answer(" 85<eos>") == "85"
    assert final_answer("-12") == "-12"
    assert final_answer("the answer is 7") == "7"
    assert final_answer("") is None
    assert final_answer("85.") is None
    assert final_answer("abc") is None
    assert final_answer("85 x") is None
    assert final_answer([{"role": "assistant", "content": "58 85"}]) == "85"
    assert final_answer([]) is None


def test_exact_match_hand_made_cases():
    prompts = ["<bos>47+38="] * 5
    completions = ["85", "84", "", "085", "58 85"]
    assert exact_match(prompts, completions, ["85"] * 5) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert exact_match(prompts[:2], ["85", "85"], [85, "85"]) == [1.0, 1.0]  # ints as answers too
    # TRL's GRPOTrainer: conversational completions and extra keyword columns
    conv = [[{"role": "assistant", "content": "85"}], [{"role": "assistant", "content": "oops"}]]
    assert exact_match(prompts[:2], conv, ["85", "85"], trainer_state=None, completion_ids=[[1], [2]]) == [1.0, 0.0]
    assert exact_match(prompts=None, completions=["3"], answer=["3"]) == [1.0]
    with pytest.raises(ValueError, match="pair up"):
        exact_match(prompts[:2], ["85"], ["85", "85"])
    with pytest.raises(ValueError, match="pair up"):
        exact_match(prompts[:3], ["85", "85"], ["85", "85"])


# --- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, words", [
    (dict(train_size=-1), "train_size"),
    (dict(eval_size=0), "eval_size"),
    (dict(error_rate=-0.1), "error_rate"),
    (dict(error_rate=1.5), "error_rate"),
    (dict(operations=["/"]), "unknown operation"),
    (dict(operations=[]), "operations is empty"),
    (dict(operations=["+", "+"]), "repeats"),
    (dict(digits=0), "digits"),
    (dict(digits=1, train_size=90, eval_size=20), "distinct prompts"),
])
def test_validate_refuses_bad_configs(bad, words):
    cfg = ArithmeticConfig(**bad)
    with pytest.raises(ConfigError, match=words) as info:
        cfg.validate()
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        sft_dataset(cfg)


def test_defaults_validate():
    ArithmeticConfig().validate()
