"""RLHF pipelines: each stage is its own registry pipeline (``rlhf-sft``, ``rlhf-reward``,
``rlhf-ppo``, ``rlhf-grpo``, ``rlhf-dpo``, ``rlhf-seqtutor``, ``rlhf-eval``) so any stage runs, resumes or is
swept alone; ``rlhf-all`` chains stages (SFT -> reward -> PPO by default) in sub run dirs of
one run dir.

Every stage reads its data through its task (rlhf/tasks.py: melody, arithmetic or the user's
own data in TRL's formats), writes its artifact to ``RUN_DIR/model/`` and its final metrics to
``RUN_DIR/result.json``; a stage whose run dir already holds both (``--resume``) is not run
again, and PPO and GRPO resume from their latest checkpoint.
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
from rlhf.grpo import GRPOStageConfig
from rlhf.ppo import PPOStageConfig
from rlhf.raters import RaterConfig
from rlhf.reward import RewardStageConfig
from rlhf.seqtutor import SeqTutorStageConfig
from rlhf.sft import SFTStageConfig
from rlhf.tasks import RLHFDataConfig

RESULT = "result.json"
CHAIN_STAGES = ("sft", "reward", "ppo", "grpo", "dpo")


@dataclass
class ModelInputs:
    allow_pickle: bool = False  # load pickled weights (pytorch_model.bin) from model dirs; off: safetensors only


@dataclass
class StageInputs(ModelInputs):
    """Earlier artifacts (a run dir or its model/ dir); the CLI sets them with --sft/--reward."""

    sft: str | None = None
    reward: str | None = None  # a reinforge reward artifact or any one-label sequence-classification model dir


@dataclass
class RewardFnInputs:
    reward_fn: str | None = None  # module:function, f(prompts, completions, **columns) -> list[float]; or "gold"
    reward_weight: float = 1.0  # weight of the reward model's score
    reward_fn_weight: float = 1.0  # weight of the reward function's value


@dataclass
class RLInputs(RewardFnInputs, StageInputs):
    pass


@dataclass
class ChainInputs(RewardFnInputs, ModelInputs):
    pass


@dataclass
class RuleInputs(RewardFnInputs, ModelInputs):
    """Sequence Tutor's: the SFT prior and the rule reward (--reward-fn; default gold where the task has one)."""

    sft: str | None = None


@dataclass
class HeldOutEval:
    prompts: int = 32  # held-out prompts evaluated
    samples_per_prompt: int = 2
    max_new_tokens: int = 112

    def validate(self) -> None:
        if self.prompts < 1 or self.samples_per_prompt < 1 or self.max_new_tokens < 1:
            raise ConfigError("eval.prompts, eval.samples_per_prompt and eval.max_new_tokens must be >= 1")


@dataclass
class EvalInputs(RewardFnInputs, ModelInputs):
    model: str | None = None  # the policy to evaluate (any rlhf artifact or HF causal LM dir)
    ref: str | None = None  # reference for the KL (default: the model's SFT parent)
    reward: str | None = None  # reward model for the proxy reward (default: the model's reward parent)


@dataclass
class RLHFSFTExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    data: RLHFDataConfig = field(default_factory=RLHFDataConfig)
    inputs: ModelInputs = field(default_factory=ModelInputs)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)


@dataclass
class RLHFRewardExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    data: RLHFDataConfig = field(default_factory=RLHFDataConfig)
    inputs: StageInputs = field(default_factory=StageInputs)
    raters: RaterConfig = field(default_factory=RaterConfig)
    reward: RewardStageConfig = field(default_factory=RewardStageConfig)


@dataclass
class RLHFPPOExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    data: RLHFDataConfig = field(default_factory=RLHFDataConfig)
    inputs: RLInputs = field(default_factory=RLInputs)
    ppo: PPOStageConfig = field(default_factory=PPOStageConfig)


@dataclass
class RLHFGRPOExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    data: RLHFDataConfig = field(default_factory=RLHFDataConfig)
    inputs: RLInputs = field(default_factory=RLInputs)
    grpo: GRPOStageConfig = field(default_factory=GRPOStageConfig)


