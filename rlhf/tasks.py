"""Tasks: where a stage's data comes from and, when there is one, the hidden gold it is checked
against. Stage code asks its task for data and never knows which task it is:

- ``melody``: the built-in folk-melody corpus (rlhf/melody.py), simulated raters who label
  by the hidden gold rules (rlhf/gold.py, rlhf/raters.py).
- ``arithmetic``: built-in generated sums whose SFT answers are partly wrong; the gold is exact
  correctness of the final answer (rlhf/arithmetic.py).
- ``text``: the user's own data in TRL's dataset formats (rlhf/data.py); no gold.

``data.task`` unset means: the task of the parent artifact (``--sft``), else ``text`` when a
data path is given, else ``melody``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cluster.errors import ConfigError
from rlhf.arithmetic import ArithmeticConfig
from rlhf.data import ColumnNames
from rlhf.melody import MelodyDataConfig

TASKS = ("melody", "arithmetic", "text")


@dataclass
class RLHFDataConfig:
    task: str | None = None  # melody | arithmetic | text; unset: the parent artifact's, else text if a path is given
    path: str | None = None  # text task: SFT data (text | prompt + completion | messages); file, saved dir or hub id
    preferences: str | None = None  # preference set (prompt?, chosen, rejected) for reward and DPO; any task
    prompts: str | None = None  # text task: prompt set for PPO, GRPO and eval (default: the prompts of path)
    split: str = "train"  # split of a saved DatasetDict or a hub dataset
    eval_path: str | None = None  # held-out SFT data (default: data.eval_fraction of path)
    preferences_eval_path: str | None = None  # held-out preference pairs (default: a fraction of preferences)
    prompts_eval_path: str | None = None  # held-out prompts (default: a fraction of the prompt set)
    eval_fraction: float = 0.1
    max_samples: int | None = None  # keep the first N rows of each set read
    max_length: int = 512  # tokens of prompt + completion kept in SFT, reward and DPO (longer are truncated)
    max_prompt_length: int = 256  # prompts longer than this are dropped (and counted), not cut
    chat_template: str | None = None  # a Jinja template (a file or the text) for conversational data
    columns: ColumnNames = field(default_factory=ColumnNames)
    melody: MelodyDataConfig = field(default_factory=MelodyDataConfig)
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)

    def validate(self) -> None:
        if self.task is not None and self.task not in TASKS:
            guess = difflib.get_close_matches(self.task, TASKS, n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            raise ConfigError(f"data.task={self.task!r}: expected one of {', '.join(TASKS)}{hint}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        for k in ("max_length", "max_prompt_length"):
            if getattr(self, k) < 1:
                raise ConfigError(f"data.{k} must be >= 1, got {getattr(self, k)}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"data.max_samples must be >= 1 (or null for every row), got {self.max_samples}")
        if self.task in ("melody", "arithmetic"):
            given = [k for k in ("path", "prompts") if getattr(self, k)]
            if given:
                raise ConfigError(f"data.{given[0]} is for your own data (data.task=text); the {self.task} task "
                                  "builds its own (only data.preferences can replace its preference pairs)")


@dataclass
class PromptSet:
    """Prompt strings ready to tokenize, with the set's other columns aligned (for reward
    functions and the gold)."""

    prompts: list[str]
    columns: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, idx) -> PromptSet:
        idx = [int(i) for i in idx]
        return PromptSet([self.prompts[i] for i in idx], {k: [v[i] for i in idx] for k, v in self.columns.items()})

    def cycle(self, n: int) -> PromptSet:
        """``n`` prompts, the set repeated as needed."""
        return self.take([i % len(self) for i in range(n)])

    def repeat_each(self, k: int) -> PromptSet:
        """Every prompt ``k`` times in a row (a GRPO group)."""
        return self.take([i for i in range(len(self)) for _ in range(k)])


def task_name(cfg: RLHFDataConfig, parent: dict[str, Any] | None = None) -> str:
    if cfg.task:
        return cfg.task
    inherited = (parent or {}).get("task")
    inherited = inherited.get("name") if isinstance(inherited, dict) else inherited
    if inherited in TASKS:
        return inherited
    return "text" if (cfg.path or cfg.prompts) else "melody"


class Task:
    """The data and the gold of one task (see the module docstring)."""

    name = "text"
    has_gold = False

    def __init__(self, cfg: RLHFDataConfig, seed: int = 0, log=print):
        self.cfg, self.seed, self.log = cfg, seed, log
        self.rows: dict[str, int] = {}  # rows read per data key, for the stamp

    def _load(self, key: str):
        from rlhf.data import load_table

        ds = load_table(getattr(self.cfg, key), self.cfg.split, self.cfg.max_samples, f"data.{key}")
        self.rows[key] = len(ds)
        return ds

    # --- models ---------------------------------------------------------------------------
    def tiny_tokenizer(self):
        raise ConfigError("sft.model=tiny builds a small GPT-2 for the built-in tasks (melody, arithmetic); "
                          "for your own data give --model DIR (a Hugging Face model dir or hub id)")

    def tiny_positions(self) -> int:
        return self.cfg.max_length

    def check_tokenizer(self, tokenizer, where: str) -> None:
        """Refuse a tokenizer that cannot be used on this task's data (one line)."""

    def prepare_tokenizer(self, tokenizer) -> None:
        from rlhf.data import set_chat_template

        set_chat_template(tokenizer, self.cfg.chat_template)

    # --- data -----------------------------------------------------------------------------
    def sft_data(self, tokenizer):
        """(DatasetDict train/validation in a TRL SFT format, kind, conversational)."""
        import datasets

        from rlhf.data import sft_view

        if not self.cfg.path:
            raise ConfigError("the SFT stage needs your data: --data FILE (data.path: a jsonl/json/csv/parquet file, "
                              "a saved dataset dir or a hub id)")
        (train, held), kind, conversational = self._split("path", "eval_path", sft_view, 1234)
        self._need_template(tokenizer, conversational, "data.path")
        return datasets.DatasetDict({"train": train, "validation": held}), kind, conversational

    def _split(self, key: str, eval_key: str, view, seed: int):
        """((train, held-out), *what the view tells) of the set at ``data.<key>``: the held-out
        part from ``data.<eval_key>`` when given, else a seeded ``data.eval_fraction`` of it."""
        from rlhf.data import split_eval

        ds, *info = view(self._load(key), self.cfg.columns)
        if getattr(self.cfg, eval_key):
            return (ds, view(self._load(eval_key), self.cfg.columns)[0]), *info
        return split_eval(ds, None, self.cfg.eval_fraction, seed, f"data.{key}"), *info

    def _need_template(self, tokenizer, conversational: bool, flag: str) -> None:
        if conversational and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"{flag}: conversational data needs a chat template, and this tokenizer has none; "
                              "give one with --set data.chat_template=FILE.jinja")

    def user_preferences(self, tokenizer):
        """(train, held-out) string pairs from ``data.preferences`` (or, for text, data.path)."""
        from rlhf.data import preference_view, render_pairs

        key = "preferences" if self.cfg.preferences else ("path" if self.name == "text" and self.cfg.path else None)
        if key is None:
            raise ConfigError("this stage needs preference pairs: --preferences FILE (prompt, chosen, rejected)")
        flag = f"data.{key}"
        (train, held), conversational = self._split(key, "preferences_eval_path", preference_view, self.seed)
        self._need_template(tokenizer, conversational, flag)
        return render_pairs(train, tokenizer), render_pairs(held, tokenizer)

    def preferences(self, tokenizer, sft_policy_loader, raters, seed: int):
        """(train, held-out) preference pairs as plain strings, prompt + chosen = the full text."""
        return self.user_preferences(tokenizer)

    def prompt_sets(self, tokenizer) -> tuple[PromptSet, PromptSet]:
        """(train, held-out) prompts for PPO, GRPO and evaluation."""
        from rlhf.data import prompt_view

        key = next((k for k in ("prompts", "path", "preferences") if getattr(self.cfg, k)), None)
        if key is None:
            raise ConfigError("this stage needs prompts: --prompts FILE (a prompt column, plus any columns your "
                              "reward function reads)")
        flag = f"data.{key}"
        (train, held), conversational = self._split(key, "prompts_eval_path", prompt_view, 1234)
        self._need_template(tokenizer, conversational, flag)
        return self._render(train, tokenizer, flag), self._render(held, tokenizer, flag)

    def _render(self, ds, tokenizer, flag: str) -> PromptSet:
        from rlhf.data import render_prompts

        prompts, columns, dropped = render_prompts(ds, tokenizer, self.cfg.max_prompt_length, flag)
        if dropped and self.log:
            self.log(f"{flag}: dropped {dropped} of {len(ds)} prompts longer than data.max_prompt_length="
                     f"{self.cfg.max_prompt_length} tokens")
        return PromptSet(prompts, columns)

    # --- completions and the gold -----------------------------------------------------------
    def completion_texts(self, tokenizer, completion_ids: list[list[int]]) -> list[str]:
        from rlhf.data import completion_texts

        return completion_texts(tokenizer, completion_ids)

    def gold(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> list[float] | None:
        return None

    def gold_details(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> dict[str, float]:
        """Per-rule means of the gold, for tasks whose gold is a sum of rules."""
        return {}

    # --- provenance -------------------------------------------------------------------------
    def stamp(self) -> dict[str, Any]:
        """What ``reinforge.json`` records of the data: the task, its settings, the sources and
        their hashes."""
        from rlhf.data import source_info

        sources = {k: source_info(getattr(self.cfg, k), self.cfg.split, self.cfg.max_samples, rows=n)
                   for k, n in self.rows.items()}
        return {"name": self.name, "data": {**sources, **self.builtin_source()}, "config": self.section()}

    def builtin_source(self) -> dict[str, Any]:
        return {}

    def section(self) -> dict[str, Any]:
        return {}


class MelodyTask(Task):
    name = "melody"
    has_gold = True

    def tiny_tokenizer(self):
        from rlhf.melody import build_tokenizer

        return build_tokenizer()

    def tiny_positions(self) -> int:
        return self.cfg.melody.max_tokens + 2

    def check_tokenizer(self, tokenizer, where: str) -> None:
        from rlhf.melody import BAR, EOS

        ids = tokenizer(f"p60 d1 {BAR} p62 d0.5 {EOS}", add_special_tokens=False)["input_ids"]
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
            raise ConfigError(f"{where}: the tokenizer cannot spell melody tokens (p60, d1, |); "
                              "use a model trained by `reinforge rlhf sft` on the melody task")

    def prepare_tokenizer(self, tokenizer) -> None:
        pass

    def melodies(self):
        from rlhf.melody import load_melodies

        return load_melodies(self.cfg.melody, log=self.log)

    def builtin_source(self) -> dict[str, Any]:
        import hashlib

        data = self.melodies()
        text = "\n".join(t for split in ("train", "validation") for t in data[split]["text"])
        return {"corpus": {"music21": f"{self.cfg.melody.collection}/{','.join(self.cfg.melody.files)}",
                           "rows": len(data["train"]) + len(data["validation"]),
                           "sha256": hashlib.sha256(text.encode()).hexdigest()}}

    def sft_data(self, tokenizer):
        return self.melodies(), "language_modeling", False

    def preferences(self, tokenizer, sft_policy_loader, raters, seed: int):
        """A user set (``data.preferences``) or simulated raters labelling SFT samples on
        train-melody prompts and on held-out-melody prompts."""
        from rlhf.melody import prompts
        from rlhf.raters import simulate_preferences

        if self.cfg.preferences:
            return self.user_preferences(tokenizer)
        data = self.melodies()
        model, tok = sft_policy_loader()
        bars = self.cfg.melody.prompt_bars
        train = simulate_preferences(model, tok, prompts(data["train"], bars, raters.train_prompts), raters, seed=seed)
        held = simulate_preferences(model, tok, prompts(data["validation"], bars), raters, seed=seed + 1)
        return train, held

    def prompt_sets(self, tokenizer) -> tuple[PromptSet, PromptSet]:
        from rlhf.melody import prompts

        data, bars = self.melodies(), self.cfg.melody.prompt_bars
        return PromptSet(prompts(data["train"], bars)), PromptSet(prompts(data["validation"], bars))

    def completion_texts(self, tokenizer, completion_ids: list[list[int]]) -> list[str]:
        # melody tokens keep <eos>: the gold's ends_with_eos rule reads it
        return [" " + tokenizer.decode(c).strip() for c in completion_ids]

    def gold(self, prompts, completions, columns):
        from rlhf.gold import gold_score

        return [gold_score(p + c) for p, c in zip(prompts, completions)]

    def gold_details(self, prompts, completions, columns):
        from rlhf.gold import gold_rules

        rules = [gold_rules(p + c) for p, c in zip(prompts, completions)]
        return {f"gold/{k}": float(np.mean([r[k] for r in rules])) for k in rules[0]} if rules else {}

    def section(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"melody": asdict(self.cfg.melody)}


class ArithmeticTask(Task):
    name = "arithmetic"
    has_gold = True

    def tiny_tokenizer(self):
        from rlhf.arithmetic import build_tokenizer

        return build_tokenizer(self.cfg.arithmetic)

    def tiny_positions(self) -> int:
        return min(self.cfg.max_length, 128)

    def prepare_tokenizer(self, tokenizer) -> None:
        pass

    def sft_data(self, tokenizer):
        from rlhf.arithmetic import sft_dataset

        self._need_template(tokenizer, True, "--sft")
        return sft_dataset(self.cfg.arithmetic), "prompt_completion", True

    def preferences(self, tokenizer, sft_policy_loader, raters, seed: int):
        from rlhf.arithmetic import preference_dataset
        from rlhf.data import render_pairs

        if self.cfg.preferences:
            return self.user_preferences(tokenizer)
        self._need_template(tokenizer, True, "--sft")
        return (render_pairs(preference_dataset(self.cfg.arithmetic, "train"), tokenizer),
                render_pairs(preference_dataset(self.cfg.arithmetic, "validation"), tokenizer))

    def prompt_sets(self, tokenizer) -> tuple[PromptSet, PromptSet]:
        from rlhf.arithmetic import prompt_dataset

        self._need_template(tokenizer, True, "--sft")
        return tuple(self._render(prompt_dataset(self.cfg.arithmetic, split), tokenizer, f"arithmetic {split}")
                     for split in ("train", "validation"))

    def gold(self, prompts, completions, columns):
        from rlhf.arithmetic import exact_match

        return exact_match(prompts, completions, **columns)

    def section(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"arithmetic": asdict(self.cfg.arithmetic)}


TASK_CLASSES = {"melody": MelodyTask, "arithmetic": ArithmeticTask, "text": Task}


def make_task(cfg: RLHFDataConfig, parent: dict[str, Any] | None = None, seed: int = 0, log=print) -> Task:
    """The task of a stage: ``data.task``, else the parent artifact's (with its built-in task
    settings, so a later stage sees the data its parent was trained on), else by the paths."""
    import dataclasses

    name = task_name(cfg, parent)
    inherited = (parent or {}).get("task")
    if not cfg.task and isinstance(inherited, dict) and inherited.get("name") == name:
        section = (inherited.get("config") or {}).get(name)
        if isinstance(section, dict) and name in ("melody", "arithmetic"):
            cls = type(getattr(cfg, name))
            known = {f.name for f in dataclasses.fields(cls)}
            cfg = dataclasses.replace(cfg, **{name: cls(**{k: v for k, v in section.items() if k in known})})
    if not cfg.task and isinstance(inherited, dict) and inherited.get("name") == name == "text":
        # your data, as the parent read it: `rlhf eval --model RUN` needs no --prompts again
        sources = inherited.get("data") or {}
        given = {k: v["path"] for k, v in sources.items() if isinstance(v, dict) and v.get("path")
                 and k in ("path", "preferences", "prompts") and getattr(cfg, k) is None}
        if given and not any(getattr(cfg, k) for k in ("path", "preferences", "prompts")):
            cfg = dataclasses.replace(cfg, **given)
    return TASK_CLASSES[name](cfg, seed=seed, log=log)
