"""Faults and fuzz: bad inputs across every subcommand, and kill/resume faults.

Bad inputs are generated from the pipelines' own config declarations (for every pipeline and
every key: a typo of the key, a value of the wrong type, NaN and infinity for floats, a
negative value for ints and floats, 2 for a probability, a 0 or negative entry in a list of
sizes, a value outside a Literal's choices) plus hand-written CLI
mistakes (unknown commands, missing arguments, unparsable addresses, a missing token file,
a run dir that already holds a run, a resume of a dir that is not a run, ...). Each is run
through ``pipelines.cli.main`` in this process (one import of torch for all of them) with the
pipeline's ``run`` replaced by a sentinel: an input that reaches it was *accepted*, which for
a bad input is a failure to hold. An input is **held** when it exits with status 2, prints one
line on stderr and no traceback, and leaves an existing run dir byte-identical.

The faults run the real thing in subprocesses: the ``toy`` pipeline killed with SIGKILL in the
middle and resumed (the step counter must continue, no metrics row doubled), and a damaged
newest checkpoint (resume must fall back to the previous one).

    python benchmarks/bench_faults.py [--quick] [--out DIR]
    reinforge bench faults
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from _common import ROOT, parse_args, print_table, write_results


class Accepted(BaseException):
    """Raised in place of a pipeline's run: the input got past every check (a BaseException, so
    the CLI's last-resort handler does not turn it into an error line)."""


SIGNED_WEIGHTS = ("reward_weight", "reward_fn_weight")


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    from pipelines import config as cfg

    out = []
    for name, tp in cfg.fields_of(cls).items():
        args = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
        nested = [a for a in args if dataclasses.is_dataclass(a)]
        if nested:
            out += _leaves(nested[0], f"{prefix}{name}.")
        else:
            out.append((prefix + name, tp))
    return out


# A float setting whose name says it is a probability, discount, decay or mixing weight.
PROBABILITY_NAME = re.compile(r"epsilon|prob|drop|sticky|momentum|(?<!weight_)decay|gamma|lambda|tau\b")


def config_inputs(quick: bool) -> list[tuple[str, list[str]]]:
    """(kind, argv) for bad --set values on every pipeline's keys, through `reinforge run`."""
    from pipelines.registry import PIPELINES

    presets = {"rl-dqn": "ddqn-cartpole", "rl-ac": "ppo-cartpole", "gen": "gen-demo", "toy": "toy",
               "rlhf-all": "rlhf-demo"}
    cases: list[tuple[str, list[str]]] = []
    for name, target in presets.items():
        leaves = _leaves(PIPELINES[name].experiment)
        if quick:
            leaves = leaves[:6]
        for key, tp in leaves:
            if key.startswith("run."):
                continue
            base = ["run", target]
            section, _, leaf = key.rpartition(".")
            cases.append(("unknown key", [*base, "--set", f"{section}.{leaf}x=1"]))
            args = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
            if float in args:
                cases += [("non-finite float", [*base, "--set", f"{key}=nan"]),
                          ("non-finite float", [*base, "--set", f"{key}=inf"])]
            if int in args or float in args:
                cases.append(("wrong type", [*base, "--set", f"{key}=abc"]))
            if int in args and not key.endswith("seed"):  # a count or size below zero
                cases.append(("negative count", [*base, "--set", f"{key}=-5"]))
            # every float setting is a rate, weight, size or probability, except the reward weights
            # of PPO/GRPO, where a negative weight means "minimise" (tests/test_config_ranges.py)
            if float in args and leaf not in SIGNED_WEIGHTS:
                cases.append(("negative float", [*base, "--set", f"{key}=-5"]))
                if PROBABILITY_NAME.search(leaf):
                    cases.append(("probability above 1", [*base, "--set", f"{key}=2"]))
            if any(get_origin(a) in (list, tuple) and get_args(a)[:1] == (int,) for a in args):
                cases += [("size list with 0 or below", [*base, "--set", f"{key}=[0]"]),
                          ("size list with 0 or below", [*base, "--set", f"{key}=[-4]"])]
            if any(get_origin(a) is Literal for a in args):
                cases.append(("bad choice", [*base, "--set", f"{key}=nosuchchoice"]))
            if bool in args:
                cases.append(("wrong type", [*base, "--set", f"{key}=maybe"]))
    return cases