@dataclass
class RLHFSeqTutorExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    data: RLHFDataConfig = field(default_factory=RLHFDataConfig)
    inputs: RuleInputs = field(default_factory=RuleInputs)
    seqtutor: SeqTutorStageConfig = field(default_factory=SeqTutorStageConfig)


@dataclass
class RLHFDPOExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    data: RLHFDataConfig = field(default_factory=RLHFDataConfig)
    inputs: StageInputs = field(default_factory=StageInputs)
    raters: RaterConfig = field(default_factory=RaterConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)
    eval: HeldOutEval = field(default_factory=HeldOutEval)


@dataclass
class RLHFAllExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    stages: list[str] = field(default_factory=lambda: ["sft", "reward", "ppo"])  # in order; sft first
    data: RLHFDataConfig = field(default_factory=RLHFDataConfig)
    inputs: ChainInputs = field(default_factory=ChainInputs)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    raters: RaterConfig = field(default_factory=RaterConfig)
    reward: RewardStageConfig = field(default_factory=RewardStageConfig)
    ppo: PPOStageConfig = field(default_factory=PPOStageConfig)
    grpo: GRPOStageConfig = field(default_factory=GRPOStageConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)
    eval: HeldOutEval = field(default_factory=HeldOutEval)

    def validate(self) -> None:
        bad = [s for s in self.stages if s not in CHAIN_STAGES]
        if bad or not self.stages or self.stages[0] != "sft" or len(set(self.stages)) != len(self.stages):
            raise ConfigError(f"stages={self.stages}: a chain starts with sft and names each of "
                              f"{', '.join(CHAIN_STAGES)} at most once, e.g. [sft, reward, ppo] or [sft, grpo]")


@dataclass
class RLHFEvalExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    data: RLHFDataConfig = field(default_factory=RLHFDataConfig)
    inputs: EvalInputs = field(default_factory=EvalInputs)
    eval: HeldOutEval = field(default_factory=HeldOutEval)


# --- helpers ------------------------------------------------------------------------------
def _need(value: str | None, flag: str, what: str) -> str:
    if not value:
        raise ConfigError(f"this stage needs {flag} DIR ({what})")
    return value


SFT_WHAT = "an SFT run dir from `reinforge rlhf sft`"
REWARD_WHAT = "a reward-model run dir from `reinforge rlhf reward`, or --reward-fn module:function"


def _sft(exp) -> tuple[Path, dict[str, Any]]:
    from rlhf.models import resolve_artifact

    return resolve_artifact(_need(exp.inputs.sft, "--sft", SFT_WHAT), ("sft",), "--sft")


def _reward_dir(exp, required: bool) -> Path | None:
    from rlhf.models import resolve_artifact

    value = exp.inputs.reward
    if not value and not required:
        return None
    return resolve_artifact(_need(value, "--reward", REWARD_WHAT), ("reward", "hf"), "--reward")[0]


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


def _task(exp, parent: dict[str, Any] | None = None):
    from rlhf.models import limit_threads, quiet_libraries
    from rlhf.tasks import make_task

    limit_threads()
    quiet_libraries()
    return make_task(exp.data, parent, seed=exp.run.seed)


def _tokenizer(model_dir: Path, task):
    from rlhf.models import load_tokenizer

    tok = load_tokenizer(model_dir, "--sft")
    task.prepare_tokenizer(tok)
    return tok


def _reward(inputs, task, has_model: bool):
    """The training reward of PPO/GRPO (and the proxy reward of eval) from the inputs."""
    from rlhf.rewards import GOLD, Reward, load_reward_fn

    fn, name = None, inputs.reward_fn or ""
    if name == GOLD:
        if not task.has_gold:
            raise ConfigError(f"--reward-fn gold: the {task.name} task has no gold; give module:function")
        fn = lambda prompts, completions, **columns: task.gold(prompts, completions, columns)  # noqa: E731
    elif name:
        fn = load_reward_fn(name)
    return Reward(fn=fn, fn_name=name, model_weight=inputs.reward_weight, fn_weight=inputs.reward_fn_weight,
                  has_model=has_model)


