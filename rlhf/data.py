"""The RLHF data layer: a user's own dataset in TRL's dataset formats, for any HF causal LM.

``load_table`` reads a local file or folder, or a Hugging Face hub id, into a ``datasets.Dataset``;
the ``*_view`` functions check it holds what a stage needs and rename its columns to TRL's
standard names (``text`` / ``prompt`` / ``completion`` / ``messages`` / ``chosen`` / ``rejected``);
``render_prompts`` / ``render_pairs`` turn the views into the plain strings the sampling and
scoring stages tokenize. Bad data is refused in one line (``DataError``, exit 2) naming the
source, the column and the row.

Formats (TRL's names; every one either *standard*, cells are strings, or *conversational*,
cells are lists of ``{"role", "content"}`` messages):

=================  ====================================  ==============================
stage              accepts                               view
=================  ====================================  ==============================
SFT                text | prompt + completion | messages  ``sft_view``
reward model, DPO  prompt + chosen + rejected |          ``preference_view``
                   chosen + rejected (implicit prompt)
PPO, GRPO, eval    prompt (+ any columns) | and every    ``prompt_view``
                   format above that holds a prompt
=================  ====================================  ==============================
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from trl.data_utils import extract_prompt, is_conversational, maybe_apply_chat_template

from cluster.errors import ConfigError

# local file suffix -> the `datasets` builder that reads it
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# a hub id is "name" or "namespace/name" (letters, digits, - _ .); anything else is taken for a path
HUB_ID = re.compile(r"^[A-Za-z0-9_][\w.-]*(/[\w.-]+)?$")
SOURCE_ATTR = "_reinforge_source"  # (flag, path) set by load_table, carried by the views into their errors


@dataclass
class ColumnNames:
    """Config section ``data.columns.*``: the names the user's data gives TRL's standard columns."""

    text: str = "text"
    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"
    chosen: str = "chosen"
    rejected: str = "rejected"

    def validate(self) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), str) or not getattr(self, f.name):
                raise DataError(f"data.columns.{f.name} must be a non-empty column name")


class DataError(ConfigError):
    """A dataset that cannot be used as given: one line naming the source, the problem and the fix."""


# --- loading ------------------------------------------------------------------------------
def looks_like_path(path: str) -> bool:
    """True for strings meant as local paths (a suffix, a leading ./ ~ /, more than one separator)."""
    return not HUB_ID.match(path) or Path(path).suffix.lower() in {*BUILDERS, ".txt", ".arrow", ".gz", ".zip"}


def is_local(path: str | Path) -> bool:
    return Path(path).expanduser().exists()


def load_table(path: str, split: str = "train", max_samples: int | None = None,
               flag: str = "data.path") -> datasets.Dataset:
    """One split of a local .jsonl/.json/.csv/.parquet file, a ``save_to_disk`` folder (Dataset or
    DatasetDict), a folder of data files, or (when ``path`` is no local path) a hub dataset id.
    ``max_samples`` keeps the first N rows."""
    if max_samples is not None and max_samples < 1:
        raise DataError(f"{flag} {path}: max_samples={max_samples} must be >= 1 (or unset for every row)")
    p = Path(path).expanduser()
    if p.is_file():
        ds = _load_file(p, flag)
    elif p.is_dir():
        ds = _load_dir(p, split, flag)
    elif looks_like_path(path):
        raise DataError(f"{flag} {path}: no such file or directory; give an existing .jsonl/.json/.csv/.parquet "
                        "file, a save_to_disk folder or a Hugging Face hub dataset id")
    else:
        ds = _load_hub(path, split, flag)
    if len(ds) == 0:
        raise DataError(f"{flag} {path}: the dataset has no rows (split {split!r}); give a dataset with examples")
    if max_samples is not None and max_samples < len(ds):
        ds = ds.select(range(max_samples))
    return tag(ds, flag, path)


def _load_file(p: Path, flag: str) -> datasets.Dataset:
    builder = BUILDERS.get(p.suffix.lower())
    if builder is None:
        raise DataError(f"{flag} {p}: unsupported file type {p.suffix or '(no suffix)'!r}; "
                        f"give one of {', '.join(BUILDERS)} or a save_to_disk folder")
    if p.stat().st_size == 0:
        raise DataError(f"{flag} {p}: the file is empty; give a file with examples")
    try:
        with _quiet_datasets():
            return datasets.load_dataset(builder, data_files=str(p), split="train")
    except Exception as e:  # datasets wraps every parse error; say which line is bad when we can
        if builder == "json" and p.read_text(encoding="utf-8", errors="replace").strip() in ("[]", "{}"):
            raise DataError(f"{flag} {p}: the dataset has no rows; give a file with examples") from None
        bad_line = _bad_json_line(p) if builder == "json" else None
        raise DataError(f"{flag} {p}: cannot be read as {p.suffix[1:]} ({bad_line or _first_line(e)}); "
                        "fix the file or give another") from None


def _load_dir(p: Path, split: str, flag: str) -> datasets.Dataset:
    if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():  # written by save_to_disk
        try:
            with _quiet_datasets():
                loaded = datasets.load_from_disk(str(p))
        except Exception as e:
            raise DataError(f"{flag} {p}: a save_to_disk folder that cannot be read ({_first_line(e)}); "
                            "save it again") from None
    else:
        if not any(f.suffix.lower() in BUILDERS for f in p.rglob("*") if f.is_file()):
            raise DataError(f"{flag} {p}: the folder holds no {'/'.join(BUILDERS)} files and is not a "
                            "save_to_disk folder; give a data file or a folder of them")
        try:  # a folder of data files: `datasets` names the splits after the files (train.jsonl, test.jsonl)
            with _quiet_datasets():
                loaded = datasets.load_dataset(str(p))
        except Exception as e:
            raise DataError(f"{flag} {p}: the data files cannot be read ({_first_line(e)}); fix them") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{flag} {p}: no split {split!r} (splits present: {', '.join(loaded)}); "
                            "choose one of them")
        return loaded[split]
    return loaded


def _load_hub(path: str, split: str, flag: str) -> datasets.Dataset:
    try:
        with _quiet_datasets():
            return datasets.load_dataset(path, split=split)
    except Exception as e:
        raise DataError(f"{flag} {path}: is not a local file or directory, and loading it from the Hugging Face "
                        f"hub failed ({_first_line(e, innermost=False)}); give a local path") from None


@contextlib.contextmanager
def _quiet_datasets():
    """No progress bars or parser log lines while loading or mapping: a failure is reported once, as a
    DataError."""
    logger, bars_were_off = logging.getLogger("datasets"), datasets.utils.are_progress_bars_disabled()
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


def _first_line(e: BaseException, innermost: bool = True) -> str:
    """The (innermost cause's) first line: `datasets` raises 'An error occurred while generating the
    dataset' and keeps the parser's message in ``__cause__``."""
    while innermost and (e.__cause__ is not None or (e.__context__ is not None and not str(e).strip())):
        e = e.__cause__ or e.__context__
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _bad_json_line(p: Path) -> str | None:
    """'line N is not valid JSON: ...' for the first bad line of a JSON Lines file (a whole-file JSON
    document that parses is fine); None when every line parses."""
    text = p.read_text(encoding="utf-8", errors="replace")
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as whole:
        if text.lstrip().startswith("["):  # one JSON document, not JSON Lines
            return f"line {whole.lineno} is not valid JSON: {whole.msg}"
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as e:
                return f"line {lineno} is not valid JSON: {e.msg}"
    return None


def split_eval(ds: datasets.Dataset, eval_path: str | None, eval_fraction: float, seed: int,
               flag: str = "data.path", eval_flag: str | None = None, fraction_flag: str = "data.eval_fraction",
               eval_split: str = "train") -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval): ``ds`` and the table at ``eval_path``, or a seeded split of ``ds``. ``flag``
    names the data being split ("data.path", "data.preferences", ...); ``eval_flag`` its eval set's
    key (by default data.eval_path for data.path, else FLAG_eval_path)."""
    eval_flag = eval_flag or ("data.eval_path" if flag == "data.path" else f"{flag}_eval_path")
    if eval_path:
        return ds, load_table(eval_path, split=eval_split, flag=eval_flag)
    n = len(ds)
    n_eval = math.ceil(eval_fraction * n) if 0 < eval_fraction < 1 else 0  # rounded up, as train_test_split
    n_train = n - n_eval
    if n_eval < 1 or n_train < 1:
        raise DataError(f"{where(ds, flag)}: {fraction_flag}={eval_fraction} of {n} rows leaves {n_train} training "
                        f"and {n_eval} eval rows; use a fraction in (0, 1) that leaves both sides rows, or set {eval_flag}")
    # a seeded permutation selected in memory (here and in the views' maps): `datasets`
    # would otherwise write cache files into a save_to_disk folder, changing the user's data folder and
    # its file_hash, and train_test_split(keep_in_memory=True) fails on a file-backed table (datasets 5.2)
    permutation = np.random.default_rng(seed).permutation(n)
    train = ds.select(permutation[n_eval:], keep_in_memory=True)
    held = ds.select(permutation[:n_eval], keep_in_memory=True)
    return _carry(ds, train), _carry(ds, held)


def file_hash(path: str | Path) -> str | None:
    """sha256 over a local file, or over every file of a folder (relative names and bytes, sorted);
    None for a hub id."""
    p = Path(path).expanduser()
    if not p.exists():
        return None
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def source_info(path: str, split: str, max_samples: int | None, rows: int | None = None) -> dict[str, Any]:
    """The stamp an artifact keeps of the data it was trained on. ``rows``: the row count when the
    caller has the table already (else it is loaded to count)."""
    local = is_local(path)
    if rows is None:
        rows = len(load_table(path, split, max_samples))
    return {"path": str(Path(path).expanduser().resolve()) if local else path, "split": split,
            "sha256": file_hash(path) if local else None, "rows": int(rows)}


def tag(ds: datasets.Dataset, flag: str, path: str) -> datasets.Dataset:
    """Record where ``ds`` came from, so that later refusals name it ('data.path train.jsonl: ...')."""
    setattr(ds, SOURCE_ATTR, (flag, str(path)))
    return ds


def where(ds: datasets.Dataset, flag: str | None = None) -> str:
    """'data.path train.jsonl' for a tagged table; ``flag`` (or 'data.path') otherwise."""
    source = getattr(ds, SOURCE_ATTR, None)
    if source is None:
        return flag or "data.path"
    return f"{flag or source[0]} {source[1]}"


def _carry(src: datasets.Dataset, dst: datasets.Dataset) -> datasets.Dataset:
    source = getattr(src, SOURCE_ATTR, None)
    return tag(dst, *source) if source else dst


# --- checking cells -----------------------------------------------------------------------
def _cell_kind(cell: Any, col: str, row: int, at: str) -> bool:
    """False for a string, True for a conversation; refuse anything else."""
    if isinstance(cell, str):
        return False
    if not isinstance(cell, list):
        got = "null" if cell is None else type(cell).__name__
        raise DataError(f"{at}: column {col!r} row {row} is {got}; every cell must be a string or a list "
                        "of {\"role\", \"content\"} messages")
    if not cell:
        raise DataError(f"{at}: column {col!r} row {row} is an empty list of messages; drop the row")
    for turn in cell:
        ok = isinstance(turn, dict) and isinstance(turn.get("role"), str) and (
            isinstance(turn.get("content"), str) or (turn.get("content") is None and turn.get("tool_calls")))
        if not ok:
            raise DataError(f"{at}: column {col!r} row {row} is not a list of {{\"role\", \"content\"}} messages "
                            f"(found {json.dumps(turn, default=str)[:80]}); give every message a role and a "
                            "string content")
    return True


def column_kind(ds: datasets.Dataset, col: str, at: str) -> bool:
    """Whether every cell of ``col`` is a conversation (True) or every cell a string (False);
    refuse nulls, numbers, malformed messages and a mix of the two."""
    feature = ds.features[col]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        column = ds.with_format("arrow")[col]  # a string column can only hold nulls besides strings
        if column.null_count:
            row = column.is_null().to_pylist().index(True)
            _cell_kind(None, col, row, at)
        return False
    first = None
    for row, cell in enumerate(ds[col]):
        kind = _cell_kind(cell, col, row, at)
        if first is None:
            first = kind
        elif kind != first:
            names = {False: "a string", True: "a list of messages"}
            raise DataError(f"{at}: column {col!r} mixes standard and conversational rows (row 0 is "
                            f"{names[first]}, row {row} is {names[kind]}); make every row one kind")
    return bool(first)


# --- format detection ---------------------------------------------------------------------
STAGE_FORMATS = {  # each stage's accepted formats, as tuples of ColumnNames fields
    "SFT": [("text",), ("prompt", "completion"), ("messages",)],
    "preference": [("prompt", "chosen", "rejected"), ("chosen", "rejected")],
    "prompt": [("prompt",), ("prompt", "completion"), ("prompt", "chosen", "rejected"), ("chosen", "rejected"),
               ("messages",)],
}


def _pick_format(ds, columns: ColumnNames, stage: str, at: str) -> tuple[str, ...]:
    """The first accepted format whose columns are all present (after ``data.columns`` overrides)."""
    if len(ds) == 0:
        raise DataError(f"{at}: the dataset has no rows; give a dataset with examples")
    present = set(ds.column_names)
    for fmt in STAGE_FORMATS[stage]:
        if all(getattr(columns, f) in present for f in fmt):
            names = [getattr(columns, f) for f in fmt]
            if len(set(names)) < len(names):
                raise DataError(f"{at}: " + " and ".join(f"data.columns.{f}" for f in fmt)
                                + f" name the same column ({', '.join(names)}); give each its own column")
            return fmt
    accepted = " | ".join(" + ".join(getattr(columns, f) for f in fmt) for fmt in STAGE_FORMATS[stage])
    found = ds.column_names
    raise DataError(f"{at}: the {STAGE_TITLES[stage]} needs one of: {accepted} (columns found: {', '.join(found)})"
                    f"; {_rename_hint(stage, found)}")


STAGE_TITLES = {"SFT": "SFT stage", "preference": "reward model / DPO stage",
                "prompt": "PPO / GRPO / evaluation stage (prompts)"}


def _rename_hint(stage: str, found: list[str]) -> str:
    """'rename with data.columns.prompt=question data.columns.completion=answer': the widest format
    that the columns found could fill, in their order (a prompt stage only needs its prompt)."""
    fits = [fmt for fmt in STAGE_FORMATS[stage] if len(fmt) <= len(found)]
    if not fits:
        return "give a dataset with the columns above"
    fmt = ("prompt",) if stage == "prompt" else max(fits, key=len)
    return "rename with " + " ".join(f"data.columns.{f}={c}" for f, c in zip(fmt, found))


def _rename(ds, columns: ColumnNames, fmt: tuple[str, ...], at: str):
    """Rename the user's columns of ``fmt`` to TRL's names; other columns stay as they are."""
    mapping = {getattr(columns, f): f for f in fmt if getattr(columns, f) != f}
    for user, std in mapping.items():
        if std in ds.column_names and std not in mapping:
            raise DataError(f"{at}: data.columns.{std}={user} would replace the column {std!r} the data already "
                            f"has; rename or drop one of them")
    return _carry(ds, ds.rename_columns(mapping)) if mapping else ds


def sft_view(ds: datasets.Dataset, columns: ColumnNames | None = None,
             flag: str | None = None) -> tuple[datasets.Dataset, str, bool]:
    """(dataset with TRL's SFT columns, kind, conversational); kind is "language_modeling",
    "prompt_completion" or "messages". A ``text`` column of conversations counts as messages."""
    columns = columns or ColumnNames()
    at = where(ds, flag)
    fmt = _pick_format(ds, columns, "SFT", at)
    kinds = {f: column_kind(ds, getattr(columns, f), at) for f in fmt}
    if fmt == ("messages",) and not kinds["messages"]:
        raise DataError(f"{at}: column {columns.messages!r} holds strings, not lists of {{\"role\", \"content\"}} "
                        f"messages; name a text column with data.columns.text instead")
    if fmt == ("prompt", "completion") and kinds["prompt"] != kinds["completion"]:
        raise DataError(f"{at}: {_mixed_columns(columns, kinds)}; give both as strings or both as messages")
    out = _rename(ds, columns, fmt, at)
    if fmt == ("text",) and kinds["text"]:  # conversational language modelling is TRL's "messages"
        if "messages" in out.column_names:
            raise DataError(f"{at}: column {columns.text!r} holds conversations and a 'messages' column exists too; "
                            "drop one of them")
        out = _carry(ds, out.rename_column("text", "messages"))
        return out, "messages", True
    kind = {("text",): "language_modeling", ("prompt", "completion"): "prompt_completion",
            ("messages",): "messages"}[fmt]
    return out, kind, kinds[fmt[0]]


def _mixed_columns(columns: ColumnNames, kinds: dict[str, bool]) -> str:
    conv = [getattr(columns, f) for f, k in kinds.items() if k]
    std = [getattr(columns, f) for f, k in kinds.items() if not k]
    return f"{', '.join(conv)} hold(s) messages but {', '.join(std)} hold(s) strings"


def preference_view(ds: datasets.Dataset, columns: ColumnNames | None = None,
                    flag: str | None = None) -> tuple[datasets.Dataset, bool]:
    """(dataset with prompt/chosen/rejected, conversational). With no prompt column (or a string
    prompt beside whole conversations, as in ultrafeedback_binarized) the prompt is the part both
    answers share."""
    columns = columns or ColumnNames()
    at = where(ds, flag)
    fmt = _pick_format(ds, columns, "preference", at)
    kinds = {f: column_kind(ds, getattr(columns, f), at) for f in fmt}
    if kinds["chosen"] != kinds["rejected"]:
        raise DataError(f"{at}: {_mixed_columns(columns, kinds)}; give chosen and rejected as the same kind")
    conversational = kinds["chosen"]
    implicit = "prompt" not in fmt or (conversational and not kinds["prompt"])
    if "prompt" in fmt and not implicit and kinds["prompt"] != conversational:
        raise DataError(f"{at}: {_mixed_columns(columns, kinds)}; give the prompt as the same kind as the answers")
    if implicit:
        ds = _carry(ds, ds.remove_columns(columns.prompt)) if "prompt" in fmt else ds
        fmt = ("chosen", "rejected")
    out = _rename(ds, columns, fmt, at)
    if implicit:
        out = _carry(out, _extract_shared_prompt(out, conversational, at))
    return out, conversational


def _split_words(text: str) -> list[str]:
    """'The sky is blue' -> ['The', ' sky', ' is', ' blue'] (joins back to the text exactly)."""
    return re.findall(r"\s*\S+|\s+", text)


def _shared_prompt_row(example: dict[str, Any], conversational: bool) -> dict[str, Any]:
    if conversational:
        return extract_prompt({"chosen": example["chosen"], "rejected": example["rejected"]})
    # TRL's extract_prompt cuts strings at the first differing character ("The sky is bl" + "ue");
    # on word lists it cuts between words, and the answers keep their leading space.
    parts = extract_prompt({"chosen": _split_words(example["chosen"]), "rejected": _split_words(example["rejected"])})
    return {k: "".join(v) for k, v in parts.items()}


def _extract_shared_prompt(ds, conversational: bool, at: str):
    if "prompt" in ds.column_names:
        raise DataError(f"{at}: a 'prompt' column exists that data.columns.prompt does not name, and the prompt is "
                        "to be extracted from chosen/rejected; drop or rename that column")
    for row, (chosen, rejected) in enumerate(zip(ds["chosen"], ds["rejected"])):
        if not conversational and (not chosen.strip() or not rejected.strip()):
            raise DataError(f"{at}: row {row} has an empty chosen or rejected text; drop the row")
        if conversational and chosen[0] != rejected[0]:
            raise DataError(f"{at}: row {row}: chosen and rejected share no leading message, so the prompt cannot be "
                            "taken from them; give a prompt column of messages (data.columns.prompt)")
    with _quiet_datasets():
        return ds.map(_shared_prompt_row, fn_kwargs={"conversational": conversational}, keep_in_memory=True)


def _last_assistant_prefix(example: dict[str, Any]) -> dict[str, Any]:
    turns = example["messages"]
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=len(turns))
    return {"prompt": turns[:last]}


