"""RLHF pipelines: each stage is its own registry pipeline (``rlhf-sft``, ``rlhf-reward``,
``rlhf-ppo``, ``rlhf-dpo``, ``rlhf-eval``) so any stage runs, resumes or is swept alone;
``rlhf-all`` chains SFT -> reward -> PPO in sub run dirs of one run dir.

Each stage writes its artifact to ``RUN_DIR/model/`` and its final metrics to
``RUN_DIR/result.json``; a stage whose run dir already holds both (``--resume``) is not run
again, and PPO resumes from its latest checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError
from cluster.run_config import RunConfig
from pipelines.pipeline import Bar, DemoStep, Pipeline
from rlhf.dpo import DPOStageConfig
from rlhf.gold import RATER_PROFILES
from rlhf.gold import RULES as GOLD_RULES
from rlhf.melody import MelodyDataConfig
from rlhf.ppo import PPOStageConfig
from rlhf.raters import RaterConfig
from rlhf.reward import RewardStageConfig
from rlhf.sft import SFTStageConfig

RESULT = "result.json"


@dataclass
class StageInputs:
    """Earlier artifacts (a run dir or its model/ dir); the CLI sets them with --sft/--reward."""

    sft: str | None = None
    reward: str | None = None


@dataclass
class HeldOutEval:
    prompts: int = 32  # held-out (validation) melodies whose opening bar is a prompt
    samples_per_prompt: int = 2
    max_new_tokens: int = 112

    def validate(self) -> None:
        if self.prompts < 1 or self.samples_per_prompt < 1 or self.max_new_tokens < 1:
            raise ConfigError("eval.prompts, eval.samples_per_prompt and eval.max_new_tokens must be >= 1")


@dataclass
class EvalInputs:
    model: str | None = None  # the policy to evaluate (any rlhf artifact or HF causal LM dir)
    ref: str | None = None  # reference for the KL (default: the model's SFT parent)
    reward: str | None = None  # reward model for the proxy reward (default: the model's reward parent)


@dataclass
class RLHFSFTExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    data: MelodyDataConfig = field(default_factory=MelodyDataConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)


@dataclass
class RLHFRewardExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    data: MelodyDataConfig = field(default_factory=MelodyDataConfig)
    inputs: StageInputs = field(default_factory=StageInputs)
    raters: RaterConfig = field(default_factory=RaterConfig)
    reward: RewardStageConfig = field(default_factory=RewardStageConfig)


@dataclass
class RLHFPPOExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    data: MelodyDataConfig = field(default_factory=MelodyDataConfig)
    inputs: StageInputs = field(default_factory=StageInputs)
    ppo: PPOStageConfig = field(default_factory=PPOStageConfig)


@dataclass
class RLHFDPOExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    data: MelodyDataConfig = field(default_factory=MelodyDataConfig)
    inputs: StageInputs = field(default_factory=StageInputs)
    raters: RaterConfig = field(default_factory=RaterConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)
    eval: HeldOutEval = field(default_factory=HeldOutEval)


@dataclass
class RLHFAllExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    data: MelodyDataConfig = field(default_factory=MelodyDataConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    raters: RaterConfig = field(default_factory=RaterConfig)
    reward: RewardStageConfig = field(default_factory=RewardStageConfig)
    ppo: PPOStageConfig = field(default_factory=PPOStageConfig)


@dataclass
class RLHFEvalExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    data: MelodyDataConfig = field(default_factory=MelodyDataConfig)
    inputs: EvalInputs = field(default_factory=EvalInputs)
    eval: HeldOutEval = field(default_factory=HeldOutEval)


# --- helpers ------------------------------------------------------------------------------
def _need(value: str | None, flag: str, what: str) -> str:
    if not value:
        raise ConfigError(f"this stage needs {flag} DIR ({what})")
    return value


def _done(run_dir) -> dict[str, Any] | None:
    """Final metrics of a stage already completed in this run dir (--resume), else None."""
    res = run_dir.path / RESULT
    if res.is_file() and (run_dir.path / "model" / "reinforge.json").is_file():
        return json.loads(res.read_text())
    return None


def _finish(run_dir, metrics: dict[str, Any]) -> dict[str, Any]:
    (run_dir.path / RESULT).write_text(json.dumps(metrics, indent=2, default=str))
    run_dir.log({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=0)
    return metrics


def _device(run: RunConfig) -> str:
    from cluster.runtime import select_device

    return str(select_device(run.device))


def _preferences(data, raters: RaterConfig, sft_dir: Path, seed: int, bars: int = 1):
    """(train pairs, held-out pairs): a user set split in two, or simulated raters labelling
    SFT samples on train-melody prompts and on held-out-melody prompts."""
    from rlhf.melody import prompts
    from rlhf.models import load_policy
    from rlhf.raters import load_preferences, simulate_preferences

    if raters.preferences:
        ds = load_preferences(raters.preferences)
        if len(ds) < 4:
            raise ConfigError(f"raters.preferences {raters.preferences}: only {len(ds)} pairs; need at least 4")
        split = ds.train_test_split(test_size=0.2, seed=seed)
        return split["train"], split["test"]
    model, tok = load_policy(sft_dir, "--sft")
    train = simulate_preferences(model, tok, prompts(data["train"], bars, raters.train_prompts), raters, seed=seed)
    held = simulate_preferences(model, tok, prompts(data["validation"], bars), raters, seed=seed + 1)
    return train, held


def _load_data(cfg: MelodyDataConfig):
    from rlhf.melody import load_melodies
    from rlhf.models import limit_threads, quiet_libraries

    limit_threads()
    quiet_libraries()

    return load_melodies(cfg)


# --- stage runners ------------------------------------------------------------------------
def run_sft(exp: RLHFSFTExperiment, run_dir) -> dict[str, Any]:
    from rlhf.sft import train_sft

    if (done := _done(run_dir)) is not None:
        return done
    data = _load_data(exp.data)
    metrics = train_sft(exp.sft, data, run_dir.path / "model", run_dir, exp.run.seed, exp.run.device)
    metrics["model"] = str(run_dir.path / "model")
    return _finish(run_dir, metrics)


def run_reward(exp: RLHFRewardExperiment, run_dir) -> dict[str, Any]:
    from rlhf.models import resolve_artifact
    from rlhf.reward import train_reward

    sft_dir, _ = resolve_artifact(_need(exp.inputs.sft, "--sft", "an SFT run dir from `reinforge rlhf sft`"),
                                  ("sft",), "--sft")
    if (done := _done(run_dir)) is not None:
        return done
    data = _load_data(exp.data)
    train, held = _preferences(data, exp.raters, sft_dir, exp.run.seed, exp.data.prompt_bars)
    train.save_to_disk(str(run_dir.path / "preferences" / "train"))
    held.save_to_disk(str(run_dir.path / "preferences" / "heldout"))
    metrics = train_reward(exp.reward, sft_dir, train, held, run_dir.path / "model", run_dir, exp.run.seed,
                           exp.run.device, temperature=None if exp.raters.preferences else exp.raters.temperature)
    metrics.update(model=str(run_dir.path / "model"), train_pairs=len(train))
    return _finish(run_dir, metrics)


def run_ppo(exp: RLHFPPOExperiment, run_dir) -> dict[str, Any]:
    from rlhf.melody import prompts
    from rlhf.models import resolve_artifact
    from rlhf.ppo import train_ppo

    sft_dir, _ = resolve_artifact(_need(exp.inputs.sft, "--sft", "an SFT run dir from `reinforge rlhf sft`"),
                                  ("sft",), "--sft")
    reward_dir = None
    if not exp.ppo.toy_reward_token:
        reward_dir, _ = resolve_artifact(
            _need(exp.inputs.reward, "--reward", "a reward-model run dir from `reinforge rlhf reward`"),
            ("reward",), "--reward")
    if (done := _done(run_dir)) is not None and done.get("iterations", 0) >= exp.ppo.iterations:
        return done  # finished; a --resume with more ppo.iterations continues from the last checkpoint
    data = _load_data(exp.data)
    bars = exp.data.prompt_bars
    held = prompts(data["validation"], bars)
    # a small validation split is sampled several times per evaluation, so each gold/KL point
    # averages ppo.eval_prompts completions rather than a handful
    held = [held[i % len(held)] for i in range(exp.ppo.eval_prompts)]
    metrics = train_ppo(exp.ppo, sft_dir, reward_dir, prompts(data["train"], bars), held, run_dir.path / "model",
                        run_dir, exp.run.seed, exp.run.device, log=print)
    from rlhf.evaluate import plot_gold_vs_kl

    plot_gold_vs_kl(run_dir.read_metrics(), run_dir.plots / "gold_vs_kl.png")
    run_dir.plot("ppo_training", ["proxy_reward", "gold_reward", "kl", "entropy", "clip_fraction", "value_loss"],
                 title="PPO training batches")
    metrics["model"] = str(run_dir.path / "model")
    return _finish(run_dir, metrics)


def run_dpo(exp: RLHFDPOExperiment, run_dir) -> dict[str, Any]:
    import datasets

    from rlhf.dpo import train_dpo
    from rlhf.evaluate import evaluate_policy
    from rlhf.melody import prompts
    from rlhf.models import resolve_artifact

    sft_dir, _ = resolve_artifact(_need(exp.inputs.sft, "--sft", "an SFT run dir from `reinforge rlhf sft`"),
                                  ("sft",), "--sft")
    reward_dir = None
    if exp.inputs.reward:  # the same preference set the reward model learnt from, and its proxy score
        reward_dir, _ = resolve_artifact(exp.inputs.reward, ("reward",), "--reward")
    if (done := _done(run_dir)) is not None:
        return done
    data = _load_data(exp.data)
    saved = reward_dir.parent / "preferences" / "train" if reward_dir is not None else None
    if saved is not None and saved.is_dir() and not exp.raters.preferences:
        train = datasets.load_from_disk(str(saved))
    else:
        train, _ = _preferences(data, exp.raters, sft_dir, exp.run.seed, exp.data.prompt_bars)
    metrics = train_dpo(exp.dpo, sft_dir, train, run_dir.path / "model", run_dir, exp.run.seed, exp.run.device)
    held = prompts(data["validation"], exp.data.prompt_bars, exp.eval.prompts)
    for name, d in (("sft", sft_dir), ("dpo", run_dir.path / "model")):
        ev = evaluate_policy(d, held, ref_dir=sft_dir, reward_dir=reward_dir, samples_per_prompt=exp.eval.samples_per_prompt,
                             max_new_tokens=exp.eval.max_new_tokens, seed=exp.run.seed)
        metrics.update({f"{name}_{k}": v for k, v in ev.items() if "/" not in k})
    metrics.update(model=str(run_dir.path / "model"), train_pairs=len(train))
    return _finish(run_dir, metrics)


def run_eval(exp: RLHFEvalExperiment, run_dir) -> dict[str, Any]:
    from rlhf.evaluate import evaluate_policy
    from rlhf.melody import prompts
    from rlhf.models import POLICY_STAGES, resolve_artifact

    model_dir, stamp = resolve_artifact(_need(exp.inputs.model, "--model", "a policy artifact to evaluate"),
                                        (*POLICY_STAGES, "hf"), "--model")
    parent = stamp.get("parent") or {}
    ref = exp.inputs.ref or parent.get("sft") or (str(model_dir) if stamp.get("stage") == "sft" else None)
    reward = exp.inputs.reward or parent.get("reward")
    ref_dir = resolve_artifact(ref, (*POLICY_STAGES, "hf"), "--ref")[0] if ref else None
    reward_dir = resolve_artifact(reward, ("reward",), "--reward")[0] if reward else None
    data = _load_data(exp.data)
    held = prompts(data["validation"], exp.data.prompt_bars, exp.eval.prompts)
    metrics = evaluate_policy(model_dir, held, ref_dir, reward_dir, exp.eval.samples_per_prompt,
                              exp.eval.max_new_tokens, exp.run.seed)
    metrics.update(model=str(model_dir), reference=str(ref_dir), reward_model=str(reward_dir))
    return _finish(run_dir, metrics)


def run_all(exp: RLHFAllExperiment, run_dir) -> dict[str, Any]:
    """SFT -> reward -> PPO, each in its own sub run dir (``RUN_DIR/sft``, ``/reward``, ``/ppo``)."""
    from cluster.rundir import RunDir
    from pipelines import config as cfg

    run = exp.run
    out: dict[str, Any] = {}

    def stage(name: str, experiment: Any, fn) -> dict[str, Any]:
        path = run_dir.path / name
        experiment.run.run_dir = str(path)
        doc = {"pipeline": f"rlhf-{name}", **cfg.to_dict(experiment)}
        with RunDir(path, config=doc, seed=run.seed, device=run.device, tensorboard=run.tensorboard,
                    resume=path.exists()) as rd:
            print(f"== rlhf {name} -> {path}", flush=True)
            res = fn(experiment, rd)
        out.update({f"{name}/{k}": v for k, v in res.items() if isinstance(v, (int, float))})
        return res

    sub_run = lambda: RunConfig(**{**cfg.to_dict(run), "run_dir": None})  # noqa: E731
    stage("sft", RLHFSFTExperiment(sub_run(), exp.data, exp.sft), run_sft)
    inputs = StageInputs(sft=str(run_dir.path / "sft"))
    stage("reward", RLHFRewardExperiment(sub_run(), exp.data, inputs, exp.raters, exp.reward), run_reward)
    inputs = StageInputs(sft=str(run_dir.path / "sft"), reward=str(run_dir.path / "reward"))
    stage("ppo", RLHFPPOExperiment(sub_run(), exp.data, inputs, exp.ppo), run_ppo)
    for png in (run_dir.path / "ppo" / "plots").glob("*.png"):  # the chain's plots are PPO's
        (run_dir.plots / png.name).write_bytes(png.read_bytes())
    return out


def ppo_actor_bundles(exp, cluster: dict[str, float]) -> list[dict[str, float]]:
    """PPO's rollout workers and its scorer, with the GPU share they ask for on this cluster."""
    from rlhf.ppo import actor_resources

    res = actor_resources(exp.ppo, float(cluster.get("GPU", 0.0)))
    one = {"CPU": float(res.num_cpus), **({"GPU": float(res.num_gpus)} if res.num_gpus else {})}
    return [one] * (int(exp.ppo.num_rollout_workers) + 1)


