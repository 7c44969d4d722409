"""Models and artifacts shared by every stage: loading any Hugging Face causal LM (a local
dir or a hub id), the tiny GPT-2 of the built-in tasks, LoRA, artifact dirs with a
``reinforge.json`` stamp, sampling and per-token log-probabilities.

An artifact is a ``save_pretrained`` directory (model + tokenizer) plus ``reinforge.json``::

    {"stage": "sft" | "reward" | "ppo" | "grpo" | "dpo", "task": {"name": ..., "data": ...},
     "parent": {...}, ...}

so a stage pointed at the wrong artifact (``--reward`` given an SFT dir) is refused with one
line. ``resolve_artifact`` accepts either the model dir or the run dir that contains it.

What is unpickled: nothing by default. Model dirs load with ``use_safetensors=True``; a dir
that holds only pickled weights (``pytorch_model.bin``) is refused unless the user passes
``--allow-pickle`` (``run.allow_pickle``), and even then torch loads it ``weights_only``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError

STAMP = "reinforge.json"
MODEL_SUBDIR = "model"
STAGE_WRITER = {"sft": "reinforge rlhf sft", "reward": "reinforge rlhf reward", "ppo": "reinforge rlhf ppo",
                "grpo": "reinforge rlhf grpo", "dpo": "reinforge rlhf dpo",
                "seqtutor": "reinforge rlhf seqtutor"}
POLICY_STAGES = ("sft", "ppo", "grpo", "dpo", "seqtutor")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "model.ckpt.index")


# --- artifacts ----------------------------------------------------------------------------
def resolve_artifact(path: str | Path, expected: tuple[str, ...] | str, flag: str) -> tuple[Path, dict[str, Any]]:
    """The model dir behind ``path`` (a model dir or a run dir holding ``model/``) and its stamp.

    Refuses, in one line, a missing path, a dir that is no artifact, or an artifact of another
    stage. A plain HF model dir (no stamp) is accepted when ``"hf"`` is expected (a policy, or
    with ``"reward"`` any one-label ``AutoModelForSequenceClassification`` dir).
    """
    expected = (expected,) if isinstance(expected, str) else expected
    want = " or ".join(f"a {e} artifact (written by `{STAGE_WRITER.get(e, e)}`)" for e in expected if e != "hf")
    if "hf" in expected:
        want += " or a Hugging Face model dir"
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
    if not isinstance(stamp, dict):
        raise ConfigError(f"{flag} {path}: {STAMP} is not a JSON object; re-run the stage that wrote it")
    stage = stamp.get("stage")
    if stage not in expected:
        raise ConfigError(f"{flag} {path}: is a {stage!r} artifact (written by `{STAGE_WRITER.get(stage, '?')}`); "
                          f"expected {want}")
    return p, stamp


def task_of(stamp: dict[str, Any]) -> str | None:
    """The task name an artifact was trained on (older stamps hold the name as a string)."""
    task = stamp.get("task")
    return task.get("name") if isinstance(task, dict) else task


def save_artifact(model, tokenizer, out_dir: str | Path, stage: str, task: dict[str, Any] | None = None,
                  **info: Any) -> Path:
    """``save_pretrained`` model + tokenizer + stamp, written to a temp dir then renamed, so a
    killed stage never leaves a half-written ``model/``. A peft model with ``merge=False`` in
    ``info`` is saved as its adapter (``adapter_config.json``) beside the base model's tokenizer."""
    out = Path(out_dir)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    (tmp / STAMP).write_text(json.dumps({"stage": stage, "task": task, **info}, indent=2, default=str))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_tokenizer(model_dir: str | Path, where: str = "--sft"):
    """The tokenizer saved with a model: left padding (generation pads prompts on the left), a
    pad token (the eos token when the tokenizer has none)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{where} {model_dir}: no usable tokenizer in it ({_first_line(exc)}); "
                          "save the tokenizer beside the model (tokenizer.save_pretrained(DIR))") from None
    tok.padding_side = "left"
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(f"{where} {model_dir}: the tokenizer has neither a pad nor an eos token; "
                              "completions must be able to end: add an eos token to the tokenizer")
        tok.pad_token = tok.eos_token
    return tok


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def check_tokenizer(tokenizer, model, where: str) -> None:
    """A tokenizer whose ids do not fit the model, or without an eos token: one line."""
    n_emb = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_emb:
        raise ConfigError(f"{where}: tokenizer has {len(tokenizer)} tokens but the model's embedding has {n_emb}; "
                          "use the tokenizer saved with this model")
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"{where}: tokenizer has no eos token; completions must be able to end")


def safetensors_only(model_dir: str | Path, where: str, allow_pickle: bool) -> bool | None:
    """``use_safetensors`` for ``from_pretrained``: True (safetensors only) unless the user
    allowed pickled weights; a local dir with only pickled weights is refused by name."""
    p = Path(model_dir)
    if allow_pickle:
        return None
    if p.is_dir() and not any(p.glob("*.safetensors")) and any((p / f).exists() for f in PICKLED_WEIGHTS):
        raise ConfigError(f"{where} {model_dir}: holds only pickled weights (pytorch_model.bin), which reinforge "
                          "does not unpickle by default; convert them to safetensors or pass --allow-pickle")
    return True


def is_local_model(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def load_causal_lm(model_dir: str | Path, where: str = "--sft", allow_pickle: bool = False):
    """(model, tokenizer) from a local dir or a hub id (users with a network), fp32 (training
    keeps fp32 master weights; bf16 autocast is applied on GPUs that support it)."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir, where)
    if (Path(model_dir) / "adapter_config.json").is_file():  # a LoRA adapter saved alone: merge it into its base
        return _merged_adapter(model_dir, where, allow_pickle), tok
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir),
                                                     use_safetensors=safetensors_only(model_dir, where, allow_pickle))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{where} {model_dir}: cannot load a causal LM ({_first_line(exc)}); "
                          "expected a Hugging Face model dir with safetensors weights") from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    check_tokenizer(tok, model, f"{where} {model_dir}")
    return model, tok


