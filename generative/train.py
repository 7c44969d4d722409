"""The Ray Train driver: every generative model trains data-parallel through ``TorchTrainer``.

    driver: fit(cfg) -> TorchTrainer(train_loop_per_worker, ScalingConfig(num_workers, use_gpu),
                                     RunConfig(name, storage_path, FailureConfig(max_failures)))
    worker: its shard of the offline dataset -> model.train_step per minibatch (DDP through
            ray.train.torch.prepare_model) -> ray.train.report(metrics, checkpoint) every epoch

Checkpoints inside Ray's storage are ``cluster.checkpoint`` directories (safetensors + JSON), so
the driver and ``reinforge gen sample`` read them without unpickling anything. Resuming is Ray
Train's: re-running with the same ``name`` and ``storage_path`` hands the latest checkpoint to
``ray.train.get_checkpoint()``; ``resume_from`` (a run dir checkpoint) covers in-process runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cluster.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from cluster.errors import CheckpointError, ReinforgeError
from cluster.seeding import derive_seed, seed_everything
from generative import data as gdata
from generative.config import GenConfig

FAMILY = {
    "gan": "gan", "minimax-gan": "gan", "wgan": "gan", "wgan-gp": "gan", "cgan": "gan",
    "vae": "vae", "cvae": "vae", "ddpm": "ddpm", "simclr": "contrastive", "moco": "contrastive",
    "byol": "contrastive", "simsiam": "contrastive", "cyclegan": "cyclegan", "stylegan": "stylegan",
    "latent-ddpm": "latent-ddpm", "hopfield": "hopfield", "rbm": "rbm",
}


def data_shape(cfg: GenConfig) -> tuple[int, ...]:
    if cfg.is_2d:
        return (2,)
    if cfg.data == "atari-frames":
        return (4, 84, 84)
    if cfg.data == "digit-domains":  # channel 0: a domain-A image, channel 1: an unrelated domain-B image
        return (2, cfg.image_size, cfg.image_size)
    return (1, cfg.image_size, cfg.image_size)


def num_classes(cfg: GenConfig) -> int:
    return 10 if cfg.data == "digits" else 0


def build_model(cfg: GenConfig, device: torch.device | str = "cpu"):
    """The model object (networks + optimisers + train_step + sample) for ``cfg.model``."""
    device = torch.device(device)
    family = FAMILY[cfg.model]
    if family == "gan":
        from generative.gan import GANModel as cls
    elif family == "vae":
        from generative.vae import VAEModel as cls
    elif family == "ddpm":
        from generative.ddpm import DDPMModel as cls
    elif family == "cyclegan":
        from generative.cyclegan import CycleGANModel as cls
    elif family == "stylegan":
        from generative.stylegan import StyleGANModel as cls
    elif family == "latent-ddpm":
        from generative.latent_ddpm import LatentDDPMModel as cls
    elif family == "hopfield":
        from generative.hopfield import HopfieldModel as cls
    elif family == "rbm":
        from generative.rbm import RBMModel as cls
    else:
        from generative.contrastive import ContrastiveModel as cls
    return cls(cfg, data_shape(cfg), num_classes(cfg), device)


# --- checkpoint objects ------------------------------------------------------------------------
def checkpoint_objects(model, cfg: GenConfig, epoch: int, step: int) -> dict[str, Any]:
    from generative.nets import unwrap

    objects: dict[str, Any] = {
        "model": {k: unwrap(m).state_dict() for k, m in model.modules().items()},
        "optimizer": {k: o.state_dict() for k, o in model.optimizers().items()},
        "state": {"epoch": epoch, "step": step, "model": cfg.model, "data": cfg.data, "config": cfg.to_dict()},
    }
    if getattr(model, "queue", None) is not None:  # MoCo's dictionary of negatives
        objects["queue"] = {"keys": model.queue.keys, "ptr": model.queue.ptr}
    return objects


def check_compatible(state: dict[str, Any], cfg: GenConfig, where: str) -> None:
    """Refuse to resume a checkpoint written by another model or data set."""
    got = (state.get("model"), state.get("data"))
    if got != (cfg.model, cfg.data):
        raise CheckpointError(
            f"{where} holds a {got[0]} model trained on {got[1]}, not {cfg.model} on {cfg.data}; "
            "resume with the same --model/--data or start a new --run-dir"
        )


def restore(model, ckpt, cfg: GenConfig) -> tuple[int, int]:
    """Load networks, optimisers (and the MoCo queue) from a loaded Checkpoint; returns (epoch, step)."""
    from generative.nets import unwrap

    state = ckpt["state"]
    check_compatible(state, cfg, f"checkpoint {ckpt.path}")
    try:
        for k, m in model.modules().items():
            if k.endswith("_ema") and k not in ckpt["model"]:
                continue  # EMA switched on at resume: the average starts from the live weights
            unwrap(m).load_state_dict(ckpt["model"][k])
        for k, o in model.optimizers().items():
            if "optimizer" in ckpt.objects:
                o.load_state_dict(ckpt["optimizer"][k])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit this model ({str(exc).splitlines()[0][:160]}); "
                              "were gen.hidden/latent_dim/image_size changed?") from None
    if "queue" in ckpt.objects and getattr(model, "queue", None) is not None:
        model.queue.keys.copy_(ckpt["queue"]["keys"])
        model.queue.ptr = int(ckpt["queue"]["ptr"])
    return int(state["epoch"]), int(state["step"])


def load_trained(path: str | os.PathLike, device: str = "cpu"):
    """(model, cfg, checkpoint) from a run dir or checkpoint directory, ready to sample."""
    ckpt = load_checkpoint(path)
    try:
        cfg = GenConfig(**ckpt["state"]["config"])
    except (TypeError, KeyError):
        raise CheckpointError(f"{ckpt.path} is not a generative checkpoint (no gen config inside); "
                              "pass a run dir written by 'reinforge gen train'") from None
    model = build_model(cfg, device)
    restore(model, ckpt, cfg)
    return model, cfg, ckpt


# --- the per-worker loop -----------------------------------------------------------------------
def _all_reduce_sum(value: float) -> float:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())
    return value


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = GenConfig(**config["gen"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(derive_seed(config["seed"], 100 + rank))
    if cfg.workers > 0:  # one thread per worker: each Train worker holds one CPU
        torch.set_num_threads(max(1, int(config.get("threads_per_worker", 1))))
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    full = gdata.load(cfg, "train", config["seed"], config.get("frames_path"))
    shard = gdata.shard(full, rank, world)
    batch_size = min(cfg.batch_size, len(shard))
    model = build_model(cfg, device)
    start_epoch = step = 0
    ray_ckpt = ray.train.get_checkpoint()
    if ray_ckpt is not None:
        with ray_ckpt.as_directory() as d:
            start_epoch, step = restore(model, load_checkpoint(d), cfg)
    elif config.get("resume_from"):
        start_epoch, step = restore(model, load_checkpoint(config["resume_from"]), cfg)
    if hasattr(model, "set_total_steps"):  # learning-rate schedules over the whole run
        model.set_total_steps(cfg.epochs * (len(shard) // batch_size))
    trainable = model.trainable() if hasattr(model, "trainable") else set(model.modules())
    model.set_modules({k: (ray.train.torch.prepare_model(m, move_to_device=device) if k in trainable else m)
                       for k, m in model.modules().items()})
    local_dir = Path(config["storage"]) / "local-mode"
    for epoch in range(start_epoch, cfg.epochs):
        gen = torch.Generator().manual_seed(derive_seed(config["seed"], epoch, rank))
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        seen, t0 = 0, time.perf_counter()
        for x, y in gdata.batches(shard, batch_size, gen):
            out = model.train_step(x.to(device), None if y is None else y.to(device), step)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            seen += len(x)
            step += 1
        seconds = time.perf_counter() - t0
        metrics: dict[str, Any] = {k: sums[k] / counts[k] for k in sums}
        metrics.update(epoch=epoch + 1, train_step=step, samples_per_s_worker=seen / max(seconds, 1e-9),
                       samples_per_s=_all_reduce_sum(seen / max(seconds, 1e-9)), epoch_s=seconds,
                       workers=world)
        if (epoch + 1) % cfg.log_every and epoch + 1 != cfg.epochs:
            continue
        objects = checkpoint_objects(model, cfg, epoch + 1, step)
        if cfg.workers > 0:  # Ray copies the reported directory into its storage
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    save_checkpoint(tmp, epoch + 1, objects, keep=None, metadata={"model": cfg.model, "data": cfg.data})
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt)
        else:  # in-process (num_workers=0): Ray keeps only a reference, so the directory must persist
            target = local_dir / f"checkpoint_{epoch + 1:06d}"
            save_checkpoint(target, epoch + 1, objects, keep=None, metadata={"model": cfg.model, "data": cfg.data})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(target)))
            for old in sorted(local_dir.glob("checkpoint_*"))[:-2]:
                shutil.rmtree(old, ignore_errors=True)
        if rank == 0 and config.get("metrics_path"):
            with open(config["metrics_path"], "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")


# --- the driver --------------------------------------------------------------------------------
def fit(cfg: GenConfig, storage: str | os.PathLike, seed: int = 0, name: str = "gen",
        resume_from: str | None = None, frames_path: str | None = None,
        metrics_path: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Train with ``TorchTrainer``; returns (path of the final cluster.checkpoint dir, last metrics)."""
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = Path(storage).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    loop_config = {"gen": cfg.to_dict(), "seed": seed, "resume_from": resume_from, "frames_path": frames_path,
                   "storage": str(storage), "metrics_path": metrics_path}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except ReinforgeError:
        raise
    except Exception as exc:  # TrainingFailedError wraps the workers' exceptions
        raise ReinforgeError(f"Ray Train run failed: {_first_error_line(exc)}") from None
    if result.checkpoint is None:
        raise ReinforgeError("Ray Train finished without a checkpoint (was gen.epochs reached already?)")
    with result.checkpoint.as_directory() as d:
        found = list_checkpoints(d)
        if not found:
            raise CheckpointError(f"Ray Train checkpoint {d} holds no reinforge checkpoint")
        final = storage / "final"
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(found[-1], final / found[-1].name)
    return final / found[-1].name, dict(result.metrics or {})


def _first_error_line(exc: BaseException) -> str:
    """The innermost readable message (a worker's ReinforgeError if that is what failed)."""
    seen = set()
    stack = [exc]
    best = None
    while stack:
        e = stack.pop()
        if id(e) in seen or e is None:
            continue
        seen.add(id(e))
        if isinstance(e, ReinforgeError):
            return str(e)
        for attr in ("worker_failures", "_worker_failures"):
            failures = getattr(e, attr, None)
            if isinstance(failures, dict):
                stack.extend(failures.values())
        stack.extend([e.__cause__, e.__context__])
        text = str(e).strip()
        raised = [ln.strip() for ln in text.splitlines() if re.match(r"^[\w.]*(Error|Exception): \S", ln.strip())]
        if raised:  # the exception line at the end of a worker's traceback snippet
            best = best or raised[-1]
        best = best or (text.splitlines()[0] if text else type(e).__name__)
    return (best or type(exc).__name__)[:300]
