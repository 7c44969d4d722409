"""DQN pieces against hand-computed values: targets, n-step replay, frame dedup, priorities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl.dqn import apex_epsilon, double_q_target, huber_loss, linear_epsilon, polyak_update, td_target
from rl.replay import ReplayMemory, SumTree


def test_td_target_vs_double_q_target_on_a_hand_made_batch():
    returns = torch.tensor([1.0, 0.0, -1.0])
    dones = torch.tensor([0.0, 0.0, 1.0])
    disc = torch.tensor([0.9, 0.9, 0.9])
    q_online = torch.tensor([[1.0, 5.0], [3.0, 2.0], [0.0, 9.0]])
    q_target = torch.tensor([[4.0, 2.0], [1.0, 7.0], [8.0, 8.0]])
    # DQN: max of the target net: 4, 7 -> y = 1 + .9*4, 0 + .9*7, -1 (done)
    assert torch.allclose(td_target(returns, dones, disc, q_target), torch.tensor([4.6, 6.3, -1.0]))
    # Double DQN: online argmax (1, 0) evaluated by the target: 2, 1
    assert torch.allclose(double_q_target(returns, dones, disc, q_online, q_target), torch.tensor([2.8, 0.9, -1.0]))


def test_huber_polyak_and_epsilons():
    q, y = torch.tensor([0.0, 0.0]), torch.tensor([0.5, 3.0])
    assert huber_loss(q, y).item() == pytest.approx((0.125 + 2.5) / 2)
    assert huber_loss(q, y, torch.tensor([2.0, 0.0])).item() == pytest.approx(0.125)
    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        a.weight.fill_(0.0), b.weight.fill_(1.0)
    polyak_update(a, b, 0.25)
    assert a.weight.item() == pytest.approx(0.25)
    assert linear_epsilon(0, 1.0, 0.1, 100) == 1.0 and linear_epsilon(50, 1.0, 0.1, 100) == pytest.approx(0.55)
    assert linear_epsilon(10**6, 1.0, 0.1, 100) == pytest.approx(0.1)
    assert apex_epsilon(0, 8) == pytest.approx(0.4) and apex_epsilon(7, 8) == pytest.approx(0.4**8)


def _stream(mem, rewards, terms, truncs=None, firsts=None, stream=0):
    T = len(rewards)
    frames = np.arange(mem.count[stream], mem.count[stream] + T, dtype=np.float32)[:, None]
    mem.add(stream, frames, np.arange(T) % 2, np.asarray(rewards, np.float32),
            np.asarray(firsts if firsts is not None else [False] * T), np.asarray(terms, bool),
            np.asarray(truncs if truncs is not None else [False] * T))


def test_n_step_returns_match_hand_computed_values():
    mem = ReplayMemory(capacity=64, num_streams=1, frame_shape=(1,), frame_stack=1, frame_dtype=np.float32,
                       n_step=3, gamma=0.5, seed=0)
    # slots:     0    1    2    3(term) 4(first) 5    6    7    8
    _stream(mem, [1, 2, 4, 8, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0, 0, 0, 0], firsts=[1, 0, 0, 0, 1, 0, 0, 0, 0])
    s = np.zeros(4, dtype=np.int64)
    ret, done, valid = mem._window(s, np.array([0, 1, 2, 3]))
    assert np.allclose(ret, [1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4 + 0.25 * 8, 4 + 0.5 * 8, 8])
    assert done.tolist() == [False, True, True, True] and valid.all()
    # windows that would run past the newest slot are not sampled
    _, _, valid = mem._window(np.zeros(3, np.int64), np.array([5, 6, 7]))
    assert valid.tolist() == [True, False, False]
    batch = mem.sample(256)
    i = np.flatnonzero(batch["obs"][:, 0] == 0)  # slot 0: obs frame 0, bootstrap from slot 3
    assert len(i) and np.allclose(batch["returns"][i], 3.0) and np.allclose(batch["next_obs"][i, 0], 3.0)
    assert np.allclose(batch["discounts"], 0.125)
    assert set(batch["obs"][:, 0].tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}


def test_truncation_is_never_bootstrapped_across():
    mem = ReplayMemory(capacity=64, num_streams=1, frame_shape=(1,), frame_stack=1, frame_dtype=np.float32,
                       n_step=2, gamma=0.9, seed=0)
    _stream(mem, [1] * 6, [0] * 6, truncs=[0, 0, 1, 0, 0, 0], firsts=[1, 0, 0, 1, 0, 0])
    _, _, valid = mem._window(np.zeros(4, np.int64), np.array([0, 1, 2, 3]))
    assert valid.tolist() == [True, False, False, True]


def test_frames_are_stored_once_and_stacks_rebuilt_with_zero_padding():
    k = 4
    mem = ReplayMemory(capacity=200, num_streams=2, frame_shape=(2, 2), frame_stack=k, n_step=1, gamma=0.99)
    T, E = 12, 2
    # a segment as a rollout worker returns it: env stacks zero-padded at episode start (slot 0 and 6)
    frame = lambda t, e: np.full((2, 2), 10 * e + t + 1, np.uint8)  # noqa: E731
    obs = np.zeros((T, E, k, 2, 2), np.uint8)
    first = np.zeros((T, E), bool)
    for e in range(E):
        start = 0
        for t in range(T):
            if t in (0, 6):
                start, first[t, e] = t, True
            for j in range(k):
                src = t - (k - 1) + j
                if src >= start:
                    obs[t, e, j] = frame(src, e)
    term = np.zeros((T, E), bool)
    term[5] = True
    seg = {"obs": obs, "first": first, "actions": np.zeros((T, E), np.int64), "rewards": np.ones((T, E), np.float32),
           "terminated": term, "truncated": np.zeros((T, E), bool)}
    mem.add_segment([0, 1], seg)
    assert mem.frames.shape == (2, 100, 2, 2)  # one frame per transition, not k
    for e in range(E):
        for t in range(T):
            got = mem._stack(np.array([e]), np.array([t]))[0]
            assert np.array_equal(got, obs[t, e]), (e, t)
    assert mem.bytes_per_transition() < 4 + 2 + 4 + 3 + 1  # 2x2 frame + a few bytes


def test_sum_tree_and_prioritized_sampling_proportions():
    tree = SumTree(5)
    tree.update(np.arange(5), np.array([1.0, 2.0, 3.0, 4.0, 0.0]))
    assert tree.total == pytest.approx(10.0)
    assert tree.find(np.array([0.5, 1.5, 3.5, 9.99])).tolist() == [0, 1, 2, 3]
    mem = ReplayMemory(capacity=400, num_streams=1, frame_shape=(1,), frame_stack=1, frame_dtype=np.float32,
                       n_step=1, gamma=0.9, prioritized=True, alpha=1.0, priority_eps=0.0, seed=1)
    _stream(mem, [0] * 101, [0] * 101, firsts=[1] + [0] * 100)
    pri = np.zeros(101)
    pri[10], pri[20], pri[30] = 1.0, 2.0, 5.0
    mem.update_priorities(np.arange(101), pri)
    counts = np.zeros(101)
    for _ in range(40):
        b = mem.sample(256, beta=1.0)
        np.add.at(counts, b["indices"], 1)
    frac = counts[[10, 20, 30]] / counts.sum()
    assert np.allclose(frac, [0.125, 0.25, 0.625], atol=0.03)
    assert counts.sum() == counts[[10, 20, 30]].sum()
    b = mem.sample(256, beta=1.0)  # importance weights (N P(i))^-beta normalised by the max
    w = {int(i): float(x) for i, x in zip(b["indices"], b["weights"])}
    assert {10, 30} <= set(w)  # both sampled (P = 1/8, 5/8 over 256 draws), so both weights are checked
    assert w[10] == pytest.approx(1.0) and w[20] == pytest.approx(0.5) and w[30] == pytest.approx(0.2)


def test_uniform_sampling_is_uniform():
    mem = ReplayMemory(capacity=300, num_streams=3, frame_shape=(1,), frame_stack=1, frame_dtype=np.float32,
                       n_step=1, gamma=0.9, seed=2)
    for s in range(3):
        _stream(mem, [0] * 61, [0] * 61, firsts=[1] + [0] * 60, stream=s)
    counts = np.zeros(300)
    for _ in range(60):
        np.add.at(counts, mem.sample(250)["indices"], 1)
    used = counts[counts > 0]
    assert len(used) == 180  # 3 streams x 60 sampleable slots (the newest has no next obs)
    assert used.std() / used.mean() < 0.15


def test_pong_presets_resolve_with_the_nature_settings():
    from pipelines.registry import resolve

    for name, algo in (("dqn-pong", "dqn"), ("ddqn-pong", "ddqn")):
        exp = resolve(preset=name).experiment  # validate(): torso, replay size and env count checked
        assert exp.env.id == "ALE/Pong-v5" and exp.rl.algo == algo
        assert exp.rl.batch_size == 32 and exp.rl.replay_ratio == 0.25 and exp.rollout.queue_depth == 2