def prompt_view(ds: datasets.Dataset, columns: ColumnNames | None = None,
                flag: str | None = None) -> tuple[datasets.Dataset, bool]:
    """(dataset with a ``prompt`` column plus every other column as it is, conversational). A
    preference set gives its (possibly extracted) prompt; a messages set every turn before the last
    assistant turn."""
    columns = columns or ColumnNames()
    at = where(ds, flag)
    fmt = _pick_format(ds, columns, "prompt", at)
    if fmt == ("chosen", "rejected") or (fmt == ("prompt",) and columns.chosen in ds.column_names
                                         and columns.rejected in ds.column_names):
        return preference_view(ds, columns, flag)
    if fmt == ("messages",):
        if not column_kind(ds, columns.messages, at):
            raise DataError(f"{at}: column {columns.messages!r} holds strings, not lists of "
                            "{\"role\", \"content\"} messages; name a prompt column with data.columns.prompt instead")
        if "prompt" in ds.column_names:
            raise DataError(f"{at}: column 'prompt' exists beside {columns.messages!r}; drop it or name it with "
                            "data.columns.prompt")
        out = _rename(ds, columns, fmt, at)
        with _quiet_datasets():
            out = _carry(ds, out.map(_last_assistant_prefix, keep_in_memory=True))
        for row, prompt in enumerate(out["prompt"]):
            if not prompt:
                raise DataError(f"{at}: row {row} of {columns.messages!r} starts with the assistant turn, so it has "
                                "no prompt; drop the row or add a user turn before it")
        return out, True
    conversational = column_kind(ds, columns.prompt, at)
    return _rename(ds, columns, ("prompt",), at), conversational