# --- stage runners ------------------------------------------------------------------------
def run_sft(exp: RLHFSFTExperiment, run_dir) -> dict[str, Any]:
    from rlhf.sft import train_sft

    if (done := _done(run_dir)) is not None:
        return done
    task = _task(exp)
    metrics = train_sft(exp.sft, task, run_dir.path / "model", run_dir, exp.run.seed, exp.run.device,
                        exp.inputs.allow_pickle)
    metrics["model"] = str(run_dir.path / "model")
    return _finish(run_dir, metrics)


def run_reward(exp: RLHFRewardExperiment, run_dir) -> dict[str, Any]:
    from rlhf.models import load_policy
    from rlhf.reward import train_reward
    from rlhf.vpl import train_vpl_reward  # a rater-conditioned reward r(x, z), same arguments

    sft_dir, stamp = _sft(exp)
    if (done := _done(run_dir)) is not None:
        return done
    task = _task(exp, stamp)
    if exp.reward.model_type == "vpl":  # a rater id column, refused before any sampling or training
        from rlhf.vpl import check_simulated_raters

        check_simulated_raters(exp.raters.profiles, exp.reward.rater_column, task.name == "melody" and not exp.data.preferences)
    tok = _tokenizer(sft_dir, task)
    train, held = task.preferences(tok, lambda: load_policy(sft_dir, "--sft", exp.inputs.allow_pickle), exp.raters,
                                   exp.run.seed)
    if len(train) < 2 or len(held) < 1:
        raise ConfigError(f"only {len(train)} training and {len(held)} held-out preference pairs; need at least 2 and 1")
    train.save_to_disk(str(run_dir.path / "preferences" / "train"))
    held.save_to_disk(str(run_dir.path / "preferences" / "heldout"))
    simulated = task.name == "melody" and not exp.data.preferences
    fit_reward = train_vpl_reward if exp.reward.model_type == "vpl" else train_reward
    metrics = fit_reward(exp.reward, sft_dir, train, held, run_dir.path / "model", run_dir, exp.run.seed,
                         exp.run.device, temperature=exp.raters.temperature if simulated else None, task=task,
                         allow_pickle=exp.inputs.allow_pickle)
    metrics.update(model=str(run_dir.path / "model"), train_pairs=len(train))
    return _finish(run_dir, metrics)


def _rl_stage(exp, run_dir, stage: str, cfg, train_fn) -> dict[str, Any]:
    """PPO or GRPO: the SFT policy, the reward (model, function or both), the task's prompts."""
    sft_dir, stamp = _sft(exp)
    reward_dir = _reward_dir(exp, required=not (exp.inputs.reward_fn or getattr(cfg, "toy_reward_token", None)))
    if (done := _done(run_dir)) is not None and done.get("iterations", 0) >= cfg.iterations:
        return done  # finished; a --resume with more iterations continues from the last checkpoint
    task = _task(exp, stamp)
    train, held = task.prompt_sets(_tokenizer(sft_dir, task))
    # a small held-out set is sampled several times per evaluation, so each gold/KL point
    # averages eval_prompts completions rather than a handful
    held = held.cycle(cfg.eval_prompts)
    reward = _reward(exp.inputs, task, has_model=reward_dir is not None)
    metrics = train_fn(cfg, sft_dir, reward_dir, train, held, run_dir.path / "model", run_dir, exp.run.seed,
                       exp.run.device, log=print, reward=reward, task=task, allow_pickle=exp.inputs.allow_pickle)
    from rlhf.evaluate import plot_gold_vs_kl

    plot_gold_vs_kl(run_dir.read_metrics(), run_dir.plots / "gold_vs_kl.png", stage.upper())
    run_dir.plot(f"{stage}_training", ["proxy_reward", "gold_reward", "kl", "entropy", "clip_fraction",
                                       "value_loss" if stage == "ppo" else "reward_std"],
                 title=f"{stage.upper()} training batches")
    metrics["model"] = str(run_dir.path / "model")
    return _finish(run_dir, metrics)


def run_ppo(exp: RLHFPPOExperiment, run_dir) -> dict[str, Any]:
    from rlhf.ppo import train_ppo

    return _rl_stage(exp, run_dir, "ppo", exp.ppo, train_ppo)


def run_grpo(exp: RLHFGRPOExperiment, run_dir) -> dict[str, Any]:
    from rlhf.grpo import train_grpo

    return _rl_stage(exp, run_dir, "grpo", exp.grpo, train_grpo)


