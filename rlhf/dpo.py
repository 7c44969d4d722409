"""The DPO baseline (Rafailov et al. 2023) with TRL's ``DPOTrainer``: the same preference set
the reward model learns from, the SFT model as both the starting point and the frozen
reference, loss -log sigmoid(beta * [(log pi - log pi_ref)(y_w) - (log pi - log pi_ref)(y_l)]).
Evaluated like PPO (gold reward and KL on held-out prompts, rlhf/evaluate.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError
from rlhf.models import PolicyTraining


@dataclass
class DPOStageConfig(PolicyTraining):
    beta: float = 0.1
    epochs: float = 3.0
    batch_size: int = 16
    learning_rate: float = 1e-4
    max_pairs: int = 0  # > 0: train on a seeded random subset of this many pairs (K-wise sets are large)
    logging_steps: int = 10
    checkpoint_every: int = 200  # optimizer steps between resumable checkpoints (0 = none)

    def validate(self) -> None:
        if self.beta <= 0 or self.epochs <= 0 or self.learning_rate <= 0 or self.batch_size < 1:
            raise ConfigError("dpo.beta, dpo.epochs and dpo.learning_rate must be > 0, dpo.batch_size >= 1")
        if self.max_pairs < 0:
            raise ConfigError("dpo.max_pairs must be >= 0 (0 = every pair)")
        if self.logging_steps < 1:
            raise ConfigError(f"dpo.logging_steps must be >= 1, got {self.logging_steps}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"dpo.checkpoint_every must be >= 0 (0 = no checkpoints), got {self.checkpoint_every}")
        self.validate_policy_training("dpo")


def tokenize_dpo(ds, tokenizer):
    """Pre-tokenised prompt_ids/chosen_ids/rejected_ids (TRL then leaves them as they are; it
    would otherwise append <eos> to completions cut off without one)."""

    def enc(row):
        t = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        return {"prompt_ids": t(row["prompt"]), "chosen_ids": t(row["chosen"]), "rejected_ids": t(row["rejected"])}

    return ds.map(enc, remove_columns=[c for c in ds.column_names if c not in ("prompt", "chosen", "rejected")])


def train_dpo(cfg: DPOStageConfig, sft_dir: Path, pairs, out_dir: Path, run_dir=None, seed: int = 0,
              device: str = "auto", task=None, allow_pickle: bool = False) -> dict[str, Any]:
    """DPO from the SFT artifact; with LoRA the reference is the same model with its adapter
    switched off (TRL's way), else a second frozen copy."""
    from trl import DPOConfig, DPOTrainer

    from rlhf.checkpoints import train_resumable
    from rlhf.models import (
        finished_policy,
        load_policy,
        lora_config,
        quiet_trainer,
        run_dir_callback,
        save_artifact,
        trainer_device_args,
    )

    if 0 < cfg.max_pairs < len(pairs):
        pairs = pairs.shuffle(seed=seed).select(range(cfg.max_pairs))
    model, tok = load_policy(sft_dir, "--sft", allow_pickle)
    ref = None if cfg.lora_r > 0 else load_policy(sft_dir, "--sft", allow_pickle)[0]
    args = DPOConfig(
        output_dir=str(out_dir.parent / "trainer"), beta=cfg.beta, num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
        logging_steps=cfg.logging_steps, seed=seed, max_length=None,
        activation_checkpointing=cfg.gradient_checkpointing, **trainer_device_args(device),
    )
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=tokenize_dpo(pairs, tok),
                         processing_class=tok, peft_config=lora_config(cfg, model) if cfg.lora_r > 0 else None,
                         callbacks=[run_dir_callback(run_dir, "dpo")])
    quiet_trainer(trainer)
    result = train_resumable(trainer, run_dir, cfg.checkpoint_every)
    model = finished_policy(trainer.model.to("cpu"), cfg)
    save_artifact(model, tok, out_dir, "dpo", task=task.stamp() if task is not None else None,
                  parent={"sft": str(sft_dir)}, beta=cfg.beta)
    return {"train_loss": float(result.training_loss), "steps": int(result.global_step), "dpo_pairs": len(pairs)}
