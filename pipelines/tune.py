"""Ray Tune sweeps over any pipeline: ``reinforge tune PRESET --search KEY=EXPR ...``.

A sweep is a base config (a preset or YAML file plus ``--set`` overrides), a search space
(``--search rl.learning_rate=loguniform(1e-5,1e-3)``), a scheduler (FIFO, ASHA, PBT) and the
resources of one trial. Every trial runs the pipeline's ordinary ``run(experiment, run_dir)``
through :func:`pipelines.registry.execute`, so it writes a normal run directory
(``<experiment>/<trial>/run/``). Two listeners connect that run to Tune:

* every logged metrics row is reported with ``tune.report`` (one Tune iteration per row);
* every checkpoint the pipeline saves is reported with it as a ``tune.Checkpoint``, so PBT can
  exploit/explore and a crashed trial is retried (``FailureConfig(max_failures)``) from it.

When a trial starts with a Tune checkpoint (retry, PBT exploit, ``--resume`` of the sweep) the
checkpoint is copied back into the run dir's ``checkpoints/`` and the run dir is reopened in
resume mode, so the pipeline's own resume path (``run_dir.latest_checkpoint()``) continues it.

A sweep that cannot run is refused before any trial starts: an unparsable search expression,
a key the experiment does not have, a value of the wrong type, a metric the pipeline never
reports, more GPUs (or CPUs) per trial than the cluster has.
"""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from cluster.errors import ConfigError, ReinforgeError
from cluster.run_config import check_ranges
from pipelines import config as cfg

SEARCH_FUNCTIONS = ("loguniform", "uniform", "choice", "randint", "grid")
SEARCH_HELP = ("expected KEY=FUNC(ARGS) with FUNC one of loguniform(a,b), uniform(a,b), randint(a,b), "
               "choice(v1,v2,...), grid(v1,v2,...), e.g. rl.learning_rate=loguniform(1e-5,1e-3)")
# Metrics every trial has whatever the pipeline logs: Tune's own and the run dir's step.
AUTO_METRICS = ("step", "training_iteration", "time_total_s", "time_this_iter_s", "checkpoint_step")

class SweepInterrupted(ReinforgeError):
    """Ctrl-C (or a dead driver) stopped the sweep; Tune saved its state for ``--resume``."""

    exit_code = 130


