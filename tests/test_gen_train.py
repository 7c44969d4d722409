"""Ray Train integration: a two-worker TorchTrainer run on the session's Ray instance writes
checkpoints that resume; refusals of bad input are one line; the CLI trains and samples."""

from __future__ import annotations

import json

import pytest

from cluster.errors import CheckpointError, ConfigError
from pipelines.gen_pipeline import PIPELINE as GEN
from pipelines.registry import execute, resolve

SMALL = {"dataset_size": 2048, "batch_size": 128, "eval_samples": 500, "hidden": 32}


def _rows(path):
    return [json.loads(line) for line in (path / "train_metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_two_worker_train_run_checkpoints_and_resumes(ray_session, tmp_path):
    run_dir = tmp_path / "vae2"
    resolved = resolve(pipeline="gen", extra={"run": {"run_dir": str(run_dir), "tensorboard": False},
                                               "gen": {"model": "vae", "data": "ring8", "workers": 2, "epochs": 2,
                                                       **SMALL}})
    seen = []  # per-epoch rows reach the listeners (Tune's reporter) while Ray Train still runs

    def listener(row):
        if "epoch" in row:
            seen.append((row["epoch"], (run_dir / "ray_train" / "final").exists()))

    rd, result = execute(resolved, listeners=[listener])
    assert result["epochs"] == 2 and result["workers"] == 2
    assert seen[0] == (1, False), seen  # epoch 1 was logged before fit() had finished
    assert [e for e, _ in seen] == [1, 2]
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["workers"] == 2 for r in rows)
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    names = {k for r in [*rows, *logged, result] for k in r} - {"step", "time"}
    assert names <= set(GEN.metrics), names - set(GEN.metrics)  # sweeps check --metric against these
    steps_per_epoch = rows[0]["train_step"]
    assert steps_per_epoch == 2048 // 2 // 128  # each worker trains on its own half of the data
    assert rd.latest_checkpoint().name == "step_000000002"
    assert (run_dir / "plots" / "samples.png").is_file()
    # resume: same run dir (same Ray Train name + storage), two more epochs
    resumed = resolve(pipeline="gen", config_file=str(run_dir / "config.yaml"), overrides=["gen.epochs=4"],
                      extra={"run": {"run_dir": str(run_dir)}})
    rd, result = execute(resumed, resume=str(run_dir))
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # epochs 1-2 were not repeated
    assert rows[-1]["train_step"] == 4 * steps_per_epoch  # the step counter came back from the checkpoint
    assert result["epochs"] == 4 and rd.latest_checkpoint().name == "step_000000004"
    # a checkpoint from another model is refused in one line
    other = resolve(pipeline="gen", config_file=str(run_dir / "config.yaml"),
                    overrides=["gen.model=ddpm", "gen.epochs=5"], extra={"run": {"run_dir": str(run_dir)}})
    with pytest.raises(CheckpointError, match="holds a vae model trained on ring8, not ddpm on ring8") as err:
        execute(other, resume=str(run_dir))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("gen", "message"),
    [
        ({"model": "cgan", "data": "ring8"}, "class-conditional but data 'ring8' has no labels"),
        ({"model": "cvae", "data": "grid25"}, "class-conditional but data 'grid25' has no labels"),
        ({"model": "ddpm", "data": "digits", "image_size": 18}, "not divisible by the U-Net's downsampling"),
        ({"model": "simclr", "data": "ring8"}, "image encoders"),
        ({"model": "gan", "data": "atari-frames"}, "atari-frames trains encoders"),
    ],
)
def test_bad_model_data_pairs_are_refused_in_one_line(gen, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve(pipeline="gen", extra={"gen": gen})
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_cli_train_sample_and_refusals(cli, tmp_path):
    run_dir = tmp_path / "runs" / "ddpm"  # given relative to the cwd: Train workers run elsewhere
    res = cli("gen", "train", "--model", "ddpm", "--data", "ring8", "--workers", "1", "--epochs", "1",
              "--run-dir", "runs/ddpm", "--set", "gen.dataset_size=1024", "--set", "gen.timesteps=20",
              "--set", "gen.eval_samples=200", "--set", "run.tensorboard=false", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "modes_captured" in res.stdout and (run_dir / "checkpoints").is_dir()
    # stderr is a pipe, not a terminal: the progress bar ends as one plain line
    assert "ddpm ring8: 1/1 epoch (100%)" in res.stderr and "samples_per_s=" in res.stderr, res.stderr
    res = cli("gen", "sample", "--checkpoint", str(run_dir), "--n", "16", "--out", str(tmp_path / "s.png"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "s.png").stat().st_size > 1000
    res = cli("gen", "sample", "--checkpoint", str(run_dir), "--n", "4", "--label", "3")
    assert res.returncode == 1 and res.stderr.startswith("reinforge: error: --label needs a class-conditional")
    assert res.stderr.count("\n") == 1
    res = cli("gen", "sample", "--checkpoint", str(tmp_path / "missing"))
    assert res.returncode == 1 and "does not exist" in res.stderr and res.stderr.count("\n") == 1
    res = cli("gen", "train", "--model", "cgan", "--data", "ring8")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "has no labels" in res.stderr


@pytest.mark.parametrize("model", ["vae", "moco"])
def test_atari_encoder_checkpoints_and_exports_a_torso_the_rl_side_loads(model, tmp_path):
    import torch

    from cluster.checkpoint import load_checkpoint, save_checkpoint
    from generative.config import GenConfig
    from generative.evaluate import export_torso
    from generative.train import build_model, checkpoint_objects, restore
    from rl.networks import NatureCNN, load_torso

    cfg = GenConfig(model=model, data="atari-frames", moco_queue=32, batch_size=4)
    m = build_model(cfg)
    frames = torch.randint(0, 255, (4, 4, 84, 84), dtype=torch.uint8)
    m.train_step(frames, None, 0)
    path = save_checkpoint(tmp_path / "ck", 1, checkpoint_objects(m, cfg, 1, 1))  # no shared tensors
    restore(build_model(cfg), load_checkpoint(path), cfg)
    export_torso(m.encoder_torso(), tmp_path / "run", {"model": model})
    agent_torso = load_torso(NatureCNN(in_channels=4), tmp_path / "run")
    for k, v in m.encoder_torso().state_dict().items():
        assert torch.equal(agent_torso.state_dict()[k], v)
