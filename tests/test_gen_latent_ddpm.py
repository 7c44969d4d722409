"""Latent diffusion: a DDPM on a frozen VAE's scaled latents (generative/latent_ddpm.py).

A tiny VAE is trained here (a plain loop, a few seconds) and saved as a ``gen`` run dir."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cluster.checkpoint import save_checkpoint
from generative import data as gdata
from generative.config import GenConfig
from generative.train import build_model, checkpoint_objects, load_trained

TINY_VAE = {"model": "vae", "data": "digits", "hidden": 16, "latent_dim": 8, "batch_size": 64,
            "learning_rate": 2e-3}
TINY = {"model": "latent-ddpm", "data": "digits", "hidden": 32, "timesteps": 20, "batch_size": 64,
        "learning_rate": 2e-3, "eval_samples": 100, "grid_samples": 20}


def _train(model, cfg, epochs: int) -> list[float]:
    ds, losses, it = gdata.load(cfg, "train"), [], 0
    for e in range(epochs):
        epoch = []
        for x, y in gdata.batches(ds, cfg.batch_size, torch.Generator().manual_seed(e)):
            epoch.append(model.train_step(x, y, it)["loss"])
            it += 1
        losses.append(sum(epoch) / len(epoch))
    return losses


def _save_run(model, cfg, run_dir, epochs: int = 1):
    save_checkpoint(run_dir / "checkpoints", epochs, checkpoint_objects(model, cfg, epochs, epochs))
    return run_dir


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()  # tiny nets: more threads only contend on a shared machine
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = GenConfig(**TINY_VAE, epochs=3)
    model = build_model(cfg)
    _train(model, cfg, 3)
    torch.set_num_threads(threads)
    return _save_run(model, cfg, tmp_path_factory.mktemp("vae") / "run", 3)


def _latent(vae_run, **kw):
    from generative.latent_ddpm import check_autoencoder

    cfg = GenConfig(**{**TINY, "autoencoder": str(vae_run), **kw})
    cfg.validate()
    check_autoencoder(cfg)
    return build_model(cfg), cfg


def test_scale_factor_gives_the_training_latents_unit_variance(vae_run):
    from generative.latent_ddpm import scale_factor

    model, cfg = _latent(vae_run)
    train = gdata.load(cfg, "train")
    raw = model.ae.latents(train.x, train.y)
    assert raw.shape == (len(train.x), 8) and abs(float(raw.std()) - 1) > 0.05  # the VAE's own spread
    assert float(model.ae.scale_factor) == pytest.approx(float(scale_factor(raw)))
    assert float(model.ae.encode(train.x, train.y).std()) == pytest.approx(1.0, abs=1e-4)
    assert "scale_factor" in dict(model.ae.named_buffers())  # saved with the checkpoint
    # the autoencoder is frozen: no parameter takes gradients, and it stays in eval mode
    model.ae.train()
    assert not any(p.requires_grad for p in model.ae.parameters()) and not model.ae.training


def test_latent_loss_falls_and_samples_decode_to_images(vae_run):
    torch.manual_seed(0)
    model, cfg = _latent(vae_run)
    before = {k: v.clone() for k, v in model.ae.state_dict().items()}
    losses = _train(model, cfg, 6)
    assert losses[-1] < 0.7 * losses[0], losses
    for k, v in model.ae.state_dict().items():  # the autoencoder did not move
        assert torch.equal(v, before[k]), k
    samples = model.sample(12, torch.arange(12) % 10)
    assert samples.shape == (12, 1, 16, 16) and samples.dtype == torch.float32
    assert float(samples.min()) >= 0 and float(samples.max()) <= 1 and float(samples.std()) > 0.05


def test_checkpoint_is_self_contained_and_round_trips(vae_run, tmp_path):
    torch.manual_seed(0)
    moved = shutil.copytree(vae_run, tmp_path / "vae")
    model, cfg = _latent(moved, ema_decay=0.9)
    _train(model, cfg, 1)
    run = _save_run(model, cfg, tmp_path / "latent")
    shutil.rmtree(moved)  # the autoencoder's run dir is gone: the checkpoint still decodes
    loaded, lcfg, _ = load_trained(run)
    assert lcfg.autoencoder == str(moved) and lcfg.model == "latent-ddpm" and lcfg.latent_dim == 8
    assert float(loaded.ae.scale_factor) == pytest.approx(float(model.ae.scale_factor))
    assert loaded.ae.z_dim == 8 and loaded.net_ema is not None
    labels = torch.arange(6) % 10
    torch.manual_seed(1)
    a = model.sample(6, labels)
    torch.manual_seed(1)
    b = loaded.sample(6, labels)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_in_process_pipeline_run_evaluates_and_gen_sample_works(vae_run, tmp_path):
    from pipelines.gen_pipeline import PIPELINE as GEN
    from pipelines.registry import execute, resolve
    from tests.conftest import run_cli_inprocess

    torch.manual_seed(0)
    run_dir = tmp_path / "ld"
    gen = {**TINY, "autoencoder": str(vae_run), "workers": 0, "epochs": 3}
    _, result = execute(resolve(pipeline="gen", extra={"run": {"run_dir": str(run_dir), "tensorboard": False},
                                                       "gen": gen}))
    rows = [json.loads(line) for line in (run_dir / "train_metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] < rows[0]["loss"]
    names = {k for r in [*rows, result] for k in r} - {"step"}
    assert names <= set(GEN.metrics), names - set(GEN.metrics)
    assert result["class_coverage"] >= 1 and 0 <= result["conditional_accuracy"] <= 1
    assert result["classifier_frechet_distance"] > 0 and result["reconstruction_frechet_distance"] > 0
    assert 0 < result["sampling_s_per_image"] < 1
    assert (run_dir / "plots" / "samples.png").stat().st_size > 1000
    res = run_cli_inprocess("gen", "sample", "--checkpoint", str(run_dir), "--n", "8", "--label", "3",
                            "--out", str(tmp_path / "s.png"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "s.png").stat().st_size > 1000


def _not_generative(path):
    save_checkpoint(path / "checkpoints", 1, {"model": {"w": torch.zeros(2)}, "state": {"epoch": 1}})
    return path


def _other_model(path):
    cfg = GenConfig(model="ddpm", data="digits", hidden=32)
    return _save_run(build_model(cfg), cfg, path)


def _other_data(path):
    cfg = GenConfig(model="vae", data="ring8", hidden=16)
    return _save_run(build_model(cfg), cfg, path)


@pytest.mark.parametrize(("make", "extra", "message"), [
    (None, (), "gen.autoencoder is empty; train one with 'reinforge gen train --config gen-vae-autoencoder-digits'"),
    (lambda p: p / "missing", (), "does not exist; train one with"),
    (lambda p: p.mkdir() or p, (), "holds no readable checkpoint"),
    (_not_generative, (), "is not a 'reinforge gen train' run"),
    (_other_model, (), "is a ddpm run, not an autoencoder; pass the RUN_DIR of a vae or cvae run"),
    (_other_data, (), "was trained on ring8 at image_size 16, not digits at 16; train the autoencoder on the same"),
    ("vae", ("--set", "gen.image_size=32"), "not digits at 32"),
    ("vae", ("--data", "ring8"), "is not digits; use --data digits"),
    ("vae", ("--set", "gen.latent_dim=4"), "gen.latent_dim=4 but gen.autoencoder="),
])
def test_bad_autoencoder_is_one_line_and_exit_2_through_the_cli(make, extra, message, vae_run, tmp_path):
    from tests.conftest import run_cli_inprocess

    args = ["gen", "train", "--model", "latent-ddpm", "--data", "digits", "--run-dir", str(tmp_path / "r")]
    if make is not None:
        path = vae_run if make == "vae" else make(tmp_path / "ae")
        args += ["--set", f"gen.autoencoder={path}"]
    res = run_cli_inprocess(*args, *extra)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert not (tmp_path / "r").exists()  # refused before the run dir or Ray Train
