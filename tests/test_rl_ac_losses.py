"""The actor-critic equations against hand-computed values (rl/policy_gradient.py), and the
learner thread-count helper (rl/threads.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl import policy_gradient as pg


def test_gae_with_termination_and_truncation_matches_hand_computation():
    # One env, T=4, gamma=0.9, lambda=0.8. The episode is terminated after step 1 (no
    # bootstrap), a second one truncated after step 2 (bootstrap with V(final obs)=10), and a
    # third is still running at the end (bootstrap with the last value 3).
    rewards = np.array([[1.0], [2.0], [3.0], [4.0]])
    values = np.array([[0.5], [1.0], [1.5], [2.0]])
    terminated = np.array([[0], [1], [0], [0]])
    truncated = np.array([[0], [0], [1], [0]])
    final_values = np.array([[0.0], [0.0], [10.0], [0.0]])
    adv, ret = pg.gae(rewards, values, np.array([3.0]), terminated, truncated, gamma=0.9, lam=0.8,
                      final_values=final_values)
    # delta_3 = 4 + .9*3 - 2 = 4.7            A_3 = 4.7
    # delta_2 = 3 + .9*10 - 1.5 = 10.5 (trunc) A_2 = 10.5 (recursion stops at the boundary)
    # delta_1 = 2 + 0 - 1 = 1.0 (terminated)   A_1 = 1.0
    # delta_0 = 1 + .9*1 - .5 = 1.4            A_0 = 1.4 + .9*.8*1.0 = 2.12
    np.testing.assert_allclose(adv[:, 0], [2.12, 1.0, 10.5, 4.7], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], [2.62, 2.0, 12.0, 6.7], rtol=1e-6)


def test_gae_columns_are_independent_envs_and_lambda_one_is_n_step_return():
    rewards = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 5.0]])
    values = np.zeros((3, 2))
    terminated = np.zeros((3, 2))
    truncated = np.zeros((3, 2))
    adv, ret = pg.gae(rewards, values, np.array([2.0, 0.0]), terminated, truncated, gamma=0.5, lam=1.0)
    # env 0: R_0 = 1 + .5 + .25 + .125*2 = 2.0; R_1 = 1 + .5 + .25*2 = 2.0; R_2 = 1 + .5*2 = 2.0
    np.testing.assert_allclose(ret[:, 0], [2.0, 2.0, 2.0])
    # env 1: only the last reward: R_t = 5 * .5^(2-t)
    np.testing.assert_allclose(ret[:, 1], [1.25, 2.5, 5.0])
    np.testing.assert_allclose(adv, ret)  # values are zero


def test_truncation_flag_on_terminated_step_is_treated_as_termination():
    adv, _ = pg.gae(np.array([[1.0]]), np.array([[0.0]]), np.array([7.0]), np.array([[1]]), np.array([[1]]),
                    gamma=0.9, lam=0.9, final_values=np.array([[100.0]]))
    assert adv[0, 0] == pytest.approx(1.0)  # no bootstrap at all


def test_clipped_surrogate_inside_and_outside_the_clip_range():
    ratio = torch.tensor([1.1, 1.5, 0.5, 0.5, 1.5], requires_grad=True)
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0])
    loss = pg.clipped_surrogate(ratio, adv, clip_range=0.2)
    # per sample min(r A, clip(r) A): 1.1 (inside), 1.2 (clipped), 0.5 (pessimistic unclipped),
    # -0.8 (clipped), -1.5 (pessimistic unclipped)
    expected = -(1.1 + 1.2 + 0.5 - 0.8 - 1.5) / 5
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    # the gradient flows only where the unclipped term is the minimum
    np.testing.assert_allclose(ratio.grad.numpy(), [-0.2, 0.0, -0.2, 0.0, 0.2], atol=1e-7)


def test_clipped_surrogate_equals_policy_gradient_at_ratio_one():
    adv = torch.tensor([0.3, -2.0, 1.0])
    assert float(pg.clipped_surrogate(torch.ones(3), adv, 0.1)) == pytest.approx(-float(adv.mean()))


def test_value_loss_plain_and_clipped():
    v = torch.tensor([2.0, 0.0])
    r = torch.tensor([1.0, 1.0])
    assert float(pg.value_loss(v, r)) == pytest.approx(0.5 * (1.0 + 1.0) / 2)
    old = torch.tensor([1.5, 0.5])
    # clipped predictions: 1.5+clip(.5,-.2,.2)=1.7 -> (0.7)^2=.49 vs 1.0 -> max 1.0;
    #                      0.5+clip(-.5)=0.3      -> (0.7)^2=.49 vs 1.0 -> max 1.0
    assert float(pg.value_loss(v, r, old, 0.2)) == pytest.approx(0.5)
    old2 = torch.tensor([0.0, 3.0])  # far from the target: clipped error dominates
    # 0+clip(2)=.2 -> .64 vs 1 -> 1.0;  3+clip(-3)=2.8 -> 3.24 vs 1 -> 3.24
    assert float(pg.value_loss(v, r, old2, 0.2)) == pytest.approx(0.5 * (1.0 + 3.24) / 2)


def test_policy_gradient_loss_kl_and_clip_fraction():
    logp = torch.log(torch.tensor([0.5, 0.25]))
    adv = torch.tensor([1.0, -2.0])
    assert float(pg.policy_gradient_loss(logp, adv)) == pytest.approx(-(np.log(0.5) - 2 * np.log(0.25)) / 2)
    assert float(pg.k3_kl(logp, logp)) == pytest.approx(0.0)
    ratio = torch.tensor([2.0])
    assert float(pg.k3_kl(torch.log(ratio), torch.zeros(1))) == pytest.approx(1.0 - np.log(2.0))
    assert float(pg.clip_fraction(torch.tensor([1.0, 1.05, 1.3, 0.7]), 0.2)) == pytest.approx(0.5)
    norm = pg.normalize_advantages(torch.tensor([1.0, 2.0, 3.0]))
    assert float(norm.mean()) == pytest.approx(0.0, abs=1e-6) and float(norm.std()) == pytest.approx(1.0, rel=1e-4)


def test_learner_threads_sets_the_count_for_the_block_and_restores_the_callers():
    from rl.threads import learner_threads

    original = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with learner_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), learner_threads(1):  # restored on the way out of an error too
            raise RuntimeError("update failed")
        assert torch.get_num_threads() == 2
        with learner_threads(None):  # a GPU learner: the count is left alone
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)
