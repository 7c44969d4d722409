"""Stage 2, the reward model: a scalar head on the SFT transformer trained on preference pairs
with the Bradley-Terry loss

    L = -log sigmoid(r(x, y_chosen) - r(x, y_rejected)),

either through our grouped trainer (``reward.trainer: grouped``, the default) or TRL's
``RewardTrainer`` (``reward.trainer: trl``; exactly the same formula). Both read the score at
the last real token. The grouped trainer exists because TRL's forwards every pair on its own:
when raters compare K completions of a prompt (rlhf/raters.py), the K(K-1)/2 pairs share their
texts, and InstructGPT's recipe (Ouyang et al. 2022) is to score each text once and take the
loss over all its pairs in the same batch, (K-1)/2 times fewer forward passes per pair.
``bradley_terry_loss`` is the equation, used by the grouped trainer and held-out evaluation
and unit-tested by hand. As in the RLHF
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
    trainer: str = "grouped"  # grouped (each text scored once per batch, all its pairs) | trl (RewardTrainer)
    epochs: float = 6.0
    batch_size: int = 32  # pairs per batch (trainer: trl)
    texts_per_batch: int = 48  # distinct prompt+completion texts per batch (trainer: grouped)
    learning_rate: float = 1e-3
    weight_decay: float = 0.01  # AdamW decay: a little regularisation against memorising the pairs
    disable_dropout: bool = True  # train with dropout off, as the RLHF implementation-details literature does
    heldout_fraction: float = 0.2  # of a user preference set; simulated sets use held-out melodies' prompts
    logging_steps: int = 10
    checkpoint_every: int = 200  # optimizer steps between resumable checkpoints (0 = none)
    eval_every: int = 0  # optimizer steps between held-out accuracy rows (0 = at the end only; ASHA needs > 0)
    model_type: str = "bt"  # bt (one Bradley-Terry reward) | vpl (a rater-conditioned reward r(x, z), rlhf/vpl.py)
    latent_dim: int = 8  # vpl: dimension of the rater latent z
    context_pairs: int = 8  # vpl: one rater's labelled pairs the encoder infers z from
    kl_weight: float = 1.0  # vpl: beta of the KL(q(z | pairs) || N(0, I)) term of the ELBO
    # vpl: fraction of the training steps over which beta ramps linearly from 0 to kl_weight
    # (KL annealing, Bowman et al. 2016): with the full KL from the start the encoder can settle
    # on q = the prior before z is of any use (posterior collapse: r(x, z) = r(x, 0))
    kl_warmup: float = 0.0
    encoder_hidden: int = 64  # vpl: width of the pair-embedding MLP
    rater_column: str = "rater"  # vpl: the preference set's rater id column
    conditioned_raters: int = 8  # vpl: training raters whose conditioned reward r(x, z_rater) is saved

    def validate(self) -> None:
        if self.checkpoint_every < 0 or self.eval_every < 0:
            raise ConfigError("reward.checkpoint_every and reward.eval_every must be >= 0 (0 = off)")
        if self.epochs <= 0 or self.batch_size < 1 or self.learning_rate <= 0 or self.weight_decay < 0:
            raise ConfigError("reward.epochs and reward.learning_rate must be > 0, reward.batch_size >= 1, "
                              "reward.weight_decay >= 0")
        if self.trainer not in ("grouped", "trl"):
            raise ConfigError(f"reward.trainer={self.trainer!r}: use grouped or trl")
        if self.texts_per_batch < 2:
            raise ConfigError("reward.texts_per_batch must be >= 2 (one chosen and one rejected text)")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError("reward.heldout_fraction must be in (0, 1)")
        if self.logging_steps < 1:
            raise ConfigError(f"reward.logging_steps must be >= 1, got {self.logging_steps}")
        if self.model_type not in ("bt", "vpl"):
            raise ConfigError(f"reward.model_type={self.model_type!r}: use bt (Bradley-Terry) or vpl (rater-conditioned)")
        if self.model_type == "vpl" and self.trainer != "grouped":
            raise ConfigError("reward.model_type=vpl trains with its own ELBO loop: leave reward.trainer=grouped")
        from cluster.run_config import check_ranges

        check_ranges("reward", self, {"latent_dim": ">= 1", "context_pairs": ">= 1", "encoder_hidden": ">= 1",
                                      "conditioned_raters": (">= 0", "training raters whose r(x, z) is saved"),
                                      "kl_weight": (">= 0", "1 = the ELBO")})
        if not 0.0 <= self.kl_warmup <= 1.0:  # written so that NaN fails too
            raise ConfigError(f"reward.kl_warmup={self.kl_warmup}: a fraction of the training steps in [0, 1] "
                              "(0 = the full KL from the first step)")


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


def reward_model_from_sft(sft_dir: Path, dropout: bool = True, task=None, allow_pickle: bool = False):
    """The SFT transformer with a fresh scalar head (``AutoModelForSequenceClassification``,
    one label)."""
    from transformers import AutoModelForSequenceClassification

    from rlhf.models import check_tokenizer, disable_dropout, load_tokenizer, safetensors_only

    if (Path(sft_dir) / "adapter_config.json").is_file():
        raise ConfigError(f"--sft {sft_dir}: holds a LoRA adapter alone; the reward model starts from a whole "
                          "model: re-run SFT with sft.merge_lora=true")
    tok = load_tokenizer(sft_dir, "--sft")
    model = AutoModelForSequenceClassification.from_pretrained(
        str(sft_dir), num_labels=1, use_safetensors=safetensors_only(sft_dir, "--sft", allow_pickle))
    model.config.pad_token_id = tok.pad_token_id
    init_reward_head(model)
    if not dropout:
        disable_dropout(model)
    check_tokenizer(tok, model, f"--sft {sft_dir}")
    if task is not None:
        task.check_tokenizer(tok, f"--sft {sft_dir}")
    return model, tok


def tokenize_pairs(ds, tokenizer):
    """Pre-tokenised columns (chosen_ids / rejected_ids of prompt + completion), so TRL uses
    our ids as they are (it would otherwise append <eos> to completions that were cut off,
    hiding exactly the difference the raters penalise)."""

    def enc(row):
        return {"chosen_ids": tokenizer(row["prompt"] + row["chosen"], add_special_tokens=False)["input_ids"],
                "rejected_ids": tokenizer(row["prompt"] + row["rejected"], add_special_tokens=False)["input_ids"]}

    return ds.map(enc)


def preference_groups(ds) -> list[tuple[list[str], list[int], list[int]]]:
    """A TRL preference set split into groups of pairs that share texts: per prompt, the
    connected components of its "compared with" graph (one per rating round of K completions,
    even when several rounds or melodies share a prompt). Per group: its distinct full texts
    (prompt + completion) and, for every pair, the index of the chosen and the rejected text."""
    by_prompt: dict[str, list[tuple[str, str]]] = {}
    for prompt, chosen, rejected in zip(ds["prompt"], ds["chosen"], ds["rejected"]):
        by_prompt.setdefault(prompt, []).append((prompt + chosen, prompt + rejected))
    groups = []
    for pairs in by_prompt.values():
        parent: dict[str, str] = {}  # union-find over texts
        for a, b in pairs:
            parent[_root(parent, a)] = _root(parent, b)
        components: dict[str, tuple[dict[str, int], list[int], list[int]]] = {}
        for a, b in pairs:
            index, ch, rj = components.setdefault(_root(parent, a), ({}, [], []))
            ch.append(index.setdefault(a, len(index)))
            rj.append(index.setdefault(b, len(index)))
        groups += [(list(index), ch, rj) for index, ch, rj in components.values()]
    return groups


def _root(parent: dict[str, str], t: str) -> str:
    while parent.setdefault(t, t) != t:
        parent[t] = parent[parent[t]]
        t = parent[t]
    return t


def grouped_batches(groups, max_texts: int, rng: np.random.Generator):
    """Batches of (distinct texts, chosen index, rejected index): groups in random order, each
    group's pairs kept together while the batch has room for their texts, so a text is scored
    once for all the pairs it appears in."""
    texts: dict[str, int] = {}
    ch: list[int] = []
    rj: list[int] = []
    for g in rng.permutation(len(groups)):
        g_texts, g_ch, g_rj = groups[g]
        for q in rng.permutation(len(g_ch)):
            a, b = g_texts[g_ch[q]], g_texts[g_rj[q]]
            if ch and len(texts) + (a not in texts) + (b not in texts) > max_texts:
                yield list(texts), ch, rj
                texts, ch, rj = {}, [], []
            ch.append(texts.setdefault(a, len(texts)))
            rj.append(texts.setdefault(b, len(texts)))
    if ch:
        yield list(texts), ch, rj


def train_grouped(cfg: RewardStageConfig, model, tokenizer, train_pairs, run_dir=None, seed: int = 0,
                  device: str = "auto", heldout_pairs=None) -> float:
    """Minimise ``bradley_terry_loss`` over every pair (AdamW, linear decay, grad-norm clip 1);
    returns the mean training loss. Shows one progress bar over the optimizer steps. Every
    ``checkpoint_every`` steps the model, optimizer, scheduler and losses go to a run-dir
    checkpoint; a run dir that holds one continues from its step (the batches of each epoch are
    seeded, so the ones already trained on are skipped). Every ``eval_every`` steps the
    held-out accuracy is logged (what ``reinforge tune --scheduler asha`` stops trials on)."""
    import torch

    from cluster.checkpoint import load_checkpoint
    from cluster.progress import progress
    from cluster.runtime import select_device
    from rlhf.checkpoints import trainable_state
    from rlhf.models import pack, sequence_scores

    dev = select_device(device)
    model.to(dev).train()
    groups = preference_groups(train_pairs)
    ids = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for g in groups for t in g[0]}
    per_epoch = sum(1 for _ in grouped_batches(groups, cfg.texts_per_batch, np.random.default_rng(seed)))
    total = max(1, math.ceil(cfg.epochs * per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / total)
    step, losses, window = 0, [], []
    latest = run_dir.latest_checkpoint() if run_dir is not None else None
    if latest is not None:
        ckpt = load_checkpoint(latest)
        model.load_state_dict(ckpt["model"], strict=False)
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step, losses = int(ckpt["state"]["step"]), list(ckpt["state"]["losses"])
        print(f"resumed the reward model at step {step} from {latest}")
    done = step
    with progress(total=total, desc="reward", unit="step", initial=step) as bar:
        for epoch in range(math.ceil(cfg.epochs)):
            for texts, ch, rj in grouped_batches(groups, cfg.texts_per_batch, np.random.default_rng(seed + 1 + epoch)):
                if done > 0:  # trained on before the checkpoint this run resumed from
                    done -= 1
                    continue
                b = pack([ids[t] for t in texts], [[] for _ in texts], tokenizer.pad_token_id)
                r = sequence_scores(model, b["input_ids"].to(dev), b["attention_mask"].to(dev),
                                    position_ids=b["position_ids"].to(dev))
                r_chosen, r_rejected = r[torch.tensor(ch, device=dev)], r[torch.tensor(rj, device=dev)]
                loss = bradley_terry_loss(r_chosen, r_rejected)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                step += 1
                losses.append(loss.item())
                window.append(float((r_chosen > r_rejected).float().mean()))
                if step % cfg.logging_steps == 0:
                    row = {"reward/loss": float(np.mean(losses[-cfg.logging_steps:])),
                           "reward/accuracy": float(np.mean(window)), "reward/learning_rate": sched.get_last_lr()[0],
                           "reward/epoch": step / per_epoch}
                    bar.update(0, loss=row["reward/loss"], accuracy=row["reward/accuracy"])
                    if run_dir is not None:
                        run_dir.log(row, step=step)
                    window = []
                if heldout_pairs is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                    model.eval()
                    acc = bt_accuracy(*pair_scores(model, tokenizer, heldout_pairs)[:2])
                    model.train()
                    bar.update(0, heldout_accuracy=acc)
                    if run_dir is not None:
                        run_dir.log({"heldout_accuracy": acc}, step=step)
                if run_dir is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                    run_dir.save_checkpoint(step, {"model": trainable_state(model), "optimizer": opt.state_dict(),
                                                   "scheduler": sched.state_dict(),
                                                   "state": {"step": step, "losses": losses}}, keep=2)
                bar.update(1)
                if step >= total:
                    return float(np.mean(losses))
    return float(np.mean(losses)) if losses else float("nan")


def score_texts(model, tokenizer, texts: list[str], offset: float = 0.0, batch_size: int = 64) -> np.ndarray:
    """Reward of each full text (prompt + completion), centred by ``offset``."""
    import torch

    from rlhf.models import pack, sequence_scores

    model.eval()
    dev = next(model.parameters()).device  # also mid-training, on the trainer's device
    out = []
    for i in range(0, len(texts), batch_size):
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[i:i + batch_size]]
        b = pack(ids, [[] for _ in ids], tokenizer.pad_token_id)
        with torch.no_grad():
            out.append(sequence_scores(model, b["input_ids"].to(dev), b["attention_mask"].to(dev), offset,
                                       b["position_ids"].to(dev)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def full_texts(ds) -> tuple[list[str], list[str], list[str]]:
    """Prompt + chosen and prompt + rejected of every pair, and the distinct texts among them."""
    full_c = [p + c for p, c in zip(ds["prompt"], ds["chosen"])]
    full_r = [p + c for p, c in zip(ds["prompt"], ds["rejected"])]
    return full_c, full_r, list(dict.fromkeys(full_c + full_r))


def pair_scores(model, tokenizer, ds, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, float]:
    """Reward of every pair's chosen and rejected text, each distinct text scored once, and the
    mean reward over those distinct texts."""
    full_c, full_r, texts = full_texts(ds)
    scores = score_texts(model, tokenizer, texts, offset)
    r = dict(zip(texts, scores))
    return np.array([r[t] for t in full_c]), np.array([r[t] for t in full_r]), float(scores.mean())


def evaluate_pairs(model, tokenizer, ds, offset: float = 0.0, temperature: float | None = None) -> dict[str, float]:
    """Held-out BT loss and accuracy; with gold columns, the Bayes-optimal accuracy beside it."""
    import torch

    rc, rr, _ = pair_scores(model, tokenizer, ds, offset)
    out = {"heldout_pairs": len(rc), "heldout_accuracy": bt_accuracy(rc, rr),
           "heldout_bt_loss": float(bradley_terry_loss(torch.tensor(rc), torch.tensor(rr)))}
    if "rater_chosen" in ds.column_names:  # simulated rater kinds (a user's own rater ids have no kind scores)
        out.update(divergent_raters_report(rc, rr, ds, temperature))
    if "gold_chosen" in ds.column_names:
        from rlhf.raters import bayes_optimal_accuracy

        labeller = ("rater_chosen", "rater_rejected") if "rater_chosen" in ds.column_names else ("gold_chosen", "gold_rejected")
        bayes = bayes_optimal_accuracy(list(ds[labeller[0]]), list(ds[labeller[1]]), temperature)
        out["bayes_optimal_accuracy"] = bayes["realised"]
        if "expected" in bayes:
            out["bayes_optimal_accuracy_expected"] = bayes["expected"]
        out["accuracy_gap"] = out["bayes_optimal_accuracy"] - out["heldout_accuracy"]
    return out


def divergent_raters_report(rc, rr, ds, temperature: float | None) -> dict[str, float]:
    """Pairs labelled by several kinds of rater (``rater`` column): per kind, the reward model's
    accuracy on that kind's pairs next to its Bayes-optimal accuracy; the accuracy of the one
    reward that averages the kinds' scores; and how the reward model's score correlates with
    each kind's score and with their average. A single Bradley-Terry model cannot know who
    labelled a pair, so it learns something close to the average."""
    from rlhf.gold import profile_score
    from rlhf.raters import bayes_optimal_accuracy

    kinds = sorted(set(ds["rater"]))
    who = np.array(ds["rater"])
    full_c, full_r, texts = full_texts(ds)
    kind_score = {k: {t: profile_score(t, k) for t in texts} for k in kinds}
    mean = {t: float(np.mean([kind_score[k][t] for k in kinds])) for t in texts}
    out: dict[str, float] = {"single_reward_ceiling": bt_accuracy([mean[t] for t in full_c], [mean[t] for t in full_r])}
    rm = dict(zip(full_c + full_r, np.concatenate([rc, rr])))
    rm_vec = np.array([rm[t] for t in texts])
    for k in kinds:
        m = who == k
        out[f"rater_{k}/pairs"] = int(m.sum())
        out[f"rater_{k}/heldout_accuracy"] = bt_accuracy(rc[m], rr[m])
        out[f"rater_{k}/bayes_optimal_accuracy"] = bayes_optimal_accuracy(
            np.array(ds["rater_chosen"])[m], np.array(ds["rater_rejected"])[m], temperature)["realised"]
        out[f"rater_{k}/score_correlation"] = float(np.corrcoef(rm_vec, [kind_score[k][t] for t in texts])[0, 1])
    out["mean_score_correlation"] = float(np.corrcoef(rm_vec, [mean[t] for t in texts])[0, 1])
    return out


def train_reward(cfg: RewardStageConfig, sft_dir: Path, train_pairs, heldout_pairs, out_dir: Path,
                 run_dir=None, seed: int = 0, device: str = "auto", temperature: float | None = None,
                 task=None, allow_pickle: bool = False) -> dict[str, Any]:
    """Train on ``train_pairs``, centre on the distinct SFT samples they compare (the offset
    folded into the model's weights where the architecture allows, ``fold_offset``), evaluate,
    save."""
    from rlhf.models import fold_offset, save_artifact

    model, tok = reward_model_from_sft(sft_dir, dropout=not cfg.disable_dropout, task=task, allow_pickle=allow_pickle)
    if cfg.trainer == "grouped":
        train_loss = train_grouped(cfg, model, tok, train_pairs, run_dir, seed, device, heldout_pairs)
    else:
        train_loss = _train_trl(cfg, model, tok, train_pairs, out_dir, run_dir, seed, device)
    model = model.to("cpu")
    model.eval()
    rc, rr, offset = pair_scores(model, tok, train_pairs)  # one pass: accuracy and the centring offset
    folded = fold_offset(model, offset)
    left = 0.0 if folded else offset
    metrics = {"train_loss": train_loss, "reward_offset": offset, "train_accuracy": bt_accuracy(rc, rr)}
    metrics.update(evaluate_pairs(model, tok, heldout_pairs, left, temperature))
    save_artifact(model, tok, out_dir, "reward", task=task.stamp() if task is not None else None,
                  reward_offset=offset, offset_folded=folded, parent={"sft": str(sft_dir)}, heldout=metrics)
    return metrics


def _train_trl(cfg: RewardStageConfig, model, tok, train_pairs, out_dir: Path, run_dir, seed: int, device: str) -> float:
    """The same loss through TRL's ``RewardTrainer`` (every pair forwarded on its own)."""
    from trl import RewardConfig, RewardTrainer

    from rlhf.checkpoints import train_resumable
    from rlhf.models import quiet_trainer, run_dir_callback, trainer_device_args

    args = RewardConfig(
        output_dir=str(out_dir.parent / "trainer"), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, logging_steps=cfg.logging_steps, seed=seed,
        lr_scheduler_type="linear", max_length=None, **trainer_device_args(device),
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=tokenize_pairs(train_pairs, tok), processing_class=tok,
                            callbacks=[run_dir_callback(run_dir, "reward")])
    quiet_trainer(trainer)
    return float(train_resumable(trainer, run_dir, cfg.checkpoint_every).training_loss)