# --- what each stage reports ---------------------------------------------------------------
# Every name a stage's metric rows and final result can hold, so a sweep's --metric is checked
# before a trial starts. Result names are also logged as ``final/NAME`` rows (``_finish``).
def _names(*groups) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for g in groups for name in g))


def _with_final(*result: str) -> tuple[str, ...]:
    return (*result, *(f"final/{k}" for k in result))


def _trainer_rows(prefix: str, *extra: str) -> tuple[str, ...]:
    """What transformers' Trainer (plus TRL's own ``extra``) logs, copied with ``prefix/`` by
    ``run_dir_callback``."""
    common = ("loss", "grad_norm", "learning_rate", "epoch", "num_tokens", "train_loss", "train_runtime",
              "train_samples_per_second", "train_steps_per_second", "total_flos")
    return tuple(f"{prefix}/{k}" for k in (*common, *extra))


_TOKEN_STATS = ("entropy", "mean_token_accuracy")  # SFTTrainer and DPOTrainer
_EVAL_ROWS = ("eval_loss", "eval_entropy", "eval_num_tokens", "eval_mean_token_accuracy", "eval_runtime",
              "eval_samples_per_second", "eval_steps_per_second")
SFT_RESULT = ("train_loss", "eval_loss", "eval_perplexity", "steps")
SFT_METRICS = _names(_trainer_rows("sft", *_TOKEN_STATS, *_EVAL_ROWS), _with_final(*SFT_RESULT))

