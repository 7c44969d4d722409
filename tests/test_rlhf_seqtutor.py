"""Sequence Tutor (rlhf/seqtutor.py): the three KL-regularised targets on hand-made tensors,
the prior as the fixed point of Psi- and G-learning, per-token rule rewards on prefixes, the
exploration policy, the replay memory; then ``reinforge rlhf seqtutor`` raising the rule
reward of a tiny melody SFT model in a short run (through the CLI's entry point, in this
process), and a task without a rule reward refused in one line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cluster.errors import ConfigError

DATA = ["--set", "data.melody.max_songs=40", "--set", "data.melody.max_tokens=96"]


def test_each_target_by_hand():
    from rlhf.seqtutor import g_target, kl_q_target, psi_target

    r = torch.tensor([[1.0, 2.0]])
    prior_logp = torch.tensor([[-0.5, -1.0]])  # log p(a_t | s_t) of the tokens taken
    nxt = torch.tensor([[[0.1, 0.3, -0.2], [5.0, 5.0, 5.0]]])  # Q^-(s_t+1, .); row 1 follows the last token
    done = torch.tensor([[0.0, 1.0]])
    beta, gamma = 0.5, 0.9
    lse = math.log(math.exp(0.1) + math.exp(0.3) + math.exp(-0.2))
    q = kl_q_target(r, prior_logp, nxt, done, beta, gamma)
    assert q[0].tolist() == pytest.approx([1 / 0.5 - 0.5 + 0.9 * 0.3, 2 / 0.5 - 1.0])
    psi = psi_target(r, prior_logp, nxt, done, beta, gamma)
    assert psi[0].tolist() == pytest.approx([1 / 0.5 - 0.5 + 0.9 * lse, 2 / 0.5 - 1.0])
    p_next = torch.log(torch.tensor([[[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]]))  # log p(. | s_t+1)
    g = g_target(r, p_next, nxt, done, beta, gamma)
    soft = math.log(0.2 * math.exp(0.1) + 0.5 * math.exp(0.3) + 0.3 * math.exp(-0.2))
    assert g[0].tolist() == pytest.approx([1 / 0.5 + 0.9 * soft, 2 / 0.5])  # no log p(a | s) term in G


def test_values_start_at_the_prior_which_psi_and_g_keep_without_reward_and_q_does_not():
    from rlhf.seqtutor import q_values, shift_next, td_loss, td_target

    torch.manual_seed(0)
    B, L, V = 2, 4, 5
    prior_logits = torch.randn(B, L, V) * 2 + 3.0  # raw logits: not normalised
    actions = torch.randint(0, V, (B, L))
    done = torch.zeros(B, L)
    done[:, -1] = 1.0
    mask = torch.ones(B, L, dtype=torch.bool)
    zero = torch.zeros(B, L)
    log_p = torch.log_softmax(prior_logits, -1)
    for algo in ("q", "psi", "g"):
        v = q_values(prior_logits.clone(), prior_logits, algo)  # the network is still the SFT model
        want = torch.zeros_like(v) if algo == "g" else log_p
        assert torch.allclose(v, want, atol=1e-5), algo
        y = td_target(algo, zero, prior_logits, actions, shift_next(v), done, 0.1, 1.0)
        taken = v.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        loss = td_loss(taken, y, mask)
        if algo == "q":  # the max of log p is above its expectation: Q-learning moves off the prior
            assert loss > 1e-3
        else:
            assert loss.item() == pytest.approx(0.0, abs=1e-8), algo
    # td_target reads log p of the taken token and the next row: the same numbers by hand
    nxt = torch.randn(B, L, V)
    y = td_target("psi", torch.ones(B, L), prior_logits, actions, nxt, done, 0.5, 0.9)
    lp = log_p.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(y, 1 / 0.5 + lp + 0.9 * (1 - done) * nxt.logsumexp(-1), atol=1e-6)
    y = td_target("g", torch.ones(B, L), prior_logits, actions, nxt, done, 0.5, 0.9)
    assert torch.allclose(y[:, :-1], 2.0 + 0.9 * (shift_next(log_p) + nxt).logsumexp(-1)[:, :-1], atol=1e-6)
    assert torch.allclose(y[:, -1], torch.full((B,), 2.0))


def test_psi_and_g_learning_make_the_same_update_from_the_same_logits():
    """G = Psi - log p(a | s) and G's target is Psi's minus the same log p(a | s): on any logits,
    rewards and targets the two squared errors and their gradients are equal; Q-learning's
    differ."""
    from rlhf.seqtutor import q_values, shift_next, td_loss, td_target

    torch.manual_seed(1)
    B, L, V = 3, 5, 7
    prior_logits, target_logits = torch.randn(B, L, V) * 2, torch.randn(B, L, V)
    actions, rewards = torch.randint(0, V, (B, L)), torch.randn(B, L)
    done = torch.zeros(B, L)
    done[:, -1] = 1.0
    mask = torch.ones(B, L, dtype=torch.bool)
    losses, grads = {}, {}
    for algo in ("q", "psi", "g"):
        logits = torch.randn(B, L, V, generator=torch.Generator().manual_seed(2)).requires_grad_()
        nxt = shift_next(q_values(target_logits, prior_logits, algo))
        y = td_target(algo, rewards, prior_logits, actions, nxt, done, 0.3, 0.9)
        taken = q_values(logits, prior_logits, algo).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        loss = td_loss(taken, y, mask)
        loss.backward()
        losses[algo], grads[algo] = loss.item(), logits.grad
    assert losses["psi"] == pytest.approx(losses["g"], rel=1e-5)
    assert torch.allclose(grads["psi"], grads["g"], atol=1e-5)
    assert losses["q"] != pytest.approx(losses["psi"], rel=1e-3)


def test_rule_reward_on_prefixes_sums_to_the_whole_melody_score():
    from rlhf.gold import gold_score
    from rlhf.seqtutor import prefix_differences

    prompt = "<bos> <major> p60 d1 p62 d1 |"
    tokens = "p64 d1 p65 d1 | p67 d2 p61 d1 p60 d1 <eos>".split()
    scores = [gold_score(prompt + " " + " ".join(tokens[:t])) for t in range(len(tokens) + 1)]
    r = prefix_differences(scores)
    assert len(r) == len(tokens)
    assert sum(r) == pytest.approx(gold_score(prompt + " " + " ".join(tokens)) - gold_score(prompt))
    assert r[-1] > 0.5  # <eos> closes the melody (ends_with_eos)
    # at the same point, an in-key D earns more than an out-of-key C# (once its duration completes it)
    head = prompt + " " + " ".join(tokens[:tokens.index("p61")])
    in_key, out_of_key = (prefix_differences([gold_score(head + " " + n), gold_score(head + " " + n + " d1")])[0]
                          for n in ("p62", "p61"))
    assert in_key > out_of_key + 0.2


def test_exploration_policy_by_hand():
    from rlhf.seqtutor import behaviour_logits

    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    p = behaviour_logits(logits, "epsilon_greedy", 1.0, 0.2).exp()
    assert p.tolist()[0] == pytest.approx([0.05, 0.85, 0.05, 0.05])
    assert behaviour_logits(logits, "epsilon_greedy", 1.0, 0.0).exp().tolist()[0] == [0.0, 1.0, 0.0, 0.0]
    p = behaviour_logits(logits, "boltzmann", 2.0, 0.2).exp()
    assert p.tolist()[0] == pytest.approx((0.8 * torch.softmax(logits / 2.0, -1) + 0.05).tolist()[0])


def test_replay_memory_drops_the_oldest_completions_and_round_trips():
    import numpy as np

    from rlhf.seqtutor import ReplayMemory

    mem = ReplayMemory(capacity=5)
    mem.add([1, 2], [3, 4], [0.5, 1.0])
    mem.add([1], [5, 6, 7], [0.0, 0.0, 2.0])
    assert len(mem) == 2 and mem.transitions == 5
    mem.add([2], [8], [0.25])  # 6 > 5 transitions: the first completion goes
    assert [i[1] for i in mem.items] == [[5, 6, 7], [8]] and mem.transitions == 4
    back = ReplayMemory(capacity=5)
    back.load(mem.state())
    assert back.items == mem.items
    assert len(mem.sample(np.random.default_rng(0), 3)) == 3


@pytest.mark.parametrize("bad", [{"algo": "sarsa"}, {"kl_coef": 0.0}, {"gamma": 1.5}, {"tau": 1.0},
                                 {"epsilon": -0.1}, {"exploration": "greedy"}, {"buffer_size": 0},
                                 {"rule_reward": "sometimes"}])
def test_bad_settings_are_refused(bad):
    from rlhf.seqtutor import SeqTutorStageConfig

    with pytest.raises(ConfigError, match="seqtutor."):
        SeqTutorStageConfig(**bad).validate()


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """A tiny melody SFT model (25 steps), trained once for the module, in this process."""
    from tests.conftest import run_cli_inprocess

    root = tmp_path_factory.mktemp("seqtutor")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REINFORGE_CACHE", str(root / "cache"))
        res = run_cli_inprocess("rlhf", "sft", "--run-dir", str(root / "sft"), "--set", "sft.max_steps=25",
                                "--set", "sft.n_embd=64", "--set", "sft.logging_steps=5", *DATA)
        assert res.returncode == 0, res.stderr[-3000:]
        yield root


def test_seqtutor_raises_the_rule_reward_and_saves_a_plain_transformers_policy(sft):
    from transformers import AutoModelForCausalLM

    from tests.conftest import run_cli_inprocess

    out = sft / "psi"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REINFORGE_CACHE", str(sft / "cache"))
        res = run_cli_inprocess(
            "rlhf", "seqtutor", "--sft", str(sft / "sft"), "--run-dir", str(out), *DATA,
            *[x for kv in ("iterations=30", "batch_size=8", "minibatch_size=8", "max_new_tokens=48",
                           "eval_every=10", "eval_prompts=32", "learning_rate=1e-3", "checkpoint_every=10")
              for x in ("--set", f"seqtutor.{kv}")])
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    # the gold is the rule reward here; measured with these settings: 4.82 -> 6.29 (of 10.5) at KL 4.5
    assert result["seqtutor_gold_reward"] > result["sft_gold_reward"] + 0.5, result
    assert result["sft_kl"] == pytest.approx(0.0, abs=1e-6) and result["seqtutor_kl"] > 0.1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    assert {"td_loss", "q_mean", "kl", "gold_reward", "eval_gold_reward", "buffer_transitions"} <= keys
    stamp = json.loads((out / "model" / "reinforge.json").read_text())
    assert stamp["stage"] == "seqtutor" and stamp["algo"] == "psi" and stamp["parent"]["reward_fn"] == "gold"
    AutoModelForCausalLM.from_pretrained(out / "model", use_safetensors=True)  # softmax of Q, as a causal LM
    assert (out / "plots" / "gold_vs_kl.png").is_file()
    assert any((out / "checkpoints").glob("step_*/model.safetensors"))


def test_seqtutor_without_a_rule_reward_is_refused_in_one_line(tmp_path):
    from rlhf.melody import build_tokenizer
    from rlhf.models import save_artifact, tiny_gpt2
    from tests.conftest import run_cli_inprocess

    tok = build_tokenizer()
    save_artifact(tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2), tok, tmp_path / "sft" / "model", "sft",
                  task={"name": "text", "data": {}, "config": {}})
    res = run_cli_inprocess("rlhf", "seqtutor", "--sft", str(tmp_path / "sft"), "--run-dir", str(tmp_path / "x"))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-1000:]
    assert len(lines) == 1 and lines[0].startswith("reinforge: error:") and "needs a rule reward" in lines[0] \
        and "--reward-fn" in lines[0], lines
    assert not (tmp_path / "x").exists()  # refused before the run dir is made
