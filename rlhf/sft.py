"""Stage 1, supervised fine-tuning with TRL's ``SFTTrainer`` on the task's data in any of TRL's
SFT formats: language modelling (``text``), prompt-completion (loss on the completion only, by
default) and conversational ``messages`` (loss on the assistant turns only where the chat
template marks them with ``{% generation %}``). The model is a small GPT-2 built from a config
for the built-in tasks, or any Hugging Face causal LM (a local dir or a hub id), optionally
through LoRA (``peft``). Writes ``RUN_DIR/model/`` (model + tokenizer + reinforge.json)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError
from rlhf.models import PolicyTraining


@dataclass
class SFTStageConfig(PolicyTraining):
    model: str = "tiny"  # "tiny": a GPT-2 built from the sizes below; or a Hugging Face model dir or hub id
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    dropout: float = 0.1
    epochs: float = 20.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_ratio: float = 0.05
    logging_steps: int = 10
    checkpoint_every: int = 200  # optimizer steps between resumable checkpoints (0 = none)
    completion_only_loss: bool = True  # prompt-completion data: loss on the completion tokens only
    assistant_only_loss: bool | None = None  # messages data; None: when the chat template marks assistant turns

    def validate(self) -> None:
        if self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigError("sft.batch_size must be >= 1 and sft.learning_rate > 0")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("set sft.epochs > 0 or sft.max_steps > 0")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"sft.max_steps must be > 0 (or -1: train for sft.epochs), got {self.max_steps}")
        from cluster.run_config import check_ranges

        check_ranges("sft", self, {"n_layer": ">= 1", "n_embd": ">= 1", "n_head": ">= 1", "logging_steps": ">= 1",
                                   "checkpoint_every": (">= 0", "0 = no checkpoints"), "epochs": ">= 0", "dropout": "[0, 1)", "warmup_ratio": "[0, 1)"})
        if self.model == "tiny" and self.n_embd % self.n_head:
            raise ConfigError(f"sft.n_embd={self.n_embd} must be divisible by sft.n_head={self.n_head}")
        self.validate_policy_training("sft")
        if self.model == "tiny" and self.lora_r > 0 and not self.merge_lora:
            raise ConfigError("sft.merge_lora=false saves an adapter for a base model on disk or the hub; "
                              "sft.model=tiny has none: keep sft.merge_lora=true")


def build_model(cfg: SFTStageConfig, task, allow_pickle: bool = False):
    """(model, tokenizer): the tiny GPT-2 with the task's tokenizer, or the user's causal LM."""
    from rlhf.models import load_causal_lm, tiny_gpt2

    if cfg.model == "tiny":
        tok = task.tiny_tokenizer()
        n_pos = 1 << max(7, math.ceil(math.log2(task.tiny_positions() + 1)))
        return tiny_gpt2(tok, cfg.n_layer, cfg.n_embd, cfg.n_head, n_pos, cfg.dropout), tok
    model, tok = load_causal_lm(cfg.model, "sft.model", allow_pickle)
    task.prepare_tokenizer(tok)
    task.check_tokenizer(tok, f"sft.model {cfg.model}")
    return model, tok


def assistant_masks_supported(tokenizer) -> bool:
    """Whether the chat template marks assistant turns for ``return_assistant_tokens_mask``."""
    import re

    return bool(re.search(r"{%-?\s*generation\s*-?%}", getattr(tokenizer, "chat_template", None) or ""))


def sft_config(cfg: SFTStageConfig, kind: str, tokenizer, max_length: int, output_dir: Path, seed: int = 0,
               device: str = "auto"):
    """TRL's ``SFTConfig`` for this stage and data format: completion-only loss for
    prompt-completion data, assistant-only loss for messages when the template marks them."""
    from trl import SFTConfig

    from rlhf.models import trainer_device_args

    extra: dict[str, Any] = {}
    if kind == "prompt_completion":
        extra["completion_only_loss"] = cfg.completion_only_loss
    if kind == "messages":
        supported = assistant_masks_supported(tokenizer)
        if cfg.assistant_only_loss and not supported:
            raise ConfigError("sft.assistant_only_loss=true needs a chat template that marks assistant turns with "
                              "{% generation %} ... {% endgeneration %}; give one with data.chat_template")
        extra["assistant_only_loss"] = supported if cfg.assistant_only_loss is None else cfg.assistant_only_loss
    return SFTConfig(
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=64, learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio, lr_scheduler_type="cosine", logging_steps=cfg.logging_steps, seed=seed,
        max_length=max_length, packing=False, dataset_text_field="text", eval_strategy="no",
        activation_checkpointing=cfg.gradient_checkpointing, **extra, **trainer_device_args(device),
    )


def train_sft(cfg: SFTStageConfig, task, out_dir: Path, run_dir=None, seed: int = 0, device: str = "auto",
              allow_pickle: bool = False) -> dict[str, Any]:
    """Fine-tune on the task's SFT data and save the artifact to ``out_dir``."""
    from trl import SFTTrainer

    from rlhf.checkpoints import train_resumable
    from rlhf.models import finished_policy, lora_config, quiet_trainer, run_dir_callback, save_artifact

    model, tok = build_model(cfg, task, allow_pickle)
    data, kind, conversational = task.sft_data(tok)
    max_len = task.tiny_positions() if task.name == "melody" else task.cfg.max_length
    args = sft_config(cfg, kind, tok, max_len, out_dir.parent / "trainer", seed, device)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                         processing_class=tok, peft_config=lora_config(cfg, model) if cfg.lora_r > 0 else None,
                         callbacks=[run_dir_callback(run_dir, "sft")])
    quiet_trainer(trainer)
    result = train_resumable(trainer, run_dir, cfg.checkpoint_every)
    ev = trainer.evaluate()
    model = finished_policy(trainer.model, cfg)
    save_artifact(model, tok, out_dir, "sft", task=task.stamp(), base_model=cfg.model, data_format=kind,
                  conversational=conversational, n_train=len(data["train"]), eval_loss=ev["eval_loss"],
                  lora_r=cfg.lora_r, merged=cfg.lora_r == 0 or cfg.merge_lora)
    return {"train_loss": float(result.training_loss), "eval_loss": float(ev["eval_loss"]),
            "eval_perplexity": float(math.exp(min(20.0, ev["eval_loss"]))), "steps": int(result.global_step)}
