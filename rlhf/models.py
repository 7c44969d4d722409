"""Models and artifacts shared by every stage: the tiny GPT-2, Hugging Face model dirs with a
``reinforge.json`` stamp, sampling and per-token log-probabilities.

An artifact is a ``save_pretrained`` directory (model + tokenizer) plus ``reinforge.json``::

    {"stage": "sft" | "reward" | "ppo" | "dpo", "task": "melody", "parent": {...}, ...}

so a stage pointed at the wrong artifact (``--reward`` given an SFT dir) is refused with one
line. ``resolve_artifact`` accepts either the model dir or the run dir that contains it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError, ReinforgeError

STAMP = "reinforge.json"
MODEL_SUBDIR = "model"
STAGE_WRITER = {"sft": "reinforge rlhf sft", "reward": "reinforge rlhf reward", "ppo": "reinforge rlhf ppo",
                "dpo": "reinforge rlhf dpo"}
POLICY_STAGES = ("sft", "ppo", "dpo")


# --- artifacts ----------------------------------------------------------------------------
def resolve_artifact(path: str | Path, expected: tuple[str, ...] | str, flag: str) -> tuple[Path, dict[str, Any]]:
    """The model dir behind ``path`` (a model dir or a run dir holding ``model/``) and its stamp.

    Refuses, in one line, a missing path, a dir that is no artifact, or an artifact of another
    stage. A plain HF model dir (no stamp) is accepted as a policy when ``"hf"`` is expected.
    """
    expected = (expected,) if isinstance(expected, str) else expected
    want = " or ".join(f"a {e} artifact (written by `{STAGE_WRITER.get(e, e)}`)" for e in expected if e != "hf")
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{flag} {path}: no such directory; expected {want}")
    if (p / MODEL_SUBDIR / STAMP).is_file() or ((p / MODEL_SUBDIR).is_dir() and not (p / "config.json").is_file()):
        p = p / MODEL_SUBDIR
    stamp_path = p / STAMP
    if not stamp_path.is_file():
        if "hf" in expected and (p / "config.json").is_file():
            return p, {"stage": "hf", "task": None}
        raise ConfigError(f"{flag} {path}: not a reinforge RLHF artifact (no {STAMP}); expected {want}")
    try:
        stamp = json.loads(stamp_path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{flag} {path}: {STAMP} is not valid JSON; re-run the stage that wrote it") from None
    stage = stamp.get("stage")
    if stage not in expected:
        raise ConfigError(f"{flag} {path}: is a {stage!r} artifact (written by `{STAGE_WRITER.get(stage, '?')}`); "
                             f"expected {want}")
    return p, stamp


def save_artifact(model, tokenizer, out_dir: str | Path, stage: str, **info: Any) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / STAMP).write_text(json.dumps({"stage": stage, "task": "melody", **info}, indent=2, default=str))
    return out


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def check_tokenizer(tokenizer, model, where: str) -> None:
    """A tokenizer whose ids do not fit the model, or that cannot spell melody tokens: one line."""
    from rlhf.melody import BAR, EOS

    n_emb = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_emb:
        raise ReinforgeError(f"{where}: tokenizer has {len(tokenizer)} tokens but the model's embedding has {n_emb}; "
                             "use the tokenizer saved with this model")
    ids = tokenizer(f"p60 d1 {BAR} p62 d0.5 {EOS}", add_special_tokens=False)["input_ids"]
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise ReinforgeError(f"{where}: the tokenizer cannot spell melody tokens (p60, d1, |); "
                             "use a model trained by `reinforge rlhf sft`")
    if tokenizer.eos_token_id is None:
        raise ReinforgeError(f"{where}: tokenizer has no eos token; melodies must be able to end")


def load_policy(model_dir: str | Path, where: str = "--sft"):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise ReinforgeError(f"{where} {model_dir}: cannot load a causal LM ({str(exc).splitlines()[0]}); "
                             "expected a Hugging Face model dir") from None
    check_tokenizer(tok, model, f"{where} {model_dir}")
    return model, tok


def load_reward_model(model_dir: str | Path, where: str = "--reward"):
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    check_tokenizer(tok, model, f"{where} {model_dir}")
    return model, tok


def tiny_gpt2(tokenizer, n_layer: int = 2, n_embd: int = 128, n_head: int = 4, n_positions: int = 256,
              dropout: float = 0.1):
    """A small GPT-2 built from a config (nothing downloaded)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config)


