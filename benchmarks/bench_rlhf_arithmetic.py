"""RLHF arithmetic benchmark: our GRPO and PPO vs TRL's GRPOTrainer on exact-match accuracy,
for the same wall-clock budget each, in one run.

1. SFT of a tiny GPT-2 on the arithmetic task (rlhf/arithmetic.py: 2-digit sums whose SFT
   answers are wrong at ``error_rate``), so held-out accuracy starts well below 100%.
2. Held-out exact-match accuracy of the SFT model: ``evaluate_policy`` on the validation
   prompts, sampling at temperature 1 (its ``gold_reward`` is the accuracy).
3. Our GRPO (``GRPOLearner``) and our PPO (``PPOLearner``) with the exact-match reward, each
   for ``--minutes`` of training wall-clock; the policy is saved at regular points of that
   clock and every point is evaluated afterwards with the same ``evaluate_policy``.
4. TRL's ``GRPOTrainer`` on the same SFT model dir, training prompts (conversational, plus the
   ``answer`` column), reward function (``rlhf.arithmetic.exact_match``), G, prompts per
   step, minibatch, max completion length, temperature 1, learning rate, clip and beta, on
   CPU, for the same budget (a callback stops it at the deadline and saves the same points).
5. A side-by-side table and the ratio ours / TRL of accuracy points gained per minute; JSON
   and a plot (accuracy vs wall-clock) via write_results.

The clock of every system counts training only (sampling, scoring, updates, weight pushes):
not model loading, Ray actor start-up, trainer construction or the saves of the evaluation
points, which are measured and reported separately.

    python benchmarks/bench_rlhf_arithmetic.py [--quick] [--minutes M] [--out DIR]
    (or: reinforge bench rlhf-arithmetic)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from _common import Timer, parse_args, print_table, write_results

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("COLUMNS", "120")  # the table's width when the output is a log file

# measured choices for the full benchmark (see the README's RLHF section for the numbers)
TRAIN_SIZE = 4000  # SFT examples
SFT_EPOCHS = 20.0  # the SFT stage default: tiny GPT-2 (2 layers, 128 wide), 4,000 partly wrong sums
MAX_NEW = 8  # answers are at most 3 digits, then <eos>
PROMPTS_PER_STEP, GROUP, MINIBATCH = 8, 8, 32  # 8 prompts x G 8 = 64 completions, 2 gradient steps each
LR, BETA, CLIP = 1e-4, 0.04, 0.2  # our GRPO defaults; PPO and TRL use the same learning rate and beta
EVAL_POINTS = 8  # evaluation points along each budget (plus the start)
EVAL_SAMPLES = 2  # completions per held-out prompt at each evaluation (500 prompts)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], [
        (("--minutes",), {"type": float, "default": None, "help": "training budget per system (default 10, quick 0.25)"}),
    ])

    from cluster.runtime import connect
    from cluster.seeding import seed_everything
    from rlhf.arithmetic import ArithmeticConfig
    from rlhf.evaluate import evaluate_policy
    from rlhf.models import limit_threads, load_policy, quiet_libraries
    from rlhf.sft import SFTStageConfig, train_sft
    from rlhf.tasks import ArithmeticTask, RLHFDataConfig

    quick = args.quick
    budget_s = 60 * (args.minutes if args.minutes is not None else (0.25 if quick else 10.0))
    limit_threads()
    quiet_libraries()
    seed_everything(0)
    work = Path(args.out) / "rlhf-arithmetic-work"
    work.mkdir(parents=True, exist_ok=True)
    # 2-digit sums, 30% wrong SFT answers, 4,000 of them: the data of the measured run (and of
    # the rlhf-arithmetic presets)
    arith = ArithmeticConfig(train_size=TRAIN_SIZE)
    task = ArithmeticTask(RLHFDataConfig(task="arithmetic", arithmetic=arith), seed=0, log=print)
    info: dict = {"quick": quick, "budget_s": budget_s, "arithmetic": vars(arith)}

    # 1. SFT
    sft_cfg = SFTStageConfig(epochs=SFT_EPOCHS, max_steps=30 if quick else -1)
    with Timer() as t:
        sft = train_sft(sft_cfg, task, work / "sft")
    info["sft"] = {**{k: v for k, v in sft.items() if isinstance(v, (int, float, str))}, "seconds": t.seconds,
                   "epochs": SFT_EPOCHS, "max_steps": sft_cfg.max_steps}
    print(f"SFT: {t.seconds:.0f} s, eval loss {sft.get('eval_loss', float('nan')):.3f}", flush=True)
    sft_dir = work / "sft"

    # 2. held-out accuracy of the SFT model
    _, tok = load_policy(sft_dir)
    train_prompts, held = task.prompt_sets(tok)  # PromptSets: chat-rendered prompts + the answer column
    if quick:
        held = held.take(range(100))
    samples = 1 if quick else EVAL_SAMPLES

    def accuracy(model_dir: Path) -> dict:
        ev = evaluate_policy(model_dir, held, ref_dir=sft_dir, samples_per_prompt=samples, max_new_tokens=MAX_NEW,
                             seed=0, task=task)
        return {"accuracy": ev["gold_reward"], "sem": ev["gold_reward_sem"], "kl": ev["kl_to_reference"]}

    start = accuracy(sft_dir)
    info["sft"].update(start)
    print(f"SFT held-out exact match {start['accuracy']:.3f} +- {start['sem']:.3f} "
          f"({len(held)} prompts x {samples})", flush=True)

    # 3. our GRPO and PPO, the same reward, the same budget
    connect(num_cpus=2)
    systems = {}
    for name in ("GRPO", "PPO"):
        systems[f"reinforge {name}"] = run_ours(name, work, sft_dir, task, train_prompts, budget_s, quick)
    # 4. TRL GRPOTrainer
    systems["TRL GRPOTrainer"] = run_trl(work, sft_dir, arith, budget_s, quick)

    rows, curves = [], {}
    for name, res in systems.items():
        if "error" in res:
            rows.append({"system": name, "note": res["error"][:80]})
            print(f"{name}: {res['error']}", flush=True)
            continue
        curve = [{"train_s": 0.0, "iterations": 0, **start}]
        for p in res["points"]:
            curve.append({"train_s": p["train_s"], "iterations": p["iterations"], **accuracy(Path(p["dir"]))})
        curves[name] = curve
        end = curve[-1]
        gain = 100 * (end["accuracy"] - start["accuracy"])
        minutes = end["train_s"] / 60
        rows.append({"system": name, "wall_s": end["train_s"], "setup_s": res["setup_s"],
                     "iterations": end["iterations"], "start -> end": f"{start['accuracy']:.3f} -> {end['accuracy']:.3f}",
                     "accuracy_start": start["accuracy"], "accuracy_end": end["accuracy"], "sem_end": end["sem"],
                     "kl_end": end["kl"], "points": gain, "points/min": gain / minutes if minutes > 0 else None,
                     "note": res.get("note", "")})
        print(f"{name}: accuracy {start['accuracy']:.3f} -> {end['accuracy']:.3f} in {end['train_s']:.0f} s "
              f"({end['iterations']} iterations)", flush=True)
    by = {r["system"]: r for r in rows}
    trl_rate = by.get("TRL GRPOTrainer", {}).get("points/min")
    ratios = {}
    for ours in ("reinforge GRPO", "reinforge PPO"):
        rate = by.get(ours, {}).get("points/min")
        # a ratio only means something when TRL gained; otherwise report the rates alone
        ratios[ours] = rate / trl_rate if rate is not None and trl_rate is not None and trl_rate > 0 else None
    info["ratios_points_per_min_vs_trl"] = ratios
    info["curves"] = curves
    info["settings"] = {"prompts_per_step": PROMPTS_PER_STEP, "group_size": GROUP, "minibatch": MINIBATCH,
                        "learning_rate": LR, "beta": BETA, "clip": CLIP, "max_new_tokens": MAX_NEW,
                        "eval_prompts": len(held), "eval_samples_per_prompt": samples}
    for name, curve in curves.items():
        print_table(curve, ["train_s", "iterations", "accuracy", "sem", "kl"], title=f"{name}: held-out accuracy")
    print_table(rows, ["system", "wall_s", "setup_s", "iterations", "start -> end", "points", "points/min", "kl_end"],
                title=f"arithmetic: held-out exact match ({len(held)} prompts x {samples}, temperature 1), "
                      f"{budget_s / 60:g} min each")
    for r in rows:
        if r.get("note"):
            print(f"{r['system']}: {r['note']}")
    for ours, r in ratios.items():
        print(f"{ours} / TRL GRPOTrainer, accuracy points gained per minute: "
              + (f"{r:.2f}x" if r is not None else f"n/a (TRL {trl_rate if trl_rate is None else f'{trl_rate:+.2f}'} points/min)"))
    path = write_results("rlhf_arithmetic", rows, args.out, details=info)
    print(f"results: {path}\nplot: {plot_curves(curves, Path(args.out) / 'rlhf-arithmetic-accuracy.png')}")


def run_ours(algo: str, work: Path, sft_dir: Path, task, train, budget_s: float, quick: bool) -> dict:
    """Our learner's iterations until ``budget_s`` seconds of training; the policy saved at
    EVAL_POINTS evenly spaced points of that clock (the batch choice is policy_loop's)."""
    from rlhf.models import load_policy
    from rlhf.rewards import GOLD, Reward

    reward = Reward(fn=lambda prompts, completions, **cols: task.gold(prompts, completions, cols), fn_name=GOLD)
    t0 = time.perf_counter()
    policy, tok = load_policy(sft_dir)
    if algo == "GRPO":
        from rlhf.grpo import GRPOLearner, GRPOStageConfig

        cfg = GRPOStageConfig(batch_size=PROMPTS_PER_STEP, group_size=GROUP, minibatch_size=MINIBATCH,
                              max_new_tokens=MAX_NEW, learning_rate=LR, kl_coef=BETA, clip_range=CLIP)
        learner = GRPOLearner(cfg, policy, tok, None, 0.0, reward=reward, task=task, seed=0)
        batch = cfg.batch_size
    else:
        from rlhf.ppo import PPOLearner, PPOStageConfig
        from rlhf.rewards import critic_from_sft

        # same completions per iteration as GRPO (8 x 8), our default 4 PPO epochs over them
        cfg = PPOStageConfig(batch_size=PROMPTS_PER_STEP * GROUP, minibatch_size=MINIBATCH, max_new_tokens=MAX_NEW,
                             learning_rate=LR, kl_coef=BETA, clip_range=CLIP)
        learner = PPOLearner(cfg, policy, critic_from_sft(sft_dir, tok), tok, None, 0.0, reward=reward, task=task,
                             seed=0)
        batch = cfg.batch_size
    # start-up of the Ray rollout and scoring actors (their first call waits for the worker
    # processes and their imports): setup, like TRL's trainer construction, not training
    warm = train.take([0])
    comps = learner.group.generate(warm.prompts, MAX_NEW)
    learner.group.score([tok(warm.prompts[0], add_special_tokens=False)["input_ids"]], comps)
    setup_s = time.perf_counter() - t0
    points, train_s, next_point = [], 0.0, budget_s / EVAL_POINTS
    try:
        while train_s < budget_s:
            idx = learner.rng.choice(len(train), size=batch, replace=len(train) < batch)
            t = time.perf_counter()
            m = learner.iteration(train.take(idx))
            train_s += time.perf_counter() - t
            if train_s >= next_point or train_s >= budget_s:
                d = work / f"{algo.lower()}-at-{len(points) + 1}"
                learner.policy.save_pretrained(str(d))
                tok.save_pretrained(str(d))
                points.append({"train_s": train_s, "iterations": learner.iteration_done, "dir": str(d)})
                print(f"{algo} {learner.iteration_done} it, {train_s:.0f} s: train reward {m['proxy_reward']:.3f}, "
                      f"kl {m['kl']:.2f}", flush=True)
                next_point += budget_s / EVAL_POINTS
    finally:
        learner.close()
    return {"points": points, "setup_s": setup_s}


def run_trl(work: Path, sft_dir: Path, arith, budget_s: float, quick: bool) -> dict:
    """TRL's GRPOTrainer for ``budget_s`` seconds of training, the same settings as ours where
    TRL has them (the rest at TRL's defaults)."""
    try:
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        from rlhf.arithmetic import exact_match, prompt_dataset
        from rlhf.models import load_policy, quiet_trainer
    except ImportError as exc:
        return {"error": f"TRL GRPOTrainer unavailable: {exc}"}

    points: list[dict] = []

    class Budget(TrainerCallback):
        """Stops training at the deadline; saves the policy at the evaluation points (the
        saves are left out of the clock)."""

        def __init__(self):
            self.t0, self.paused, self.next_point = None, 0.0, budget_s / EVAL_POINTS

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kw):
            train_s = time.perf_counter() - self.t0 - self.paused
            done = train_s >= budget_s
            if train_s >= self.next_point or done:
                t = time.perf_counter()
                d = work / f"trl-grpo-at-{len(points) + 1}"
                model.save_pretrained(str(d))
                tok.save_pretrained(str(d))
                points.append({"train_s": train_s, "iterations": state.global_step, "dir": str(d)})
                logged = [h["reward"] for h in state.log_history if "reward" in h]
                print(f"TRL GRPO {state.global_step} steps, {train_s:.0f} s"
                      + (f": train reward {logged[-1]:.3f}" if logged else ""), flush=True)
                self.next_point += budget_s / EVAL_POINTS
                self.paused += time.perf_counter() - t
            if done:
                control.should_training_stop = True

    t0 = time.perf_counter()
    policy, tok = load_policy(sft_dir)
    ds = prompt_dataset(arith, "train")  # conversational prompts + answer, the prompts our learners sample from
    # per_device_train_batch_size counts completions: 32 per gradient step, a generation of
    # 64 = 8 prompts x G 8 every 2 steps (as ours: 64 completions, minibatches of 32)
    cfg = GRPOConfig(output_dir=str(work / "trl-grpo-trainer"), per_device_train_batch_size=MINIBATCH,
                     steps_per_generation=PROMPTS_PER_STEP * GROUP // MINIBATCH, num_generations=GROUP,
                     max_completion_length=MAX_NEW, temperature=1.0, learning_rate=LR, beta=BETA, epsilon=CLIP,
                     disable_dropout=True,  # ours samples and trains without dropout too
                     max_steps=100_000, num_train_epochs=1000, logging_steps=10, seed=0, use_cpu=True, bf16=False,
                     fp16=False, report_to="none", disable_tqdm=True, save_strategy="no", dataloader_num_workers=0)
    try:
        trainer = GRPOTrainer(model=policy, reward_funcs=exact_match, args=cfg, train_dataset=ds,
                              processing_class=tok, callbacks=[Budget()])
        quiet_trainer(trainer)
        setup_s = time.perf_counter() - t0
        trainer.train()
    except Exception as exc:  # report, do not fake a number
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"error": f"GRPOTrainer failed here: {type(exc).__name__}: {first}"}
    # its steps are gradient steps: 2 per generation round (ours count generation rounds)
    return {"points": points, "setup_s": setup_s, "note": "steps = gradient steps, 2 per generation"}


def plot_curves(curves: dict[str, list[dict]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        ax.errorbar([c["train_s"] for c in curve], [c["accuracy"] for c in curve], yerr=[c["sem"] for c in curve],
                    fmt="o-", capsize=2, label=name)
    ax.set(xlabel="training wall-clock, s", ylabel="held-out exact match", title="arithmetic: accuracy vs wall-clock")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
