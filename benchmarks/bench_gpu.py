"""GPU check: four short runs on a CUDA GPU in at most 8 minutes of wall-clock, one JSON.

  a. ppo_pong     PPO on Pong (the ``ppo-pong`` preset) with the learner on the GPU and
                  max(1, cores - 2) rollout workers x the preset's envs per worker, for a
                  wall-clock budget: env steps/s and the score reached (mean of the last 100 games).
  b. dqn_learner  the Double DQN learner's updates/s on the GPU: the ``ddqn-pong`` preset's
                  network, optimizer and batch, the learner loop's own steps (replay sample ->
                  device -> q_update -> priorities -> target copy) on a replay memory filled with
                  random Pong-shaped frames; no env, no Ray (the bound the learner puts on DQN).
  c. rlhf_ppo     one RLHF PPO iteration (rollout through the Ray rollout actors, score, update)
                  of a tiny GPT-2 built from a config, toy reward = count of one token.
  d. gen_train    ``reinforge gen train`` WGAN-GP on ring8 with 2 Ray Train workers, one GPU
                  each (NCCL); with only one GPU visible it runs 1 worker on it and says so (two
                  DDP ranks cannot share a GPU over NCCL, and ``gen.use_gpu`` asks one GPU per worker).

Each part runs in a process of its own with its own time budget (a hard limit: past it the
part is interrupted and what it had measured is kept); a part that fails is reported in the
table and the JSON (bench-results/gpu.json) and the others still run.

Without a CUDA GPU it prints one line saying so, writes nothing and exits 0; with
``--require-gpu`` it exits 2 instead. ``--allow-cpu`` (testing only) runs the parts on the CPU,
with CPU_BUDGET_SCALE times the budgets, to check the script apart from the device.

    python benchmarks/bench_gpu.py [--require-gpu] [--only dqn_learner,rlhf_ppo] [--quick]
    # or: reinforge bench gpu [--require-gpu]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, parse_args, print_table, write_results

# seconds per part, hard limits; they sum to 440 s, and each interrupted part gets at most
# GRACE_S more to shut down, so the whole check stays within 8 minutes
BUDGET_S = {"ppo_pong": 230, "dqn_learner": 55, "rlhf_ppo": 60, "gen_train": 95}
QUICK_BUDGET_S = {"ppo_pong": 90, "dqn_learner": 30, "rlhf_ppo": 45, "gen_train": 75}
GRACE_S = 10
CPU_BUDGET_SCALE = 4  # --allow-cpu (testing only)
TITLES = {"ppo_pong": "a. PPO Pong (GPU learner)", "dqn_learner": "b. DDQN learner updates",
          "rlhf_ppo": "c. RLHF PPO iteration", "gen_train": "d. gen train, Ray Train"}


# --- the parts (each runs in its own process: `--part NAME`) --------------------------------
def ppo_pong(device: str, deadline: float, quick: bool, report) -> dict[str, Any]:
    """The ``ppo-pong`` preset through the same driver as ``reinforge rl train``, stopped at the deadline."""
    from bench_ppo import _window

    from cluster.runtime import shutdown
    from pipelines.registry import execute, resolve

    workers = max(1, (os.cpu_count() or 1) - 2)
    stop_at = deadline - 25  # stopping the rollout actors and Ray takes a while
    marks: list[tuple[float, int]] = []
    last: dict[str, Any] = {}

    class OutOfTime(Exception):
        pass

    def on_row(row: dict[str, Any]) -> None:
        marks.append((time.perf_counter(), int(row["env_steps"])))
        last.update(env_steps=int(row["env_steps"]), games=int(row["games"]),
                    episode_return=float(row["episode_return"]),  # "nan" until a game ends
                    env_steps_per_s=float(row["env_steps_per_s"]))
        report(**last, steady_env_steps_per_s=_window(marks)["env_steps_per_s"])
        if time.perf_counter() >= stop_at:
            raise OutOfTime

    with tempfile.TemporaryDirectory() as tmp:
        resolved = resolve(preset="ppo-pong", extra={
            "run": {"device": device, "run_dir": str(Path(tmp) / "run"), "tensorboard": False},
            "rollout": {"num_workers": workers}, "rl": {"checkpoint_every": 0, "eval_episodes": 0}})
        envs = workers * resolved.experiment.rollout.envs_per_worker
        report(workers=workers, envs=envs, batch=envs * resolved.experiment.rl.rollout_length)
        try:
            execute(resolved, listeners=[on_row])
        except OutOfTime:
            pass
        finally:
            shutdown()
    window = _window(marks)
    return {**last, "workers": workers, "envs": envs, "steady_env_steps_per_s": window["env_steps_per_s"],
            "iterations": len(marks)}


def dqn_learner(device: str, deadline: float, quick: bool, report) -> dict[str, Any]:
    """The DQN learner's update steps alone, as ``rl.dqn_learner`` runs them."""
    import copy

    import numpy as np
    import torch

    from cluster.runtime import select_device
    from pipelines import config
    from pipelines.rl_dqn import DQNExperiment
    from rl.dqn import build_q_network, hard_update, q_update
    from rl.dqn_learner import _to_device, net_spec, observation_space
    from rl.envs import make_env
    from rl.replay import ReplayMemory
    from rl.threads import free_cores, learner_threads

    # the preset as `rl train --config ddqn-pong` reads it (without the pipeline registry, whose
    # imports of every pipeline take longer than this part)
    layer = {k: v for k, v in config.load_yaml(config.preset_path("ddqn-pong")).items() if k != "pipeline"}
    exp = config.build(DQNExperiment, [layer])
    cfg, dev = exp.rl, select_device(device)
    space = observation_space(exp.env)  # (4, 84, 84) uint8: from the config, no env
    probe = make_env(exp.env, training=False)
    n_actions = int(probe.action_space.n)
    probe.close()
    torch.manual_seed(0)
    online = build_q_network(space, n_actions, **net_spec(cfg)).to(dev)
    target = copy.deepcopy(online).requires_grad_(False)
    optimizer = torch.optim.Adam(online.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    # a smaller memory than the preset's 1M (7 GB): an update's cost does not depend on its size
    streams = exp.rollout.num_workers * exp.rollout.envs_per_worker
    per_stream = (2_000 if quick else 20_000) // streams
    replay = ReplayMemory(per_stream * streams, streams, space.shape[1:], space.shape[0], space.dtype, cfg.n_step,
                          cfg.gamma, cfg.prioritized, cfg.alpha, seed=0)
    rng = np.random.default_rng(0)
    for s in range(streams):
        first = np.zeros(per_stream, bool)
        first[0] = True
        replay.add(s, rng.integers(0, 256, (per_stream, *space.shape[1:]), dtype=np.uint8),
                   rng.integers(0, n_actions, per_stream), rng.choice([-1.0, 0.0, 1.0], per_stream).astype(np.float32),
                   first, rng.random(per_stream) < 0.001, np.zeros(per_stream, bool))

    def step(updates: int) -> None:  # the inner loop of rl.dqn_learner._train
        batch = replay.sample(cfg.batch_size, 0.4)
        _, td = q_update(online, target, optimizer, _to_device(batch, dev), cfg.double_q, cfg.max_grad_norm)
        replay.update_priorities(batch["indices"], td)  # a no-op without prioritized replay
        if updates % cfg.target_update_every == 0:
            hard_update(target, online)

    # the learner's threads on the CPU: the cores the preset's rollout workers leave it
    cores = free_cores(exp.rollout.num_workers, exp.rollout.cpus_per_worker) if dev.type == "cpu" else None
    with learner_threads(cores):
        for i in range(10):  # warm-up (CUDA context, cuDNN's algorithm choice) outside the timing
            step(i + 1)
        measure_s = min(3.0 if quick else 30.0, max(1.0, deadline - 5 - time.perf_counter()))
        updates, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < measure_s:
            updates += 1
            step(updates)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        threads = torch.get_num_threads()
    secs = time.perf_counter() - t0
    return {"updates": updates, "seconds_timed": secs, "updates_per_s": updates / secs,
            # the env steps/s this learner could keep up with at the preset's replay ratio
            "env_steps_per_s_bound": updates / secs / cfg.replay_ratio, "batch": cfg.batch_size,
            "replay_ratio": cfg.replay_ratio, "torch_threads": threads}


# opening bars in the melody task's token format (rlhf.melody: "<bos> <major> p67 d1 ... |")
MELODY_PROMPTS = ["<bos> <major> p60 d1 p62 d1 p64 d1 p65 d1 |", "<bos> <minor> p57 d0.5 p60 d0.5 p64 d1 p62 d2 |",
                  "<bos> <major> p67 d1 p65 d0.5 p64 d0.5 p62 d2 |", "<bos> <minor> p69 d2 p67 d1 p64 d1 |"]


def rlhf_ppo(device: str, deadline: float, quick: bool, report) -> dict[str, Any]:
    """One PPOLearner iteration on a tiny GPT-2 SFT artifact (built from a config, untrained)."""
    from transformers import AutoModelForSequenceClassification

    from cluster.runtime import connect, select_device, shutdown
    from rlhf.melody import build_tokenizer
    from rlhf.models import limit_threads, load_policy, save_artifact, tiny_gpt2
    from rlhf.ppo import PPOLearner, PPOStageConfig

    dev = select_device(device)
    limit_threads()
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer()
        sft = save_artifact(tiny_gpt2(tok), tok, Path(tmp) / "sft", "sft",
                            task={"name": "melody", "data": {}, "config": {}})
        policy, tok = load_policy(sft)
        critic = AutoModelForSequenceClassification.from_pretrained(str(sft), num_labels=1)
        size = (8, 4, 16) if quick else (64, 16, 48)  # batch, minibatch, new tokens
        cfg = PPOStageConfig(batch_size=size[0], minibatch_size=size[1], max_new_tokens=size[2],
                             missing_eos_penalty=0.0, update_epochs=1 if quick else 4)
        connect()
        try:
            learner = PPOLearner(cfg, policy, critic, tok, ("count", tok.convert_tokens_to_ids("d0.5")), 0.0,
                                 seed=0, device=str(dev))
            try:
                stats = learner.iteration([MELODY_PROMPTS[i % len(MELODY_PROMPTS)] for i in range(cfg.batch_size)])
            finally:
                learner.close()
        finally:
            shutdown()
    return {"iteration_s": stats["iteration_s"], "rollout_s": stats["rollout_s"],
            "proxy_reward": stats["proxy_reward"], "completion_length": stats["completion_length"],
            "batch": cfg.batch_size, "max_new_tokens": cfg.max_new_tokens, "update_epochs": cfg.update_epochs,
            "policy_loss": stats["policy_loss"]}


def gen_train(device: str, deadline: float, quick: bool, report) -> dict[str, Any]:
    """``reinforge gen train`` as a user types it, 2 Ray Train workers on GPUs."""
    import torch

    gpus = torch.cuda.device_count() if device == "cuda" else 0
    workers = 2 if gpus >= 2 or device != "cuda" else 1
    epochs = 2 if quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "pipelines.cli", "gen", "train", "--model", "wgan-gp", "--data", "ring8",
               "--workers", str(workers), "--epochs", str(epochs), "--run-dir", str(run_dir),
               "--set", f"gen.dataset_size={4000 if quick else 20000}", "--set", "gen.eval_samples=2500", "--set", "run.tensorboard=false",
               *(["--gpu"] if device == "cuda" else [])]
        report(workers=workers, gpus_visible=gpus, command=" ".join(cmd[1:]))
        t0 = time.perf_counter()
        rc = run_with_deadline(cmd, deadline - 5 - time.perf_counter(), cwd=ROOT)
        secs = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"gen train exited {rc} after {secs:.0f} s (its own error is above)")
        final = json.loads((run_dir / "final_metrics.json").read_text())
    out = {"workers": workers, "gpus_visible": gpus, "epochs": epochs, "wall_s": secs,
           **{k: final[k] for k in ("samples_per_s", "modes_captured", "high_quality_fraction") if k in final}}
    if device == "cuda" and workers < 2:
        out["note"] = ("1 worker: one GPU visible; gen.use_gpu asks one GPU per Train worker and NCCL "
                       "cannot put two DDP ranks on one GPU")
    return out