def disable_dropout(model) -> None:
    """PPO and scoring run with dropout off (else log-probs of the same tokens disagree)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def trainer_device_args(device: str) -> dict[str, Any]:
    """TRL/transformers TrainingArguments that match the device actually present (TRL 1.x
    defaults to bf16 and refuses to start on a CPU-only machine)."""
    import torch

    from cluster.runtime import select_device

    dev = select_device(device)
    on_gpu = dev.type == "cuda"
    return {"use_cpu": not on_gpu, "bf16": bool(on_gpu and torch.cuda.is_bf16_supported()), "fp16": False,
            "report_to": "none", "disable_tqdm": True, "save_strategy": "no", "logging_strategy": "steps",
            "dataloader_num_workers": 0}


def check_positive(section: str, **values: float) -> None:
    for k, v in values.items():
        if v is None or v <= 0:
            raise ConfigError(f"{section}.{k} must be > 0, got {v}")


# --- sampling and scoring (used by raters, PPO actors, evaluation) ------------------------
def encode_prompts(tokenizer, prompts: list[str], device=None):
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    if device is not None:
        batch = {k: v.to(device) for k, v in batch.items()}
    return batch


def sample(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
           batch_size: int = 64, generator_seed: int | None = None) -> list[list[int]]:
    """Completions (token ids, cut after the first <eos>) sampled at ``temperature`` with no
    top-k/top-p, as PPO rollouts require.

    A hand-written KV-cached loop rather than ``model.generate``: for models this small the
    per-step overhead of ``generate`` (logits processors, stopping criteria, cache classes)
    dominated, about 4x slower measured on these CPUs, and plain ancestral sampling is all
    that is needed here."""
    import torch

    gen = torch.Generator().manual_seed(generator_seed) if generator_seed is not None else None
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    model.eval()
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        b = encode_prompts(tokenizer, prompts[i:i + batch_size], device)
        attn = b["attention_mask"]
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        done = torch.zeros(attn.shape[0], dtype=torch.bool, device=device)
        steps = []
        with torch.no_grad():
            res = model(input_ids=b["input_ids"], attention_mask=attn, position_ids=pos, use_cache=True)
            last = pos[:, -1:]
            for _ in range(max_new_tokens):
                probs = torch.softmax(res.logits[:, -1].float() / temperature, dim=-1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=gen).to(device)
                nxt = torch.where(done[:, None], torch.full_like(nxt, tokenizer.pad_token_id), nxt)
                steps.append(nxt)
                done |= nxt[:, 0] == eos
                if bool(done.all()):
                    break
                attn = torch.cat([attn, torch.ones_like(nxt)], 1)
                last = last + 1
                res = model(input_ids=nxt, attention_mask=attn, position_ids=last,
                            past_key_values=res.past_key_values, use_cache=True)
        rows = torch.cat(steps, 1).tolist() if steps else [[] for _ in range(attn.shape[0])]
        for row in rows:
            comp = []
            for t in row:
                comp.append(t)
                if t == eos:
                    break
            out.append(comp)
    return out


def pack(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> dict[str, Any]:
    """One batch of prompt + completion with every completion starting at the same column:
    prompts left-padded to width P, completions right-padded to width L. Returns input_ids,
    attention_mask, position_ids (counted from each sequence's first real token),
    ``prompt_width`` P and ``completion_mask`` (B x L, True on real completion tokens)."""
    import torch

    P = max(len(p) for p in prompt_ids)
    L = max([len(c) for c in completion_ids] + [0])
    B = len(prompt_ids)
    ids = torch.full((B, P + L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + L), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        ids[i, P - len(p): P + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attn[i, P - len(p): P + len(c)] = 1
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": attn, "position_ids": pos, "prompt_width": P,
            "completion_mask": attn[:, P:].bool()}


def completion_logprobs(model, batch: dict[str, Any]):
    """log pi(y_t | x, y_<t) of every completion token and the entropy of each of those
    next-token distributions; both B x L, zero on padding."""
    import torch

    P = batch["prompt_width"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], use_cache=False).logits[:, P - 1:-1].float()
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, batch["input_ids"][:, P:].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    mask = batch["completion_mask"]
    return logp * mask, entropy * mask


def last_token_index(attn):
    """Index of each row's last real token (works for left and right padding)."""
    return attn.shape[1] - 1 - attn.flip(1).argmax(1)


def hidden_states(model, input_ids, attn, position_ids=None):
    base = model.base_model
    return base(input_ids=input_ids, attention_mask=attn, position_ids=position_ids, use_cache=False).last_hidden_state


def sequence_scores(reward_model, ids, attn, offset: float = 0.0, position_ids=None):
    """Reward-model score of each sequence (read at its last real token) minus the centring
    ``offset`` recorded with the model."""
    import torch

    if position_ids is None:
        position_ids = (attn.cumsum(1) - 1).clamp(min=0)
    h = hidden_states(reward_model, ids, attn, position_ids)
    h = h[torch.arange(ids.shape[0]), last_token_index(attn)]
    return reward_model.score(h).squeeze(-1).float() - offset


def run_dir_callback(run_dir, prefix: str):
    """A transformers ``TrainerCallback`` that copies the trainer's logs into the run dir and
    shows the training as one ``cluster.progress`` bar (desc ``prefix``, per optimizer step,
    with the latest loss), which becomes plain periodic lines when stderr is not a terminal.
    The trainers' own tqdm bar and log printer are off (``trainer_device_args``,
    ``quiet_trainer``), so this is the only display."""
    from transformers import TrainerCallback

    from cluster.progress import progress

    class _ToRunDir(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = progress(total=state.max_steps or None, desc=prefix, unit="step", initial=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.set(state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.update(0, loss=float(logs["loss"]))
            if run_dir is not None and logs:
                row = {f"{prefix}/{k}": v for k, v in logs.items() if isinstance(v, (int, float))}
                if row:
                    run_dir.log(row, step=state.global_step)

    return _ToRunDir()


def quiet_libraries() -> None:
    """Keep the CLI output to our own lines: no per-load reports, progress bars or trainer prints."""
    import warnings

    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="trl")


def quiet_trainer(trainer):
    """Drop the callback that prints every log dict to stdout (the run dir keeps them)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def limit_threads() -> int:
    """One intra-op torch thread on CPU unless REINFORGE_TORCH_THREADS says otherwise: these
    models are tiny, and on shared cores two threads per process made a training step 13x
    slower (3.5 s vs 0.26 s measured here under load) through oversubscription."""
    import os

    import torch

    n = int(os.environ.get("REINFORGE_TORCH_THREADS", "1"))
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, n))
    return torch.get_num_threads()