def cli_inputs(work: Path, existing_run: Path) -> list[tuple[str, list[str]]]:
    not_run = work / "not-a-run"
    not_run.mkdir(exist_ok=True)
    (work / "file").write_text("x")
    return [
        ("cli", ["nosuchcommand"]),
        ("cli", ["run"]),
        ("cli", ["run", "nosuchpreset"]),
        ("cli", ["run", str(work / "missing.yaml")]),
        ("cli", ["run", "toy", "--set", "novalue"]),
        ("cli", ["run", "toy", "--set", "=3"]),
        ("cli", ["run", "toy", "--seed", "abc"]),
        ("cli", ["run", "toy", "--device", "cuda"]),
        ("cli", ["run", "toy", "--device", "tpu"]),
        ("cli", ["run", "ppo-cartpole", "--address", "http://[::1"]),
        ("cli", ["run", "ppo-cartpole", "--address", "127.0.0.1:99999"]),
        ("run dir", ["run", "toy", "--run-dir", str(existing_run)]),
        ("run dir", ["run", "toy", "--run-dir", str(work / "file")]),
        ("run dir", ["run", "--resume", str(not_run)]),
        ("run dir", ["run", "--resume", str(existing_run), "--config", "toy"]),
        ("cli", ["rl", "train", "--algo", "dqnn"]),
        ("cli", ["rl", "train", "--algo", "ppo", "--env", "Pendulum-v1", "--total-steps", "100"]),
        ("cli", ["rl", "eval", str(not_run)]),
        ("cli", ["rl", "eval", "--checkpoint", str(existing_run), "--episodes", "0"]),
        ("cli", ["rl", "eval", "--checkpoint", str(existing_run), "--epsilon", "2"]),
        ("cli", ["rl", "eval", "--checkpoint", str(existing_run), "--epsilon", "nan"]),
        ("cli", ["gen", "sample", "--checkpoint", str(existing_run), "--n", "0"]),
        ("cli", ["gen", "sample", "--checkpoint", str(existing_run), "--guidance", "-1"]),
        ("cli", ["run", "ppo-cartpole", "--set", "rl.hidden_sizes=[0]"]),
        ("cli", ["run", "ppo-cartpole", "--set", "rl.max_grad_norm=-1"]),
        ("cli", ["run", "ddqn-cartpole", "--set", "rl.epsilon_start=2"]),
        ("cli", ["run", "toy", "--set", "run.seed=-5"]),
        ("cli", ["run", "toy", "--set", "run.keep_checkpoints=0"]),
        ("cli", ["run", "toy", "--set", "run.num_cpus=0"]),
        *[("cli", ["tune", "toy", "--search", "toy.learning_rate=loguniform(1e-3,1e-1)", flag, value, "--dry-run"])
          for flag, value in (("--max-concurrent", "-1"), ("--max-concurrent", "0"), ("--num-samples", "0"),
                              ("--cpus-per-trial", "-1"), ("--max-failures", "-1"), ("--top", "0"))],
        ("cli", ["gen", "train", "--model", "nosuchmodel"]),
        ("cli", ["rlhf", "nosuchstage"]),
        ("cli", ["rlhf", "reward"]),
        ("cli", ["rlhf", "ppo"]),
        ("cli", ["tune", "toy"]),
        ("cli", ["tune", "toy", "--search", "toy.learning_rate=logunifrm(1e-3,1e-1)", "--dry-run"]),
        ("cli", ["tune", "toy", "--search", "toy.learning_rate=loguniform(1,0.1)", "--dry-run"]),
        ("cli", ["tune", "toy", "--search", "toy.nosuchkey=choice(1,2)", "--dry-run"]),
        ("cli", ["tune", "toy", "--search", "toy.learning_rate=loguniform(1e-3,1e-1)", "--metric", "los",
                 "--dry-run"]),
        ("cli", ["tune", "--resume", str(not_run)]),
        ("cli", ["submit", "--token-file", str(work / "missing-token"), "--", "reinforge", "run", "toy"]),
        ("cli", ["submit", "--address", "http://192.0.2.1:8265", "--token", "x", "--", "reinforge", "run", "toy"]),
        ("cli", ["jobs"]),
        ("cli", ["bench", "nosuchbench"]),
        ("cli", ["config", "show", "nosuchpreset"]),
        ("cli", ["demo", "--only", "nosuchstep"]),
    ]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_inputs(cases: list[tuple[str, list[str]]], existing_run: Path) -> list[dict[str, Any]]:
    from cluster.progress import progress
    from pipelines import registry
    from pipelines.cli import main

    real_execute = registry.execute

    def sentinel_execute(resolved, resume=None, listeners=None, run_dir=None):
        registry.preflight(resolved, resume)  # every check made before a pipeline starts, then stop
        raise Accepted()

    registry.execute = sentinel_execute  # the commands import it from the registry when they run
    before = _snapshot(existing_run)
    rows = []
    try:
        with progress(len(cases), "bad inputs", unit="input") as bar:
            for kind, argv in cases:
                err, out = io.StringIO(), io.StringIO()
                accepted = False
                t0 = time.perf_counter()
                try:
                    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                        code = main(argv)
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 2
                except Accepted:
                    accepted, code = True, 0
                except BaseException as exc:  # a traceback would have reached the user
                    code, accepted = 1, False
                    err.write(f"Traceback: {type(exc).__name__}: {exc}\n")
                text = err.getvalue().strip()
                lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("reinforge: warning")]
                intact = _snapshot(existing_run) == before
                held = (not accepted and code == 2 and len(lines) == 1 and "Traceback" not in text and intact)
                rows.append({"kind": kind, "argv": " ".join(argv), "exit": code, "accepted": accepted,
                             "stderr_lines": len(lines), "held": held, "run_dir_intact": intact,
                             "message": lines[0][:200] if lines else "", "seconds": time.perf_counter() - t0})
                bar.update(1, held=sum(r["held"] for r in rows))
    finally:
        registry.execute = real_execute
    return rows


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def fault_kill_and_resume(work: Path) -> dict[str, Any]:
    """SIGKILL a toy run in the middle, then resume it: the step counter continues from the last
    checkpoint and no metrics row appears twice."""
    run = work / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", "toy", "--run-dir", str(run),
                             "--set", "toy.steps=40", "--set", "toy.checkpoint_every=5",
                             "--set", "toy.step_seconds=0.1", "--set", "run.tensorboard=false"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((run / "checkpoints").glob("step_*/manifest.json"))[1:]:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = _cli("run", "--resume", str(run))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    ok = res.returncode == 0 and steps == list(range(1, 41))
    return {"fault": "SIGKILL mid-run, then --resume", "held": ok, "lost": "" if ok else
            f"exit {res.returncode}, steps {steps[:5]}...{steps[-3:]} ({len(steps)} rows)"}


