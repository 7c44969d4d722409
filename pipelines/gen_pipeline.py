"""The ``gen`` pipeline: generative pretraining with Ray Train (GANs, VAEs, DDPM, contrastive).

run(): record Atari frames if needed -> ``generative.train.fit`` (TorchTrainer; storage inside the
run dir, name ``gen``, so ``--resume RUN_DIR`` continues from Ray's latest checkpoint) -> the
per-epoch metrics into the run dir -> the final checkpoint into ``checkpoints/`` -> offline
metrics, sample grids and (for Atari encoders) ``encoder/torso.safetensors``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.progress import progress
from cluster.run_config import RunConfig
from generative.config import MODEL_EVAL_METRICS, MODEL_ROW_METRICS, GenConfig
from pipelines.pipeline import Bar, DemoStep, Pipeline

# What the per-epoch rows hold (generative.train.train_loop_per_worker and each model's train_step).
ROW_METRICS = (
    "epoch", "train_step", "samples_per_s", "samples_per_s_worker", "epoch_s", "workers",
    "loss", "d_loss", "g_loss", "wasserstein_estimate", "gradient_penalty", "d_real", "d_fake",
    "recon_log_likelihood", "kl",
)
# The final evaluation's numbers (generative.evaluate.evaluate): in the final result as they are,
# and in the last metrics row with the ``eval/`` prefix.
EVAL_METRICS = (
    "modes_captured", "num_modes", "high_quality_fraction", "heldout_elbo", "class_coverage",
    "classifier_frechet_distance", "conditional_accuracy", "linear_probe_accuracy",
    "linear_probe_accuracy_untrained",
)
ROW_METRICS += tuple(dict.fromkeys(k for names in MODEL_ROW_METRICS.values() for k in names if k not in ROW_METRICS))
EVAL_METRICS += tuple(dict.fromkeys(k for names in MODEL_EVAL_METRICS.values() for k in names if k not in EVAL_METRICS))
# the final result also holds "epochs" and, for Atari encoders, "encoder" (the torso's path)
METRICS = (*ROW_METRICS, "epochs", "encoder", *EVAL_METRICS, *(f"eval/{k}" for k in EVAL_METRICS))
HEADLINE_LOSSES = ("loss", "d_loss", "g_loss")  # shown on the progress bar, kept in the final result


POLL_SECONDS = 1.0  # how often the driver looks for new per-epoch rows while Ray Train runs


class _MetricsTail:
    """The new complete lines of the workers' ``train_metrics.jsonl`` since the last read.

    Rank 0 appends one JSON row per reported epoch; a half-written last line is left for the
    next read. On ``--resume`` the rows already there (logged by the earlier run) are skipped.
    """

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.is_file() else 0

    def read_new(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in chunk[:end].decode().splitlines() if line.strip()]


@dataclass
class GenExperiment:
    run: RunConfig = field(default_factory=RunConfig)
    gen: GenConfig = field(default_factory=GenConfig)


def run(exp: GenExperiment, run_dir) -> dict[str, Any]:
    from cluster.checkpoint import load_checkpoint
    from cluster.runtime import select_device
    from generative.evaluate import evaluate
    from generative.train import build_model, check_compatible, fit, restore

    cfg, seed = exp.gen, exp.run.seed
    if cfg.use_gpu:
        select_device("cuda")  # one line if no GPU is visible
    if cfg.autoencoder:  # latent-ddpm: Ray Train workers run in their own directory
        cfg.autoencoder = str(Path(cfg.autoencoder).resolve())
    frames_path = None
    if cfg.data == "atari-frames":
        from generative.data import record_atari_frames

        frames_path = str(record_atari_frames(cfg.atari_game, cfg.atari_frames, seed).resolve())
    latest = run_dir.latest_checkpoint()
    start_epoch = 0
    if latest is not None:  # --resume: the run dir must hold this model
        state = load_checkpoint(latest)["state"]
        check_compatible(state, cfg, f"run dir {run_dir.path}")
        start_epoch = int(state.get("epoch", 0))
    # absolute paths: Ray Train workers run in their own working directory
    metrics_path = (run_dir.path / "train_metrics.jsonl").resolve()
    tail = _MetricsTail(metrics_path)
    # trainer.fit() blocks until the end, so it runs in a thread (Ray Train supports that: Tune
    # does the same) while this thread streams each epoch's row into metrics.jsonl /
    # TensorBoard / the listeners (Tune's reporter, so ASHA can stop a trial early) as it lands.
    # A daemon thread: Ctrl-C ends the driver, and with it Ray Train's controller and workers.
    outcome: dict[str, Any] = {}

    def _fit() -> None:
        try:
            outcome["result"] = fit(cfg, run_dir.path.resolve() / "ray_train", seed=seed, name="gen",
                                    resume_from=str(latest.resolve()) if latest else None,
                                    frames_path=frames_path, metrics_path=str(metrics_path))
        except BaseException as exc:  # re-raised below, in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=_fit, name="gen-fit", daemon=True)
    thread.start()
    rows: list[dict[str, Any]] = []
    # one bar over the epochs; rows land every gen.log_every epochs, so it moves to each row's epoch
    with progress(cfg.epochs, f"{cfg.model} {cfg.data}", unit="epoch", initial=start_epoch) as bar:
        while True:
            thread.join(POLL_SECONDS)
            finished = not thread.is_alive()
            for row in tail.read_new():
                rows.append(dict(row))
                step = row.pop("step")
                run_dir.log(row, step=step)
                bar.set(row["epoch"], samples_per_s=row["samples_per_s"],
                        **{k: row[k] for k in HEADLINE_LOSSES if k in row})
            if finished:
                break
    if "error" in outcome:
        raise outcome["error"]
    final_path, last = outcome["result"]
    ckpt = load_checkpoint(final_path)
    run_dir.save_checkpoint(ckpt.step, ckpt.objects, keep=exp.run.keep_checkpoints, model=cfg.model, data=cfg.data)
    model = build_model(cfg, "cpu")
    restore(model, ckpt, cfg)
    metrics, _ = evaluate(model, cfg, run_dir.path, seed=seed, frames_path=frames_path)
    loss_keys = [k for k in HEADLINE_LOSSES if any(k in r for r in rows)]
    if loss_keys:
        run_dir.plot("losses", loss_keys, title=f"{cfg.model} on {cfg.data}")
    final = {"epochs": ckpt.step, "samples_per_s": float(last.get("samples_per_s", 0.0)),
             "workers": max(cfg.workers, 1)}
    final.update({k: v for k, v in last.items() if k in HEADLINE_LOSSES})
    final.update(metrics)
    run_dir.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=ckpt.step)
    (Path(run_dir.path) / "final_metrics.json").write_text(json.dumps(final, indent=2))
    return final


def preflight(experiment) -> None:
    """Checks that read files, before the run dir or Ray starts: latent-ddpm's gen.autoencoder."""
    if experiment.gen.model == "latent-ddpm":
        from generative.latent_ddpm import check_autoencoder

        check_autoencoder(experiment.gen)


def train_workers(experiment) -> dict[str, float]:
    """Ray Train's workers (TorchTrainer places them in a placement group of its own):
    one CPU each, plus one GPU each with ``gen.use_gpu``."""
    gen = experiment.gen
    n = max(int(gen.workers), 1)
    return {"CPU": float(n), **({"GPU": float(n)} if gen.use_gpu else {})}


PIPELINE = Pipeline(
    name="gen", experiment=GenExperiment, run=run,
    description="generative pretraining with Ray Train: GANs, VAEs, DDPM, contrastive encoders",
    metrics=METRICS, outside_resources=train_workers, preflight=preflight,
    demos=(DemoStep("gen", "gen-demo", "WGAN-GP (lambda 0.1, EMA of G) on the 8-Gaussian ring through Ray Train",
                    keep=("modes_captured", "num_modes", "high_quality_fraction", "samples_per_s", "epochs"),
                    bars=(Bar("modes_captured", ">=", 8), Bar("high_quality_fraction", ">=", 0.8))),),
)
