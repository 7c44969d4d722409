"""Stage 2, the reward model: a scalar head on the SFT transformer trained on preference pairs
with the Bradley-Terry loss

    L = -log sigmoid(r(x, y_chosen) - r(x, y_rejected)),

through TRL's ``RewardTrainer`` (which uses exactly this formula; ``bradley_terry_loss`` below
is the same equation, used for held-out evaluation and unit-tested by hand). As in the RLHF
implementation-details literature (Ziegler et al. 2019; Huang et al. 2024) the head is
initialised N(0, 1/(d_model + 1)) with no bias, and after training the reward is centred so
SFT samples average 0 (the offset is stored in ``reinforge.json`` and subtracted on use).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cluster.errors import ConfigError


@dataclass
class RewardStageConfig:
    epochs: float = 2.0
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.01  # AdamW decay: a little regularisation against memorising the pairs
    heldout_fraction: float = 0.2  # of a user preference set; simulated sets use held-out melodies' prompts
    logging_steps: int = 10

    def validate(self) -> None:
        if self.epochs <= 0 or self.batch_size < 1 or self.learning_rate <= 0 or self.weight_decay < 0:
            raise ConfigError("reward.epochs and reward.learning_rate must be > 0, reward.batch_size >= 1, "
                              "reward.weight_decay >= 0")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError("reward.heldout_fraction must be in (0, 1)")


def bradley_terry_loss(r_chosen, r_rejected):
    """-log sigmoid(r_chosen - r_rejected), averaged over pairs."""
    import torch

    return -torch.nn.functional.logsigmoid(r_chosen - r_rejected).mean()


def bt_accuracy(r_chosen, r_rejected) -> float:
    """Fraction of pairs ranked as the raters did (ties count one half)."""
    d = np.asarray(r_chosen, dtype=np.float64) - np.asarray(r_rejected, dtype=np.float64)
    return float(np.mean(np.where(d > 0, 1.0, np.where(d == 0, 0.5, 0.0))))


def init_reward_head(model) -> None:
    """Scalar head ~ N(0, 1/(d_model + 1)) (std 1/sqrt(d_model + 1)), bias (if any) zero."""
    import torch

    head = model.score
    d_model = head.weight.shape[1]
    torch.nn.init.normal_(head.weight, std=1.0 / math.sqrt(d_model + 1))
    if getattr(head, "bias", None) is not None:
        torch.nn.init.zeros_(head.bias)


def reward_model_from_sft(sft_dir: Path):
    from transformers import AutoModelForSequenceClassification

    from rlhf.models import check_tokenizer, load_tokenizer

    tok = load_tokenizer(sft_dir)
    model = AutoModelForSequenceClassification.from_pretrained(str(sft_dir), num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    init_reward_head(model)
    check_tokenizer(tok, model, f"--sft {sft_dir}")
    return model, tok


def tokenize_pairs(ds, tokenizer):
    """Pre-tokenised columns (chosen_ids / rejected_ids of prompt + completion), so TRL uses
    our ids as they are (it would otherwise append <eos> to completions that were cut off,
    hiding exactly the difference the raters penalise)."""

    def enc(row):
        return {"chosen_ids": tokenizer(row["prompt"] + row["chosen"], add_special_tokens=False)["input_ids"],
                "rejected_ids": tokenizer(row["prompt"] + row["rejected"], add_special_tokens=False)["input_ids"]}

    return ds.map(enc)


def score_texts(model, tokenizer, texts: list[str], offset: float = 0.0, batch_size: int = 64) -> np.ndarray:
    """Reward of each full text (prompt + completion), centred by ``offset``."""
    import torch

    from rlhf.models import pack, sequence_scores

    model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[i:i + batch_size]]
        b = pack(ids, [[] for _ in ids], tokenizer.pad_token_id)
        with torch.no_grad():
            out.append(sequence_scores(model, b["input_ids"], b["attention_mask"], offset, b["position_ids"]).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def evaluate_pairs(model, tokenizer, ds, offset: float = 0.0, temperature: float | None = None) -> dict[str, float]:
    """Held-out BT loss and accuracy; with gold columns, the Bayes-optimal accuracy beside it."""
    import torch

    rc = score_texts(model, tokenizer, [p + c for p, c in zip(ds["prompt"], ds["chosen"])], offset)
    rr = score_texts(model, tokenizer, [p + c for p, c in zip(ds["prompt"], ds["rejected"])], offset)
    out = {"heldout_pairs": len(rc), "heldout_accuracy": bt_accuracy(rc, rr),
           "heldout_bt_loss": float(bradley_terry_loss(torch.tensor(rc), torch.tensor(rr)))}
    if "gold_chosen" in ds.column_names:
        from rlhf.raters import bayes_optimal_accuracy

        bayes = bayes_optimal_accuracy(list(ds["gold_chosen"]), list(ds["gold_rejected"]), temperature)
        out["bayes_optimal_accuracy"] = bayes["realised"]
        if "expected" in bayes:
            out["bayes_optimal_accuracy_expected"] = bayes["expected"]
        out["accuracy_gap"] = out["bayes_optimal_accuracy"] - out["heldout_accuracy"]
    return out


def train_reward(cfg: RewardStageConfig, sft_dir: Path, train_pairs, heldout_pairs, out_dir: Path,
                 run_dir=None, seed: int = 0, device: str = "auto", temperature: float | None = None,
                 centre_texts: list[str] | None = None) -> dict[str, Any]:
    """Train on ``train_pairs``, centre on ``centre_texts`` (SFT samples), evaluate, save."""
    from trl import RewardConfig, RewardTrainer

    from rlhf.models import quiet_trainer, run_dir_callback, save_artifact, trainer_device_args

    model, tok = reward_model_from_sft(sft_dir)
    train_tok = tokenize_pairs(train_pairs, tok)
    args = RewardConfig(
        output_dir=str(out_dir.parent / "trainer"), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, logging_steps=cfg.logging_steps, seed=seed, lr_scheduler_type="linear",
        max_length=None, **trainer_device_args(device),
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=train_tok, processing_class=tok,
                            callbacks=[run_dir_callback(run_dir, "reward")])
    quiet_trainer(trainer)
    result = trainer.train()
    model = trainer.model.to("cpu")
    model.eval()
    if centre_texts is None:
        centre_texts = [p + c for p, c in zip(train_pairs["prompt"], train_pairs["chosen"])] + \
                       [p + c for p, c in zip(train_pairs["prompt"], train_pairs["rejected"])]
    offset = float(score_texts(model, tok, centre_texts).mean())
    metrics = {"train_loss": float(result.training_loss), "reward_offset": offset,
               "train_accuracy": evaluate_pairs(model, tok, train_pairs, offset)["heldout_accuracy"]}
    metrics.update(evaluate_pairs(model, tok, heldout_pairs, offset, temperature))
    save_artifact(model, tok, out_dir, "reward", reward_offset=offset, parent={"sft": str(sft_dir)},
                  heldout=metrics)
    return metrics