def _rule_reward_fn(exp, parent: dict[str, Any] | None) -> str:
    """Sequence Tutor's rule reward: --reward-fn, else the task's gold; none: one line."""
    from rlhf.rewards import GOLD
    from rlhf.tasks import TASK_CLASSES, task_name

    if exp.inputs.reward_fn:
        return exp.inputs.reward_fn
    task = task_name(exp.data, parent)
    if not TASK_CLASSES[task].has_gold:
        raise ConfigError(f"rlhf seqtutor needs a rule reward: the {task} task has no gold; give "
                          "--reward-fn module:function")
    return GOLD


def run_seqtutor(exp: RLHFSeqTutorExperiment, run_dir) -> dict[str, Any]:
    """Sequence Tutor: KL-regularised Q-, Psi- or G-learning from the SFT prior on the rule reward."""
    from dataclasses import replace

    from rlhf.evaluate import plot_gold_vs_kl
    from rlhf.seqtutor import train_seqtutor

    cfg = exp.seqtutor
    sft_dir, stamp = _sft(exp)
    inputs = replace(exp.inputs, reward_fn=_rule_reward_fn(exp, stamp))
    if (done := _done(run_dir)) is not None and done.get("iterations", 0) >= cfg.iterations:
        return done
    task = _task(exp, stamp)
    train, held = task.prompt_sets(_tokenizer(sft_dir, task))
    metrics = train_seqtutor(cfg, sft_dir, train, held.cycle(cfg.eval_prompts), run_dir.path / "model", run_dir,
                             exp.run.seed, exp.run.device, log=print, reward=_reward(inputs, task, has_model=False),
                             task=task, allow_pickle=exp.inputs.allow_pickle)
    plot_gold_vs_kl(run_dir.read_metrics(), run_dir.plots / "gold_vs_kl.png", f"Sequence Tutor ({cfg.algo})")
    run_dir.plot("seqtutor_training", ["proxy_reward", "gold_reward", "kl", "td_loss", "q_mean", "entropy"],
                 title=f"Sequence Tutor ({cfg.algo}) training batches")
    metrics["model"] = str(run_dir.path / "model")
    return _finish(run_dir, metrics)


def run_dpo(exp: RLHFDPOExperiment, run_dir) -> dict[str, Any]:
    import datasets

    from rlhf.dpo import train_dpo
    from rlhf.evaluate import evaluate_policy
    from rlhf.models import load_policy

    sft_dir, stamp = _sft(exp)
    reward_dir = _reward_dir(exp, required=False)  # the same preference set the reward model learnt from
    if (done := _done(run_dir)) is not None:
        return done
    task = _task(exp, stamp)
    tok = _tokenizer(sft_dir, task)
    saved = reward_dir.parent / "preferences" / "train" if reward_dir is not None else None
    if saved is not None and saved.is_dir() and not exp.data.preferences:
        train = datasets.load_from_disk(str(saved))
    else:
        train, _ = task.preferences(tok, lambda: load_policy(sft_dir, "--sft", exp.inputs.allow_pickle), exp.raters,
                                    exp.run.seed)
    metrics = train_dpo(exp.dpo, sft_dir, train, run_dir.path / "model", run_dir, exp.run.seed, exp.run.device,
                        task=task, allow_pickle=exp.inputs.allow_pickle)
    held = task.prompt_sets(tok)[1]
    held = held.take(range(min(len(held), exp.eval.prompts)))
    for name, d in (("sft", sft_dir), ("dpo", run_dir.path / "model")):
        ev = evaluate_policy(d, held, ref_dir=sft_dir, reward_dir=reward_dir, samples_per_prompt=exp.eval.samples_per_prompt,
                             max_new_tokens=exp.eval.max_new_tokens, seed=exp.run.seed, task=task,
                             allow_pickle=exp.inputs.allow_pickle)
        metrics.update({f"{name}_{k}": v for k, v in ev.items() if "/" not in k})
    metrics.update(model=str(run_dir.path / "model"), train_pairs=len(train))
    return _finish(run_dir, metrics)