# --- search expressions -------------------------------------------------------------------
@dataclass(frozen=True)
class SearchSpec:
    """One searched key: ``kind`` is a name from SEARCH_FUNCTIONS, ``args`` its literal arguments."""

    key: str
    kind: str
    args: tuple[Any, ...]

    def to_tune(self):
        from ray import tune

        a = self.args
        return {
            "loguniform": lambda: tune.loguniform(a[0], a[1]),
            "uniform": lambda: tune.uniform(a[0], a[1]),
            "randint": lambda: tune.randint(a[0], a[1]),
            "choice": lambda: tune.choice(list(a)),
            "grid": lambda: tune.grid_search(list(a)),
        }[self.kind]()

    def examples(self) -> list[Any]:
        """Values to type-check against the config before any trial starts."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        low, high = self.args  # and a non-integer inside: a float range on an int key is refused
        return [low, high, low + 0.37 * (high - low)]

    def __str__(self) -> str:
        return f"{self.key}={self.kind}({', '.join(repr(x) for x in self.args)})"


def _literal(node: ast.AST, text: str) -> Any:
    if isinstance(node, ast.Name):  # choice(adam, sgd): bare words are strings
        words = {"true": True, "false": False, "none": None, "null": None}
        return words.get(node.id.lower(), node.id) if node.id.lower() in words else node.id
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        raise ConfigError(f"cannot parse search expression {text!r}: arguments must be numbers or words; "
                          f"{SEARCH_HELP}") from None


def parse_search(text: str, value: str | None = None) -> SearchSpec:
    """Parse ``KEY=FUNC(ARGS)`` (or ``KEY``, ``FUNC(ARGS)`` from a sweep file) into a SearchSpec."""
    if value is None:
        if "=" not in text:
            raise ConfigError(f"cannot parse --search {text!r}: {SEARCH_HELP}")
        key, value = text.split("=", 1)
    else:
        key = text
    key, expr = key.strip(), str(value).strip()
    shown = f"{key}={expr}"
    if not key or any(not p.isidentifier() for p in key.split(".")):
        raise ConfigError(f"cannot parse search expression {shown!r}: the key must be a dotted config key; {SEARCH_HELP}")
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise ConfigError(f"cannot parse search expression {shown!r}: {SEARCH_HELP}") from None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)) or tree.keywords:
        raise ConfigError(f"cannot parse search expression {shown!r}: {SEARCH_HELP}")
    kind = tree.func.id
    if kind not in SEARCH_FUNCTIONS:
        guess = cfg.nearest(kind, list(SEARCH_FUNCTIONS))
        hint = f"did you mean {guess!r}? " if guess else ""
        raise ConfigError(f"unknown search function {kind!r} in {shown!r}; {hint}{SEARCH_HELP}")
    args = tuple(_literal(a, shown) for a in tree.args)
    if kind in ("choice", "grid"):
        if not args:
            raise ConfigError(f"{kind}() in {shown!r} needs at least one value, e.g. {kind}(32,64)")
    else:
        if len(args) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in args):
            raise ConfigError(f"{kind}() in {shown!r} takes two numbers (low, high), e.g. {kind}(1e-4,1e-2)")
        low, high = args
        if not low < high:
            raise ConfigError(f"{kind}() in {shown!r} needs low < high")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"loguniform() in {shown!r} needs 0 < low < high (it samples log-uniformly)")
        if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
            raise ConfigError(f"randint() in {shown!r} takes integers (low inclusive, high exclusive), e.g. randint(1,5)")
    return SearchSpec(key, kind, args)


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"rl.lr": 1}`` -> ``{"rl": {"lr": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


# --- the sweep config (CLI flags and sweep files share it) --------------------------------
@dataclass
class SweepConfig:
    preset: str | None = None  # base config: a preset name or a YAML path
    set: list[str] = field(default_factory=list)  # --set overrides of the base config
    search: dict[str, str] = field(default_factory=dict)  # key -> "loguniform(1e-5,1e-3)"
    num_samples: int = 1
    scheduler: Literal["fifo", "asha", "pbt"] = "fifo"
    metric: str | None = None  # default: the pipeline's declared tune_metric
    mode: Literal["min", "max"] | None = None
    cpus_per_trial: float = 1.0  # for the trial's driver (the learner); rollout actors are added
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None  # None: as many as the resources allow
    max_failures: int = 2  # retries of a crashed trial, each from its last checkpoint
    name: str | None = None  # experiment name; default <pipeline>-sweep-<timestamp>
    storage_path: str = "runs/sweeps"
    asha_max_t: int = 1_000_000  # iterations (logged rows) after which ASHA stops a trial
    grace_period: int = 1
    reduction_factor: float = 2.0
    # PBT: pipeline steps (the ``step`` of metrics.jsonl rows) between exploit/explore. PBT
    # decides only at the reports that carry a checkpoint (time_attr ``checkpoint_step``), so
    # the top trial always has one to copy; 1: at every checkpoint.
    perturbation_interval: int = 1
    # PBT: wait for the whole population at every perturbation (Ray's synch=True). The default,
    # asynchronous PBT decides as each trial arrives, so a small population can go without an
    # exploit: a top trial's checkpoint is only kept when it arrives after the others' scores.
    synch: bool = False
    keep_checkpoints: int = 2  # Tune checkpoints kept per trial (at least 5 under PBT)
    top: int = 5  # rows in the final table
    seed: int = 0  # seeds the sampling of the search space (the trials' own seed is run.seed)

    def validate(self) -> None:
        check_ranges("sweep", self, {
            "num_samples": (">= 1", "--num-samples N"), "cpus_per_trial": ">= 0", "gpus_per_trial": ">= 0",
            "max_concurrent": (">= 1", "--max-concurrent K, or leave it out for as many as the resources allow"),
            "max_failures": ">= 0", "grace_period": ">= 1", "reduction_factor": "> 1",
            "perturbation_interval": ">= 1", "keep_checkpoints": ">= 1", "top": ">= 1", "seed": ">= 0",
        })
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ConfigError(f"--gpus-per-trial {self.gpus_per_trial}: fractions are allowed only below 1")
        if self.asha_max_t < self.grace_period:
            raise ConfigError(f"sweep.asha_max_t={self.asha_max_t} must be >= sweep.grace_period={self.grace_period}")


def load_sweep_file(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``sweep:`` mapping of a sweep file, or None when the YAML is a plain pipeline config."""
    data = cfg.load_yaml(path)
    if "sweep" not in data:
        return None
    extra = sorted(set(data) - {"sweep"})
    if extra:
        raise ConfigError(f"sweep file {path}: unexpected top-level keys {extra}; put everything under 'sweep:'")
    if not isinstance(data["sweep"], dict):
        raise ConfigError(f"sweep file {path}: 'sweep' must be a mapping")
    return data["sweep"]


