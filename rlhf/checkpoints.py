"""Resumable checkpoints for the stages that train through a Hugging Face ``Trainer`` (SFT, DPO,
and the reward model's ``trl`` trainer), in the run dir's own format (safetensors + JSON).

Every ``checkpoint_every`` optimizer steps ``TrainerCheckpoints`` saves, from the live trainer:

    model      the trainable parameters (all of them, or only the LoRA adapters)
    optimizer  the optimizer's state dict          scheduler  the learning-rate scheduler's
    trainer    the ``TrainerState`` as JSON (global step, epoch, log history)
    rng        Python's, NumPy's and torch's random states (dropout and the data order go on as
               if the run had not stopped)

as ``RUN_DIR/checkpoints/step_<global step>``; under ``reinforge tune`` each one is reported to
Tune with the row it follows, so a PBT exploit or a crash retry continues it.

Why not the Trainer's own ``save_strategy``: its checkpoints are ``torch.save`` pickles
(optimizer.pt, scheduler.pt, rng_state.pth), and the project loads nothing pickled from a
directory a user can hand it. To resume, ``resume_dir`` rebuilds, in a fresh temporary
directory and from the safetensors checkpoint, what ``Trainer.train(resume_from_checkpoint=)``
reads (the weights through ``save_model``; optimizer.pt, scheduler.pt and rng_state.pth
written by this process a moment before), so the Trainer's own resume logic skips the batches
already trained on and the step count continues.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any


def trainable_state(model) -> dict[str, Any]:
    """name -> tensor of every parameter that trains (shared weights once)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_states() -> dict[str, Any]:
    """The random states the Trainer restores on resume, in the layout of its rng_state.pth."""
    import random

    import numpy as np
    import torch

    out = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.random.get_rng_state()
    return out


def trainer_checkpoint_objects(model, optimizer, scheduler, state) -> dict[str, Any]:
    return {"model": trainable_state(model), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "trainer": {"state_json": json.dumps(dataclasses.asdict(state), sort_keys=True)}, "rng": rng_states()}


def trainer_checkpoints(run_dir, every: int, keep: int | None = 2):
    """A ``TrainerCallback`` that saves a checkpoint every ``every`` optimizer steps (0: never)."""
    from transformers import TrainerCallback

    class TrainerCheckpoints(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
            step = state.global_step
            if run_dir is None or every <= 0 or step % every or step >= state.max_steps:
                return  # the last step is saved as the stage's artifact instead
            run_dir.save_checkpoint(step, trainer_checkpoint_objects(model, optimizer, lr_scheduler, state), keep=keep)

    return TrainerCheckpoints()


def resume_dir(trainer, run_dir, workdir: Path) -> str | None:
    """A ``resume_from_checkpoint`` directory rebuilt from the run dir's latest checkpoint
    (None when there is none). The trainer's model gets the checkpoint's weights first."""
    import torch

    from cluster.checkpoint import load_checkpoint
    from cluster.errors import CheckpointError

    latest = run_dir.latest_checkpoint() if run_dir is not None else None
    if latest is None:
        return None
    ckpt = load_checkpoint(latest)
    if "trainer" not in ckpt.objects:
        raise CheckpointError(f"checkpoint {latest} was not written by this stage's trainer; "
                              "start a new --run-dir")
    weights = ckpt["model"]
    expected = set(trainable_state(trainer.model))
    if set(weights) != expected:
        raise CheckpointError(f"checkpoint {latest} does not fit this model ({len(set(weights) ^ expected)} "
                              "parameter names differ); were the model or its LoRA settings changed?")
    trainer.model.load_state_dict(weights, strict=False)
    out = Path(workdir) / f"checkpoint-{ckpt.step}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    trainer.save_model(str(out))  # the weights just loaded, in the layout the Trainer reads back
    torch.save(ckpt["optimizer"], out / "optimizer.pt")  # written here from safetensors, read back weights_only
    if ckpt["scheduler"]:
        torch.save(ckpt["scheduler"], out / "scheduler.pt")
    torch.save(ckpt["rng"], out / "rng_state.pth")  # tuples come back as tuples (random.setstate needs them)
    (out / "trainer_state.json").write_text(ckpt["trainer"]["state_json"])
    return str(out)


def train_resumable(trainer, run_dir, every: int, keep: int | None = 2, log=print):
    """``trainer.train()`` with checkpoints every ``every`` steps, continued from the run dir's
    latest checkpoint when there is one. Returns the ``TrainOutput``."""
    trainer.add_callback(trainer_checkpoints(run_dir, every, keep))
    with tempfile.TemporaryDirectory(prefix="reinforge-resume-") as tmp:
        start = resume_dir(trainer, run_dir, Path(tmp))
        if start is not None:
            step = json.loads(Path(start, "trainer_state.json").read_text())["global_step"]
            log(f"resumed at step {step} from {run_dir.latest_checkpoint()}")
        return trainer.train(resume_from_checkpoint=start)
