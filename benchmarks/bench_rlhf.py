"""RLHF benchmark: the checkable targets of the melody task, and reinforge PPO vs TRL's
RLOOTrainer side by side in one run.

Every stage reads its data through the melody task (rlhf/tasks.py ``MelodyTask``), which also
computes the hidden gold of each evaluation.

1. SFT on the Essen folk melodies; simulated raters label SFT samples with the hidden gold.
2. Reward model: held-out pairwise accuracy vs the gold's Bayes-optimal accuracy on the same pairs.
3. reinforge PPO (Ray actors for rollouts and scoring): held-out gold reward and KL to the SFT
   prior along training (the over-optimisation curve), iteration time.
4. TRL RLOOTrainer on the same SFT model, prompts, reward model (+ the same missing-<eos>
   penalty) and completions per step, for the same wall-clock budget: iteration time, held-out
   gold and KL of its final policy, gold gained per wall-clock minute.
5. (optional) DPO baseline on the same preference set.

    python benchmarks/bench_rlhf.py [--quick] [--out DIR]     (or: reinforge bench rlhf)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from _common import Timer, parse_args, print_table, write_results

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], [
        (("--iterations",), {"type": int, "default": None, "help": "PPO iterations (default 40, quick 4)"}),
        (("--no-dpo",), {"action": "store_true", "help": "skip the DPO baseline"}),
        (("--files",), {"default": BENCH_FILES, "help": "comma-separated Essen files"}),
        (("--reuse",), {"action": "store_true",
                        "help": "reuse the SFT model, preference sets and reward model of an earlier run"}),
    ])

    from cluster.runtime import connect
    from cluster.seeding import seed_everything
    from rlhf.evaluate import evaluate_policy
    from rlhf.melody import MelodyDataConfig
    from rlhf.models import limit_threads, load_policy, quiet_libraries
    from rlhf.ppo import PPOStageConfig, train_ppo
    from rlhf.raters import RaterConfig, simulate_preferences
    from rlhf.reward import RewardStageConfig, train_reward
    from rlhf.sft import SFTStageConfig, train_sft
    from rlhf.tasks import MelodyTask, RLHFDataConfig

    quick = args.quick
    limit_threads()
    quiet_libraries()
    seed_everything(0)
    work = Path(args.out) / "rlhf-work"
    work.mkdir(parents=True, exist_ok=True)
    info: dict = {"quick": quick}
    melody = MelodyDataConfig(files=args.files.split(","), max_songs=40 if quick else None,
                              max_tokens=96 if quick else 128)
    task = MelodyTask(RLHFDataConfig(task="melody", melody=melody), seed=0, log=print)
    data = task.melodies()
    max_new = 48 if quick else 112
    info["melodies"] = {"train": len(data["train"]), "validation": len(data["validation"])}

    # 1. SFT
    if args.reuse and (work / "sft" / "reinforge.json").is_file():
        stamp = json.loads((work / "sft" / "reinforge.json").read_text())
        sft = {"eval_loss": stamp["eval_loss"], "n_train": stamp.get("n_train"), "reused": True}
        info["sft"] = sft
    else:
        with Timer() as t:
            sft = train_sft(SFTStageConfig(max_steps=20 if quick else -1, epochs=20, n_embd=64 if quick else 128),
                            task, work / "sft")
        info["sft"] = {**sft, "seconds": t.seconds}
    print(f"SFT: eval loss {sft['eval_loss']:.3f}", flush=True)

    # 2. raters + reward model
    policy, tok = load_policy(work / "sft")
    train_prompts, held_prompts = task.prompt_sets(tok)  # PromptSets: the opening bar of each melody
    rcfg = RaterConfig(pairs_per_prompt=1 if quick else TRAIN_ROUNDS, completions_per_prompt=4 if quick else TRAIN_K, temperature=0.5,
                       max_new_tokens=max_new)
    with Timer() as t:
        prefs = work / "preferences"
        if args.reuse and (prefs / "heldout").is_dir():
            import datasets

            train_pairs = datasets.load_from_disk(str(prefs / "train"))
            held_pairs = datasets.load_from_disk(str(prefs / "heldout"))
        else:
            # not task.preferences: that labels train and held-out prompts with one rater config;
            # the held-out set here is independent plain pairs (K = 2), HELD_PAIRS per prompt
            train_pairs = simulate_preferences(policy, tok, train_prompts.prompts, rcfg, seed=0)
            held_cfg = RaterConfig(pairs_per_prompt=2 if quick else HELD_PAIRS, completions_per_prompt=2,
                                   temperature=0.5, max_new_tokens=max_new)
            held_pairs = simulate_preferences(policy, tok, held_prompts.prompts, held_cfg, seed=1)
            train_pairs.save_to_disk(str(prefs / "train"))
            held_pairs.save_to_disk(str(prefs / "heldout"))
        if args.reuse and (work / "reward" / "reinforge.json").is_file():
            rm = {**json.loads((work / "reward" / "reinforge.json").read_text())["heldout"], "reused": True}
        else:
            rm = train_reward(RewardStageConfig(epochs=1 if quick else RM_EPOCHS, learning_rate=RM_LR,
                                                texts_per_batch=RM_TEXTS, weight_decay=RM_WD),
                              work / "sft", train_pairs, held_pairs, work / "reward", temperature=0.5, task=task)
    info["reward"] = {**rm, "seconds": t.seconds}
    print(f"reward model: held-out accuracy {rm['heldout_accuracy']:.3f} vs Bayes-optimal "
          f"{rm['bayes_optimal_accuracy']:.3f} (expected {rm.get('bayes_optimal_accuracy_expected', float('nan')):.3f}) "
          f"on {rm['heldout_pairs']} pairs; train accuracy {rm['train_accuracy']:.3f} on {len(train_pairs)} pairs",
          flush=True)

    # 3. reinforge PPO
    connect(num_cpus=2)
    iters = args.iterations or (4 if quick else PPO_ITERS)
    pcfg = PPOStageConfig(iterations=iters, batch_size=16 if quick else 32, minibatch_size=8 if quick else 16,
                          max_new_tokens=max_new, learning_rate=PPO_LR, kl_coef=PPO_BETA, eval_every=2 if quick else 4,
                          eval_prompts=len(held_prompts), checkpoint_every=10_000)
    rows_ppo: list[dict] = []

    class Log:  # collects PPO's metrics rows in memory (no run dir)
        def log(self, m, step):
            rows_ppo.append({"step": step, **m})

        def latest_checkpoint(self):
            return None

        def save_checkpoint(self, *a, **k):
            return None

    eval_reps = held_prompts.cycle(len(held_prompts) * (1 if quick else EVAL_SAMPLES))
    with Timer() as t_ppo:
        ppo = train_ppo(pcfg, work / "sft", work / "reward", train_prompts, eval_reps, work / "ppo", run_dir=Log(),
                        seed=0, log=print, task=task)
    curve = [{"iteration": r["step"], "gold": r["eval_gold_reward"], "proxy": r["eval_proxy_reward"],
              "kl": r["eval_kl"]} for r in rows_ppo if "eval_gold_reward" in r]
    best = max(curve, key=lambda c: c["gold"])
    info["ppo"] = {**ppo, "seconds": t_ppo.seconds, "curve": curve, "best": best,
                   "overoptimisation_after_kl": best["kl"] if best is not curve[-1] else None}

    # 4. TRL RLOO on the same model, prompts, reward and completions per step
    # RLOO is run at PPO's learning rate and at 1/3 and 1/10 of it (a peer gets a small sweep,
    # not just our setting); each for PPO's wall-clock time.
    peers = []
    for lr in ([pcfg.learning_rate] if quick else [pcfg.learning_rate * f for f in RLOO_LR_FACTORS]):
        peer = run_rloo(work, task, train_prompts.prompts, pcfg, budget_s=t_ppo.seconds, quick=quick,
                        learning_rate=lr)
        if peer.get("model_dir"):
            ev = evaluate_policy(Path(peer["model_dir"]), held_prompts, work / "sft", work / "reward",
                                 samples_per_prompt=1 if quick else EVAL_SAMPLES, max_new_tokens=max_new, task=task)
            peer.update(gold=ev["gold_reward"], kl=ev["kl_to_reference"], proxy=ev["proxy_reward"])
        peers.append({**peer, "learning_rate": lr})
        print(f"TRL RLOO lr {lr:g}: " + (f"gold {peer['gold']:.3f} kl {peer['kl']:.2f}" if "gold" in peer
                                          else peer.get("error", "did not run")), flush=True)
    info["rloo"] = peers

    # 5. DPO baseline (same preference set)
    if not args.no_dpo:
        from rlhf.dpo import DPOStageConfig, train_dpo

        with Timer() as t:
            train_dpo(DPOStageConfig(epochs=1 if quick else 2), work / "sft", train_pairs, work / "dpo", task=task)
        ev = evaluate_policy(work / "dpo", held_prompts, work / "sft", work / "reward",
                             samples_per_prompt=1 if quick else 4, max_new_tokens=max_new, task=task)
        info["dpo"] = {"seconds": t.seconds, "gold": ev["gold_reward"], "kl": ev["kl_to_reference"],
                       "proxy": ev["proxy_reward"]}

    sft_gold = curve[0]["gold"]
    final = curve[-1]
    rows = [
        {"system": "SFT prior", "iteration_s": None, "wall_s": None, "gold": sft_gold, "kl": 0.0,
         "proxy": curve[0]["proxy"], "gold/min": None},
        {"system": "PPO final", "iteration_s": ppo.get("iteration_s"), "wall_s": t_ppo.seconds,
         "gold": final["gold"], "kl": final["kl"], "proxy": final["proxy"],
         "gold/min": (final["gold"] - sft_gold) / (t_ppo.seconds / 60)},
        {"system": f"PPO best@{best['iteration']}", "iteration_s": None, "wall_s": None,
         "gold": best["gold"], "kl": best["kl"], "proxy": best["proxy"], "gold/min": None},
    ]
    for peer in peers:
        name = f"TRL RLOO lr {peer['learning_rate']:g}"
        if "gold" in peer:
            rows.append({"system": name, "iteration_s": peer["iteration_s"], "wall_s": peer["wall_s"],
                         "gold": peer["gold"], "kl": peer["kl"], "proxy": peer["proxy"],
                         "gold/min": (peer["gold"] - sft_gold) / (peer["wall_s"] / 60)})
        else:
            rows.append({"system": name, "note": peer.get("error", "did not run")[:60]})
    if "dpo" in info:
        rows.append({"system": "TRL DPO", "wall_s": info["dpo"]["seconds"],
                     "gold": info["dpo"]["gold"], "kl": info["dpo"]["kl"], "proxy": info["dpo"]["proxy"]})
    print_table([{"metric": "reward model held-out accuracy (vs sampled labels)", "value": rm["heldout_accuracy"]},
                 {"metric": "gold Bayes-optimal accuracy (same pairs, sampled labels)",
                  "value": rm["bayes_optimal_accuracy"]},
                 {"metric": "gold Bayes-optimal E[max(p, 1-p)] (same pairs)",
                  "value": rm.get("bayes_optimal_accuracy_expected")},
                 {"metric": "reward model train accuracy", "value": rm["train_accuracy"]},
                 {"metric": "gap (points)", "value": 100 * rm["accuracy_gap"]},
                 {"metric": "held-out pairs", "value": rm["heldout_pairs"]}],
                ["metric", "value"], title="Reward model vs the gold's Bayes-optimal accuracy")
    print_table(curve, ["iteration", "gold", "proxy", "kl"], title="PPO on held-out prompts: gold vs KL")
    print_table(rows, ["system", "iteration_s", "wall_s", "gold", "kl", "proxy", "gold/min", "note"],
                title=f"RLHF policies on {len(held_prompts)} held-out prompts (gold max {gold_max():.1f})")
    path = write_results("rlhf", rows, args.out, details=info)
    print(f"results: {path}\nplot: {plot_curve(curve, peers, Path(args.out) / 'rlhf-gold-vs-kl.png')}")


# measured choices for the full benchmark (see the README's RLHF section for the numbers)
BENCH_FILES = "kinder0,ballad40,boehme20,altdeu10"  # ~1,070 Essen songs, 735 fit 128 tokens
TRAIN_ROUNDS, TRAIN_K = 2, 12  # train: two rating rounds of 12 completions per prompt, all 66 pairs of each labelled (~82k pairs)
HELD_PAIRS = 10  # held-out: 10 independent pairs per prompt (~1,100 pairs)
RM_EPOCHS, RM_LR, RM_TEXTS, RM_WD = 6.0, 1e-3, 48, 0.01
PPO_ITERS, PPO_LR, PPO_BETA, EVAL_SAMPLES = 60, 1e-4, 0.01, 2
RLOO_LR_FACTORS = (1.0, 1 / 3, 1 / 10)


def plot_curve(curve: list[dict], peers: list[dict], path: Path) -> Path:
    """Held-out gold and proxy reward against KL to the SFT prior along PPO (the
    over-optimisation curve, Gao et al. 2022), with the RLOO end points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_g, ax_p) = plt.subplots(1, 2, figsize=(10, 4))
    kl = [c["kl"] for c in curve]
    ax_g.plot(kl, [c["gold"] for c in curve], "o-", label="reinforge PPO (every 4 iterations)")
    ax_p.plot(kl, [c["proxy"] for c in curve], "o-", label="reinforge PPO")
    for c in curve[::4]:
        ax_g.annotate(str(c["iteration"]), (c["kl"], c["gold"]), fontsize=7)
    for peer in peers:
        if "gold" in peer and peer["kl"] < 10 * max(kl + [1.0]):
            ax_g.plot([peer["kl"]], [peer["gold"]], "s", label=f"TRL RLOO lr {peer['learning_rate']:g} (end)")
    ax_g.axhline(curve[0]["gold"], color="grey", ls=":", label="SFT prior")
    ax_g.set(xlabel="KL(pi || pi_SFT) per sequence, nats", ylabel="held-out gold reward", title="gold vs KL")
    ax_p.set(xlabel="KL(pi || pi_SFT) per sequence, nats", ylabel="reward-model score (proxy)", title="proxy vs KL")
    ax_g.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def gold_max() -> float:
    from rlhf.gold import MAX_SCORE

    return MAX_SCORE


