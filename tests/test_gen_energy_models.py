"""Hopfield network and RBM: the equations against hand values and brute force, short in-process
runs through the pipeline that learn, and the bad-input line through the CLI."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from generative import hopfield as H
from generative import rbm as R

N = 64


def test_energy_never_increases_under_asynchronous_updates():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    for rule in H.RULES:  # symmetric W, zero diagonal: every single-unit update lowers E or keeps it
        w = H.weights(H.random_patterns(20, N, seed=1), rule)  # overloaded (P/N = 0.31): many flips
        s = H.random_patterns(16, N, seed=2)
        e, flips = H.energy(s, w), 0
        for i in torch.randint(0, N, (250,)).tolist():
            flips += int((H.async_step(s, w, i) != 0).sum())
            e_new = H.energy(s, w)
            assert (e_new <= e + 1e-5).all(), (rule, i, (e_new - e).max())
            e = e_new
        assert flips > 50  # the test saw real moves, not a frozen state
    # the recall loop's own count (energy recomputed after every step) agrees: none rose
    _, info = H.recall(H.random_patterns(8, N, seed=3), H.hebbian_weights(H.random_patterns(20, N)), 5,
                       track_energy=True)
    assert info["energy_increases"] == 0 and info["sweeps"] >= 1


def test_orthogonal_patterns_are_fixed_points_and_their_energy_is_minimal():
    hadamard = torch.tensor([[1.0]])
    while len(hadamard) < N:
        hadamard = torch.cat([torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)])
    xi = hadamard[1:5]  # four mutually orthogonal +-1 patterns
    for rule in H.RULES:
        w = H.weights(xi, rule)
        assert torch.allclose(w, w.t()) and (w.diagonal() == 0).all()
        s, info = H.recall(xi, w, 3)
        assert torch.equal(s, xi) and info["sweeps"] == 0 and info["converged"].all()
        assert (H.energy(xi, w) < H.energy(H.corrupt(xi, 0.1), w)).all()
    # Hebbian by hand: W_ij = (1/N) sum_mu xi_i xi_j
    w = H.hebbian_weights(xi)
    assert w[0, 1].item() == pytest.approx(float((xi[:, 0] * xi[:, 1]).sum()) / N)


def _correlated(p: int, n: int, shared: float = 0.8, seed: int = 0) -> torch.Tensor:
    """Patterns sharing most of their units (like digits on one background)."""
    g = torch.Generator().manual_seed(seed)
    base = H.random_patterns(1, n, seed)
    keep = torch.rand(p, n, generator=g) < shared
    return torch.where(keep, base, H.random_patterns(p, n, seed + 1))


def test_pseudo_inverse_stores_correlated_patterns_the_hebbian_rule_cannot():
    xi = _correlated(8, N)
    heb, pinv = H.hebbian_weights(xi), H.pseudo_inverse_weights(xi)
    fixed = {name: float((H.hamming(H.recall(xi, w, 1)[0], xi) == 0).float().mean())
             for name, w in (("hebbian", heb), ("pseudo-inverse", pinv))}
    assert fixed["pseudo-inverse"] == 1.0 and fixed["hebbian"] <= 0.25, fixed
    assert H.recall_rate(xi, pinv, 0.05, seed=0)["recall_rate"] == 1.0
    assert H.recall_rate(xi, heb, 0.05, seed=0)["recall_rate"] <= 0.25


def test_recall_from_ten_percent_corruption_at_low_load():
    xi = H.random_patterns(6, 200, seed=4)  # P/N = 0.03
    r = H.recall_rate(xi, H.hebbian_weights(xi), 0.1, trials=3, seed=0)
    assert r["recall_rate_exact"] == 1.0
    assert (H.hamming(r["corrupted"], torch.cat([xi] * 3)) == 20).all()  # exactly 10% flipped
    # far above capacity (P/N = 0.4) the Hebbian memory fails
    xi = H.random_patterns(80, 200, seed=5)
    assert H.recall_rate(xi, H.hebbian_weights(xi), 0.1, trials=1, max_sweeps=5)["recall_rate"] < 0.3


def test_free_energy_matches_the_brute_force_sum_over_hidden_states():
    torch.manual_seed(0)
    W, b, c = torch.randn(3, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    vs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)
    hs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    # E(v, h) = -b.v - c.h - h W v;  F(v) = -log sum_h exp(-E(v, h))
    neg_e = (vs @ b)[:, None] + (hs @ c)[None, :] + (vs @ W.t() @ hs.t())
    brute = -torch.logsumexp(neg_e, dim=1)
    assert torch.allclose(R.free_energy(vs, W, b, c), brute, atol=1e-10)
    # and p(h_j = 1 | v) is the marginal of exp(-E) over h
    p = torch.softmax(neg_e, dim=1) @ hs
    assert torch.allclose(R.hidden_probs(vs, W, c), p, atol=1e-10)


def test_cd1_gradient_signs_on_a_hand_made_rbm():
    torch.manual_seed(0)
    rbm = R.RBM(visible=3, hidden=2)
    with torch.no_grad():
        rbm.W.copy_(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    v_data = torch.tensor([[1.0, 1.0, 0.0]]).repeat(64, 1)  # unit 0 always on, units 0 and 1 co-active
    with torch.no_grad():
        v_model, _ = R.gibbs_chain(v_data, *rbm.params(), k=1)  # zero weights: p(v) = 1/2 everywhere
    R.cd_loss(rbm(v_data), rbm(v_model)).backward()
    step = -rbm.b.grad  # gradient descent moves b by -lr * grad
    assert step[0] > 0.3 and step[1] > 0.3 and step[2] < -0.3  # on-units pushed up, the off-unit down
    # hidden unit j's weight to a co-active visible pair rises: dW_ji = <h_j v_i>_data - <h_j v_i>_model
    rbm.zero_grad()
    with torch.no_grad():
        rbm.W.copy_(torch.tensor([[1.0, 1.0, -1.0], [0.0, 0.0, 0.0]]))
        rbm.c.copy_(torch.tensor([-1.0, 0.0]))
        v_model, _ = R.gibbs_chain(v_data, *rbm.params(), k=1)
    R.cd_loss(rbm(v_data), rbm(v_model)).backward()
    assert -rbm.W.grad[0, 0] > 0 and -rbm.W.grad[0, 1] > 0
    # the formula: -dL/dW = <p(h|v) v^T>_data - <p(h|v) v^T>_model
    W, _, c = rbm.params()
    expected = (R.hidden_probs(v_data, W, c).t() @ v_data - R.hidden_probs(v_model, W, c).t() @ v_model) / 64
    assert torch.allclose(-rbm.W.grad, expected.detach(), atol=1e-6)


def _run(tmp_path, gen):
    from pipelines.gen_pipeline import PIPELINE as GEN
    from pipelines.registry import execute, resolve

    run_dir = tmp_path / gen["model"]
    _, result = execute(resolve(pipeline="gen", preset=f"gen-{gen['model']}-digits",
                                extra={"run": {"run_dir": str(run_dir), "tensorboard": False}, "gen": gen}))
    rows = [json.loads(line) for line in (run_dir / "train_metrics.jsonl").read_text().splitlines()]
    names = {k for r in [*rows, result] for k in r} - {"step"}
    assert names <= set(GEN.metrics), names - set(GEN.metrics)
    return run_dir, rows, result


def test_hopfield_through_the_pipeline_stores_and_recalls_digits(ray_session, tmp_path, monkeypatch):
    from tests.conftest import run_cli_inprocess

    torch.manual_seed(0)
    torch.set_num_threads(1)
    monkeypatch.setattr(H, "CAPACITY_LOADS", (0.02, 0.05, 0.1, 0.2, 0.3))  # a coarse curve: seconds
    run_dir, rows, result = _run(tmp_path, {"model": "hopfield", "workers": 0, "epochs": 1, "hopfield_patterns": 12,
                                            "grid_samples": 8})
    assert rows[-1]["patterns_stored"] == 12 and result["patterns_per_neuron"] == pytest.approx(12 / 256)
    assert result["recall_rate"] >= 0.95 and result["stored_fixed_points"] == 1.0
    assert result["energy_increases"] == 0
    # the capacity curve: random Hebbian near the classical value; correlated digits need the projection rule
    assert 0.06 <= result["capacity_random_hebbian"] <= 0.17
    assert result["capacity_digits_hebbian"] < 0.05 < result["capacity_digits_pseudo_inverse"]
    for png in ("recall.png", "capacity.png", "samples.png"):
        assert (run_dir / "plots" / png).stat().st_size > 1000
    res = run_cli_inprocess("gen", "sample", "--checkpoint", str(run_dir), "--n", "4", "--out", str(tmp_path / "s.png"))
    assert res.returncode == 0, res.stderr
    from generative.train import load_trained

    model, _, _ = load_trained(run_dir)  # the memory came back from the checkpoint's buffers
    assert int(model.memory.stored) == 12 and model.memory.W.abs().sum() > 0
    assert torch.allclose(model.memory.W, H.pseudo_inverse_weights(model.memory.held()), atol=1e-5)


def test_rbm_through_the_pipeline_lowers_its_reconstruction_error(ray_session, tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    run_dir, rows, result = _run(tmp_path, {"model": "rbm", "workers": 0, "epochs": 2, "hidden": 32,
                                            "persistent_cd": True, "gibbs_steps": 50, "eval_samples": 200,
                                            "grid_samples": 16})
    assert [r["epoch"] for r in rows] == [1, 2]
    assert result["reconstruction_error"] < 0.6 * result["reconstruction_error_untrained"], result
    assert rows[-1]["reconstruction_error"] < rows[0]["reconstruction_error"]
    assert result["linear_probe_accuracy"] > 0.6 and result["linear_probe_accuracy_raw"] > 0.8
    assert (run_dir / "plots" / "samples.png").stat().st_size > 1000


@pytest.mark.parametrize(("args", "message"), [
    (("--model", "hopfield", "--data", "digits", "--set", "gen.binarize=false"), "set gen.binarize=true"),
    (("--model", "rbm", "--data", "digits", "--set", "gen.binarize=false"), "set gen.binarize=true"),
    (("--model", "rbm", "--data", "ring8"), "use --data digits --set gen.binarize=true"),
    (("--model", "vae", "--data", "digits", "--set", "gen.binarize=true"), "gen.binarize is read by hopfield and rbm"),
    (("--model", "hopfield", "--data", "digits", "--set", "gen.corruption=0.7"), "gen.corruption=0.7 must be in [0, 0.5]"),
])
def test_bad_input_is_one_line_and_exit_2_through_the_cli(args, message, tmp_path):
    from tests.conftest import run_cli_inprocess

    res = run_cli_inprocess("gen", "train", *args, "--run-dir", str(tmp_path / "r"))
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "r").exists()