def sweep_from_sources(target: str | None, file_layer: dict[str, Any] | None, flags: dict[str, Any],
                       searches: list[str], sets: list[str]) -> SweepConfig:
    """Sweep file (if any) below CLI flags; --search/--set add to (and override) the file's."""
    data: dict[str, Any] = dict(file_layer or {})
    if target and file_layer is None:
        data["preset"] = target
    data.update({k: v for k, v in flags.items() if v is not None})
    search = dict(data.get("search") or {})
    for text in searches:
        spec = parse_search(text)
        search[spec.key] = text.split("=", 1)[1].strip()
    data["search"] = search
    data["set"] = list(data.get("set") or []) + list(sets)
    return cfg.from_dict(SweepConfig, data, prefix="sweep.")


# --- planning: everything checked before a trial starts -----------------------------------
@dataclass
class Plan:
    sweep: SweepConfig
    pipeline: str
    base: dict[str, Any]  # the resolved base experiment, as a mapping (no 'pipeline' key)
    specs: list[SearchSpec]
    metric: str
    mode: str
    bundles: list[dict[str, float]]  # the trial's placement group: driver first, then its actors
    outside: dict[str, float] = field(default_factory=dict)  # e.g. Ray Train workers (own group)

    def per_trial(self) -> dict[str, float]:
        need: dict[str, float] = {}
        for b in [*self.bundles, self.outside]:
            for k, v in b.items():
                need[k] = need.get(k, 0.0) + float(v)
        return need

    @property
    def experiment_dir(self) -> Path:
        return Path(self.sweep.storage_path).resolve() / str(self.sweep.name)


def _declared(pipeline: str):
    from pipelines.registry import get_pipeline

    return get_pipeline(pipeline)


def reported_metrics(pipeline: str) -> tuple[str, ...] | None:
    """The names the pipeline declares it reports (None: it declares none, so no check)."""
    return tuple(_declared(pipeline).metrics) or None


def default_metric(pipeline: str) -> tuple[str, str] | None:
    return _declared(pipeline).tune_metric


def fit_bundles_to_cluster(plan: Plan, cluster: dict[str, float]) -> None:
    """Recompute the actors' bundles once the cluster is known: an actor may ask for a GPU
    share only when the cluster has a GPU (inside a trial the actors are captured into its
    placement group, so the group must hold what they ask for)."""
    from pipelines.registry import get_pipeline

    pipe = get_pipeline(plan.pipeline)
    experiment = cfg.from_dict(pipe.experiment, plan.base)
    plan.bundles = [plan.bundles[0], *pipe.bundles(experiment, cluster)]