def fault_damaged_checkpoint(work: Path) -> dict[str, Any]:
    run = work / "damaged"
    first = _cli("run", "toy", "--run-dir", str(run), "--set", "toy.steps=10", "--set", "toy.checkpoint_every=5")
    newest = sorted((run / "checkpoints").glob("step_*"))[-1]
    (newest / "model.safetensors").write_bytes(b"damaged")
    res = _cli("run", "--resume", str(run), "--set", "toy.steps=12")
    resumed = "resumed_from  5" in res.stdout
    ok = first.returncode == 0 and res.returncode == 0 and resumed and "skipping damaged checkpoint" in res.stderr
    return {"fault": "damaged newest checkpoint, then --resume", "held": ok,
            "lost": "" if ok else f"exit {res.returncode}: {res.stderr.strip()[-200:]}"}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        work = Path(tmp)
        existing = work / "existing"
        done = _cli("run", "toy", "--run-dir", str(existing), "--set", "toy.steps=6", "--set", "toy.checkpoint_every=3")
        if done.returncode != 0:
            raise SystemExit(f"could not make the reference run: {done.stderr.strip()}")
        cases = cli_inputs(work, existing) + config_inputs(args.quick)
        rows = run_inputs(cases, existing)
        faults = [fault_kill_and_resume(work), fault_damaged_checkpoint(work)]
    by_kind: dict[str, dict[str, Any]] = {}
    for r in rows:
        k = by_kind.setdefault(r["kind"], {"kind": r["kind"], "inputs": 0, "held": 0, "accepted": 0, "failed": 0})
        k["inputs"] += 1
        k["held"] += int(r["held"])
        k["accepted"] += int(r["accepted"])
        k["failed"] += int(not r["held"])
    total = {"kind": "all bad inputs", "inputs": len(rows), "held": sum(r["held"] for r in rows),
             "accepted": sum(r["accepted"] for r in rows), "failed": sum(not r["held"] for r in rows)}
    table = [*by_kind.values(), total]
    print_table(table, ["kind", "inputs", "held", "accepted", "failed"], title="bad inputs (held = exit 2, one line)")
    print_table(faults, ["fault", "held", "lost"], title="faults")
    for r in rows:
        if not r["held"]:
            print(f"not held: reinforge {r['argv']}  -> exit {r['exit']}"
                  f"{' (accepted)' if r['accepted'] else ''}: {r['message']}")
    path = write_results("faults", rows, args.out, summary=table, faults=faults)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
