"""The style-based generator: AdaIN, fade-in, style mixing and the progressive-growing schedule
as equations; a short in-process run that grows to 16x16, resumes mid-schedule and samples; the
refusal of a bad resolution schedule through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from generative.config import GenConfig
from generative.stylegan import (
    Discriminator,
    Generator,
    adain,
    fade_in,
    mix_styles,
    mode_seeking_loss,
    output_image,
    schedule,
    style_mixing,
)
from generative.train import build_model


def _generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    g = Generator(z_dim=8, style_dim=8, mapping_layers=2, resolutions=[4, 8, 16], base=8)
    with torch.no_grad():  # the noise scales start at 0; make the noise inputs matter
        for block in g.blocks:
            for layer in block:
                layer.noise_strength.normal_()
    return g


def _noise(n: int, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, r, r, generator=gen) for r in (4, 8, 16) for _ in range(2)]


def test_adain_gives_each_channel_the_styles_mean_and_std():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8) * 5 + 2
    scale, bias = torch.rand(4, 3) * 3 + 0.1, torch.randn(4, 3)
    out = adain(x, scale, bias)
    assert torch.allclose(out.mean((2, 3)), bias, atol=1e-5)
    assert torch.allclose(out.std((2, 3), unbiased=False), scale, atol=1e-4)
    # a negative scale flips the normalised map: the std is |scale|
    assert torch.allclose(adain(x, -scale, bias).std((2, 3), unbiased=False), scale, atol=1e-4)


def test_the_image_is_tanh_of_torgb_in_the_open_interval_minus_one_one(monkeypatch):
    import generative.stylegan as sg

    g = _generator()
    ws, noise = g.styles(torch.randn(3, 8)), _noise(3)
    with torch.no_grad():
        for layer in g.to_rgb:  # a large toRGB: a linear output would leave [-1, 1]
            layer.weight.mul_(100.0)
        img = g.synthesis(ws, 2, 1.0, noise)
        with monkeypatch.context() as m:  # the same synthesis without the output nonlinearity
            m.setattr(sg, "output_image", lambda rgb: rgb)
            rgb = g.synthesis(ws, 2, 1.0, noise)
    assert rgb.abs().max() > 1.5
    assert torch.allclose(img, output_image(rgb)) and torch.allclose(img, torch.tanh(rgb))
    assert img.abs().max() <= 1.0


def test_fade_in_runs_from_the_upsampled_low_resolution_image_to_the_high_one():
    torch.manual_seed(0)
    low, high = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 8, 8)
    up = F.interpolate(low, scale_factor=2, mode="nearest")
    assert torch.equal(fade_in(low, high, 0.0), up)
    assert torch.equal(fade_in(low, high, 1.0), high)
    assert torch.allclose(fade_in(low, high, 0.25), 0.75 * up + 0.25 * high, atol=1e-6)
    # in the networks: the generator at 8x8 with alpha 0 is its 4x4 image upsampled, the
    # discriminator at 8x8 with alpha 0 scores the 2x-pooled image as its 4x4 path does
    g = _generator()
    ws, noise = g.styles(torch.randn(3, 8)), _noise(3)
    with torch.no_grad():
        at4 = g.synthesis(ws, 0, 1.0, noise)
        assert torch.allclose(g.synthesis(ws, 1, 0.0, noise), F.interpolate(at4, scale_factor=2), atol=1e-6)
        assert not torch.allclose(g.synthesis(ws, 1, 1.0, noise), F.interpolate(at4, scale_factor=2), atol=1e-3)
        d = Discriminator([4, 8, 16], base=8)
        img = torch.randn(4, 1, 8, 8)
        assert torch.allclose(d(img, 1, 0.0), d(F.avg_pool2d(img, 2), 0, 1.0), atol=1e-5)


def test_style_mixing_with_the_crossover_after_the_last_layer_is_the_single_w_image():
    g = _generator()
    z1, z2, noise = torch.randn(3, 8), torch.randn(3, 8), _noise(3)
    L = g.num_layers
    with torch.no_grad():
        single = g.synthesis(g.styles(z1), 2, 1.0, noise)
        assert torch.allclose(g.synthesis(g.styles(z1, z2, L), 2, 1.0, noise), single)
        assert torch.allclose(g.synthesis(g.styles(z1, z2, 0), 2, 1.0, noise), g.synthesis(g.styles(z2), 2, 1.0, noise))
        assert not torch.allclose(g.synthesis(g.styles(z1, z2, 3), 2, 1.0, noise), single, atol=1e-3)
    # mix_styles per layer, per sample
    w1, w2 = torch.zeros(2, 5), torch.ones(2, 5)
    ws = mix_styles(w1, w2, torch.tensor([2, 6]), L)
    assert ws.shape == (2, L, 5)
    assert ws[0, :, 0].tolist() == [0, 0, 1, 1, 1, 1] and ws[1, :, 0].tolist() == [0] * 6
    # the crossover draws: none without mixing, else inside the layers in use
    assert style_mixing(100, L, 4, 0.0, "cpu").tolist() == [L] * 100
    cross = style_mixing(2000, L, 4, 0.5, "cpu")
    mixed = cross[cross < L]
    assert 0.4 < len(mixed) / 2000 < 0.6 and set(mixed.tolist()) == {1, 2, 3}


def test_mode_seeking_loss_by_hand_and_its_gradient_pushes_images_of_distinct_latents_apart():
    # pairs (0, 2) and (1, 3): image distances 0.5 and 1.5 (mean |diff| over 2 pixels),
    # latent distances 1 and 3 -> ratios 0.5 and 0.5 -> L_ms = 1 / 0.5 = 2
    images = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5], [-0.5, -0.5]]).reshape(4, 1, 1, 2)
    z = torch.tensor([[0.0], [0.0], [1.0], [3.0]])
    assert mode_seeking_loss(images, z).item() == pytest.approx(2.0, rel=1e-4)
    # descending it moves the paired images apart: the distance grows
    x = images.clone().requires_grad_(True)
    mode_seeking_loss(x, z).backward()
    moved = (x - 0.1 * x.grad).detach()
    before = (images[:2] - images[2:]).abs().sum()
    assert (moved[:2] - moved[2:]).abs().sum() > before
    # identical images for distinct latents: the largest penalty
    same = torch.zeros(4, 1, 1, 2)
    assert mode_seeking_loss(same, z).item() > 1e4


def test_schedule_from_the_step_and_a_resumed_model_continues_it():
    # 3 levels, fade 2 epochs, stable 1: [0,1) 4x4 | [1,3) 8x8 fading | [3,4) 8x8 | [4,6) 16x16 fading | 16x16
    expect = {0: (0, 1.0), 0.99: (0, 1.0), 1: (1, 0.0), 2: (1, 0.5), 3: (1, 1.0), 3.5: (1, 1.0), 4: (2, 0.0),
              5: (2, 0.5), 6: (2, 1.0), 100: (2, 1.0)}
    for epoch, (level, alpha) in expect.items():
        got = schedule(epoch, 3, 2, 1)
        assert got[0] == level and got[1] == pytest.approx(alpha), (epoch, got)
    assert schedule(0, 3, 0, 0) == (2, 1.0)  # no growing: straight to the data size
    assert schedule(1.5, 3, 2, 0) == (1, 0.75)
    # the model's stage is a function of the global step (10 steps per epoch here) ...
    cfg = GenConfig(model="stylegan", data="digits", epochs=7, fade_epochs=2, stable_epochs=1, hidden=16,
                    style_dim=8, latent_dim=8, mapping_layers=1, batch_size=8)
    model = build_model(cfg)
    model.set_total_steps(70)
    x = torch.rand(8, 1, 16, 16)
    out = model.train_step(x, None, 50)
    assert out["resolution"] == 16 and out["fade_alpha"] == pytest.approx(0.5)
    assert model.trained_stage() == (2, 0.5)
    # ... and it travels in the checkpoint: a model restored from it samples at that stage and
    # trains on at the step it is handed
    import tempfile

    from cluster.checkpoint import load_checkpoint, save_checkpoint
    from generative.train import checkpoint_objects, restore

    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(tmp, 1, checkpoint_objects(model, cfg, 5, 51))
        resumed = build_model(cfg)
        assert restore(resumed, load_checkpoint(path), cfg) == (5, 51)
    assert resumed.trained_stage() == (2, 0.5)
    resumed.set_total_steps(70)
    out = resumed.train_step(x, None, 51)
    assert out["resolution"] == 16 and out["fade_alpha"] == pytest.approx(0.55)
    assert resumed.sample(3).shape == (3, 1, 16, 16)


def _epoch_means(epochs, steps, cfg):
    """The per-epoch rows' means of (resolution, fade_alpha) the schedule predicts."""
    out = []
    for e in epochs:
        stages = [schedule(s / steps, 3, cfg["fade_epochs"], cfg["stable_epochs"]) for s in range(e * steps, (e + 1) * steps)]
        out.append((sum(4 * 2**lv for lv, _ in stages) / steps, sum(a for _, a in stages) / steps))
    return out


