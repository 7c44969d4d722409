"""PBT over RLHF PPO against the best of the same number of fixed-hyperparameter trials, for the
same total compute, on the melody task, scored by the held-out gold reward.

1. ``rlhf sft`` on the Essen ``kinder0`` melodies and ``rlhf reward`` (simulated raters labelling
   SFT samples by the gold): the usual chain; PPO then optimises the learned reward model, which
   only approximates the gold, so a KL coefficient too small over-optimises it and one too large
   stays at the prior.
2. Two sweeps of ``rlhf-ppo`` over the same search space (``ppo.kl_coef`` and
   ``ppo.learning_rate``, log-uniform), the same number of trials, the same iterations per trial
   and the same sampling seed, so both start from the same configurations:
   - ``fifo``: every trial keeps its sampled settings to the end (the fixed trials);
   - ``pbt``: every ``perturbation_interval`` PPO iterations (at a checkpoint) the bottom quarter copies a top trial's
     checkpoint and perturbs its settings (``reinforge tune`` with the ``sweep-rlhf-ppo-pbt``
     recipe), synchronously (``sweep.synch``: the whole population is compared at each
     perturbation; asynchronous PBT on a population this small can go without an exploit).
   Each trial evaluates its policy every ``eval_every`` iterations on the held-out prompts
   (``eval_gold_reward``, ``eval_kl``); the sweep's result is its best trial's last evaluation.

Prints the table, writes JSON (write_results) and a plot of every trial's held-out gold over
iterations, one panel per sweep.

    python benchmarks/bench_rlhf_pbt.py [--quick] [--out DIR] [--sft RUN --reward RUN]
    (or: reinforge bench rlhf-pbt)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from _common import Timer, parse_args, print_table, sets, write_results
from _common import rlhf_stage as stage

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("COLUMNS", "120")

SFT_STEPS = 400  # tiny GPT-2, 2 layers, width 64, on kinder0 (as bench_rlhf_seqtutor)
TRIALS, ITERS, BATCH, MAX_NEW = 4, 32, 16, 64  # per trial: 512 sampled completions of <= 64 tokens
EVAL_EVERY, PERTURB = 4, 8  # PBT looks at the population every 8 PPO iterations (every 2nd checkpoint)
SEARCH = {"ppo.kl_coef": "loguniform(0.003,0.3)", "ppo.learning_rate": "loguniform(1e-5,3e-4)"}


def sweep(name: str, scheduler: str, out: Path, base: list[str], trials: int, perturb: int) -> dict:
    """One sweep through the same code as ``reinforge tune``; per trial its evaluation curve."""
    from pipelines import tune as T

    flags = {"storage_path": str(out), "name": name, "scheduler": scheduler, "num_samples": trials,
             "metric": "eval_gold_reward", "mode": "max", "cpus_per_trial": 0.5,
             "perturbation_interval": perturb, "seed": 0, "synch": scheduler == "pbt"}
    searches = [f"{k}={v}" for k, v in SEARCH.items()]
    plan = T.plan_sweep(T.sweep_from_sources("rlhf-ppo", None, flags, searches, base))
    with Timer() as t:
        results = T.run_sweep(plan, verbose=0)
    summary = T.report(plan, results)
    trials_out = []
    for r in results:
        run = Path(r.path) / "run"
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        evals = [(x["step"], x["eval_gold_reward"], x["eval_kl"]) for x in rows if "eval_kl" in x]
        trials_out.append({"trial": Path(r.path).name, "start": dict(r.config or {}), "evals": evals,
                           "restarts": len(list(run.glob("history/config-*.yaml"))),
                           "error": str(r.error).splitlines()[-1] if r.error else None})
    exploits = 0
    log = plan.experiment_dir / "pbt_global.txt"
    if log.is_file():
        exploits = sum(1 for line in log.read_text().splitlines() if line.strip())
    return {"scheduler": scheduler, "wall_s": t.seconds, "trials": trials_out, "exploits": exploits,
            "plot": summary.get("plot"), "experiment_dir": str(plan.experiment_dir)}


def best_of(result: dict) -> dict:
    """The trial whose last evaluation has the highest held-out gold."""
    done = [t for t in result["trials"] if t["evals"] and not t["error"]]
    best = max(done, key=lambda t: t["evals"][-1][1])
    return {"trial": best["trial"], "gold": best["evals"][-1][1], "kl": best["evals"][-1][2],
            "peak_gold": max(e[1] for e in best["evals"])}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], [
        (("--sft",), {"default": None, "help": "reuse this SFT run dir instead of training one"}),
        (("--reward",), {"default": None, "help": "reuse this reward-model run dir instead of training one"}),
        (("--trials",), {"type": int, "default": None, "help": f"trials per sweep (default {TRIALS})"}),
    ])
    quick = args.quick
    out = Path(args.out).resolve() / "rlhf-pbt-work"
    out.mkdir(parents=True, exist_ok=True)
    data = ["--set", "data.melody.max_tokens=96"] + (["--set", "data.melody.max_songs=40"] if quick else [])
    trials = args.trials or (2 if quick else TRIALS)
    iters, batch, max_new, every, perturb = (8, 8, 32, 2, 4) if quick else (ITERS, BATCH, MAX_NEW, EVAL_EVERY, PERTURB)
    info: dict = {"quick": quick, "trials": trials, "iterations": iters, "batch_size": batch,
                  "max_new_tokens": max_new, "eval_every": every, "perturbation_interval": perturb, "search": SEARCH}

    sft = Path(args.sft) if args.sft else out / "sft"
    reward = Path(args.reward) if args.reward else out / "reward"
    with Timer() as t:
        if not (sft / "result.json").is_file():
            stage(["sft", "--run-dir", str(sft), *data, *sets("sft", max_steps=20 if quick else SFT_STEPS,
                                                                n_embd=64, logging_steps=20)])
        if not (reward / "result.json").is_file():
            stage(["reward", "--sft", str(sft), "--run-dir", str(reward), *data,
                   *sets("raters", completions_per_prompt=4 if quick else 6, max_new_tokens=max_new),
                   *sets("reward", epochs=1 if quick else 3)])
    info["sft_and_reward_s"] = t.seconds
    info["reward"] = json.loads((reward / "result.json").read_text())

    # both sweeps: the same trials of the same size; 2 trials run at once on 2 cores (0.5 CPU for
    # the driver, 0.25 for each of the rollout worker and the scorer)
    base = [f"inputs.sft={sft}", f"inputs.reward={reward}", "run.tensorboard=false",
            *[f"ppo.{k}={v}" for k, v in {"iterations": iters, "batch_size": batch, "minibatch_size": batch // 2,
                                          "max_new_tokens": max_new, "eval_every": every, "eval_prompts": 32,
                                          "checkpoint_every": every, "actor_cpus": 0.25}.items()],
            "data.melody.max_tokens=96", *(["data.melody.max_songs=40"] if quick else [])]
    results = {s: sweep(f"rlhf-ppo-{s}", s, out / "sweeps", base, trials, perturb) for s in ("fifo", "pbt")}

    rows = []
    for s, label in (("fifo", f"best of {trials} fixed trials"), ("pbt", f"PBT, {trials} trials")):
        b = best_of(results[s])
        rows.append({"sweep": label, "gold": b["gold"], "kl": b["kl"], "peak_gold": b["peak_gold"],
                     "exploits": results[s]["exploits"], "wall_s": results[s]["wall_s"],
                     "completions": trials * iters * batch})
    sft_gold = next((e[1] for t in results["fifo"]["trials"] for e in t["evals"] if e[0] == 0), None)
    info["sft_gold"] = sft_gold
    print_table(rows, ["sweep", "gold", "kl", "peak_gold", "exploits", "wall_s", "completions"],
                title=f"RLHF PPO on the melody task: held-out gold of the best trial's last evaluation "
                      f"(SFT prior {sft_gold if sft_gold is None else round(sft_gold, 2)}), same compute")
    path = write_results("rlhf_pbt", rows, args.out, details={**info, "sweeps": results})
    print(f"results: {path}\nplot: {plot(results, sft_gold, Path(args.out) / 'rlhf-pbt-gold.png')}")


def plot(results: dict, sft_gold: float | None, path: Path) -> Path:
    """Held-out gold over PPO iterations, every trial, one panel per sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True, layout="tight")
    for ax, (s, res) in zip(axes, results.items()):
        for t in res["trials"]:
            ev = t["evals"]
            kl = t["start"].get("ppo.kl_coef")
            ax.plot([e[0] for e in ev], [e[1] for e in ev], marker=".",
                    label=f"start beta {kl:.3g}" if isinstance(kl, float) else t["trial"])
        if sft_gold is not None:
            ax.axhline(sft_gold, color="grey", ls=":", label="SFT prior")
        ax.grid(alpha=0.3)
        ax.set(xlabel="PPO iteration", title=f"{s}: {res['exploits']} exploits" if s == "pbt" else "fixed settings")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("held-out gold reward")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