PARTS = {"ppo_pong": ppo_pong, "dqn_learner": dqn_learner, "rlhf_ppo": rlhf_ppo, "gen_train": gen_train}


# --- running the parts ----------------------------------------------------------------------
def run_with_deadline(cmd: list[str], timeout: float, **kwargs: Any) -> int | None:
    """Run ``cmd`` (its own process group); past ``timeout`` s it gets SIGINT (so it stops its
    Ray cleanly), then after GRACE_S its whole group is killed. None when it was interrupted."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    try:
        return proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        stop(proc)
        return None
    except KeyboardInterrupt:  # Ctrl-C here: the child is in a session of its own and did not get it
        stop(proc)
        raise


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left: the part's Ray processes
    except ProcessLookupError:
        pass
    proc.wait()


def run_part(name: str, device: str, budget_s: float, quick: bool, work: Path) -> dict[str, Any]:
    """One part in a child process; its row (what it reported, even when interrupted)."""
    out = work / f"{name}.json"
    cmd = [sys.executable, __file__, "--part", name, "--part-out", str(out), "--device", device,
           "--budget-s", str(budget_s), *(["--quick"] if quick else [])]
    print(f"== {TITLES[name]} (budget {budget_s:.0f} s)", flush=True)
    t0 = time.perf_counter()
    rc = run_with_deadline(cmd, budget_s)
    row: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    row["seconds"] = time.perf_counter() - t0
    if rc is None:
        row.update(status="timeout", error=f"interrupted at its {budget_s:.0f} s budget (numbers so far kept)")
    elif rc != 0 and row.get("status") != "failed":
        row.update(status="failed", error=row.get("error") or f"exited {rc}")
    return {"part": name, **row}


def child(args: argparse.Namespace) -> int:
    """``--part NAME``: run one part, writing its row to ``--part-out`` as it goes."""
    deadline = time.perf_counter() + args.budget_s
    path = Path(args.part_out)
    row: dict[str, Any] = {"status": "running"}

    def report(**values: Any) -> None:
        row.update(values)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(row, default=str))
        os.replace(tmp, path)

    try:
        report(**PARTS[args.part](args.device, deadline, args.quick, report))
        report(status="ok")
        return 0
    except KeyboardInterrupt:  # the parent's SIGINT at the budget (the part's finally blocks have run)
        report(status="timeout")
        return 124
    except Exception as exc:  # the part's failure goes in the table; the other parts still run
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        report(status="failed", error=f"{type(exc).__name__}: {first}"[:300])
        return 1


def summary(row: dict[str, Any]) -> str:
    fmt = {"ppo_pong": "{env_steps_per_s:,.0f} env steps/s (steady {steady_env_steps_per_s:,.0f}), score {episode_return:.1f} "
                       "after {env_steps:,} steps, {workers} workers x {envs} envs",
           "dqn_learner": "{updates_per_s:,.0f} updates/s (batch {batch}; bound {env_steps_per_s_bound:,.0f} env steps/s)",
           "rlhf_ppo": "{iteration_s:.2f} s/iteration (rollout {rollout_s:.2f} s), batch {batch} x {max_new_tokens} tokens",
           "gen_train": "{samples_per_s:,.0f} samples/s, {workers} workers, {epochs} epochs in {wall_s:.0f} s"}
    try:
        return fmt[row["part"]].format(**row)
    except (KeyError, ValueError, TypeError):
        return ""


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], extra=[
        (("--require-gpu",), {"action": "store_true", "help": "exit 2 (not 0) when no CUDA GPU is visible"}),
        (("--allow-cpu",), {"action": "store_true",
                            "help": "TESTING ONLY: run the parts on the CPU when there is no GPU (numbers meaningless)"}),
        (("--only",), {"default": ",".join(PARTS), "help": f"comma-separated parts (default all: {','.join(PARTS)})"}),
        (("--part",), {"choices": list(PARTS), "help": argparse.SUPPRESS}),  # internal: one part, in a child
        (("--part-out",), {"help": argparse.SUPPRESS}),
        (("--device",), {"default": "cuda", "help": argparse.SUPPRESS}),
        (("--budget-s",), {"type": float, "default": 60.0, "help": argparse.SUPPRESS}),
    ])
    if args.part:
        return child(args)
    chosen = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PARTS]
    if unknown or not chosen:
        print(f"bench gpu: error: unknown part(s) {', '.join(unknown) or '(none given)'} in --only; "
              f"choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    import torch

    if torch.cuda.is_available():
        device = "cuda"
    elif args.require_gpu:
        print("bench gpu: error: no GPU: CUDA is not available (torch.cuda.is_available() is False); "
              "run it on a machine with a CUDA GPU, or drop --require-gpu", file=sys.stderr)
        return 2
    elif args.allow_cpu:
        device = "cpu"
    else:
        print("bench gpu: no GPU (CUDA is not available here), nothing run, nothing written; "
              "run it on a machine with a CUDA GPU")
        return 0
    budgets = QUICK_BUDGET_S if args.quick else BUDGET_S
    if device == "cpu":  # --allow-cpu: everything is slower on the CPU; no 8-minute promise here
        budgets = {n: CPU_BUDGET_SCALE * b for n, b in budgets.items()}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        rows = [run_part(name, device, budgets[name], args.quick, Path(work)) for name in chosen]
    total = time.perf_counter() - t0
    for r in rows:
        r["summary"] = summary(r)
    print_table(rows, ["part", "status", "seconds", "summary", "error"],
                title=f"GPU check on {device} ({torch.cuda.get_device_name(0) if device == 'cuda' else 'no GPU'}), "
                      f"{total:.0f} s in all")
    path = write_results("gpu", rows, args.out, device=device, budgets_s={n: budgets[n] for n in chosen},
                         total_s=total, quick=args.quick, cpu_workers=max(1, (os.cpu_count() or 1) - 2))
    print(f"wrote {path}")
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
