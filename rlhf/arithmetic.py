"""The built-in arithmetic task: integer sums (differences, products) as chat prompts, with a
gold that is checked exactly.

A prompt is one user message ``"47+38="``; the assistant answers ``"85"`` or, with
``worked=True``, first spells the answer least-significant digit first and then the answer
(``"58 85"``): the reversed digits let a small left-to-right model carry as it writes.

The SFT set is partly wrong on purpose: ``error_rate`` of its answers carry a plausible
mistake (a dropped carry or borrow, one digit off), so a model that imitates it makes the
same mistakes at about that rate, and RL with ``exact_match`` as the reward has something
to fix. Validation completions, the ``answer`` column and preference ``chosen`` replies are
always correct.

Operands have 1..``digits`` digits (0 .. 10**digits - 1); for ``-`` the larger comes first,
so no answer is negative. Train and validation prompts are drawn without replacement from
the same pool, so they never overlap. The data depends only on the config (``seed``
included), never on the run seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from cluster.errors import ConfigError

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
OPERATIONS = ("+", "-", "*")
MAX_DIGITS = 9
# Every symbol the task can write: the tokenizer always learns these, so any config's text
# (and any other config's) spells without <unk>.
ALPHABET = "0123456789+-*= "

# The assistant turn is its content then <eos>, all inside {% generation %} so that
# ``return_assistant_tokens_mask`` (TRL's assistant_only_loss) marks exactly those tokens.
# The prompt ends in "=", so the generation prompt adds nothing: the prompt rendered with
# add_generation_prompt=True is a prefix of prompt + completion.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] }}{% endif %}"
    "{% endfor %}"
)


@dataclass
class ArithmeticConfig:
    """The section ``data.arithmetic.*``. Defaults chosen by measurement: a 2-layer, 128-wide
    GPT-2 after 3000 SFT steps (batch 32, lr 2e-3, cosine) on one CPU thread reached about 60%
    held-out exact match sampled at temperature 1 (88% greedy): the 30% wrong answers it
    imitates leave RL its headroom. Half as many training prompts (4000) made the run-to-run
    spread much wider (41% on one seed)."""

    digits: int = 2
    operations: list[str] = field(default_factory=lambda: ["+"])
    train_size: int = 8000
    eval_size: int = 500
    error_rate: float = 0.3
    worked: bool = False
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= self.digits <= MAX_DIGITS:
            raise ConfigError(f"data.arithmetic.digits must be in 1..{MAX_DIGITS}, got {self.digits}")
        if not self.operations:
            raise ConfigError('data.arithmetic.operations is empty; give some of "+", "-", "*", e.g. ["+"]')
        bad = [op for op in self.operations if op not in OPERATIONS]
        if bad:
            raise ConfigError(f"data.arithmetic.operations: unknown operation {bad[0]!r}; use some of \"+\", \"-\", \"*\"")
        if len(set(self.operations)) != len(self.operations):
            raise ConfigError(f"data.arithmetic.operations={self.operations} repeats an operation; list each once")
        if self.train_size < 1 or self.eval_size < 1:
            raise ConfigError(f"data.arithmetic.train_size and eval_size must be >= 1, "
                              f"got {self.train_size} and {self.eval_size}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ConfigError(f"data.arithmetic.error_rate must be in [0, 1], got {self.error_rate}")
        if self.seed < 0:
            raise ConfigError(f"data.arithmetic.seed must be >= 0, got {self.seed}")
        n = pool_size(self)
        if self.train_size + self.eval_size > n:
            raise ConfigError(f"data.arithmetic: train_size + eval_size = {self.train_size + self.eval_size} but only "
                              f"{n} distinct prompts exist with digits={self.digits}; lower the sizes or raise digits")


# --- problems -----------------------------------------------------------------------------
def _pairs(op: str, n: int) -> int:
    """Distinct operand pairs of ``op`` with operands in [0, n): for ``-`` only a >= b."""
    return n * (n + 1) // 2 if op == "-" else n * n


def pool_size(cfg: ArithmeticConfig) -> int:
    n = 10 ** cfg.digits
    return sum(_pairs(op, n) for op in cfg.operations)


def _problem(cfg: ArithmeticConfig, index: int) -> tuple[int, str, int]:
    """The ``index``-th problem of the pool (operations in config order, then operand pairs)."""
    n = 10 ** cfg.digits
    for op in cfg.operations:
        k = _pairs(op, n)
        if index < k:
            break
        index -= k
    if op != "-":
        return index // n, op, index % n
    # the index-th pair (a, b) with b <= a, rows a = 0, 1, ... holding a + 1 pairs each
    a = int(((8 * index + 1) ** 0.5 - 1) // 2)
    while a * (a + 1) // 2 > index:
        a -= 1
    while (a + 1) * (a + 2) // 2 <= index:
        a += 1
    return a, op, index - a * (a + 1) // 2


def evaluate(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _carry_columns(a: int, op: str, b: int) -> list[int]:
    """Columns k whose carry (``+``) or borrow (``-``) into column k + 1 happened."""
    cols, carry, k = [], 0, 0
    while a or b:
        da, db = a % 10, b % 10
        if op == "+":
            carry = int(da + db + carry >= 10)
        else:
            carry = int(da - db - carry < 0)
        if carry:
            cols.append(k)
        a, b, k = a // 10, b // 10, k + 1
    return cols


def plausible_mistake(a: int, op: str, b: int, rng: random.Random) -> int:
    """A wrong, non-negative result a person (or a half-trained model) might write: the
    carry/borrow out of one column forgotten, else one digit of the answer off by one."""
    right = evaluate(a, op, b)
    carries = _carry_columns(a, op, b) if op in "+-" else []
    if carries and rng.random() < 0.5:
        k = rng.choice(carries)
        wrong = right - 10 ** (k + 1) if op == "+" else right + 10 ** (k + 1)
        if wrong >= 0:
            return wrong
    digits = str(right)
    pos = rng.randrange(len(digits))
    d = int(digits[pos])
    steps = [s for s in (-1, 1) if 0 <= d + s <= 9 and not (pos == 0 and d + s == 0 and len(digits) > 1)]
    d += rng.choice(steps)
    return int(digits[:pos] + str(d) + digits[pos + 1:])


def prompt_text(a: int, op: str, b: int) -> str:
    return f"{a}{op}{b}="


def completion_text(result: int, worked: bool) -> str:
    """The assistant's reply for ``result``: the answer, or (worked) its digits reversed then the answer."""
    return f"{str(result)[::-1]} {result}" if worked else str(result)


