"""GRPO's equations on hand-computed tensors, reward functions and models combined, the reward
offset folded into the weights, and GRPO raising a toy reward within a few iterations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cluster.errors import ConfigError


def test_group_advantages_by_hand():
    from rlhf.grpo import group_advantages

    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])  # two groups of three
    adv = group_advantages(r, 3, scale_rewards=True, eps=0.0)
    m1, s1 = 1 / 3, math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # unbiased std, as torch.std
    m2, s2 = 5 / 3, math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    want = [(1 - m1) / s1, -m1 / s1, -m1 / s1, (1 - m2) / s2, (2 - m2) / s2, (2 - m2) / s2]
    assert torch.allclose(adv, torch.tensor(want), atol=1e-6)
    dr = group_advantages(r, 3, scale_rewards=False)  # Dr. GRPO: no std division
    assert torch.allclose(dr, torch.tensor([1 - m1, -m1, -m1, 1 - m2, 2 - m2, 2 - m2]), atol=1e-6)
    same = group_advantages(torch.tensor([3.0, 3.0]), 2)  # a group that all agrees teaches nothing
    assert torch.equal(same, torch.zeros(2))


def test_k3_kl_and_grpo_loss_by_hand():
    from rlhf.grpo import grpo_loss
    from rlhf.ppo import k3_kl

    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.tensor([[True, True]])
    # k3 of KL(pi || ref) per token: r - 1 - log r with r = pi_ref / pi
    k3 = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]
    assert k3_kl(ref, logp, mask).item() == pytest.approx(sum(k3) / 2, rel=1e-6)
    old = torch.tensor([[-1.2, -2.0]])
    adv = torch.tensor([2.0])
    loss, pg, kl, clipfrac = grpo_loss(logp, old, ref, adv, mask, clip=0.2, beta=0.1)
    ratio = [math.exp(0.2), 1.0]  # exp(logp - old)
    surrogate = [min(r * 2.0, min(max(r, 0.8), 1.2) * 2.0) for r in ratio]
    assert pg.item() == pytest.approx(-sum(surrogate) / 2, rel=1e-6)
    assert kl.item() == pytest.approx(sum(k3) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(pg.item() + 0.1 * kl.item(), rel=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)  # exp(0.2) = 1.22 is outside [0.8, 1.2]
    no_kl, *_ = grpo_loss(logp, old, ref, adv, mask, clip=0.2, beta=0.0)
    assert no_kl.item() == pytest.approx(pg.item())


def test_grpo_config_is_checked():
    from rlhf.grpo import GRPOStageConfig

    for bad in ({"group_size": 1}, {"kl_coef": -0.1}, {"clip_range": 1.5}, {"batch_size": 0}, {"lora_r": -1}):
        with pytest.raises(ConfigError):
            GRPOStageConfig(**bad).validate()
    GRPOStageConfig(kl_coef=0.0).validate()  # no KL term is allowed


def test_reward_functions_and_models_combine_with_their_weights():
    from rlhf.rewards import Reward, call_reward_fn

    def length(prompts, completions, answer):
        return [len(c) + (c == a) for c, a in zip(completions, answer)]

    r = Reward(fn=length, fn_name="t:length", model_weight=0.5, fn_weight=2.0, has_model=True)
    out = r.combine(np.array([1.0, -1.0]), ["p", "q"], ["ab", "c"], {"answer": ["ab", "x"]})
    assert out.tolist() == [0.5 + 2 * 3, -0.5 + 2 * 1]
    assert Reward(has_model=True).combine(np.array([1.5]), ["p"], ["c"], {}).tolist() == [1.5]
    with pytest.raises(ConfigError, match="returned 1 rewards for 2 completions"):
        call_reward_fn(lambda p, c: [1.0], ["a", "b"], ["x", "y"], {}, "m:f")
    with pytest.raises(ConfigError, match="non-finite"):
        call_reward_fn(lambda p, c: [1.0, float("inf")], ["a", "b"], ["x", "y"], {}, "m:f")
    with pytest.raises(ConfigError, match="raised KeyError"):
        call_reward_fn(lambda p, c: {}["x"], ["a"], ["x"], {}, "m:f")


def test_reward_fn_names_are_resolved_or_refused_in_one_line():
    from rlhf.rewards import load_reward_fn

    assert load_reward_fn("rlhf_toy_rewards:says_blue")(["p"], ["blue sky blue"]) == [2.0]
    for bad, needle in (("no_colon", "module:function"), ("no_such_module_x:f", "cannot import"),
                        ("rlhf_toy_rewards:nope", "cannot import"), ("math:pi", "not a function")):
        with pytest.raises(ConfigError, match=needle):
            load_reward_fn(bad)


def test_the_centring_offset_is_folded_into_a_gpt2_reward_model():
    """Any plain transformers client gets the centred score reinforge uses."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from rlhf.models import fold_offset

    torch.manual_seed(0)
    rm = GPT2ForSequenceClassification(GPT2Config(vocab_size=20, n_embd=16, n_layer=1, n_head=2, pad_token_id=0,
                                                  num_labels=1)).eval()
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
    with torch.no_grad():
        before = rm(input_ids=ids).logits[:, 0]
        assert fold_offset(rm, 0.75)
        after = rm(input_ids=ids).logits[:, 0]
    assert torch.allclose(after, before - 0.75, atol=1e-5)


def test_prompt_sets_keep_their_columns_aligned():
    from rlhf.tasks import PromptSet

    ps = PromptSet(["a", "b", "c"], {"answer": [1, 2, 3]})
    assert ps.take([2, 0]).columns == {"answer": [3, 1]}
    g = ps.take([1]).repeat_each(3)
    assert g.prompts == ["b"] * 3 and g.columns["answer"] == [2, 2, 2]
    assert ps.cycle(5).prompts == ["a", "b", "c", "a", "b"]


@pytest.mark.slow
def test_grpo_raises_a_toy_reward_within_a_few_iterations(ray_session, tmp_path):
    """reward = how often the completion says "blue": GRPO must raise it, from a random Llama."""
    from rlhf.grpo import GRPOLearner, GRPOStageConfig
    from rlhf.models import limit_threads
    from rlhf.rewards import Reward
    from rlhf.tasks import PromptSet
    from tests.rlhf_toy_rewards import says_blue
    from tests.test_rlhf_any_model import build_tokenizer, save_model

    limit_threads()
    tok = build_tokenizer()
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(save_model("llama", tok, tmp_path / "m"))
    tok.padding_side = "left"
    cfg = GRPOStageConfig(batch_size=4, group_size=8, minibatch_size=32, max_new_tokens=6, learning_rate=3e-3,
                          kl_coef=0.0, update_epochs=2)
    learner = GRPOLearner(cfg, policy, tok, None, 0.0, reward=Reward(fn=says_blue, fn_name="says_blue"), seed=0)
    prompts = PromptSet(["<|user|> what color is the sky <|end|> <|assistant|>"] * 4)
    try:
        rewards = [learner.iteration(prompts)["proxy_reward"] for _ in range(8)]
    finally:
        learner.close()
    assert np.mean(rewards[-2:]) > rewards[0] + 0.5, rewards