# --- rendering ----------------------------------------------------------------------------
def set_chat_template(tokenizer, template: str | None, flag: str = "data.chat_template") -> None:
    """Give ``tokenizer`` the chat template at a .jinja/.txt path or in a literal Jinja string;
    None keeps its own."""
    if template is None:
        return
    if "{{" in template or "{%" in template:
        text = template
    else:
        p = Path(template).expanduser()
        if not p.is_file():
            raise DataError(f"{flag}={template!r}: neither a template file nor a Jinja string ('{{{{ ... }}}}'); "
                            "give a .jinja file or the template itself")
        text = p.read_text(encoding="utf-8")
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # what transformers renders chat templates with

    try:
        ImmutableSandboxedEnvironment().parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise DataError(f"{flag}: the chat template is not valid Jinja (line {e.lineno}: {e.message}); "
                        "fix the template") from None
    tokenizer.chat_template = text


def _need_chat_template(tokenizer, at: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{at}: the data is conversational but the tokenizer has no chat template; set "
                        "data.chat_template to a .jinja file or a Jinja string (or give standard text)")


def _render(row: int, example: dict[str, Any], tokenizer, at: str) -> dict[str, Any]:
    """TRL's rendering of one conversational example, its failures named by row."""
    try:
        return maybe_apply_chat_template(example, tokenizer)
    except Exception as e:
        raise DataError(f"{at}: row {row}: the chat template cannot render it ({_first_line(e)}); fix the row or "
                        "data.chat_template") from None


