"""Evaluation of any policy artifact on held-out prompts: mean gold reward (the task's hidden
gold, when it has one), proxy reward (a reward model and/or function, if given) and
KL(pi || pi_ref) to a reference policy, estimated per sequence as the sum over sampled
completion tokens of log pi - log pi_ref."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def kl_to_reference(policy, reference, tokenizer, prompts: list[str], completions: list[list[int]],
                    batch_size: int = 64) -> np.ndarray:
    """Per-sequence sum of log pi(y_t) - log pi_ref(y_t) over the sampled completion tokens."""
    import torch

    from rlhf.models import completion_logprobs, pack

    out = []
    for i in range(0, len(prompts), batch_size):
        pids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[i:i + batch_size]]
        batch = pack(pids, completions[i:i + batch_size], tokenizer.pad_token_id)
        with torch.no_grad():
            lp, _ = completion_logprobs(policy, batch)
            lr, _ = completion_logprobs(reference, batch)
        out.append((lp - lr).sum(1).numpy())
    return np.concatenate(out)


def evaluate_policy(model_dir: Path, prompts, ref_dir: Path | None = None, reward_dir: Path | None = None,
                    samples_per_prompt: int = 2, max_new_tokens: int = 112, seed: int = 0, task=None,
                    reward=None, allow_pickle: bool = False) -> dict[str, Any]:
    """Sample ``samples_per_prompt`` completions of each held-out prompt (a ``PromptSet``) and
    report the task's gold (when it has one), the reward (model and/or function) and the KL to
    the reference."""
    from rlhf.models import disable_dropout, load_policy, load_reward_model, reward_offset, sample
    from rlhf.ppo import as_prompts

    prompts = as_prompts(prompts)
    policy, tok = load_policy(model_dir, "--model", allow_pickle)
    disable_dropout(policy)
    reps = prompts.repeat_each(samples_per_prompt)
    comps = sample(policy, tok, reps.prompts, max_new_tokens, temperature=1.0, generator_seed=seed)
    texts = task.completion_texts(tok, comps) if task is not None else \
        [tok.decode(c, skip_special_tokens=True) for c in comps]
    out: dict[str, Any] = {"samples": len(texts),
                           "eos_fraction": float(np.mean([bool(c) and c[-1] == tok.eos_token_id for c in comps])),
                           "completion_length": float(np.mean([len(c) for c in comps]))}
    gold = task.gold(reps.prompts, texts, reps.columns) if task is not None and task.has_gold else None
    if gold is not None:
        gold = np.asarray(gold, dtype=np.float64)
        out.update(gold_reward=float(gold.mean()), gold_reward_sem=float(gold.std() / np.sqrt(len(gold))))
        out.update(task.gold_details(reps.prompts, texts, reps.columns))
    model_scores = None
    if reward_dir is not None:
        from rlhf.reward import score_texts

        rm, _ = load_reward_model(reward_dir, "--reward", allow_pickle)
        model_scores = score_texts(rm, tok, [p + t for p, t in zip(reps.prompts, texts)], reward_offset(reward_dir))
    if reward is not None and (reward.fn is not None or model_scores is not None):
        out["proxy_reward"] = float(reward.combine(model_scores, reps.prompts, texts, reps.columns).mean())
    elif model_scores is not None:
        out["proxy_reward"] = float(model_scores.mean())
    if ref_dir is not None:
        ref, ref_tok = load_policy(ref_dir, "--ref", allow_pickle)
        disable_dropout(ref)
        if ref_tok.get_vocab() != tok.get_vocab():
            from cluster.errors import ConfigError

            raise ConfigError(f"--ref {ref_dir}: its tokenizer differs from the evaluated model's; "
                              "KL needs the same vocabulary")
        out["kl_to_reference"] = float(kl_to_reference(policy, ref, tok, reps.prompts, comps).mean())
    return out


def plot_gold_vs_kl(rows: list[dict[str, Any]], path: Path, algo: str = "PPO") -> Path | None:
    """The over-optimisation curve: held-out gold (and proxy) reward against KL to the prior,
    one point per evaluation, labelled with its PPO iteration (KL estimates are noisy, so
    points are not joined in KL order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if "eval_gold_reward" in r and "eval_kl" in r]
    if not pts:
        return None
    kl = [r["eval_kl"] for r in pts]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(kl, [r["eval_gold_reward"] for r in pts], "o-", color="tab:green", alpha=0.8, label="gold (hidden)")
    for r in pts:
        ax.annotate(str(r["step"]), (r["eval_kl"], r["eval_gold_reward"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("KL(pi || pi_SFT) per sequence, held-out prompts")
    ax.set_ylabel("gold reward", color="tab:green")
    ax2 = ax.twinx()
    ax2.plot(kl, [r.get("eval_proxy_reward", float("nan")) for r in pts], "s--", color="tab:blue", alpha=0.6,
             label="proxy (reward model)")
    ax2.set_ylabel("proxy reward", color="tab:blue")
    ax.set_title(f"{algo}: gold vs proxy reward along KL (labels: iteration)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