def run_eval(exp: RLHFEvalExperiment, run_dir) -> dict[str, Any]:
    from rlhf.evaluate import evaluate_policy
    from rlhf.models import POLICY_STAGES, resolve_artifact

    model_dir, stamp = resolve_artifact(_need(exp.inputs.model, "--model", "a policy artifact to evaluate"),
                                        (*POLICY_STAGES, "hf"), "--model")
    parent = stamp.get("parent") or {}
    ref = exp.inputs.ref or parent.get("sft") or (str(model_dir) if stamp.get("stage") == "sft" else None)
    reward = exp.inputs.reward or parent.get("reward")
    ref_dir = resolve_artifact(ref, (*POLICY_STAGES, "hf"), "--ref")[0] if ref else None
    reward_dir = resolve_artifact(reward, ("reward", "hf"), "--reward")[0] if reward else None
    task = _task(exp, stamp)
    held = task.prompt_sets(_tokenizer(model_dir, task))[1]
    held = held.take(range(min(len(held), exp.eval.prompts)))
    metrics = evaluate_policy(model_dir, held, ref_dir, reward_dir, exp.eval.samples_per_prompt,
                              exp.eval.max_new_tokens, exp.run.seed, task=task,
                              reward=_reward(exp.inputs, task, has_model=reward_dir is not None),
                              allow_pickle=exp.inputs.allow_pickle)
    metrics.update(model=str(model_dir), reference=str(ref_dir), reward_model=str(reward_dir))
    return _finish(run_dir, metrics)


def run_all(exp: RLHFAllExperiment, run_dir) -> dict[str, Any]:
    """The chain's stages (``stages``, SFT -> reward -> PPO by default), each in its own sub run
    dir (``RUN_DIR/sft``, ``/reward``, ``/ppo``, ...), each reading the earlier ones."""
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
    pickle = exp.inputs.allow_pickle
    fns = {k: getattr(exp.inputs, k) for k in ("reward_fn", "reward_weight", "reward_fn_weight")}
    sft = str(run_dir.path / "sft")
    reward = str(run_dir.path / "reward") if "reward" in exp.stages else None
    for name in exp.stages:
        if name == "sft":
            stage("sft", RLHFSFTExperiment(sub_run(), exp.data, ModelInputs(pickle), exp.sft), run_sft)
        elif name == "reward":
            stage("reward", RLHFRewardExperiment(sub_run(), exp.data, StageInputs(allow_pickle=pickle, sft=sft), exp.raters, exp.reward),
                  run_reward)
        elif name in ("ppo", "grpo"):
            inputs = RLInputs(**fns, allow_pickle=pickle, sft=sft, reward=reward)
            if name == "ppo":
                stage("ppo", RLHFPPOExperiment(sub_run(), exp.data, inputs, exp.ppo), run_ppo)
            else:
                stage("grpo", RLHFGRPOExperiment(sub_run(), exp.data, inputs, exp.grpo), run_grpo)
        else:
            stage("dpo", RLHFDPOExperiment(sub_run(), exp.data, StageInputs(allow_pickle=pickle, sft=sft, reward=reward), exp.raters, exp.dpo,
                                           exp.eval), run_dpo)
    last = exp.stages[-1]
    for png in (run_dir.path / last / "plots").glob("*.png"):  # the chain's plots are its last stage's
        (run_dir.plots / png.name).write_bytes(png.read_bytes())
    return out


def rl_actor_bundles(exp, cluster: dict[str, float]) -> list[dict[str, float]]:
    """The rollout workers and the scorer of PPO or GRPO (or, in a chain, of its RL stages), with
    the GPU share they ask for on this cluster."""
    from rlhf.ppo import actor_resources

    stages = [getattr(exp, s) for s in ("ppo", "grpo") if hasattr(exp, s)
              and (not hasattr(exp, "stages") or s in exp.stages)]
    if not stages:
        return []
    cfg = max(stages, key=lambda c: c.num_rollout_workers)
    res = actor_resources(cfg, float(cluster.get("GPU", 0.0)))
    one = {"CPU": float(res.num_cpus), **({"GPU": float(res.num_gpus)} if res.num_gpus else {})}
    return [one] * (int(cfg.num_rollout_workers) + 1)


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
    # reward.model_type=vpl (rlhf/vpl.py): held-out accuracy per rater under z inferred from its pairs
    "vpl_pairs", "vpl_raters", "vpl_accuracy", *(f"vpl_{m}_{k}" for k in RATER_KINDS for m in ("accuracy", "gap")),
)
REWARD_METRICS = _names(
    ("reward/loss", "reward/accuracy", "reward/learning_rate", "reward/epoch"),  # the grouped trainer's rows
    ("reward/kl",),  # reward.model_type=vpl: KL(q(z | pairs) || N(0, I)) of the training episodes
    _trainer_rows("reward", "accuracy", "margin", "min_reward", "mean_reward", "max_reward"),  # reward.trainer=trl
    _with_final(*REWARD_RESULT),
)