def render_prompts(ds: datasets.Dataset, tokenizer, max_prompt_length: int,
                   flag: str | None = None) -> tuple[list[str], dict[str, list], int]:
    """(prompt strings to tokenize with add_special_tokens=False, the other columns as lists aligned
    with them, number dropped): conversations go through the chat template with the generation
    prompt; prompts over ``max_prompt_length`` tokens are dropped, not cut."""
    at = where(ds, flag)
    raw = list(ds["prompt"])
    conversational = is_conversational({"prompt": raw[0]}) if raw else False
    if conversational:
        _need_chat_template(tokenizer, at)
        prompts = [_render(i, {"prompt": p}, tokenizer, at)["prompt"] for i, p in enumerate(raw)]
    else:
        prompts = raw
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    keep = [i for i, n in enumerate(lengths) if n <= max_prompt_length]
    if not keep:
        raise DataError(f"{at}: all {len(prompts)} prompts are longer than data.max_prompt_length={max_prompt_length} "
                        f"tokens (shortest {min(lengths)}); raise data.max_prompt_length")
    extras = {}
    for c in ds.column_names:
        if c != "prompt":
            values = list(ds[c])
            extras[c] = [values[i] for i in keep]
    return [prompts[i] for i in keep], extras, len(prompts) - len(keep)


def render_pairs(ds: datasets.Dataset, tokenizer, flag: str | None = None) -> datasets.Dataset:
    """A preference view as plain strings prompt/chosen/rejected with prompt + chosen the whole text the
    reward model scores; conversations through the chat template (TRL's apply_chat_template: the prompt
    with the generation prompt, each answer the rest of its rendered conversation)."""
    at = where(ds, flag)
    if not is_conversational({"chosen": ds[0]["chosen"]}):
        return ds
    _need_chat_template(tokenizer, at)
    pair = ["prompt", "chosen", "rejected"]
    rows = [_render(i, example, tokenizer, at) for i, example in enumerate(ds.select_columns(pair))]
    others = [c for c in ds.column_names if c not in pair]
    features = datasets.Features({**{c: datasets.Value("string") for c in pair}, **{c: ds.features[c] for c in others}})
    out = datasets.Dataset.from_dict({**{k: [r[k] for r in rows] for k in pair}, **{c: list(ds[c]) for c in others}},
                                     features=features)
    return _carry(ds, out)


def completion_texts(tokenizer, completion_ids: list[list[int]]) -> list[str]:
    """Sampled completions as text, special tokens (eos, pad) left out."""
    return tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