RATER_KINDS = tuple(RATER_PROFILES)
REWARD_RESULT = (
    "train_loss", "reward_offset", "train_accuracy", "train_pairs", "heldout_pairs", "heldout_accuracy",
    "heldout_bt_loss", "bayes_optimal_accuracy", "bayes_optimal_accuracy_expected", "accuracy_gap",
    "single_reward_ceiling", "mean_score_correlation",
    *(f"rater_{k}/{m}" for k in RATER_KINDS for m in ("pairs", "heldout_accuracy", "bayes_optimal_accuracy",
                                                       "score_correlation")),
)
REWARD_METRICS = _names(
    ("reward/loss", "reward/accuracy", "reward/learning_rate", "reward/epoch"),  # the grouped trainer's rows
    _trainer_rows("reward", "accuracy", "margin", "min_reward", "mean_reward", "max_reward"),  # reward.trainer=trl
    _with_final(*REWARD_RESULT),
)

_PPO_EVAL = ("gold_reward", "proxy_reward", "kl", "eos_fraction")  # PPOLearner.evaluate, eval_ in rows
PPO_ROWS = ("proxy_reward", "gold_reward", "kl", "beta", "entropy", "eos_fraction", "completion_length",
            "rollout_s", "iteration_s", "policy_loss", "value_loss", "clip_fraction", "approx_kl",
            *(f"eval_{k}" for k in _PPO_EVAL))