_RL_EVAL = ("gold_reward", "proxy_reward", "kl", "eos_fraction")  # learner.evaluate, eval_ in rows
_RL_ROWS = ("proxy_reward", "gold_reward", "kl", "entropy", "eos_fraction", "completion_length", "rollout_s",
            "iteration_s", "policy_loss", "clip_fraction", "approx_kl", *(f"eval_{k}" for k in _RL_EVAL))
_RL_RESULT = ("iterations", "iteration_s", "final_proxy_reward", "gold_gain")
PPO_ROWS = (*_RL_ROWS, "beta", "value_loss")
PPO_RESULT = (*_RL_RESULT, "final_beta", *(f"{who}_{k}" for who in ("sft", "ppo") for k in _RL_EVAL))
PPO_METRICS = _names(PPO_ROWS, _with_final(*PPO_RESULT))
GRPO_ROWS = (*_RL_ROWS, "reward_std", "kl_loss")
GRPO_RESULT = (*_RL_RESULT, *(f"{who}_{k}" for who in ("sft", "grpo") for k in _RL_EVAL))
GRPO_METRICS = _names(GRPO_ROWS, _with_final(*GRPO_RESULT))
SEQTUTOR_ROWS = (*(k for k in _RL_ROWS if k not in ("policy_loss", "clip_fraction", "approx_kl")),
                 "td_loss", "q_mean", "target_mean", "buffer_transitions")
SEQTUTOR_RESULT = (*_RL_RESULT, *(f"{who}_{k}" for who in ("sft", "seqtutor") for k in _RL_EVAL))
SEQTUTOR_METRICS = _names(SEQTUTOR_ROWS, _with_final(*SEQTUTOR_RESULT))

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
               *(f"ppo/{k}" for k in PPO_RESULT), *(f"grpo/{k}" for k in GRPO_RESULT),
               *(f"dpo/{k}" for k in DPO_RESULT))


# --- checks before anything starts ---------------------------------------------------------
def _needs_sft(exp) -> None:
    _sft(exp)


def _needs_preferences_or_sft(exp) -> None:
    _sft(exp)
    _reward_dir(exp, required=False)


def _needs_sft_and_reward(exp) -> None:
    """PPO and GRPO: an SFT policy and a reward (a model, a function or both; PPO's toy token
    count in tests); the reward function imported now, so a typo is refused before Ray starts."""
    _, stamp = _sft(exp)
    cfg = getattr(exp, "ppo", None) or exp.grpo
    _reward_dir(exp, required=not (exp.inputs.reward_fn or getattr(cfg, "toy_reward_token", None)))
    _check_reward_fn(exp, stamp)


def _check_reward_fn(exp, parent: dict[str, Any] | None) -> None:
    from rlhf.rewards import GOLD, load_reward_fn
    from rlhf.tasks import TASK_CLASSES, task_name

    name = exp.inputs.reward_fn
    if name == GOLD:
        task = task_name(exp.data, parent)
        if not TASK_CLASSES[task].has_gold:
            raise ConfigError(f"--reward-fn gold: the {task} task has no gold; give module:function")
    elif name:
        load_reward_fn(name)


def _needs_sft_and_rule_reward(exp) -> None:
    """Sequence Tutor: an SFT prior and a rule reward (--reward-fn, or the task's gold)."""
    from dataclasses import replace

    _, stamp = _sft(exp)
    _check_reward_fn(replace(exp, inputs=replace(exp.inputs, reward_fn=_rule_reward_fn(exp, stamp))), stamp)