def _problems(cfg: ArithmeticConfig) -> dict[str, list[tuple[int, str, int]]]:
    """Validation then train problems, drawn without replacement from one pool (disjoint)."""
    cfg.validate()
    rng = random.Random(f"arithmetic-prompts-{cfg.seed}")
    picked = rng.sample(range(pool_size(cfg)), cfg.eval_size + cfg.train_size)
    problems = [_problem(cfg, i) for i in picked]
    return {"validation": problems[:cfg.eval_size], "train": problems[cfg.eval_size:]}


def _split(split: str) -> str:
    if split not in ("train", "validation"):
        raise ConfigError(f"arithmetic split {split!r}: use 'train' or 'validation'")
    return split


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# --- datasets ------------------------------------------------------------------------------
def sft_dataset(cfg: ArithmeticConfig):
    """``train`` and ``validation`` in TRL's conversational prompt-completion format, plus
    ``answer`` (the correct result). Exactly round(error_rate * train_size) train completions
    are wrong; validation completions are all correct."""
    from datasets import Dataset, DatasetDict

    problems = _problems(cfg)
    n_train = len(problems["train"])
    rng = random.Random(f"arithmetic-errors-{cfg.seed}")
    wrong = set(rng.sample(range(n_train), round(cfg.error_rate * n_train)))
    out = {}
    for split, rows in problems.items():
        cols: dict[str, list[Any]] = {"prompt": [], "completion": [], "answer": []}
        for i, (a, op, b) in enumerate(rows):
            right = evaluate(a, op, b)
            shown = plausible_mistake(a, op, b, rng) if split == "train" and i in wrong else right
            cols["prompt"].append(_user(prompt_text(a, op, b)))
            cols["completion"].append(_assistant(completion_text(shown, cfg.worked)))
            cols["answer"].append(str(right))
        out[split] = Dataset.from_dict(cols)
    return DatasetDict(out)


