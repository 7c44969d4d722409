"""Stage 1, supervised fine-tuning: next-token cross-entropy on the melody corpus with TRL's
``SFTTrainer``, on a small GPT-2 built from a config or any local HF causal LM, optionally
through LoRA (``peft``). Writes ``RUN_DIR/model/`` (model + tokenizer + reinforge.json)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError


@dataclass
class SFTStageConfig:
    model: str = "tiny"  # "tiny": a GPT-2 built from the sizes below; or a local HF causal LM dir
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    dropout: float = 0.1
    epochs: float = 20.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_ratio: float = 0.05
    lora_r: int = 0  # > 0: train LoRA adapters (merged into the saved model)
    lora_alpha: int = 16
    logging_steps: int = 10

    def validate(self) -> None:
        if self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigError("sft.batch_size must be >= 1 and sft.learning_rate > 0")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("set sft.epochs > 0 or sft.max_steps > 0")
        if self.model == "tiny" and self.n_embd % self.n_head:
            raise ConfigError(f"sft.n_embd={self.n_embd} must be divisible by sft.n_head={self.n_head}")
        if self.lora_r < 0:
            raise ConfigError("sft.lora_r must be >= 0 (0 = full fine-tuning)")


def build_model(cfg: SFTStageConfig, max_tokens: int):
    """(model, tokenizer): the tiny GPT-2 with the melody tokenizer, or a local HF model."""
    from rlhf.melody import build_tokenizer
    from rlhf.models import load_policy, tiny_gpt2

    if cfg.model == "tiny":
        tok = build_tokenizer()
        n_pos = 1 << max(7, math.ceil(math.log2(max_tokens + 1)))
        return tiny_gpt2(tok, cfg.n_layer, cfg.n_embd, cfg.n_head, n_pos, cfg.dropout), tok
    if not Path(cfg.model).expanduser().is_dir():
        raise ConfigError(f"sft.model={cfg.model!r}: not 'tiny' and not a local model directory "
                          "(nothing is downloaded); give a Hugging Face model dir or 'tiny'")
    return load_policy(Path(cfg.model).expanduser(), where="sft.model")


def train_sft(cfg: SFTStageConfig, data, out_dir: Path, run_dir=None, seed: int = 0,
              device: str = "auto") -> dict[str, Any]:
    """Fine-tune on ``data`` (a DatasetDict with ``text``), save the artifact to ``out_dir``."""
    from trl import SFTConfig, SFTTrainer

    from rlhf.models import quiet_trainer, run_dir_callback, save_artifact, trainer_device_args

    max_len = max(len(t.split()) for t in data["train"]["text"])
    model, tok = build_model(cfg, max_len)
    peft_config = None
    if cfg.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                                 target_modules=["c_attn", "c_proj"] if "gpt2" in model.config.model_type else None)
    args = SFTConfig(
        output_dir=str(out_dir.parent / "trainer"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=64, learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio, lr_scheduler_type="cosine", logging_steps=cfg.logging_steps, seed=seed,
        max_length=max_len + 2, packing=False, dataset_text_field="text", eval_strategy="no",
        **trainer_device_args(device),
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                         processing_class=tok, peft_config=peft_config,
                         callbacks=[run_dir_callback(run_dir, "sft")])
    quiet_trainer(trainer)
    result = trainer.train()
    ev = trainer.evaluate()
    model = trainer.model
    if cfg.lora_r > 0:
        model = model.merge_and_unload()
    model.config.use_cache = True
    save_artifact(model, tok, out_dir, "sft", n_train=len(data["train"]), eval_loss=ev["eval_loss"])
    return {"train_loss": float(result.training_loss), "eval_loss": float(ev["eval_loss"]),
            "eval_perplexity": float(math.exp(min(20.0, ev["eval_loss"]))), "steps": int(result.global_step)}
