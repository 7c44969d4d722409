"""CycleGAN on digit-domains: the losses against hand values, the unpaired data, a short
in-process run (the cycle error falls; ``gen sample`` works), and refusals through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from generative import data as gdata
from generative.config import GenConfig
from generative.cyclegan import (
    DOMAIN_A,
    DOMAIN_B,
    DOMAIN_NEITHER,
    CycleGANModel,
    cycle_consistency_loss,
    domain_judge_data,
    identity_loss,
    lsgan_d_loss,
    lsgan_g_loss,
)
from generative.train import build_model, data_shape


def test_cycle_loss_is_zero_for_identity_generators_and_positive_otherwise():
    torch.manual_seed(0)
    a, b = torch.rand(4, 1, 16, 16) * 2 - 1, torch.rand(4, 1, 16, 16) * 2 - 1
    G = F = nn.Identity()
    assert cycle_consistency_loss(a, F(G(a)), b, G(F(b))).item() == 0.0
    assert identity_loss(a, F(a), b, G(b)).item() == 0.0
    G, F = (lambda t: -t), (lambda t: t + 0.5)  # F(G(a)) = 0.5 - a, G(F(b)) = -b - 0.5
    expected = (0.5 - 2 * a).abs().mean() + (2 * b + 0.5).abs().mean()
    assert torch.isclose(cycle_consistency_loss(a, F(G(a)), b, G(F(b))), expected)
    assert torch.isclose(identity_loss(a, F(a), b, G(b)), torch.tensor(0.5) + (2 * b).abs().mean())
    # through the model's own generators: untrained G and F do not invert each other
    cfg = GenConfig(model="cyclegan", data="digit-domains", hidden=16, residual_blocks=1)
    m = CycleGANModel(cfg, data_shape(cfg), 0, torch.device("cpu"))
    with torch.no_grad():
        assert cycle_consistency_loss(a, m.F(m.G(a)), b, m.G(m.F(b))).item() > 0.05


def test_lsgan_losses_on_hand_made_scores():
    ones, zeros = torch.ones(3, 1, 4, 4), torch.zeros(3, 1, 4, 4)
    assert lsgan_d_loss(ones, zeros).item() == 0.0  # a perfect discriminator
    assert lsgan_d_loss(zeros, ones).item() == 1.0  # 1/2 (0 - 1)^2 + 1/2 1^2
    half = torch.full((2, 1, 4, 4), 0.5)
    assert lsgan_d_loss(half, half).item() == pytest.approx(0.25)  # 1/2 0.25 + 1/2 0.25
    assert lsgan_d_loss(torch.tensor([3.0, 1.0]), torch.tensor([-1.0, 0.0])).item() == pytest.approx(
        0.5 * (4 + 0) / 2 + 0.5 * (1 + 0) / 2)
    assert lsgan_g_loss(ones).item() == 0.0 and lsgan_g_loss(zeros).item() == 1.0
    assert lsgan_g_loss(torch.tensor([0.0, 2.0, 3.0])).item() == pytest.approx((1 + 1 + 4) / 3)


@pytest.mark.parametrize("split", ["train", "test"])
def test_digit_domains_never_pairs_a_digit_with_its_own_styled_version(split):
    x, y, src = gdata.digit_domains(16, split)
    plain, labels = gdata.digits(16, split)
    assert x.shape == (len(plain) // 2, *data_shape(GenConfig(model="cyclegan", data="digit-domains")))
    # the two domains come from disjoint halves of the split's digits
    assert not set(src[:, 0].tolist()) & set(src[:, 1].tolist())
    assert len(set(src.flatten().tolist())) == 2 * len(x)
    # channel 0 is the A digit as it is, channel 1 the other digit under the B style; labels follow
    assert torch.equal(x[:, 0:1], plain[src[:, 0]]) and torch.equal(x[:, 1:2], gdata.style_b(plain[src[:, 1]]))
    assert torch.equal(y, labels[src])
    assert not torch.isclose(gdata.style_b(x[:, 0:1]), x[:, 1:2], atol=1e-4).flatten(1).all(1).any()
    # the B style: inverted (white background) and thicker strokes (more ink than the plain digit)
    ink_a, ink_b = x[:, 0].mean(), (1 - x[:, 1]).mean()
    assert x[:, 1, 0, 0].mean() > 0.95 and ink_b > 1.3 * ink_a
    split_via_load = gdata.load(GenConfig(model="cyclegan", data="digit-domains"), split)
    assert torch.equal(split_via_load.x, x) and torch.equal(split_via_load.y, y)


def test_domain_judge_data_labels_half_styled_digits_as_neither():
    x, _, _ = gdata.digit_domains(16, "test")
    images, labels = domain_judge_data(x[:, :1], x[:, 1:2])
    n = len(x)
    assert labels.tolist() == [DOMAIN_A] * n + [DOMAIN_B] * n + [DOMAIN_NEITHER] * n
    assert torch.equal(images[2 * n], 1 - x[0, :1])  # inverted only
    assert torch.equal(images[-1], 1 - gdata.style_b(x[-1:, :1])[0])  # thickened only


@pytest.mark.slow
def test_short_in_process_run_lowers_the_cycle_error_and_samples(tmp_path):
    from pipelines.gen_pipeline import PIPELINE as GEN
    from pipelines.registry import execute, resolve
    from tests.conftest import run_cli_inprocess

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # gen.workers=0 trains in this process, with this process's threads
    try:
        _short_run_checks(tmp_path, GEN, execute, resolve, run_cli_inprocess)
    finally:
        torch.set_num_threads(threads)


def _short_run_checks(tmp_path, GEN, execute, resolve, run_cli_inprocess):
    run_dir = tmp_path / "cg"
    gen = {"model": "cyclegan", "data": "digit-domains", "workers": 0, "epochs": 3, "batch_size": 32,
           "hidden": 16, "residual_blocks": 1, "learning_rate": 2e-3}
    _, result = execute(resolve(pipeline="gen", extra={"run": {"run_dir": str(run_dir), "tensorboard": False},
                                                       "gen": gen}))
    rows = [json.loads(line) for line in (run_dir / "train_metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["cycle_loss"] < 0.6 * rows[0]["cycle_loss"], [r["cycle_loss"] for r in rows]
    names = {k for r in [*rows, result] for k in r} - {"step"}
    assert names <= set(GEN.metrics), names - set(GEN.metrics)
    # held-out cycle errors against the same networks untrained
    fresh = build_model(GenConfig(**{**GenConfig().to_dict(), **gen}))
    untrained, _ = fresh.evaluate(fresh.cfg, tmp_path / "fresh", 0)
    for k in ("cycle_error_a", "cycle_error_b"):
        assert result[k] < 0.7 * untrained[k], (k, result[k], untrained[k])
    assert result["class_b_classifier_accuracy"] > 0.9 and result["domain_classifier_accuracy"] > 0.9
    assert 0 <= result["class_kept_a_to_b"] <= 1 and 0 <= result["target_domain_b_to_a"] <= 1
    assert (run_dir / "plots" / "translations.png").stat().st_size > 1000
    # gen sample: G's translations of held-out domain-A digits
    res = run_cli_inprocess("gen", "sample", "--checkpoint", str(run_dir), "--n", "12", "--out", str(tmp_path / "s.png"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "s.png").stat().st_size > 1000
    res = run_cli_inprocess("gen", "sample", "--checkpoint", str(run_dir), "--n", "4", "--label", "3")
    assert res.returncode == 1 and "--label needs a class-conditional" in res.stderr and res.stderr.count("\n") == 1


@pytest.mark.parametrize(("args", "message"), [
    (("--model", "cyclegan", "--data", "digits"), "use --data digit-domains"),
    (("--model", "gan", "--data", "digit-domains"), "digit-domains holds two unpaired domains for cyclegan"),
    (("--model", "cyclegan", "--data", "digit-domains", "--set", "gen.cycle_weight=-1"),
     "gen.cycle_weight=-1.0 must be >= 0"),
])
def test_bad_input_is_one_line_and_exit_2_through_the_cli(args, message, tmp_path):
    from tests.conftest import run_cli_inprocess

    res = run_cli_inprocess("gen", "train", *args, "--run-dir", str(tmp_path / "r"))
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "r").exists()