def test_short_in_process_run_grows_to_16x16_resumes_mid_schedule_and_samples(tmp_path):
    from pipelines.gen_pipeline import PIPELINE as GEN
    from pipelines.registry import execute, resolve
    from tests.conftest import run_cli_inprocess

    torch.manual_seed(0)
    run_dir = tmp_path / "sg"
    # the preset's network sizes (smaller ones learn too little in 5 epochs to beat the untrained
    # networks' tanh images) on a faster schedule
    gen = {"model": "stylegan", "data": "digits", "workers": 0, "epochs": 3, "batch_size": 64, "hidden": 128,
           "fade_epochs": 1, "stable_epochs": 1, "learning_rate": 2e-3, "eval_samples": 300, "grid_samples": 16,
           "mode_seeking": 1.0, "style_mixing": 0.0}
    run = {"run_dir": str(run_dir), "tensorboard": False}
    execute(resolve(pipeline="gen", extra={"run": run, "gen": gen}))
    # resume the same run dir for two more epochs: the schedule continues at epoch 4 (16x16 fading in)
    _, result = execute(resolve(pipeline="gen", extra={"run": run, "gen": {**gen, "epochs": 5}}), resume=str(run_dir))
    rows = [json.loads(line) for line in (run_dir / "train_metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    steps = rows[0]["train_step"]
    assert rows[-1]["train_step"] == 5 * steps
    for row, (res, alpha) in zip(rows, _epoch_means(range(5), steps, gen)):
        assert row["resolution"] == pytest.approx(res) and row["fade_alpha"] == pytest.approx(alpha), row
    assert [r["resolution"] for r in rows] == [4, 8, 8, 16, 16]
    assert all(r["mode_seeking"] > 0 for r in rows)
    names = {k for r in [*rows, result] for k in r} - {"step"}
    assert names <= set(GEN.metrics), names - set(GEN.metrics)
    # it learned: closer to the held-out digits than the same networks untrained
    fresh = build_model(GenConfig(**{**GenConfig().to_dict(), **gen}))
    untrained, _ = fresh.evaluate(fresh.cfg, tmp_path / "fresh", 0)
    assert result["classifier_frechet_distance"] < 0.7 * untrained["classifier_frechet_distance"], (
        result["classifier_frechet_distance"], untrained["classifier_frechet_distance"])
    for name in ("samples.png", "style_mixing.png"):
        assert (run_dir / "plots" / name).stat().st_size > 1000
    # gen sample: 16x16 images from the trained stage
    from generative.train import load_trained

    model, _, _ = load_trained(run_dir)
    assert model.trained_stage() == (2, 1.0)
    s = model.sample(5)
    assert s.shape == (5, 1, 16, 16) and 0 <= s.min() and s.max() <= 1
    res = run_cli_inprocess("gen", "sample", "--checkpoint", str(run_dir), "--n", "8", "--out", str(tmp_path / "s.png"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "s.png").stat().st_size > 1000


@pytest.mark.parametrize(("sets", "message"), [
    (("gen.resolutions=8,16",), "gen.resolutions='8,16' must start at 4, double at each step and end at "
                                "gen.image_size=16; use gen.resolutions=4,8,16"),
    (("gen.resolutions=4,16",), "use gen.resolutions=4,8,16"),
    (("gen.resolutions=4,8",), "end at gen.image_size=16"),
    (("gen.resolutions=[4,8,16]", "gen.image_size=32"), "use gen.resolutions=4,8,16,32"),
    (("gen.resolutions=4,eight,16",), "gen.resolutions='4,eight,16' is not a list of integers"),
    (("gen.style_mixing=1.5",), "gen.style_mixing=1.5 must be in [0, 1]"),
])
def test_a_bad_resolution_schedule_is_one_line_and_exit_2_through_the_cli(sets, message, tmp_path):
    from tests.conftest import run_cli_inprocess

    args = [a for s in sets for a in ("--set", s)]
    res = run_cli_inprocess("gen", "train", "--model", "stylegan", "--data", "digits", *args,
                            "--run-dir", str(tmp_path / "r"))
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "r").exists()


def test_stylegan_on_points_is_refused():
    from cluster.errors import ConfigError

    with pytest.raises(ConfigError, match="stylegan generates images .* use --data digits"):
        GenConfig(model="stylegan", data="ring8").validate()