PPO_RESULT = ("iterations", "final_beta", "iteration_s", "final_proxy_reward", "gold_gain",
              *(f"{who}_{k}" for who in ("sft", "ppo") for k in _PPO_EVAL))
PPO_METRICS = _names(PPO_ROWS, _with_final(*PPO_RESULT))

EVAL_RESULT = ("samples", "gold_reward", "gold_reward_sem", "eos_fraction", "completion_length",
               *(f"gold/{rule}" for rule in GOLD_RULES), "proxy_reward", "kl_to_reference")
EVAL_METRICS = _with_final(*EVAL_RESULT)

DPO_ROWS = _trainer_rows("dpo", *_TOKEN_STATS, "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                         "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected")
DPO_RESULT = ("train_loss", "steps", "dpo_pairs", "train_pairs",
              *(f"{who}_{k}" for who in ("sft", "dpo") for k in EVAL_RESULT if "/" not in k))
DPO_METRICS = _names(DPO_ROWS, _with_final(*DPO_RESULT))

# rlhf-all's result: each stage's numbers under its name (its rows stay in the stage's run dir)
ALL_METRICS = (*(f"sft/{k}" for k in SFT_RESULT), *(f"reward/{k}" for k in REWARD_RESULT),
               *(f"ppo/{k}" for k in PPO_RESULT))

def _check_input(exp, field_name: str, flag: str, stages: tuple[str, ...], what: str,
                 required: bool = True) -> None:
    """One input artifact of a stage: given (when required) and written by one of ``stages``."""
    from rlhf.models import resolve_artifact

    value = getattr(exp.inputs, field_name)
    if value or required:
        resolve_artifact(_need(value, flag, what), stages, flag)


def _needs_sft(exp) -> None:
    _check_input(exp, "sft", "--sft", ("sft",), "an SFT run dir from `reinforge rlhf sft`")


def _needs_sft_and_reward(exp) -> None:
    """PPO needs a reward model unless it trains on the toy reward; for DPO it is optional."""
    _needs_sft(exp)
    required = hasattr(exp, "ppo") and not exp.ppo.toy_reward_token
    _check_input(exp, "reward", "--reward", ("reward",), "a reward-model run dir from `reinforge rlhf reward`",
                 required=required)


def _needs_model(exp) -> None:
    from rlhf.models import POLICY_STAGES

    _check_input(exp, "model", "--model", (*POLICY_STAGES, "hf"), "a policy artifact to evaluate")


PIPELINES = (
    Pipeline("rlhf-sft", RLHFSFTExperiment, run_sft,
             "RLHF stage 1: supervised fine-tuning on folk melodies (TRL SFTTrainer)", uses_ray=False,
             metrics=SFT_METRICS, tune_metric=("eval_loss", "min")),
    Pipeline("rlhf-reward", RLHFRewardExperiment, run_reward,
             "RLHF stage 2: Bradley-Terry reward model on rater preferences", uses_ray=False,
             metrics=REWARD_METRICS, tune_metric=("heldout_accuracy", "max"), preflight=_needs_sft),
    Pipeline("rlhf-ppo", RLHFPPOExperiment, run_ppo, "RLHF stage 3: PPO with a KL penalty to the frozen SFT prior",
             actor_bundles=ppo_actor_bundles, metrics=PPO_METRICS, tune_metric=("eval_gold_reward", "max"),
             preflight=_needs_sft_and_reward),
    # DPO has no held-out loss; what it is for is the held-out gold reward, which it reports
    Pipeline("rlhf-dpo", RLHFDPOExperiment, run_dpo, "RLHF baseline: DPO (TRL DPOTrainer) on the same preferences",
             uses_ray=False, metrics=DPO_METRICS, tune_metric=("dpo_gold_reward", "max"),
             preflight=_needs_sft_and_reward),
    Pipeline("rlhf-all", RLHFAllExperiment, run_all, "RLHF: SFT -> reward model -> PPO in one run",
             actor_bundles=ppo_actor_bundles, metrics=ALL_METRICS, tune_metric=("ppo/ppo_gold_reward", "max"),
             demos=(DemoStep("rlhf", "rlhf-demo", "RLHF on melodies: SFT -> reward model -> PPO, checked against the gold",
                             keep=("sft/eval_loss", "reward/heldout_accuracy", "reward/bayes_optimal_accuracy",
                                   "ppo/sft_gold_reward", "ppo/ppo_gold_reward", "ppo/gold_gain", "ppo/ppo_kl",
                                   "ppo/iteration_s"),
                             # measured on rlhf-demo, run.seed 0 and 1: held-out accuracy 0.62 and 0.65
                             # (150 pairs, chance 0.5); PPO's held-out gold 0.20 and 0.71 above the SFT
                             # model's (48 completions each, gold SE about 0.2)
                             bars=(Bar("reward/heldout_accuracy", ">=", 0.55), Bar("ppo/gold_gain", ">=", 0.0))),)),
    Pipeline("rlhf-eval", RLHFEvalExperiment, run_eval,
             "RLHF: gold reward, proxy reward and KL of a policy on held-out prompts", uses_ray=False,
             metrics=EVAL_METRICS, tune_metric=("gold_reward", "max"),
             preflight=_needs_model),
)
