"""Sequence Tutor benchmark: gold (= the music-theory rule reward) against KL to the SFT prior
for KL-regularised Q-, Psi- and G-learning, PPO on the same rule reward, and PPO on a
learned reward model, side by side on the melody task.

Every system runs through the CLI's own entry point (``reinforge rlhf ...`` in this process),
each in its own run dir under ``--out``:

1. ``rlhf sft`` on the Essen ``kinder0`` melodies (the stage's tiny GPT-2).
2. ``rlhf seqtutor`` with ``seqtutor.algo`` q, psi and g (rule reward = rlhf/gold.py, per-token
   differences on prefixes), the same KL coefficient beta.
3. ``rlhf ppo --reward-fn gold``: the same objective (rule reward - beta KL) through PPO.
4. ``rlhf reward`` (simulated raters labelling SFT samples by the gold) then ``rlhf ppo
   --reward RUN``: the usual RLHF chain, whose reward model only approximates the gold.

Every RL system samples the same number of completions (iterations x batch size) with the
same max length; every final policy is then evaluated the same way (``rlhf.evaluate.
evaluate_policy``: held-out prompts, 2 samples each at temperature 1, held-out gold and
KL(pi || pi_SFT) per sequence). Table + JSON (write_results) + a gold-vs-KL scatter with each
system's evaluation curve.

    python benchmarks/bench_rlhf_seqtutor.py [--quick] [--out DIR] [--sft RUN]
    (or: reinforge bench rlhf-seqtutor)
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

# measured choices (see the README's "Sequence Tutor" subsection for the numbers)
SFT_STEPS = 400  # tiny GPT-2, 2 layers, width 64, on kinder0
ITERS, BATCH, MAX_NEW = 40, 16, 64  # every RL system: 640 sampled completions of at most 64 tokens
BETA = 0.1  # kl_coef of every system (Sequence Tutor's beta = the paper's c; PPO's beta)
ST_LR, PPO_LR = 1e-3, 1e-4
EVAL_SAMPLES = 2


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], [
        (("--sft",), {"default": None, "help": "reuse this SFT run dir instead of training one"}),
    ])
    from rlhf.evaluate import evaluate_policy
    from rlhf.models import load_tokenizer
    from rlhf.tasks import MelodyTask, RLHFDataConfig

    quick = args.quick
    work = Path(args.out).resolve() / "rlhf-seqtutor-work"
    work.mkdir(parents=True, exist_ok=True)
    data = ["--set", "data.melody.max_tokens=96"] + (["--set", "data.melody.max_songs=40"] if quick else [])
    iters, batch, max_new = (4, 8, 32) if quick else (ITERS, BATCH, MAX_NEW)
    info: dict = {"quick": quick, "iterations": iters, "batch_size": batch, "max_new_tokens": max_new,
                  "kl_coef": BETA}

    sft = Path(args.sft) if args.sft else work / "sft"
    with Timer() as t:
        if not (sft / "result.json").is_file():
            stage(["sft", "--run-dir", str(sft), *data, *sets("sft", max_steps=20 if quick else SFT_STEPS,
                                                                n_embd=64, logging_steps=20)])
    info["sft_s"] = t.seconds
    loop = {"iterations": iters, "batch_size": batch, "max_new_tokens": max_new, "eval_every": max(1, iters // 4),
            "eval_prompts": 32, "checkpoint_every": 10_000}
    systems: dict[str, list[str]] = {
        f"Sequence Tutor {algo}": ["seqtutor", *sets("seqtutor", **loop, algo=algo, kl_coef=BETA, learning_rate=ST_LR,
                                                    minibatch_size=batch)]
        for algo in ("q", "psi", "g")
    }
    ppo = sets("ppo", **loop, kl_coef=BETA, learning_rate=PPO_LR, minibatch_size=batch // 2)
    systems["PPO, rule reward (--reward-fn gold)"] = ["ppo", "--reward-fn", "gold", *ppo]
    reward_dir = work / "reward"
    with Timer() as t:
        if not (reward_dir / "result.json").is_file():
            stage(["reward", "--sft", str(sft), "--run-dir", str(reward_dir), *data,
                   *sets("raters", completions_per_prompt=4 if quick else 6, max_new_tokens=max_new),
                   *sets("reward", epochs=1 if quick else 3)])
    info["reward_s"] = t.seconds
    info["reward"] = json.loads((reward_dir / "result.json").read_text())
    systems["PPO, learned reward model"] = ["ppo", "--reward", str(reward_dir), *ppo]

    task = MelodyTask(RLHFDataConfig(task="melody", melody=_melody(quick)), seed=0, log=None)
    held = task.prompt_sets(load_tokenizer(sft / "model"))[1]
    rows, curves = [], {}
    sft_ev = evaluate_policy(sft / "model", held, ref_dir=sft / "model", samples_per_prompt=EVAL_SAMPLES,
                             max_new_tokens=max_new, task=task)
    rows.append({"system": "SFT prior", "gold": sft_ev["gold_reward"], "gold_sem": sft_ev["gold_reward_sem"],
                 "kl": 0.0, "eos": sft_ev["eos_fraction"]})
    for i, (name, argv) in enumerate(systems.items()):
        out = work / f"run{i}"
        with Timer() as t:
            res = stage([argv[0], "--sft", str(sft), "--run-dir", str(out), *data, *argv[1:]])
        ev = evaluate_policy(out / "model", held, ref_dir=sft / "model", samples_per_prompt=EVAL_SAMPLES,
                             max_new_tokens=max_new, task=task)
        rows.append({"system": name, "gold": ev["gold_reward"], "gold_sem": ev["gold_reward_sem"],
                     "kl": ev["kl_to_reference"], "eos": ev["eos_fraction"],
                     "gain": ev["gold_reward"] - sft_ev["gold_reward"], "wall_s": t.seconds,
                     "iteration_s": res.get("iteration_s"), "completions": iters * batch})
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        curves[name] = [(r["eval_kl"], r["eval_gold_reward"]) for r in metrics if "eval_gold_reward" in r]
        print(f"{name}: gold {ev['gold_reward']:.2f} KL {ev['kl_to_reference']:.1f} ({t.seconds:.0f} s)", flush=True)
    info["curves"] = curves
    print_table(rows, ["system", "gold", "gold_sem", "kl", "gain", "eos", "iteration_s", "wall_s", "completions"],
                title=f"Gold (= rule reward, max 10.5) vs KL to the SFT prior, {len(held)} held-out prompts "
                      f"x {EVAL_SAMPLES}, beta {BETA}")
    path = write_results("rlhf_seqtutor", rows, args.out, details=info)
    print(f"results: {path}\nplot: {plot(rows, curves, Path(args.out) / 'rlhf-seqtutor-gold-vs-kl.png')}")


def _melody(quick: bool):
    from rlhf.melody import MelodyDataConfig

    return MelodyDataConfig(max_tokens=96, max_songs=40 if quick else None)


def plot(rows: list[dict], curves: dict[str, list], path: Path) -> Path:
    """Final held-out gold vs KL of every system (markers), with its evaluation curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="tight")
    ax.grid(alpha=0.3)
    for r in rows:
        pts = curves.get(r["system"], [])
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], ":", alpha=0.5)[0] if pts else None
        ax.errorbar([r["kl"]], [r["gold"]], yerr=[r["gold_sem"]], fmt="o", ms=8, label=r["system"],
                    color=line.get_color() if line is not None else "grey")
    ax.legend(fontsize=7)
    ax.set(xlabel="KL(pi || pi_SFT) per sequence, nats (held-out)", ylabel="held-out gold = rule reward",
           title="Sequence Tutor vs PPO: gold against KL (dotted: evaluations along training)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