def _needs_model(exp) -> None:
    from rlhf.models import POLICY_STAGES, resolve_artifact

    _, stamp = resolve_artifact(_need(exp.inputs.model, "--model", "a policy artifact to evaluate"),
                                (*POLICY_STAGES, "hf"), "--model")
    _check_reward_fn(exp, stamp)


def _chain_checks(exp) -> None:
    if any(s in exp.stages for s in ("ppo", "grpo")) and "reward" not in exp.stages and not exp.inputs.reward_fn \
            and not exp.ppo.toy_reward_token:
        raise ConfigError(f"stages={exp.stages}: an RL stage needs a reward: add reward to the stages or give "
                          "--reward-fn module:function")
    _check_reward_fn(exp, None)


DEMO = DemoStep("rlhf", "rlhf-demo", "RLHF on melodies: SFT -> reward model -> PPO, checked against the gold",
                keep=("sft/eval_loss", "reward/heldout_accuracy", "reward/bayes_optimal_accuracy",
                      "ppo/sft_gold_reward", "ppo/ppo_gold_reward", "ppo/gold_gain", "ppo/ppo_kl",
                      "ppo/iteration_s"),
                # measured on rlhf-demo, run.seed 0 and 1: held-out accuracy 0.62 and 0.65
                # (150 pairs, chance 0.5); PPO's held-out gold 0.20 and 0.71 above the SFT
                # model's (48 completions each, gold SE about 0.2)
                bars=(Bar("reward/heldout_accuracy", ">=", 0.55), Bar("ppo/gold_gain", ">=", 0.0)))

PIPELINES = (
    Pipeline("rlhf-sft", RLHFSFTExperiment, run_sft,
             "RLHF stage 1: supervised fine-tuning (TRL SFTTrainer) on the task's data", uses_ray=False,
             metrics=SFT_METRICS, tune_metric=("eval_loss", "min")),
    Pipeline("rlhf-reward", RLHFRewardExperiment, run_reward,
             "RLHF stage 2: Bradley-Terry reward model on preference pairs", uses_ray=False,
             metrics=REWARD_METRICS, tune_metric=("heldout_accuracy", "max"), preflight=_needs_sft),
    Pipeline("rlhf-ppo", RLHFPPOExperiment, run_ppo, "RLHF stage 3: PPO with a KL penalty to the frozen SFT prior",
             actor_bundles=rl_actor_bundles, metrics=PPO_METRICS, tune_metric=("eval_gold_reward", "max"),
             preflight=_needs_sft_and_reward),
    Pipeline("rlhf-grpo", RLHFGRPOExperiment, run_grpo,
             "RLHF stage 3: GRPO, group-normalised advantages and a KL loss to the frozen SFT prior",
             actor_bundles=rl_actor_bundles, metrics=GRPO_METRICS, tune_metric=("eval_gold_reward", "max"),
             preflight=_needs_sft_and_reward),
    # DPO has no held-out loss; what it is for is the held-out gold reward, which it reports
    Pipeline("rlhf-dpo", RLHFDPOExperiment, run_dpo, "RLHF baseline: DPO (TRL DPOTrainer) on the same preferences",
             uses_ray=False, metrics=DPO_METRICS, tune_metric=("dpo_gold_reward", "max"),
             preflight=_needs_preferences_or_sft),
    Pipeline("rlhf-all", RLHFAllExperiment, run_all, "RLHF: a chain of stages (SFT -> reward model -> PPO) in one run",
             actor_bundles=rl_actor_bundles, metrics=ALL_METRICS, tune_metric=("ppo/ppo_gold_reward", "max"),
             demos=(DEMO,), preflight=_chain_checks),
    Pipeline("rlhf-eval", RLHFEvalExperiment, run_eval,
             "RLHF: gold reward, proxy reward and KL of a policy on held-out prompts", uses_ray=False,
             metrics=EVAL_METRICS, tune_metric=("gold_reward", "max"),
             preflight=_needs_model),
    Pipeline("rlhf-seqtutor", RLHFSeqTutorExperiment, run_seqtutor,
             "RLHF: Sequence Tutor, KL-regularised Q-, Psi- or G-learning from the SFT prior on a rule reward",
             uses_ray=False, metrics=SEQTUTOR_METRICS, tune_metric=("eval_gold_reward", "max"),
             preflight=_needs_sft_and_rule_reward),
)