def _merged_adapter(model_dir: str | Path, where: str, allow_pickle: bool):
    from peft import AutoPeftModelForCausalLM

    try:
        model = AutoPeftModelForCausalLM.from_pretrained(str(model_dir),
                                                         use_safetensors=safetensors_only(model_dir, where, allow_pickle))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{where} {model_dir}: cannot load the LoRA adapter and its base model "
                          f"({_first_line(exc)}); the base named in adapter_config.json must be reachable") from None
    return model.merge_and_unload()


def load_policy(model_dir: str | Path, where: str = "--sft", allow_pickle: bool = False):
    return load_causal_lm(model_dir, where, allow_pickle)


def load_reward_model(model_dir: str | Path, where: str = "--reward", allow_pickle: bool = False):
    """A one-label ``AutoModelForSequenceClassification`` (ours, TRL's, OpenRLHF's, ...)."""
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(model_dir, where)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), use_safetensors=safetensors_only(model_dir, where, allow_pickle))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{where} {model_dir}: cannot load a sequence-classification model "
                          f"({_first_line(exc)}); expected a reward model dir") from None
    if model.config.num_labels != 1:
        raise ConfigError(f"{where} {model_dir}: the model has {model.config.num_labels} labels; a reward model "
                          "gives one score per sequence (num_labels=1)")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    check_tokenizer(tok, model, f"{where} {model_dir}")
    return model, tok


def reward_offset(model_dir: str | Path) -> float:
    """The centring offset still to subtract from a reward model's score: 0 for a model whose
    offset was folded into its weights (``fold_offset``) and for plain HF dirs."""
    stamp = Path(model_dir) / STAMP
    if not stamp.is_file():
        return 0.0
    info = json.loads(stamp.read_text())
    return 0.0 if info.get("offset_folded") else float(info.get("reward_offset", 0.0))