def preference_dataset(cfg: ArithmeticConfig, split: str):
    """Conversational preference pairs over ``split``'s prompts: ``chosen`` the correct reply,
    ``rejected`` one with a plausible mistake; plus ``answer``."""
    from datasets import Dataset

    rows = _problems(cfg)[_split(split)]
    rng = random.Random(f"arithmetic-preferences-{split}-{cfg.seed}")
    cols: dict[str, list[Any]] = {"prompt": [], "chosen": [], "rejected": [], "answer": []}
    for a, op, b in rows:
        right = evaluate(a, op, b)
        cols["prompt"].append(_user(prompt_text(a, op, b)))
        cols["chosen"].append(_assistant(completion_text(right, cfg.worked)))
        cols["rejected"].append(_assistant(completion_text(plausible_mistake(a, op, b, rng), cfg.worked)))
        cols["answer"].append(str(right))
    return Dataset.from_dict(cols)


def prompt_dataset(cfg: ArithmeticConfig, split: str):
    """``split``'s prompts (conversational) and their correct ``answer``, for RL and evaluation."""
    from datasets import Dataset

    rows = _problems(cfg)[_split(split)]
    return Dataset.from_dict({"prompt": [_user(prompt_text(a, op, b)) for a, op, b in rows],
                              "answer": [str(evaluate(a, op, b)) for a, op, b in rows]})


# --- tokenizer ------------------------------------------------------------------------------
def build_tokenizer(cfg: ArithmeticConfig):
    """A character-level ``PreTrainedTokenizerFast`` trained (``WordLevelTrainer``) on the
    rendered SFT corpus plus ``ALPHABET``, with <bos>/<eos>/<pad>/<unk> and ``CHAT_TEMPLATE``.

    Character level because arithmetic is done digit by digit: BPE merges such as "12" would
    give the model a different token for each digit group. The trainer orders the vocabulary
    by count, then alphabetically, so the same config always gives the same ids.
    """
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast

    data = sft_dataset(cfg)
    corpus = [ALPHABET]
    for split in data.values():
        corpus += [p[0]["content"] + c[0]["content"] for p, c in zip(split["prompt"], split["completion"])]
    core = Tokenizer(WordLevel(unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    core.decoder = decoders.Fuse()  # characters join with nothing between them
    core.train_from_iterator(corpus, WordLevelTrainer(special_tokens=[PAD, BOS, EOS, UNK], min_frequency=1,
                                                      show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
                                  model_max_length=128, clean_up_tokenization_spaces=False,
                                  padding_side="left")  # generation pads prompts on the left
    tok.chat_template = CHAT_TEMPLATE
    return tok


# --- the gold ----------------------------------------------------------------------------------
_INTEGER = re.compile(r"-?\d+")


def _text(completion: Any) -> str:
    """A completion as text: a string, or TRL's conversational form (a list of messages; the
    last assistant message counts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        replies = [m for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
        return _text(replies[-1]) if replies else ""
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


def final_answer(completion: Any) -> str | None:
    """The completion's final answer: its last whitespace-separated field, which must be an
    integer written plainly (``-12``, ``85``); None when it is not (``85.``, ``abc``, empty).
    Special tokens left in the text (``<eos>``, ``<pad>``) are ignored."""
    text = _text(completion)
    for special in (EOS, PAD, BOS):
        text = text.replace(special, " ")
    fields = text.split()
    if not fields or not _INTEGER.fullmatch(fields[-1]):
        return None
    return fields[-1]


def exact_match(prompts: list[Any] | None, completions: list[Any], answer: list[Any], **columns: Any) -> list[float]:
    """1.0 where the completion's final answer is exactly ``answer`` (as written: ``085`` is
    not ``85``), else 0.0. Usable as a TRL reward function: extra keyword columns (and TRL's
    ``trainer_state``, ``completion_ids``, ...) are ignored."""
    if len(completions) != len(answer) or (prompts is not None and len(prompts) != len(completions)):
        raise ValueError(f"exact_match: {len(completions)} completions but {len(answer)} answers"
                         + ("" if prompts is None else f" and {len(prompts)} prompts") + "; they must pair up")
    return [float(final_answer(c) == str(a).strip()) for c, a in zip(completions, answer)]
