"""RLHF pluralistic-alignment benchmark: one Bradley-Terry reward model vs a VPL reward model
(rlhf/vpl.py) on the divergent-raters melody preferences, per rater kind, against the
Bayes-optimal accuracy of a predictor that knows who rated.

1. SFT on the Essen melodies (--files, as the divergent-raters experiment).
2. Simulated raters of two kinds (raters.profiles=[tonal, melodic], one kind per rating round
   of K = 12 completions, all 66 pairs labelled) on train and held-out melodies' prompts, as
   ``reinforge rlhf reward --set "raters.profiles=[tonal,melodic]"`` does.
3. reward.model_type=bt and reward.model_type=vpl on the same pairs; held-out accuracy per kind
   (VPL: z inferred from ``context_pairs`` other held-out pairs of the same rater). Next to them,
   "BT, one kind": a Bradley-Terry model trained on that kind's pairs only, which is told who
   rated: what this reward network can learn of a kind's rules, the ceiling VPL can reach with
   it (the Bayes-optimal column also knows the rules exactly).
4. (--ppo-iterations N > 0) PPO from the SFT model on the VPL reward conditioned on a tonal
   rater's z and on a melodic rater's z (``model/conditioned/<kind>``); each policy's held-out
   score under each kind's rules.

    python benchmarks/bench_rlhf_vpl.py [--quick] [--reuse] [--pairs-per-prompt N] [--sft-layers L] [--epochs E]
        [--kl-weight B] [--context-pairs C] [--ppo-iterations N] [--out DIR]   (or: reinforge bench rlhf-vpl)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from _common import Timer, parse_args, print_table, write_results

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_FILES = "kinder0,ballad40,boehme20,altdeu10"  # the divergent-raters experiment's melodies
KINDS = ("tonal", "melodic")
K, TEMPERATURE = 12, 0.5
RM_EPOCHS, RM_LR, RM_TEXTS, RM_WD = 6.0, 1e-3, 48, 0.01
VPL_LATENT, VPL_CONTEXT, VPL_KL, VPL_WARMUP = 8, 8, 0.1, 0.5


def kind_scores(ev: dict) -> dict[str, float]:
    """Each rater kind's mean score of a policy's samples from the per-rule gold means (a kind's
    score is a weighted sum of the same rules)."""
    from rlhf.gold import RATER_PROFILES

    return {k: sum(w * ev[f"gold/{rule}"] for rule, w in RATER_PROFILES[k].items()) for k in KINDS}


def linear_heads(reward_dir: Path, train, held, epochs: int = 300) -> dict[str, dict[str, float]]:
    """The ceiling of any reward linear in the BT model's features h (the last-token state its
    score head reads; VPL's r(x, y; z) = (w + A z) . h is one for each z): with the transformer
    frozen, a Bradley-Terry head fitted on every train pair ("mixed") and one fitted on each
    kind's pairs only ("told"), both scored on each kind's held-out pairs. Full-batch Adam on
    standardised h with a little L2 (1e-3)."""
    import numpy as np
    import torch

    from rlhf.models import load_reward_model
    from rlhf.reward import bradley_terry_loss, bt_accuracy
    from rlhf.vpl import last_token_features, token_ids

    lm, tok = load_reward_model(reward_dir, "--reward")
    lm.eval()

    def feats(ds):
        ids, fc, fr = token_ids(tok, ds)
        texts = list(ids)
        with torch.no_grad():
            h = last_token_features(lm, tok, ids, texts, 256)
        row = {t: n for n, t in enumerate(texts)}
        return h, torch.tensor([row[t] for t in fc]), torch.tensor([row[t] for t in fr]), np.array(ds["rater"])

    (htr, ctr, rtr, wtr), (hho, cho, rho, who) = feats(train), feats(held)
    mean, std = htr.mean(0), htr.std(0) + 1e-4
    htr, hho = (htr - mean) / std, (hho - mean) / std

    def fit(mask):
        torch.manual_seed(0)
        w = torch.zeros(htr.shape[1], requires_grad=True)
        opt = torch.optim.Adam([w], lr=1e-2)
        for _ in range(epochs):
            s = htr @ w
            loss = bradley_terry_loss(s[ctr[mask]], s[rtr[mask]]) + 1e-3 * w.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return w.detach()

    def accuracy(w, kind):
        s, m = (hho @ w).numpy(), who == kind
        return bt_accuracy(s[cho.numpy()[m]], s[rho.numpy()[m]])

    mixed = fit(torch.ones(len(ctr), dtype=torch.bool))
    return {k: {"mixed": accuracy(mixed, k), "told": accuracy(fit(torch.from_numpy(wtr == k)), k)} for k in KINDS}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], [
        (("--files",), {"default": BENCH_FILES, "help": "comma-separated Essen files"}),
        (("--train-prompts",), {"type": int, "default": None, "help": "cap on train prompts (default all)"}),
        (("--pairs-per-prompt",), {"type": int, "default": 1,
                                   "help": "rating rounds per prompt, raters.pairs_per_prompt (default 1)"}),
        (("--sft-layers",), {"type": int, "default": 2, "help": "transformer layers of the SFT (and so reward) model"}),
        (("--epochs",), {"type": float, "default": None, "help": f"reward-model epochs (default {RM_EPOCHS})"}),
        (("--kl-weight",), {"type": float, "default": VPL_KL, "help": f"VPL reward.kl_weight (default {VPL_KL})"}),
        (("--context-pairs",), {"type": int, "default": VPL_CONTEXT,
                                "help": f"VPL reward.context_pairs (default {VPL_CONTEXT})"}),
        (("--ppo-iterations",), {"type": int, "default": 0, "help": "PPO iterations per conditioned reward (0: none)"}),
        (("--reuse",), {"action": "store_true", "help": "reuse the SFT model and preference sets of an earlier run"}),
    ])

    import datasets

    from cluster.seeding import seed_everything
    from rlhf.melody import MelodyDataConfig
    from rlhf.models import limit_threads, load_policy, quiet_libraries
    from rlhf.raters import RaterConfig
    from rlhf.reward import RewardStageConfig, train_reward
    from rlhf.sft import SFTStageConfig, train_sft
    from rlhf.tasks import MelodyTask, RLHFDataConfig
    from rlhf.vpl import train_vpl_reward

    bad = [f"--{k.replace('_', '-')} {v}" for k, v, ok in (
        ("pairs_per_prompt", args.pairs_per_prompt, args.pairs_per_prompt >= 1),
        ("sft_layers", args.sft_layers, args.sft_layers >= 1), ("context_pairs", args.context_pairs, args.context_pairs >= 1),
        ("kl_weight", args.kl_weight, args.kl_weight >= 0), ("epochs", args.epochs, args.epochs is None or args.epochs > 0))
        if not ok]
    if bad:  # refused before any training, one line, exit 2
        print(f"bench rlhf-vpl: {', '.join(bad)}: counts must be >= 1, --kl-weight >= 0, --epochs > 0", file=sys.stderr)
        raise SystemExit(2)
    quick, work = args.quick, Path(args.out) / "rlhf-vpl-work"
    for setup in (limit_threads, quiet_libraries, lambda: seed_everything(0)):
        setup()
    work.mkdir(parents=True, exist_ok=True)
    task = MelodyTask(RLHFDataConfig(task="melody", melody=MelodyDataConfig(
        files=args.files.split(","), max_songs=40 if quick else None, max_tokens=96 if quick else 128)), seed=0, log=print)
    info: dict = {"quick": quick, "files": args.files, "pairs_per_prompt": args.pairs_per_prompt,
                  "sft_layers": args.sft_layers, "kl_weight": args.kl_weight, "context_pairs": args.context_pairs}
    max_new = 48 if quick else 112

    if not (args.reuse and (work / "sft" / "reinforge.json").is_file()):
        with Timer() as t:
            sft = train_sft(SFTStageConfig(max_steps=20 if quick else -1, epochs=20, n_embd=64 if quick else 128,
                                           n_layer=args.sft_layers),
                            task, work / "sft")
        info["sft"] = {**sft, "seconds": t.seconds}
    prefs = work / "preferences"
    if args.reuse and (prefs / "heldout").is_dir():
        train = datasets.load_from_disk(str(prefs / "train"))
        held = datasets.load_from_disk(str(prefs / "heldout"))
    else:
        rcfg = RaterConfig(completions_per_prompt=4 if quick else K, temperature=TEMPERATURE, max_new_tokens=max_new,
                           profiles=list(KINDS), train_prompts=args.train_prompts,
                           pairs_per_prompt=args.pairs_per_prompt)
        with Timer() as t:
            train, held = task.preferences(None, lambda: load_policy(work / "sft"), rcfg, seed=0)
        info["raters_seconds"] = t.seconds
        train.save_to_disk(str(prefs / "train"))
        held.save_to_disk(str(prefs / "heldout"))
    info["pairs"] = {"train": len(train), "heldout": len(held)}
    print(f"{len(train)} train and {len(held)} held-out pairs", flush=True)

    epochs = args.epochs or (1.0 if quick else RM_EPOCHS)
    common = dict(epochs=epochs, learning_rate=RM_LR, texts_per_batch=RM_TEXTS, weight_decay=RM_WD)
    results = {}
    for name, cfg in (("bt", RewardStageConfig(**common)),
                      ("vpl", RewardStageConfig(**common, model_type="vpl", latent_dim=VPL_LATENT,
                                                context_pairs=args.context_pairs, kl_weight=args.kl_weight,
                                                kl_warmup=VPL_WARMUP))):
        with Timer() as t:
            fit = train_vpl_reward if name == "vpl" else train_reward
            results[name] = fit(cfg, work / "sft", train, held, work / f"reward-{name}",
                                temperature=TEMPERATURE, task=task)
        results[name]["seconds"] = t.seconds
        print(f"{name}: {t.seconds:.0f} s, held-out accuracy {results[name]['heldout_accuracy']:.3f}", flush=True)
    bt, vpl = results["bt"], results["vpl"]
    one_kind = {}
    for kind in KINDS:  # told who rated: a Bradley-Terry model per kind, on that kind's pairs only
        with Timer() as t:
            fit = train_reward(RewardStageConfig(**common), work / "sft", train.filter(lambda x, k=kind: x["rater"] == k),
                               held.filter(lambda x, k=kind: x["rater"] == k), work / f"reward-bt-{kind}",
                               temperature=TEMPERATURE, task=task)
        one_kind[kind] = {**fit, "seconds": t.seconds}
        print(f"bt on {kind} pairs only: {t.seconds:.0f} s, held-out accuracy {fit['heldout_accuracy']:.3f}", flush=True)
    rows = []
    for kind in (*KINDS, "all"):
        bayes = bt["bayes_optimal_accuracy"] if kind == "all" else bt[f"rater_{kind}/bayes_optimal_accuracy"]
        bt_acc = bt["heldout_accuracy"] if kind == "all" else bt[f"rater_{kind}/heldout_accuracy"]
        v_acc = vpl["vpl_accuracy"] if kind == "all" else vpl[f"vpl_accuracy_{kind}"]
        pairs = bt["heldout_pairs"] if kind == "all" else bt[f"rater_{kind}/pairs"]
        rows.append({"raters": kind, "pairs": pairs, "BT": bt_acc, "VPL": v_acc, "VPL z=0": (
            vpl["heldout_accuracy"] if kind == "all" else vpl[f"rater_{kind}/heldout_accuracy"]),
            "BT, one kind": (one_kind[kind]["heldout_accuracy"] if kind != "all" else float(
                sum(one_kind[k]["heldout_accuracy"] * one_kind[k]["heldout_pairs"] for k in KINDS)
                / sum(one_kind[k]["heldout_pairs"] for k in KINDS))),
            "Bayes-optimal": bayes, "BT gap (pts)": 100 * (bayes - bt_acc), "VPL gap (pts)": 100 * (bayes - v_acc)})
    print_table(rows, ["raters", "pairs", "BT", "VPL", "VPL z=0", "BT, one kind", "Bayes-optimal", "BT gap (pts)",
                       "VPL gap (pts)"],
                title=f"Held-out pairwise accuracy per rater kind (VPL: z from {args.context_pairs} of the rater's pairs)")

    with Timer() as t:
        heads = linear_heads(work / "reward-bt", train, held)
    head_rows = [{"raters": k, "BT": rows[i]["BT"], "linear in h, mixed": heads[k]["mixed"],
                  "linear in h, told": heads[k]["told"], "BT, one kind": rows[i]["BT, one kind"]}
                 for i, k in enumerate(KINDS)]
    print_table(head_rows, ["raters", "BT", "linear in h, mixed", "linear in h, told", "BT, one kind"],
                title=f"Heads linear in the BT model's frozen features h ({t.seconds:.0f} s): any z-conditioned "
                      "head of this transformer is one of these")

    ppo_rows = []
    if args.ppo_iterations > 0:
        from cluster.runtime import connect
        from rlhf.evaluate import evaluate_policy
        from rlhf.ppo import PPOStageConfig, train_ppo

        connect(num_cpus=2)
        _, tok = load_policy(work / "sft")
        train_prompts, held_prompts = task.prompt_sets(tok)
        pcfg = PPOStageConfig(iterations=args.ppo_iterations, batch_size=16 if quick else 32,
                              minibatch_size=8 if quick else 16, max_new_tokens=max_new, learning_rate=1e-4,
                              kl_coef=0.01, eval_every=10_000, checkpoint_every=10_000)
        ev = evaluate_policy(work / "sft", held_prompts, work / "sft", None, 2, max_new, task=task)
        ppo_rows.append({"policy": "SFT prior", **{f"{k} score": v for k, v in kind_scores(ev).items()},
                         "gold": ev["gold_reward"], "kl": 0.0})
        for kind in KINDS:
            rdir = work / "reward-vpl" / "conditioned" / kind
            with Timer() as t:
                train_ppo(pcfg, work / "sft", rdir, train_prompts, held_prompts, work / f"ppo-{kind}", seed=0,
                          log=print, task=task)
            ev = evaluate_policy(work / f"ppo-{kind}", held_prompts, work / "sft", rdir, 2, max_new, task=task)
            ppo_rows.append({"policy": f"PPO on r(x, z_{kind})", **{f"{k} score": v for k, v in kind_scores(ev).items()},
                             "gold": ev["gold_reward"], "kl": ev["kl_to_reference"], "seconds": t.seconds})
        print_table(ppo_rows, ["policy", *(f"{k} score" for k in KINDS), "gold", "kl", "seconds"],
                    title=f"PPO ({args.ppo_iterations} iterations) on the VPL reward under each kind's z: "
                          "held-out score by each kind's rules")
    path = write_results("rlhf-vpl", rows, args.out, ppo=ppo_rows, linear_heads=head_rows,
                         details={**info, "bt": bt, "vpl": {k: v for k, v in vpl.items()},
                                  "bt_one_kind": one_kind})
    print(f"wrote {path}")
    print(json.dumps({"pairs": info["pairs"]}))


if __name__ == "__main__":
    main()