def fold_offset(model, offset: float) -> bool:
    """Make ``model``'s own score centred: score' = score - offset, for any client that calls
    the model. Through the score head's bias when it has one; else through the bias of the
    final norm feeding the head (GPT-2's ``ln_f``): w . (h + d) = w . h - offset with
    d = -offset w / |w|^2. Returns False for architectures with neither (RMSNorm models),
    whose offset stays in ``reinforge.json``."""
    import torch

    head = model.score
    with torch.no_grad():
        if getattr(head, "bias", None) is not None:
            head.bias -= offset
            return True
        base = model.base_model
        norm = next((getattr(base, n) for n in ("ln_f", "norm", "final_layer_norm", "final_layernorm")
                     if getattr(getattr(base, n, None), "bias", None) is not None), None)
        if norm is None:
            return False
        w = head.weight[0].float()
        norm.bias -= (offset * w / w.dot(w)).to(norm.bias.dtype)
    return True


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


# --- LoRA and memory switches, the same keys in every stage that trains a policy ------------
@dataclass
class PolicyTraining:
    """LoRA (``peft``) and gradient checkpointing for SFT, PPO, GRPO and DPO."""

    lora_r: int = 0  # > 0: train LoRA adapters of this rank instead of every weight
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None  # default: peft's choice for the architecture
    merge_lora: bool = True  # save the adapter merged into a plain model (False: save the adapter alone)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory)

    def validate_policy_training(self, section: str) -> None:
        from cluster.run_config import check_ranges

        check_ranges(section, self, {"lora_r": (">= 0", "0 = full fine-tuning"), "lora_alpha": ">= 1",
                                     "lora_dropout": "[0, 1)"})


def lora_config(cfg: PolicyTraining, model):
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    if targets is None and "gpt2" in model.config.model_type:
        targets = ["c_attn", "c_proj"]  # peft has no default for GPT-2's Conv1D layers
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
                      target_modules=targets)


def prepare_policy(model, cfg: PolicyTraining):
    """The policy as trained: with LoRA adapters when ``lora_r`` > 0 (only they are trainable),
    gradient checkpointing when asked."""
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable()
        model.config.use_cache = False
    if cfg.lora_r > 0:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(cfg, model))
    return model


def finished_policy(model, cfg: PolicyTraining):
    """What is saved: the adapter merged into a plain model, or (``merge_lora: false``) the
    peft model, whose ``save_pretrained`` writes the adapter alone."""
    if cfg.gradient_checkpointing:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.activation_checkpointing_disable()
    if cfg.lora_r > 0 and cfg.merge_lora and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.config.use_cache = True
    return model


def trainer_device_args(device: str) -> dict[str, Any]:
    """TRL/transformers TrainingArguments that match the device actually present (TRL 1.x
    defaults to bf16 and refuses to start on a CPU-only machine)."""
    from cluster.runtime import select_device

    dev = select_device(device)
    return {"use_cpu": dev.type != "cuda", "bf16": use_bf16(dev), "fp16": False,
            "report_to": "none", "disable_tqdm": True, "save_strategy": "no", "logging_strategy": "steps",
            "dataloader_num_workers": 0}


def use_bf16(device) -> bool:
    """bf16 autocast on a GPU that supports it; fp32 on CPU."""
    import torch

    return getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available() \
        and torch.cuda.is_bf16_supported()


def autocast(device):
    import contextlib

    import torch

    if use_bf16(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


def hidden_states(model, input_ids, attn, position_ids=None):
    base = model.base_model
    return base(input_ids=input_ids, attention_mask=attn, position_ids=position_ids, use_cache=False).last_hidden_state


def sequence_scores(reward_model, ids, attn, offset: float = 0.0, position_ids=None):
    """Reward-model score of each sequence minus the centring ``offset`` still recorded with the
    model (0 once folded). Read through the model's own forward (transformers picks each row's
    last non-pad token), so the score is the one any plain transformers client gets."""
    if position_ids is None:
        position_ids = (attn.cumsum(1) - 1).clamp(min=0)
    logits = reward_model(input_ids=ids, attention_mask=attn, position_ids=position_ids, use_cache=False).logits
    return logits[:, 0].float() - offset


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