def run_rloo(work: Path, task, train_prompts: list[str], pcfg, budget_s: float, quick: bool,
             learning_rate: float) -> dict:
    """TRL's RLOOTrainer for about ``budget_s`` seconds; the same reward model and penalty."""
    try:
        import datasets
        from transformers import TrainerCallback
        from trl import RLOOConfig, RLOOTrainer

        from rlhf.models import (
            load_policy,
            load_reward_model,
            quiet_trainer,
            reward_offset,
            trainer_device_args,
        )
        from rlhf.reward import score_texts
    except ImportError as exc:
        return {"error": f"TRL RLOOTrainer unavailable: {exc}"}
    policy, tok = load_policy(work / "sft")
    rm, _ = load_reward_model(work / "reward")
    offset = reward_offset(work / "reward")  # 0 when the centring offset is folded into the weights
    eos = tok.eos_token_id

    def reward_fn(prompts, completions, completion_ids, **kw):
        texts = [p + c for p, c in zip(prompts, task.completion_texts(tok, completion_ids))]
        s = score_texts(rm, tok, texts, offset)
        return [float(x) - pcfg.missing_eos_penalty * (not c or c[-1] != eos) for x, c in zip(s, completion_ids)]

    class Budget(TrainerCallback):
        def __init__(self):
            self.t0 = None

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = self.t0 or time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if time.perf_counter() - self.t0 > budget_s:
                control.should_training_stop = True

    gens = 4
    cfg = RLOOConfig(output_dir=str(work / "rloo-trainer"), per_device_train_batch_size=pcfg.batch_size,
                     num_generations=gens, max_completion_length=pcfg.max_new_tokens, temperature=1.0, top_k=0,
                     top_p=1.0, beta=pcfg.kl_coef, learning_rate=learning_rate, max_steps=10_000,
                     logging_steps=1, seed=0, **trainer_device_args("auto"))
    ds = datasets.Dataset.from_dict({"prompt": train_prompts * 50})
    try:
        budget = Budget()
        trainer = RLOOTrainer(model=policy, reward_funcs=reward_fn, args=cfg, train_dataset=ds, processing_class=tok,
                              callbacks=[budget])
        quiet_trainer(trainer)
        t0 = time.perf_counter()
        res = trainer.train()
        wall = time.perf_counter() - t0
    except Exception as exc:  # report, do not fake a number
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"error": f"RLOOTrainer failed here: {type(exc).__name__}: {first}"}
    out = work / f"rloo-lr{learning_rate:g}"
    trainer.model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    steps = max(1, res.global_step)
    return {"model_dir": str(out), "steps": res.global_step, "wall_s": wall, "iteration_s": wall / steps,
            "completions_per_step": pcfg.batch_size}


if __name__ == "__main__":
    main()
