"""Unit tests for the generative equations: diffusion kernel, time embedding, reparameterisation,
GAN / VAE / contrastive losses on hand-made inputs, and the offline metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from generative import contrastive, ddpm, gan, metrics, vae
from generative.unet import UNet, sinusoidal_embedding


# --- DDPM ----------------------------------------------------------------------------------------
def test_linear_schedule_and_forward_kernel_match_closed_form():
    sched = ddpm.Schedule.make("linear", 1000, 1e-4, 0.02)
    assert sched.betas[0].item() == pytest.approx(1e-4) and sched.betas[-1].item() == pytest.approx(0.02)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    x0 = torch.tensor([[1.5, -2.0], [0.5, 3.0]])
    t = torch.tensor([0, 499])
    mean, var = ddpm.q_mean_variance(sched, x0, t)
    for i, ti in enumerate(t.tolist()):
        assert torch.allclose(mean[i], math.sqrt(abar[ti]) * x0[i], atol=1e-6)
        assert torch.allclose(var[i], torch.full((2,), 1 - abar[ti].item()), atol=1e-6)
    # q_sample with a given eps is exactly sqrt(abar) x0 + sqrt(1 - abar) eps
    eps = torch.tensor([[0.3, -0.1], [1.0, 2.0]])
    xt = ddpm.q_sample(sched, x0, t, eps)
    assert torch.allclose(xt, mean + var.sqrt() * eps, atol=1e-6)
    # empirical moments of many draws agree with the closed form
    x0 = torch.full((200_000, 1), 2.0)
    tt = torch.full((200_000,), 300)
    draws = ddpm.q_sample(sched, x0, tt, torch.randn_like(x0))
    assert draws.mean().item() == pytest.approx(2.0 * math.sqrt(abar[300]), abs=0.01)
    assert draws.var().item() == pytest.approx(1 - abar[300].item(), abs=0.01)


def test_cosine_schedule_is_monotone_and_ends_near_pure_noise():
    sched = ddpm.Schedule.make("cosine", 200)
    assert (sched.betas > 0).all() and (sched.betas <= 0.999).all()
    assert (sched.alpha_bars[1:] < sched.alpha_bars[:-1]).all()
    assert sched.alpha_bars[-1].item() < 1e-3


def test_epsilon_loss_is_zero_for_a_perfect_predictor_and_p_sample_inverts_the_mean():
    sched = ddpm.Schedule.make("linear", 50)
    x0 = torch.randn(8, 2)
    noise = torch.randn(8, 2)
    t = torch.randint(0, 50, (8,))
    oracle = lambda x_t, tt, y: noise  # noqa: E731 - knows the noise that was added
    assert ddpm.epsilon_loss(oracle, sched, x0, None, t, noise).item() == pytest.approx(0.0, abs=1e-10)
    # at t = 0 (no noise added back), one step with the true eps recovers x0 exactly
    t0 = torch.zeros(8, dtype=torch.long)
    x1 = ddpm.q_sample(sched, x0, t0, noise)
    rec = ddpm.p_sample(lambda x, tt, y: noise, sched, x1, 0)
    assert torch.allclose(rec, x0, atol=1e-5)


def test_classifier_free_guidance_combination():
    model = lambda x, t, y: torch.where(y[:, None] == 9, torch.zeros_like(x), torch.ones_like(x))  # noqa: E731
    x, t, y = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), torch.tensor([1, 2, 3])
    eps = ddpm.guided_epsilon(model, x, t, y, null_label=9, w=2.0)
    assert torch.allclose(eps, torch.full((3, 2), 3.0))  # (1 + 2) * 1 - 2 * 0


def test_sinusoidal_embedding_shape_and_values():
    t = torch.tensor([0, 1, 10])
    emb = sinusoidal_embedding(t, 8)
    assert emb.shape == (3, 8)
    assert torch.allclose(emb[0], torch.tensor([0, 0, 0, 0, 1, 1, 1, 1.0]))
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(4) / 4)
    assert torch.allclose(emb[2, :4], torch.sin(10 * freqs), atol=1e-6)
    assert torch.allclose(emb[2, 4:], torch.cos(10 * freqs), atol=1e-6)
    assert sinusoidal_embedding(t, 7).shape == (3, 7)


@pytest.mark.parametrize("cross", [False, True])
def test_unet_keeps_the_shape_and_uses_the_label(cross):
    torch.manual_seed(0)
    net = UNet(1, ch=16, num_classes=10, cross_attention=cross)
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([3, 7])
    a = net(x, t, torch.tensor([1, 2]))
    b = net(x, t, torch.tensor([5, 5]))
    assert a.shape == x.shape
    assert not torch.allclose(a, b)


# --- VAE -------------------------------------------------------------------------------------------
def test_reparameterisation_gradient():
    mu = torch.tensor([0.5, -1.0], requires_grad=True)
    logvar = torch.tensor([0.2, -0.4], requires_grad=True)
    eps = torch.tensor([1.5, -0.5])
    z = vae.reparameterize(mu, logvar, eps)
    assert torch.allclose(z, mu + torch.exp(0.5 * logvar) * eps)
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.ones(2))  # dz/dmu = 1
    assert torch.allclose(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)  # dz/dlogvar


def test_kl_to_standard_normal_against_hand_values():
    mu = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    logvar = torch.tensor([[0.0, 0.0], [math.log(4.0), 0.0]])
    kl = vae.kl_to_standard_normal(mu, logvar)
    assert kl[0].item() == pytest.approx(0.0)
    # 1/2 [(1 + 4 - ln 4 - 1) + (4 + 1 - 0 - 1)]
    assert kl[1].item() == pytest.approx(0.5 * ((1 + 4 - math.log(4) - 1) + (4 + 1 - 1)))
    assert vae.elbo(torch.tensor([-3.0]), torch.tensor([2.0]), beta=0.5).item() == pytest.approx(-4.0)
    ll = vae.gaussian_log_likelihood(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2))
    assert ll.item() == pytest.approx(-math.log(2 * math.pi))


# --- GAN losses --------------------------------------------------------------------------------------
def test_gan_losses_on_hand_made_logits():
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([0.0, -1.0])
    sig = torch.sigmoid
    expected_d = -(torch.log(sig(real)).mean() + torch.log(1 - sig(fake)).mean())
    assert gan.minimax_d_loss(real, fake).item() == pytest.approx(expected_d.item(), rel=1e-6)
    assert gan.minimax_g_loss(fake).item() == pytest.approx(torch.log(1 - sig(fake)).mean().item(), rel=1e-6)
    assert gan.non_saturating_g_loss(fake).item() == pytest.approx(-torch.log(sig(fake)).mean().item(), rel=1e-6)
    assert gan.wasserstein_critic_loss(torch.tensor([3.0, 1.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(-1.5)
    assert gan.wasserstein_g_loss(torch.tensor([0.5, 1.5])).item() == pytest.approx(-1.0)
    # saturation: where D confidently rejects fakes the minimax G gradient vanishes, the NS one does not
    logit = torch.tensor([-8.0], requires_grad=True)
    (g_mm,) = torch.autograd.grad(gan.minimax_g_loss(logit), logit)
    (g_ns,) = torch.autograd.grad(gan.non_saturating_g_loss(logit), logit)
    assert abs(g_mm.item()) < 1e-3 < abs(g_ns.item())


def test_gradient_penalty_of_a_linear_critic():
    w = torch.tensor([3.0, 4.0])  # ||grad|| = 5 everywhere
    critic = lambda x, cond=None: x @ w  # noqa: E731
    gp = gan.gradient_penalty(critic, torch.randn(16, 2), torch.randn(16, 2))
    assert gp.item() == pytest.approx(16.0)
    unit = lambda x, cond=None: x @ (w / 5)  # noqa: E731
    assert gan.gradient_penalty(unit, torch.randn(4, 2), torch.randn(4, 2)).item() == pytest.approx(0.0, abs=1e-10)


def test_weight_clipping():
    net = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(net.weight, 0.5)
    gan.clip_weights(net, 0.01)
    assert net.weight.abs().max().item() <= 0.01


# --- contrastive ------------------------------------------------------------------------------------
def test_nt_xent_against_a_hand_computation():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    # row 0 (z1[0]): sims to others = [z1[1]: 0, z2[0]: 1, z2[1]: 0] / tau; positive is z2[0]
    row = torch.tensor([0.0, 1.0, 0.0]) / tau
    expected = -(row[1] - torch.logsumexp(row, 0))
    assert contrastive.nt_xent(z1, z2, tau).item() == pytest.approx(expected.item(), rel=1e-6)
    # matching views beat mismatched ones
    assert contrastive.nt_xent(z1, z2, tau) < contrastive.nt_xent(z1, z2.flip(0), tau)


def test_info_nce_queue_and_momentum():
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0]]), dim=1)
    k = q.clone()
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    logits = torch.tensor([1.0, 0.0, -1.0]) / 0.2
    expected = -(logits[0] - torch.logsumexp(logits, 0))
    assert contrastive.info_nce(q, k, queue, 0.2).item() == pytest.approx(expected.item(), rel=1e-4)
    kq = contrastive.KeyQueue(4, 2)
    kq.enqueue(torch.ones(3, 2))
    kq.enqueue(2 * torch.ones(3, 2))
    assert kq.ptr == 2 and (kq.keys[0] == 2).all() and (kq.keys[2] == 1).all()
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    contrastive.momentum_update(a, b, 0.9)
    assert torch.allclose(a.weight, 0.9 * before + 0.1 * b.weight.detach())


def test_random_shift_moves_content_but_keeps_shape():
    x = torch.zeros(4, 1, 8, 8)
    x[:, :, 4, 4] = 1
    y = contrastive.random_shift(x, 2)
    assert y.shape == x.shape and torch.allclose(y.sum((1, 2, 3)), torch.ones(4))


# --- metrics ----------------------------------------------------------------------------------------
def test_mode_metrics_on_exact_and_collapsed_samples():
    from generative.data import mixture

    good = mixture("ring8", 2500, seed=1)
    m = metrics.mode_metrics(good, "ring8")
    assert m["modes_captured"] == 8 and m["high_quality_fraction"] > 0.98  # P(chi2_2 <= 9) = 0.989
    collapsed = torch.tensor([[2.0, 0.0]]).repeat(2500, 1)
    m = metrics.mode_metrics(collapsed, "ring8")
    assert m["modes_captured"] == 1 and m["high_quality_fraction"] == 1.0
    assert metrics.mode_metrics(torch.zeros(100, 2), "grid25")["modes_captured"] == 1
    assert metrics.mode_metrics(torch.full((100, 2), 10.0), "grid25")["high_quality_fraction"] == 0.0


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    b = a + np.array([1.0, 2.0, 0.0])  # shifted: distance = ||shift||^2
    assert metrics.frechet_distance(a, b) == pytest.approx(5.0, rel=1e-6)


def test_linear_learning_rate_decay_follows_the_global_step():
    from generative.config import GenConfig
    from generative.train import build_model

    cfg = GenConfig(model="wgan-gp", data="ring8", learning_rate=1e-3, lr_decay="linear", hidden=8, critic_steps=5)
    model = build_model(cfg)
    model.set_total_steps(100)
    x = torch.randn(16, 2)
    model.train_step(x, None, 50)  # half-way (a resumed run passes its restored step)
    assert all(g["lr"] == pytest.approx(5e-4) for o in model.optimizers().values() for g in o.param_groups)
    model.train_step(x, None, 100)
    assert all(g["lr"] == 0.0 for o in model.optimizers().values() for g in o.param_groups)
    const = build_model(GenConfig(model="wgan-gp", data="ring8", learning_rate=1e-3, hidden=8))
    const.set_total_steps(100)
    const.train_step(x, None, 50)
    assert const.opt_g.param_groups[0]["lr"] == 1e-3  # the default keeps the learning rate


def test_clipped_x0_step_matches_algorithm_2_in_range_and_stays_in_range_outside():
    sched = ddpm.Schedule.make("linear", 50)
    x0 = torch.rand(8, 2) * 1.6 - 0.8  # inside [-1, 1]
    noise = torch.randn(8, 2)
    oracle = lambda x, tt, y: noise  # noqa: E731
    for t in (0, 10, 49):
        x_t = ddpm.q_sample(sched, x0, torch.full((8,), t), noise)
        torch.manual_seed(1)
        plain = ddpm.p_sample(oracle, sched, x_t, t, variance="posterior")
        torch.manual_seed(1)
        clipped = ddpm.p_sample(oracle, sched, x_t, t, variance="posterior", clip_x0=1.0)
        assert torch.allclose(plain, clipped, atol=1e-5)  # the posterior-mean form is the same mean
    far = ddpm.q_sample(sched, torch.full((8, 2), 5.0), torch.zeros(8, dtype=torch.long), noise)
    out = ddpm.p_sample(oracle, sched, far, 0, clip_x0=1.0)  # last step: the mean is the clipped x0
    assert torch.allclose(out, torch.ones(8, 2))


def test_ema_copy_follows_the_warm_up_average_and_is_what_sampling_and_checkpoints_use(tmp_path):
    from cluster.checkpoint import load_checkpoint, save_checkpoint
    from cluster.errors import ConfigError
    from generative.config import GenConfig
    from generative.nets import ema_copy
    from generative.train import build_model, checkpoint_objects, restore

    net = torch.nn.Linear(2, 1)
    ema = ema_copy(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update_parameters(net)  # the first update copies
    assert torch.allclose(ema.module.weight, torch.ones(1, 2))
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update_parameters(net)  # n = 1: d = min(0.9, 2 / 11)
    d = 2 / 11
    assert torch.allclose(ema.module.weight, torch.full((1, 2), d * 1.0 + (1 - d) * 3.0))
    assert not any(p.requires_grad for p in ema.parameters())
    with pytest.raises(ConfigError, match="ema_decay"):
        GenConfig(ema_decay=1.0).validate()

    cfg = GenConfig(model="wgan-gp", data="ring8", hidden=8, critic_steps=1, ema_decay=0.99)
    model = build_model(cfg)
    for it in range(3):
        model.train_step(torch.randn(16, 2), None, it)
    assert int(model.G_ema.n_averaged) == 3 and "G_ema" not in model.trainable()
    z_gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    sampled = model.sample(4)
    torch.manual_seed(0)
    assert torch.allclose(sampled, model.G_ema.module(torch.randn(4, cfg.z_dim)))
    assert not torch.allclose(sampled, model.G(torch.randn(4, cfg.z_dim, generator=z_gen)))
    save_checkpoint(tmp_path / "c", 1, checkpoint_objects(model, cfg, 1, 3))
    fresh = build_model(cfg)
    restore(fresh, load_checkpoint(tmp_path / "c"), cfg)
    for a, b in zip(fresh.G_ema.parameters(), model.G_ema.parameters()):
        assert torch.equal(a, b)
    assert int(fresh.G_ema.n_averaged) == 3
    ddpm_model = build_model(GenConfig(model="ddpm", data="ring8", hidden=8, ema_decay=0.9))
    ddpm_model.train_step(torch.randn(8, 2), None, 0)
    assert set(ddpm_model.modules()) == {"eps", "eps_ema"} and int(ddpm_model.net_ema.n_averaged) == 1