def plan_sweep(sweep: SweepConfig) -> Plan:
    from pipelines.registry import resolve

    if not sweep.preset:
        raise ConfigError("no base config: give a preset or YAML file, e.g. 'reinforge tune toy --search ...'")
    from pipelines.registry import PIPELINES

    preset, config_file = (None, sweep.preset) if Path(sweep.preset).suffix in (".yaml", ".yml") else (sweep.preset, None)
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"config file {config_file} not found")
    if preset and preset in PIPELINES and not (cfg.PRESET_DIR / f"{preset}.yaml").is_file():
        # a bare pipeline name (e.g. rlhf-sft): its dataclass defaults are the base config
        resolved = resolve(pipeline=preset, overrides=list(sweep.set))
    else:
        resolved = resolve(preset=preset, config_file=config_file, overrides=list(sweep.set))
    pipeline = resolved.pipeline.name
    if not sweep.search:
        raise ConfigError("nothing to search: add --search KEY=EXPR, e.g. --search toy.learning_rate=loguniform(1e-3,1e-1)")
    specs = [parse_search(k, v) for k, v in sweep.search.items()]
    if sweep.scheduler == "pbt":
        grids = [s.key for s in specs if s.kind == "grid"]
        if grids:
            raise ConfigError(f"PBT cannot mutate grid() values ({', '.join(grids)}); use choice() or a distribution")
    base = resolved.to_dict()
    base.pop("pipeline")
    cls = resolved.pipeline.experiment
    for spec in specs:  # every value a trial could get must build a valid experiment
        for value in spec.examples():
            probe = cfg.merge(base, nest({spec.key: value}))
            try:
                cfg.from_dict(cls, probe)
            except ConfigError as exc:
                raise ConfigError(f"search {spec}: {exc}") from None
    metric, mode = sweep.metric, sweep.mode
    default = default_metric(pipeline)
    if metric is None:
        if default is None:
            raise ConfigError(f"pipeline {pipeline!r} declares no default metric; pass --metric NAME --mode min|max")
        metric, mode = default[0], mode or default[1]
    known = reported_metrics(pipeline)
    if known is not None and metric not in known and metric not in AUTO_METRICS:
        guess = cfg.nearest(metric, list(known))
        hint = f"did you mean {guess!r}? " if guess else ""
        raise ConfigError(f"pipeline {pipeline!r} never reports metric {metric!r}; {hint}it reports: {', '.join(known)}")
    if mode is None:
        if default and default[0] == metric:
            mode = default[1]
        else:
            raise ConfigError(f"--metric {metric} needs --mode min or --mode max")
    if not sweep.name:
        sweep.name = f"{pipeline}-sweep-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    bundles = [{"CPU": float(sweep.cpus_per_trial), **({"GPU": float(sweep.gpus_per_trial)} if sweep.gpus_per_trial else {})}]
    bundles += resolved.pipeline.bundles(resolved.experiment, {})
    return Plan(sweep, pipeline, base, specs, metric, mode, bundles, resolved.pipeline.outside(resolved.experiment))


def check_resources(plan: Plan, cluster: dict[str, float]) -> None:
    """Refuse a sweep whose single trial cannot fit on the cluster (it would wait forever)."""
    need = plan.per_trial()
    need_gpu, need_cpu = need.get("GPU", 0.0), need.get("CPU", 0.0)
    have_gpu, have_cpu = float(cluster.get("GPU", 0.0)), float(cluster.get("CPU", 0.0))
    if plan.sweep.gpus_per_trial > have_gpu + 1e-9:
        raise ConfigError(f"--gpus-per-trial {plan.sweep.gpus_per_trial:g} but the cluster has {have_gpu:g} GPUs; "
                          "lower it (fractions like 0.5 share a GPU) or connect to a GPU cluster with --address")
    if need_gpu > have_gpu + 1e-9:
        raise ConfigError(f"one trial needs {need_gpu:g} GPUs (its driver and workers) but the cluster has "
                          f"{have_gpu:g}; lower --gpus-per-trial or the pipeline's GPU workers")
    if need_cpu > have_cpu + 1e-9:
        raise ConfigError(f"one trial needs {need_cpu:g} CPUs (driver {plan.sweep.cpus_per_trial:g} + its actors and "
                          f"workers) but the cluster has {have_cpu:g}; lower --cpus-per-trial or the pipeline's workers")


