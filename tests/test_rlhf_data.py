"""rlhf/data.py: loading a user's dataset, TRL format detection per stage, refusals in one line,
and rendering through a chat template. Offline and fast: every input is written to tmp_path and
the tokenizer is trained here with `tokenizers`."""

from __future__ import annotations

import json

import datasets
import pytest

from cluster.errors import ConfigError
from rlhf.data import (
    ColumnNames,
    DataError,
    completion_texts,
    file_hash,
    load_table,
    preference_view,
    prompt_view,
    render_pairs,
    render_prompts,
    set_chat_template,
    sft_view,
    source_info,
    split_eval,
)

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIAL = ["[UNK]", "[PAD]", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SENTENCES = ["what color is the sky", "the sky is blue", "the sky is green", "where is the sun",
             "in the sky", "in the sea", "add two and two", "it is four", "it is five", "hello there"]


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def rows_standard_pc():
    return [{"prompt": "what color is the sky", "completion": " blue", "id": 1},
            {"prompt": "where is the sun", "completion": " in the sky", "id": 2},
            {"prompt": "add two and two", "completion": " four", "id": 3}]


def rows_conv_pc():
    return [{"prompt": [user(r["prompt"])], "completion": [bot(r["completion"].strip())], "id": r["id"]}
            for r in rows_standard_pc()]


def conv_pref():
    return [{"chosen": [user("what color is the sky"), bot("blue")],
             "rejected": [user("what color is the sky"), bot("green")]},
            {"chosen": [user("where is the sun"), bot("in the sky")],
             "rejected": [user("where is the sun"), bot("in the sea")]}]


# --- writing test inputs ------------------------------------------------------------------
def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write(tmp_path, rows, kind: str):
    """The same rows in one of the formats load_table reads; returns the path to give it."""
    if kind == "jsonl":
        return str(write_jsonl(tmp_path / "data.jsonl", rows))
    if kind == "json":
        (tmp_path / "data.json").write_text(json.dumps(rows))
        return str(tmp_path / "data.json")
    ds = datasets.Dataset.from_list(rows)
    if kind == "csv":
        ds.to_csv(str(tmp_path / "data.csv"), index=False)
        return str(tmp_path / "data.csv")
    if kind == "parquet":
        ds.to_parquet(str(tmp_path / "data.parquet"))
        return str(tmp_path / "data.parquet")
    if kind == "disk":
        ds.save_to_disk(str(tmp_path / "disk"))
        return str(tmp_path / "disk")
    if kind == "disk_dict":
        datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
        return str(tmp_path / "dd")
    if kind == "dir":
        (tmp_path / "files").mkdir()
        write_jsonl(tmp_path / "files" / "train.jsonl", rows)
        return str(tmp_path / "files")
    raise AssertionError(kind)


ALL_KINDS = ["jsonl", "json", "csv", "parquet", "disk", "disk_dict", "dir"]
NESTED_KINDS = ["jsonl", "json", "parquet", "disk", "disk_dict", "dir"]  # CSV holds no lists


@pytest.fixture(scope="module")
def tokenizer():
    """A WordLevel tokenizer trained on a few sentences, with a simple Jinja chat template."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel(unk_token="[UNK]"))
    core.pre_tokenizer = Whitespace()
    core.train_from_iterator(SENTENCES, WordLevelTrainer(special_tokens=SPECIAL))
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="<eos>",
                                  additional_special_tokens=SPECIAL[3:])
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture
def plain_tokenizer(tokenizer):
    """The same tokenizer with no chat template."""
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    return tok


def refusal(fn, *args, **kw) -> str:
    """The one-line DataError message ``fn`` raises."""
    with pytest.raises(DataError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, ConfigError) and info.value.exit_code == 2
    return msg


# --- loading ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_load_table_reads_every_local_form(tmp_path, kind):
    ds = load_table(write(tmp_path, rows_standard_pc(), kind))
    assert ds["prompt"] == [r["prompt"] for r in rows_standard_pc()]
    assert [int(i) for i in ds["id"]] == [1, 2, 3]
    out, fmt, conversational = sft_view(ds, ColumnNames())
    assert (fmt, conversational) == ("prompt_completion", False)
    assert set(out.column_names) == {"prompt", "completion", "id"}


@pytest.mark.parametrize("kind", NESTED_KINDS)
def test_conversational_sets_load_and_view(tmp_path, kind):
    ds = load_table(write(tmp_path, rows_conv_pc(), kind))
    out, fmt, conversational = sft_view(ds, ColumnNames())
    assert (fmt, conversational) == ("prompt_completion", True)
    assert out[0]["prompt"][0]["content"] == "what color is the sky"
    pv, pconv = prompt_view(ds, ColumnNames())
    assert pconv and pv[1]["prompt"] == [user("where is the sun")] and "completion" in pv.column_names


def test_load_table_split_and_max_samples(tmp_path):
    path = write(tmp_path, rows_standard_pc(), "disk_dict")
    assert len(load_table(path, split="test")) == 1
    assert load_table(path, max_samples=2)["id"] == [1, 2]
    msg = refusal(load_table, path, split="validation")
    assert "no split 'validation'" in msg and "train, test" in msg and "data.path" in msg
    msg = refusal(load_table, write(tmp_path, rows_standard_pc(), "dir"), split="validation", flag="data.eval_path")
    assert msg.startswith("data.eval_path") and "splits present: train" in msg


def test_load_table_refusals(tmp_path):
    msg = refusal(load_table, str(tmp_path / "missing.jsonl"))
    assert "missing.jsonl" in msg and "no such file" in msg
    assert "no such file" in refusal(load_table, "data/sft/train")  # two separators: a path, not a hub id
    (tmp_path / "empty.jsonl").write_text("")
    assert "empty" in refusal(load_table, str(tmp_path / "empty.jsonl"))
    (tmp_path / "none.json").write_text("[]")
    assert "no rows" in refusal(load_table, str(tmp_path / "none.json"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"\n')
    msg = refusal(load_table, str(tmp_path / "bad.jsonl"), flag="data.eval_path")
    assert msg.startswith("data.eval_path") and "line 3" in msg and "bad.jsonl" in msg
    (tmp_path / "data.txt").write_text("hello\n")
    assert "unsupported file type '.txt'" in refusal(load_table, str(tmp_path / "data.txt"))
    (tmp_path / "nothing").mkdir()
    assert "no .jsonl/.json/.csv/.parquet files" in refusal(load_table, str(tmp_path / "nothing"))


def test_hub_id_offline_is_one_line():
    msg = refusal(load_table, "someone/no-such-dataset-xyz")
    assert msg.startswith("data.path someone/no-such-dataset-xyz: is not a local file or directory")
    assert "loading it from the Hugging Face hub failed (" in msg and msg.endswith("give a local path")


# --- SFT ----------------------------------------------------------------------------------
def test_sft_view_language_modeling_and_messages(tmp_path):
    ds = load_table(write(tmp_path, [{"text": "the sky is blue", "src": "a"}, {"text": "hello", "src": "b"}], "jsonl"))
    out, fmt, conversational = sft_view(ds, ColumnNames())
    assert (fmt, conversational, out.column_names) == ("language_modeling", False, ["text", "src"])
    msgs = [{"messages": [user("hi"), bot("hello there")]}, {"messages": [user("sky"), bot("blue")]}]
    out, fmt, conversational = sft_view(datasets.Dataset.from_list(msgs), ColumnNames())
    assert (fmt, conversational) == ("messages", True) and out[1]["messages"][1] == bot("blue")
    # a text column of conversations is conversational language modelling: TRL's messages
    out, fmt, conversational = sft_view(datasets.Dataset.from_list([{"text": m["messages"]} for m in msgs]))
    assert (fmt, conversational, out.column_names) == ("messages", True, ["messages"])


def test_sft_view_column_overrides_keep_other_columns():
    ds = datasets.Dataset.from_list([{"question": "add two and two", "answer": "four", "level": 1}])
    cols = ColumnNames(prompt="question", completion="answer")
    out, fmt, _ = sft_view(ds, cols)
    assert fmt == "prompt_completion" and out.column_names == ["prompt", "completion", "level"]
    assert out[0] == {"prompt": "add two and two", "completion": "four", "level": 1}
    out, fmt, _ = sft_view(datasets.Dataset.from_list([{"body": "hello"}]), ColumnNames(text="body"))
    assert fmt == "language_modeling" and out.column_names == ["text"]


def test_sft_view_refusals(tmp_path):
    ds = load_table(write(tmp_path, [{"question": "q", "answer": "a"}], "jsonl"))
    msg = refusal(sft_view, ds, ColumnNames())
    assert msg.startswith(f"data.path {tmp_path / 'data.jsonl'}: the SFT stage needs one of: "
                          "text | prompt + completion | messages (columns found: question, answer)")
    assert "data.columns.prompt=question data.columns.completion=answer" in msg
    # a number, then a null, in a text column: column and row named
    numbers = load_table(str(write_jsonl(tmp_path / "n.jsonl", [{"text": "a"}, {"text": "b"}, {"text": 3}])))
    msg = refusal(sft_view, numbers, ColumnNames())
    assert "column 'text' row 2 is int" in msg and "n.jsonl" in msg
    nulls = load_table(str(write_jsonl(tmp_path / "z.jsonl", [{"body": "a"}, {"body": None}])))
    assert "column 'body' row 1 is null" in refusal(sft_view, nulls, ColumnNames(text="body"))
    # messages without content, and messages that are strings
    bad = [{"messages": [user("hi"), bot("yo")]}, {"messages": [{"role": "user"}]}]
    msg = refusal(sft_view, load_table(str(write_jsonl(tmp_path / "m.jsonl", bad))), ColumnNames())
    assert "column 'messages' row 1 is not a list of" in msg and '"role"' in msg
    strings = datasets.Dataset.from_list([{"messages": "hello"}])
    assert "holds strings, not lists" in refusal(sft_view, strings, ColumnNames())
    # a mix of standard and conversational rows
    mixed = [{"text": "plain"}, {"text": "more"}, {"text": [user("hi")]}]
    msg = refusal(sft_view, load_table(str(write_jsonl(tmp_path / "x.jsonl", mixed))), ColumnNames())
    assert "mixes standard and conversational rows" in msg and "row 2" in msg
    half = datasets.Dataset.from_list([{"prompt": [user("hi")], "completion": "hello"}])
    msg = refusal(sft_view, half, ColumnNames())
    assert "prompt hold(s) messages but completion hold(s) strings" in msg
    # overrides that collide
    same = datasets.Dataset.from_list([{"q": "a"}])
    assert "name the same column" in refusal(sft_view, same, ColumnNames(prompt="q", completion="q"))
    clash = datasets.Dataset.from_list([{"body": "a", "text": "b"}])
    assert "would replace the column 'text'" in refusal(sft_view, clash, ColumnNames(text="body"))


# --- preferences --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["jsonl", "parquet", "disk"])
def test_preference_view_explicit(tmp_path, kind):
    rows = [{"prompt": "what color is the sky", "chosen": " blue", "rejected": " green", "margin": 1.0}]
    out, conversational = preference_view(load_table(write(tmp_path, rows, kind)), ColumnNames())
    assert not conversational and out[0] == rows[0]
    conv = [{"prompt": [user("what color is the sky")], "chosen": [bot("blue")], "rejected": [bot("green")]}]
    out, conversational = preference_view(datasets.Dataset.from_list(conv), ColumnNames())
    assert conversational and out[0]["chosen"] == [bot("blue")]


def test_preference_view_implicit_prompt(tmp_path):
    out, conversational = preference_view(load_table(write(tmp_path, conv_pref(), "jsonl")), ColumnNames())
    assert conversational and out[1]["prompt"] == [user("where is the sun")]
    assert out[1]["chosen"] == [bot("in the sky")] and out[1]["rejected"] == [bot("in the sea")]
    # standard text: the prompt ends between words, the answers keep their leading space
    text = datasets.Dataset.from_list([{"good": "the sky is blue", "bad": "the sky is black"}])
    out, conversational = preference_view(text, ColumnNames(chosen="good", rejected="bad"))
    assert not conversational
    assert out[0] == {"prompt": "the sky is", "chosen": " blue", "rejected": " black"}
    # a string prompt beside whole conversations (ultrafeedback_binarized): extracted from the answers
    uf = [{**r, "prompt": r["chosen"][0]["content"]} for r in conv_pref()]
    out, conversational = preference_view(datasets.Dataset.from_list(uf), ColumnNames())
    assert conversational and out[0]["prompt"] == [user("what color is the sky")]
    assert out[0]["chosen"] == [bot("blue")]


def test_preference_view_refusals():
    msg = refusal(preference_view, datasets.Dataset.from_list([{"prompt": "p", "chosen": "a"}]), ColumnNames())
    assert "reward model / DPO stage needs one of: prompt + chosen + rejected | chosen + rejected" in msg
    assert "(columns found: prompt, chosen)" in msg
    split = datasets.Dataset.from_list([{"chosen": [user("a"), bot("b")], "rejected": [user("c"), bot("d")]}])
    assert "share no leading message" in refusal(preference_view, split, ColumnNames())
    half = datasets.Dataset.from_list([{"chosen": [bot("b")], "rejected": "d"}])
    assert "chosen hold(s) messages but rejected hold(s) strings" in refusal(preference_view, half, ColumnNames())


# --- prompts ------------------------------------------------------------------------------
def test_prompt_view_keeps_extra_columns(tmp_path):
    rows = [{"question": "add two and two", "answer": "4", "level": 1},
            {"question": "what color is the sky", "answer": "blue", "level": 2}]
    out, conversational = prompt_view(load_table(write(tmp_path, rows, "csv")), ColumnNames(prompt="question"))
    assert not conversational and out.column_names == ["prompt", "answer", "level"]
    assert [str(a) for a in out["answer"]] == ["4", "blue"] and out["level"] == [1, 2]
    conv = [{"prompt": [user("sky")], "answer": "blue"}]
    out, conversational = prompt_view(datasets.Dataset.from_list(conv), ColumnNames())
    assert conversational and out[0] == {"prompt": [user("sky")], "answer": "blue"}


def test_prompt_view_from_other_formats():
    out, conversational = prompt_view(datasets.Dataset.from_list(rows_standard_pc()), ColumnNames())
    assert not conversational and out.column_names == ["prompt", "completion", "id"]
    out, conversational = prompt_view(datasets.Dataset.from_list(conv_pref()), ColumnNames())
    assert conversational and out[0]["prompt"] == [user("what color is the sky")]
    assert {"chosen", "rejected"} <= set(out.column_names)
    chats = [{"messages": [user("add two"), bot("and?"), user("and two"), bot("four")], "answer": "4"},
             {"messages": [{"role": "system", "content": "be brief"}, user("sky?")], "answer": "blue"}]
    out, conversational = prompt_view(datasets.Dataset.from_list(chats), ColumnNames())
    assert conversational and out[0]["prompt"] == [user("add two"), bot("and?"), user("and two")]
    assert out[1]["prompt"][1] == user("sky?") and out["answer"] == ["4", "blue"]


def test_prompt_view_refusals():
    msg = refusal(prompt_view, datasets.Dataset.from_list([{"text": "a"}]), ColumnNames())
    assert "needs one of: prompt | prompt + completion" in msg and "messages (columns found: text)" in msg
    assert "data.columns.prompt=text" in msg
    starts_with_bot = datasets.Dataset.from_list([{"messages": [bot("hi"), user("yo")]}])
    assert "row 0" in refusal(prompt_view, starts_with_bot, ColumnNames())


def test_prompt_view_refuses_a_number(tmp_path):
    ds = load_table(str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": 2.5}])))
    assert "column 'prompt' row 1 is float" in refusal(prompt_view, ds, ColumnNames())


# --- splitting and stamps -----------------------------------------------------------------
def test_split_eval_both_ways(tmp_path):
    ds = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(10)]})
    train, held = split_eval(ds, None, 0.2, seed=3, flag="data.path")
    assert (len(train), len(held)) == (8, 2) and not set(train["text"]) & set(held["text"])
    assert split_eval(ds, None, 0.2, seed=3, flag="data.path")[1]["text"] == held["text"]
    assert split_eval(ds, None, 0.2, seed=4, flag="data.path")[1]["text"] != held["text"]
    path = write(tmp_path, [{"text": "x"}, {"text": "y"}], "jsonl")
    train, held = split_eval(ds, path, 0.2, seed=3, flag="data.path")
    assert train is ds and held["text"] == ["x", "y"]
    tagged = load_table(write(tmp_path, [{"text": "x"}], "parquet"))
    msg = refusal(split_eval, tagged, None, 0.5, 0, "data.path")
    assert msg.startswith(f"data.path {tmp_path / 'data.parquet'}: data.eval_fraction=0.5 of 1 rows")
    assert msg.endswith("or set data.eval_path")
    assert "0 eval rows" in refusal(split_eval, ds, None, 0.0, 0, "data.preferences")
    assert "set data.preferences_eval_path" in refusal(split_eval, ds, None, 0.0, 0, "data.preferences")
    msg = refusal(split_eval, ds, str(tmp_path / "held.jsonl"), 0.2, 0, "data.prompts")
    assert msg.startswith("data.prompts_eval_path") and "no such file" in msg


def test_file_hash_and_source_info(tmp_path):
    path = tmp_path / "data.jsonl"
    write_jsonl(path, [{"text": "a"}, {"text": "b"}])
    first = file_hash(path)
    write_jsonl(path, [{"text": "a"}, {"text": "c"}])
    assert first and file_hash(path) != first
    d = tmp_path / "disk"
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(d))
    before = file_hash(d)
    (d / "extra.txt").write_text("more")
    assert before and file_hash(d) != before
    assert file_hash("someone/some-dataset") is None
    info = source_info(str(path), "train", 1)
    assert info == {"path": str(path.resolve()), "split": "train", "sha256": file_hash(path), "rows": 1}


# --- rendering ----------------------------------------------------------------------------
def test_set_chat_template(tmp_path, plain_tokenizer):
    set_chat_template(plain_tokenizer, None)
    assert plain_tokenizer.chat_template is None
    (tmp_path / "chat.jinja").write_text(TEMPLATE)
    set_chat_template(plain_tokenizer, str(tmp_path / "chat.jinja"))
    assert plain_tokenizer.chat_template == TEMPLATE
    set_chat_template(plain_tokenizer, "{{ messages[0]['content'] }}")
    assert plain_tokenizer.apply_chat_template([user("hi")], tokenize=False) == "hi"
    assert "data.chat_template" in refusal(set_chat_template, plain_tokenizer, str(tmp_path / "none.jinja"))
    assert "not valid Jinja" in refusal(set_chat_template, plain_tokenizer, "{% for m in messages %}")


def test_render_prompts_standard_and_conversational(tokenizer, plain_tokenizer):
    ds, _ = prompt_view(datasets.Dataset.from_list([{"prompt": "the sky is", "answer": "blue"}]))
    prompts, extras, dropped = render_prompts(ds, plain_tokenizer, 16, "data.path")
    assert (prompts, extras, dropped) == (["the sky is"], {"answer": ["blue"]}, 0)
    conv, _ = prompt_view(datasets.Dataset.from_list([{"prompt": [user("where is the sun")], "answer": "sky"}]))
    prompts, extras, dropped = render_prompts(conv, tokenizer, 16, "data.path")
    assert prompts == ["<|user|> where is the sun <|end|> <|assistant|>"] and extras == {"answer": ["sky"]}
    msg = refusal(render_prompts, conv, plain_tokenizer, 16, "data.path")
    assert "data.chat_template" in msg and "no chat template" in msg


def test_render_prompts_drops_long_prompts(tokenizer):
    rows = [{"prompt": "hello", "k": 0}, {"prompt": "what color is the sky", "k": 1}, {"prompt": "in the sea", "k": 2}]
    ds, _ = prompt_view(datasets.Dataset.from_list(rows))
    prompts, extras, dropped = render_prompts(ds, tokenizer, 3, "data.path")
    assert prompts == ["hello", "in the sea"] and extras == {"k": [0, 2]} and dropped == 1
    msg = refusal(render_prompts, ds, tokenizer, 0, "data.path")
    assert "data.max_prompt_length=0" in msg and "all 3 prompts" in msg


def test_render_pairs(tokenizer, plain_tokenizer, tmp_path):
    ds, _ = preference_view(load_table(write(tmp_path, conv_pref(), "jsonl")))
    pairs = render_pairs(ds, tokenizer)
    for row, raw in zip(pairs, conv_pref()):
        for side in ("chosen", "rejected"):
            assert row["prompt"] + row[side] == tokenizer.apply_chat_template(raw[side], tokenize=False)
        assert row["prompt"].endswith("<|assistant|>") and isinstance(row["chosen"], str)
    assert pairs[0]["chosen"] == " blue <|end|> "
    msg = refusal(render_pairs, ds, plain_tokenizer)
    assert "data.chat_template" in msg and "data.jsonl" in msg
    text, _ = preference_view(datasets.Dataset.from_list([{"chosen": "the sky is blue", "rejected": "the sky is"}]))
    row = render_pairs(text, plain_tokenizer)[0]
    assert row["prompt"] + row["chosen"] == "the sky is blue" and row["prompt"] + row["rejected"] == "the sky is"


def test_completion_texts_skip_special_tokens(tokenizer):
    ids = tokenizer("the sky is blue", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert completion_texts(tokenizer, [ids, [tokenizer.pad_token_id]]) == ["the sky is blue", ""]


@pytest.mark.parametrize("rows", [conv_pref() * 3, [{"messages": [user("sky?"), bot("blue")]}] * 4],
                         ids=["implicit_preferences", "messages"])
def test_views_and_split_leave_a_saved_folder_unchanged(tmp_path, rows):
    """Views and split_eval must not write `datasets` cache files into the user's save_to_disk
    folder: its file_hash is the data stamp artifacts keep."""
    path = write(tmp_path, rows, "disk")
    before = file_hash(path)
    ds = load_table(path)
    prompt_view(ds, ColumnNames())
    train, _ = split_eval(ds, None, 0.5, seed=0, flag="data.path")
    prompt_view(train, ColumnNames())
    assert file_hash(path) == before
