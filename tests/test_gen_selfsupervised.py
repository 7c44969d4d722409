"""BYOL and SimSiam (generative/contrastive.py): the losses on hand-made vectors, BYOL's target
network (no gradient, moves only by the EMA), SimSiam's stop-gradient, a short in-process run
that learns without collapsing, the few-label probe, the exported Atari torso, and ``gen sample``
refusing encoder-only runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from generative import contrastive
from generative.config import GenConfig
from generative.train import build_model

TINY = {"data": "digits", "hidden": 16, "projection_dim": 8, "predictor_hidden": 8, "batch_size": 16}


# --- the losses --------------------------------------------------------------------------------------
def test_byol_loss_is_two_minus_two_cosine_and_ignores_scale():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[3.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [5.0, 0.0]])
    expected = [0.0, 2.0, 4.0, 2 - 2 / math.sqrt(2)]  # identical direction -> the minimum 0
    for i, e in enumerate(expected):
        assert contrastive.byol_loss(q[i : i + 1], z[i : i + 1]).item() == pytest.approx(e, abs=1e-6)
    assert contrastive.byol_loss(q, z).item() == pytest.approx(sum(expected) / 4, abs=1e-6)
    # 2 - 2 cos is the squared distance of the L2-normalised vectors
    nq, nz = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(z, dim=1)
    assert contrastive.byol_loss(q, z).item() == pytest.approx(((nq - nz) ** 2).sum(1).mean().item(), abs=1e-6)


def test_simsiam_loss_minimum_and_hand_values():
    a = torch.tensor([[1.0, 2.0, -1.0]])
    assert contrastive.negative_cosine(a, 4 * a).item() == pytest.approx(-1.0)  # identical -> minimum -1
    assert contrastive.negative_cosine(a, -a).item() == pytest.approx(1.0)
    p1, p2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    z1, z2 = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 1.0]])
    # 1/2 D(p1, z2) + 1/2 D(p2, z1) = 1/2 (-1/sqrt2) + 1/2 (-1)
    assert contrastive.simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(-0.5 / math.sqrt(2) - 0.5)
    assert contrastive.simsiam_loss(a, a, a, a).item() == pytest.approx(-1.0)


def test_simsiam_stop_gradient_blocks_the_target_branch():
    torch.manual_seed(0)
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3, requires_grad=True)
    h = torch.nn.Linear(3, 3)
    loss = contrastive.negative_cosine(h(z1), z2)  # z2 is the stopped branch
    loss.backward()
    assert z2.grad is None  # nothing flows into sg(z2)
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    # the symmetrised loss: z1's gradient is only the path through its own prediction p1 = h(z1)
    z1.grad = None
    contrastive.simsiam_loss(h(z1), h(z2), z1, z2).backward()
    z1_own = z1.detach().clone().requires_grad_(True)
    (0.5 * contrastive.negative_cosine(h(z1_own), z2.detach())).backward()
    assert torch.allclose(z1.grad, z1_own.grad, atol=1e-7)


def test_collapse_check_separates_spread_from_constant_outputs():
    assert contrastive.normalised_std(torch.randn(4096, 16)) == pytest.approx(1.0, abs=0.05)
    assert contrastive.normalised_std(torch.ones(64, 16) + 1e-4 * torch.randn(64, 16)) < 0.01


# --- the networks ------------------------------------------------------------------------------------
def test_byol_target_gets_no_gradient_and_moves_only_by_the_ema():
    torch.manual_seed(0)
    cfg = GenConfig(model="byol", moco_momentum=0.9, **TINY)
    model = build_model(cfg)
    assert set(model.modules()) == {"encoder", "predictor", "target_encoder"}
    assert model.trainable() == {"encoder", "predictor"}
    target = model.modules()["target_encoder"]
    before = [p.detach().clone() for p in target.parameters()]
    model.train_step(torch.rand(16, 1, 16, 16), None, 0)
    online = list(model.modules()["encoder"].parameters())
    for p, b, o in zip(target.parameters(), before, online):
        assert p.grad is None and not p.requires_grad
        assert torch.allclose(p, 0.9 * b + 0.1 * o.detach(), atol=1e-6)  # theta' <- m theta' + (1-m) theta
    assert any(not torch.equal(p, b) for p, b in zip(target.parameters(), before))
    assert all(p.grad is not None for p in model.modules()["predictor"].parameters())


def test_simsiam_has_no_target_network_and_batch_norm_in_its_heads():
    model = build_model(GenConfig(model="simsiam", **TINY))
    assert set(model.modules()) == {"encoder", "predictor"} and model.key_net is None
    for name in ("predictor", "encoder"):
        assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()[name].modules()), name


@pytest.mark.parametrize("method", ["byol", "simsiam"])
def test_short_in_process_run_lowers_the_loss_without_collapse_and_sample_refuses(method, tmp_path):
    from cluster.checkpoint import save_checkpoint
    from generative import data as gdata
    from generative.train import checkpoint_objects
    from pipelines.gen_pipeline import PIPELINE as GEN
    from tests.conftest import run_cli_inprocess

    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = GenConfig(**{**TINY, "model": method, "workers": 0, "batch_size": 64, "learning_rate": 2e-3,
                       "probe_draws": 2})
    model = build_model(cfg)
    ds, rows, it = gdata.load(cfg, "train", 0), [], 0
    for epoch in range(4):  # what train_loop_per_worker runs in-process (gen.workers=0), without Ray
        outs = [model.train_step(x, y, it + i)
                for i, (x, y) in enumerate(gdata.batches(ds, cfg.batch_size, torch.Generator().manual_seed(epoch)))]
        it += len(outs)
        rows.append({k: sum(o[k] for o in outs) / len(outs) for k in outs[0]})
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.05, [r["loss"] for r in rows]
    # not collapsed: normalised projections still spread (a constant output reads 0)
    assert all(r["projection_std"] > 0.3 for r in rows), [r["projection_std"] for r in rows]
    declared = [*rows[-1], "linear_probe_accuracy_raw",
                *(f"probe_accuracy_{k}_per_class{sfx}" for k in contrastive.PROBE_LABELS_PER_CLASS
                  for sfx in ("", "_untrained", "_raw"))]
    assert set(declared) <= set(GEN.metrics), set(declared) - set(GEN.metrics)
    x, y = gdata.digits(cfg.image_size, "train")
    xt, yt = gdata.digits(cfg.image_size, "test")
    acc = contrastive.few_label_probe_accuracy(model.features(x).numpy(), y.numpy(), model.features(xt).numpy(),
                                               yt.numpy(), per_class=5, draws=2)
    assert acc > 0.3, acc  # ten classes: chance is 0.1
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints", 4, checkpoint_objects(model, cfg, 4, it))
    res = run_cli_inprocess("gen", "sample", "--checkpoint", str(ckpt), "--n", "4")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert f"{method} trains an encoder and cannot sample" in res.stderr


# --- the probe ------------------------------------------------------------------------------------
def test_few_label_probe_uses_k_labels_per_class_and_separable_features_score_one():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    feats = np.eye(3)[y] * 5 + 0.1 * rng.standard_normal((60, 3))
    acc = contrastive.few_label_probe_accuracy(feats, y, feats, y, per_class=1, draws=3)
    assert acc == 1.0
    noise = rng.standard_normal((60, 3))  # features that carry no label information: near chance
    assert contrastive.few_label_probe_accuracy(noise, y, noise[::-1], y, per_class=5, draws=4) < 0.6
    with pytest.raises(ValueError):  # more labels per class than the class holds
        contrastive.few_label_probe_accuracy(feats, y, feats, y, per_class=21)


@pytest.mark.parametrize("method", ["byol", "simsiam"])
def test_atari_torso_exports_for_the_rl_side(method, tmp_path):
    # the check simclr/moco/vae pass (train a step, checkpoint without shared tensors, restore,
    # export the NatureCNN torso, load it on the RL side), for the two new encoders
    from tests.test_gen_train import (
        test_atari_encoder_checkpoints_and_exports_a_torso_the_rl_side_loads as check,
    )

    check(method, tmp_path)