def concurrency_limit(plan: Plan, cluster: dict[str, float]) -> int | None:
    """At most as many trials at once as the cluster holds when trials use resources Tune cannot
    see (Train workers); otherwise Tune's own accounting suffices (None)."""
    limit = plan.sweep.max_concurrent
    if plan.outside:
        need = plan.per_trial()
        fits = min(int(float(cluster.get(k, 0.0)) // v) for k, v in need.items() if v > 0)
        limit = max(1, min(limit or fits, fits))
    return limit


# --- the trainable ------------------------------------------------------------------------
class _TuneReporter:
    """RunDir listeners that turn logged rows and saved checkpoints into ``tune.report`` calls.

    Each logged row is reported once. A row is held back until the next row or checkpoint, so
    a checkpoint saved right after its row is reported together with it (one Tune iteration).
    """

    def __init__(self, metric: str | None = None, checkpoint_step: int = 0):
        self.metric = metric
        self.pending: dict[str, Any] | None = None
        self.last: dict[str, Any] = {}
        self.metric_value: Any = None
        # the step of the latest checkpoint (0: none yet; a restored trial: the restored one's),
        # in every report: PBT's clock, which moves only at a report that carries a checkpoint
        self.checkpoint_step = checkpoint_step

    def carry_from(self, rows: list[dict[str, Any]]) -> None:
        """Start from the metric's last finite value in the run's rows (those before the restored
        checkpoint): a trial restarted at its last checkpoint, with nothing left to train, still
        ends on a report that has the metric."""
        for row in rows:
            self._clean(row)  # keeps each finite value of the metric as metric_value

    def _clean(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in row.items() if k != "time"}
        for k, v in out.items():  # RunDir writes non-finite floats as text; Tune wants numbers
            if isinstance(v, str) and v.lower() in ("nan", "inf", "-inf"):
                out[k] = float(v)
        if self.metric and isinstance(out.get(self.metric), float) and not math.isfinite(out[self.metric]):
            del out[self.metric]  # e.g. no episode finished yet: schedulers skip a report without it
        # Rows differ (training rows, eval rows): carry the searched metric's latest value so
        # every report after its first appearance has it (schedulers skip reports without it).
        if self.metric:
            if self.metric in out:
                self.metric_value = out[self.metric]
            elif self.metric_value is not None:
                out[self.metric] = self.metric_value
        out["checkpoint_step"] = self.checkpoint_step
        return out

    def on_row(self, row: dict[str, Any]) -> None:
        from ray import tune

        if self.pending is not None:
            tune.report(self.pending)
        self.pending = self.last = self._clean(row)

    def on_checkpoint(self, path: Path, meta: dict[str, Any]) -> None:
        from ray import tune

        metrics = dict(self.pending if self.pending is not None else self.last)
        self.checkpoint_step = metrics["checkpoint_step"] = int(meta.get("step", -1))
        self.pending = None
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(path)))

    def finish(self, result: dict[str, Any]) -> None:
        from ray import tune

        final = self._clean({k: v for k, v in (result or {}).items() if isinstance(v, (int, float, str, bool))})
        if self.pending is not None:
            tune.report({**self.pending, **final})
        elif final and any(self.last.get(k) != v for k, v in final.items()):
            tune.report({**self.last, **final})
        elif not self.last:
            tune.report(final or {"done_without_metrics": 1})


def _restore_checkpoint(checkpoint, run_dir: Path) -> int:
    """Copy a Tune checkpoint back into ``run_dir/checkpoints/step_*`` (replacing what is there)."""
    ckpts = run_dir / "checkpoints"
    shutil.rmtree(ckpts, ignore_errors=True)
    ckpts.mkdir(parents=True, exist_ok=True)
    tmp = ckpts / ".restoring"
    checkpoint.to_directory(str(tmp))
    try:
        step = int(json.loads((tmp / "manifest.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        shutil.rmtree(tmp, ignore_errors=True)
        raise ReinforgeError(f"Tune checkpoint {checkpoint.path} is not a reinforge checkpoint (no manifest.json)") from None
    tmp.rename(ckpts / f"step_{step:09d}")
    return step


def _trial_folder(trainable_name: str, trial_id: str) -> str:
    """The trial's folder in the experiment dir, named by Tune (``_trial_dirname``) and found by
    the trial itself (``_trial_run_dir``) from the same two names."""
    return f"{trainable_name}_{trial_id}"


def _trial_dirname(trial) -> str:
    return _trial_folder(trial.trainable_name, trial.trial_id)


def _trial_run_dir(experiment_dir: str, trainable_name: str) -> Path:
    """``<experiment>/<trial folder>/run``: the run dir is written straight into the sweep's
    storage (a local disk or a shared filesystem every node mounts). Tune's own trial dir
    (``get_trial_dir()``) is a staging folder that is not a safe home for it: the driver syncs
    that folder only from the driver's node, and once an actor is reused (a PBT exploit) Tune
    points the trial at a working dir that is never synced at all, so a restored trial's rows
    would stop reaching the sweep."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    exp = Path(experiment_dir)
    # a sweep started with Tune's default folder names: <trainable>_<trial id>_<index>_<params>...
    found = sorted(p for p in exp.glob(f"*_{trial_id}_*") if p.is_dir())
    return (found[0] if found else exp / _trial_folder(trainable_name, trial_id)) / "run"


def _write_placement(run_dir: Path) -> None:
    """``placement.json``: where the trial ran (node, GPUs), for debugging placement on a cluster."""
    import ray

    ctx = ray.get_runtime_context()
    info = {"node_id": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "placement.json").write_text(json.dumps(info, indent=2))


def make_trainable(pipeline: str, base: dict[str, Any], experiment_dir: str, metric: str | None = None):
    """A Tune function trainable running ``pipeline`` with ``base`` + the trial's sampled values,
    writing its run dir under ``experiment_dir``."""
    name = f"reinforge_{pipeline.replace('-', '_')}"

    def trainable(config: dict[str, Any]) -> None:
        from ray import tune

        from cluster.rundir import RunDir, read_metrics
        from pipelines.registry import Resolved, execute, get_pipeline

        pipe = get_pipeline(pipeline)
        run_dir = _trial_run_dir(experiment_dir, name)
        data = cfg.merge(base, nest(config))
        data["run"] = {**data.get("run", {}), "run_dir": str(run_dir), "address": None}
        resolved = Resolved(pipe, cfg.from_dict(pipe.experiment, data))
        checkpoint, restored_step = tune.get_checkpoint(), 0
        if checkpoint is not None:
            restored_step = _restore_checkpoint(checkpoint, run_dir)
        elif (run_dir / "checkpoints").is_dir():  # restarted from scratch: forget the old attempt
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        _write_placement(run_dir)
        run = resolved.experiment.run
        rd = RunDir(run_dir, config=resolved.to_dict(), seed=run.seed, device=run.device,
                    tensorboard=run.tensorboard, resume=checkpoint is not None)
        reporter = _TuneReporter(metric, restored_step)
        if checkpoint is not None:  # a restart (a synchronous PBT pause, an exploit) keeps its metric
            reporter.carry_from(read_metrics(run_dir))
        rd.add_checkpoint_listener(reporter.on_checkpoint)
        _, result = execute(resolved, listeners=[reporter.on_row], run_dir=rd)
        reporter.finish(result)

    trainable.__name__ = name
    return trainable


# --- running ------------------------------------------------------------------------------
def _scheduler(plan: Plan):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s = plan.sweep
    if s.scheduler == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=s.asha_max_t, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor)
    if s.scheduler == "pbt":
        # require_attrs=False: a pipeline's first rows may come before its metric does (RLHF PPO
        # logs the starting policy's evaluation, without the training batch's proxy_reward);
        # from its first appearance on, _TuneReporter carries the metric in every report.
        # time_attr checkpoint_step: Tune's save of a function trainable returns its latest
        # report, so PBT deciding at a report without a checkpoint finds nothing to copy from
        # the top trial and skips the exploit; this clock moves only at checkpoint reports.
        return PopulationBasedTraining(time_attr="checkpoint_step", perturbation_interval=s.perturbation_interval,
                                       hyperparam_mutations={sp.key: sp.to_tune() for sp in plan.specs},
                                       require_attrs=False, synch=s.synch)
    return FIFOScheduler()


def _progress_callback(plan: Plan):
    """A Tune callback driving one ``cluster.progress`` bar: trials finished out of the total,
    with the best value of the metric so far (plain lines when stderr is not a terminal)."""
    from ray import tune

    from cluster.progress import progress

    total = plan.sweep.num_samples * math.prod(len(sp.args) for sp in plan.specs if sp.kind == "grid")
    pick = min if plan.mode == "min" else max

    class SweepProgress(tune.Callback):
        def __init__(self):
            self.bar = None
            self.best: float | None = None

        def setup(self, **info):
            self.bar = progress(total, f"sweep {plan.sweep.name}", unit="trial")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            value = _num(result.get(plan.metric))
            if value is not None:
                self.best = value if self.best is None else pick(self.best, value)
                self.bar.update(0, **{f"best {plan.metric}": self.best})

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.bar.update(1)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.bar.update(1, errored=sum(t.status == "ERROR" for t in trials))

        def on_experiment_end(self, trials, **info):
            self.bar.close()

    return SweepProgress()


def _tune_objects(plan: Plan, verbose: int):
    from ray import tune

    s = plan.sweep
    # Rows without the metric (before a pipeline's first evaluation) are fine: schedulers skip them.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    trainable = tune.with_resources(make_trainable(plan.pipeline, plan.base, str(plan.experiment_dir), plan.metric),
                                    tune.PlacementGroupFactory(plan.bundles, strategy="PACK"))
    run_config = tune.RunConfig(
        name=s.name, storage_path=str(Path(s.storage_path).resolve()), verbose=verbose,
        callbacks=[_progress_callback(plan)],
        failure_config=tune.FailureConfig(max_failures=s.max_failures),
        # PBT exploits another trial's checkpoint, which must not be rotated away meanwhile.
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=max(s.keep_checkpoints, 5) if s.scheduler == "pbt" else s.keep_checkpoints),
    )
    return trainable, run_config


def write_plan(plan: Plan) -> Path:
    """``sweep.yaml`` in the experiment dir: all that ``--resume`` needs to rebuild the trainable."""
    d = plan.experiment_dir
    d.mkdir(parents=True, exist_ok=True)
    doc = {"pipeline": plan.pipeline, "metric": plan.metric, "mode": plan.mode, "bundles": plan.bundles,
           "outside": plan.outside,
           "sweep": cfg.to_dict(plan.sweep), "base": plan.base}
    (d / "sweep.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return d / "sweep.yaml"


def read_plan(experiment_dir: str | os.PathLike) -> Plan:
    d = Path(experiment_dir)
    path = d / "sweep.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume {experiment_dir}: not a reinforge sweep directory (no sweep.yaml)")
    doc = cfg.load_yaml(path)
    if doc["sweep"].get("max_concurrent") == 0:  # written before 0 ("no limit") became null
        doc["sweep"]["max_concurrent"] = None
    sweep = cfg.from_dict(SweepConfig, doc["sweep"], prefix="sweep.")
    sweep.storage_path, sweep.name = str(d.resolve().parent), d.resolve().name
    specs = [parse_search(k, v) for k, v in sweep.search.items()]
    return Plan(sweep, doc["pipeline"], doc["base"], specs, doc["metric"], doc["mode"], doc["bundles"],
                doc.get("outside") or {})


def run_sweep(plan: Plan, address: str | None = None, verbose: int = 0, num_cpus: int | None = None):
    """Connect, check resources, run the sweep; returns the ResultGrid."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from cluster.runtime import connect

    cluster = connect(address, num_cpus=num_cpus)
    fit_bundles_to_cluster(plan, cluster)
    check_resources(plan, cluster)
    write_plan(plan)
    s = plan.sweep
    trainable, run_config = _tune_objects(plan, verbose)
    tuner = tune.Tuner(
        trainable,
        param_space={sp.key: sp.to_tune() for sp in plan.specs},
        tune_config=tune.TuneConfig(metric=plan.metric, mode=plan.mode, scheduler=_scheduler(plan), reuse_actors=True,
                                    trial_dirname_creator=_trial_dirname,
                                    num_samples=s.num_samples,
                                    # the limit goes to the generator: Tune ignores max_concurrent_trials
                                    # when a BasicVariantGenerator is passed in
                                    search_alg=BasicVariantGenerator(max_concurrent=concurrency_limit(plan, cluster) or 0,
                                                                     random_state=s.seed)),
        run_config=run_config,
    )
    return tuner.fit()


def resume_sweep(experiment_dir: str | os.PathLike, address: str | None = None, verbose: int = 0):
    """Continue an interrupted sweep (``Tuner.restore``): unfinished and errored trials resume
    from their last checkpoints; finished ones are kept as they are."""
    from ray import tune

    from cluster.runtime import connect

    plan = read_plan(experiment_dir)
    path = str(Path(experiment_dir).resolve())
    if not tune.Tuner.can_restore(path):
        raise ConfigError(f"--resume {experiment_dir}: no Tune experiment state in it (was the sweep started?)")
    check_resources(plan, connect(address))
    trainable, _ = _tune_objects(plan, verbose)
    tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    return plan, tuner.fit()


# --- the summary --------------------------------------------------------------------------
@dataclass
class TrialRow:
    trial: str
    status: str
    params: dict[str, Any]
    last: float | None
    best: float | None
    iterations: int
    run_dir: str
    error: str | None = None


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def summarize(plan: Plan, results) -> list[TrialRow]:
    """One row per trial, best first (by the metric's best value over the trial)."""
    rows = []
    for r in results:
        metrics = r.metrics or {}
        history = []
        df = r.metrics_dataframe
        if df is not None and plan.metric in df:
            history = [x for x in (_num(v) for v in df[plan.metric].tolist()) if x is not None]
        pick = min if plan.mode == "min" else max
        err = None
        if r.error is not None:
            text = str(r.error).strip().splitlines()
            err = text[-1] if text else type(r.error).__name__
        rows.append(TrialRow(
            trial=str(metrics.get("trial_id") or Path(r.path).name), status="ERROR" if r.error else "OK",
            params={sp.key: (r.config or {}).get(sp.key) for sp in plan.specs},
            last=_num(metrics.get(plan.metric)), best=pick(history) if history else _num(metrics.get(plan.metric)),
            iterations=int(metrics.get("training_iteration") or 0), run_dir=str(Path(r.path) / "run"), error=err,
        ))
    sign = 1 if plan.mode == "min" else -1
    rows.sort(key=lambda t: (t.best is None, sign * (t.best if t.best is not None else 0.0)))
    return rows


def print_table(plan: Plan, rows: list[TrialRow], top: int) -> None:
    keys = [sp.key for sp in plan.specs]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    header = ["rank", "trial", *keys, f"best {plan.metric}", f"last {plan.metric}", "iters", "status"]
    body = [[str(i + 1), t.trial, *[fmt(t.params.get(k)) for k in keys], fmt(t.best), fmt(t.last),
             str(t.iterations), t.status] for i, t in enumerate(rows[:top])]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    print(f"best trials by {plan.metric} ({plan.mode}), {len(rows)} trials, scheduler {plan.sweep.scheduler}:")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in body:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def plot_trials(plan: Plan, results, path: Path) -> Path | None:
    """The metric against Tune iterations, one line per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for r in results:
        df = r.metrics_dataframe
        if df is None or plan.metric not in df or "training_iteration" not in df:
            continue
        label = (r.metrics or {}).get("trial_id") or Path(r.path).name
        ax.plot(df["training_iteration"], df[plan.metric], marker=".", label=str(label))
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("Tune iteration (logged rows)")
    ax.set_ylabel(plan.metric)
    ax.set_title(f"{plan.sweep.name}: {plan.metric} across trials ({plan.sweep.scheduler})")
    if drawn <= 12:
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(plan: Plan, results, top: int | None = None) -> dict[str, Any]:
    """Print the table, write the plot and ``best.json``; refuse when every trial failed."""
    rows = summarize(plan, results)
    d = plan.experiment_dir
    plot = plot_trials(plan, results, d / "plots" / f"{plan.metric.replace('/', '_')}.png")
    errors = [t for t in rows if t.status == "ERROR"]
    ok = [t for t in rows if t.status == "OK" and t.best is not None]
    summary = {"experiment_dir": str(d), "metric": plan.metric, "mode": plan.mode, "trials": len(rows),
               "errored": len(errors), "plot": str(plot) if plot else None,
               "best": ({"trial": ok[0].trial, "params": ok[0].params, "value": ok[0].best, "run_dir": ok[0].run_dir}
                        if ok else None),
               "rows": [t.__dict__ for t in rows]}
    (d / "best.json").write_text(json.dumps(summary, indent=2, default=str))
    print_table(plan, rows, top or plan.sweep.top)
    if errors:
        print(f"{len(errors)} trial(s) failed; first error: {errors[0].error}")
    print(f"experiment dir: {d}")
    if plot:
        print(f"plot: {plot}")
    # Finished trials (and those a scheduler stopped) end with done=True; Ctrl-C leaves it False.
    unfinished = sum(1 for r in results if r.error is None and not (r.metrics or {}).get("done"))
    if unfinished > 0:
        raise SweepInterrupted(f"sweep stopped with {unfinished} of {len(results)} trial(s) unfinished; "
                               f"continue it with: reinforge tune --resume {d}")
    if not ok:
        first = errors[0].error if errors else f"no trial reported the metric {plan.metric!r}"
        raise ReinforgeError(f"every trial failed ({first}); see the trial run dirs under {d}")
    print(f"best: {ok[0].trial} {plan.metric}={ok[0].best:.4g} {ok[0].params} -> {ok[0].run_dir}")
    return summary
