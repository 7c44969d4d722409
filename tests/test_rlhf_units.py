"""RLHF unit tests: tokeniser, gold rules, Bradley-Terry, KL-penalised rewards, GAE, PPO
losses, raters' Bayes-optimal accuracy, and the one-line refusals of bad inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cluster.errors import ConfigError, ReinforgeError
from rlhf import gold
from rlhf.melody import MelodyDataConfig, build_tokenizer, load_melodies, parse_tokens, split_prompt
from rlhf.ppo import (
    AdaptiveKLController,
    clipped_surrogate,
    clipped_value_loss,
    gae,
    k3_kl,
    kl_penalized_rewards,
    whiten,
)
from rlhf.raters import bayes_optimal_accuracy, preference_probability, round_pairs
from rlhf.reward import bradley_terry_loss, bt_accuracy, grouped_batches, preference_groups


def mel(*notes: str, mode: str = "major", eos: bool = True) -> str:
    """mel("p60 d1", "p62 d1", ...) -> token text with BOS, mode and optional EOS."""
    return " ".join(["<bos>", f"<{mode}>", *notes, *(["<eos>"] if eos else [])])


# --- data and tokeniser ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def melodies_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("melodies"))


@pytest.fixture(scope="module")
def melodies(melodies_cache):
    return load_melodies(MelodyDataConfig(max_songs=25, cache_dir=melodies_cache), log=None)


def test_tokenizer_round_trips_real_corpus_melodies(melodies, tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    texts = list(melodies["train"]["text"]) + list(melodies["validation"]["text"])
    assert len(texts) >= 15
    for text in texts:
        ids = again(text, add_special_tokens=False)["input_ids"]
        assert again.unk_token_id not in ids
        assert ids[0] == again.bos_token_id and ids[-1] == again.eos_token_id
        assert again.decode(ids) == text
        m = parse_tokens(text)
        assert m.errors == 0 and m.ended and len(m.notes) >= 4


def test_corpus_melodies_are_in_c_and_score_well_on_gold(melodies):
    scores = [gold.gold_score(t) for t in melodies["train"]["text"]]
    in_key = [gold.gold_rules(t)["notes_in_key"] for t in melodies["train"]["text"]]
    assert np.mean(in_key) > 0.95  # transposed to C: folk tunes stay in key
    assert np.mean(scores) > 0.7 * gold.MAX_SCORE


def test_prompt_is_opening_bar_and_cache_is_reused(melodies, tmp_path):
    text = melodies["train"][0]["text"]
    prompt, completion = split_prompt(text, bars=1)
    assert prompt.endswith("|") and prompt.count("|") == 1 and prompt + completion == text


# --- gold rules on hand-written melodies -------------------------------------------------
def test_notes_in_key_major_and_minor():
    assert gold.notes_in_key(parse_tokens(mel("p60 d1", "p62 d1", "p64 d1", "p66 d1"))) == 0.75
    assert gold.notes_in_key(parse_tokens(mel("p60 d1", "p63 d1", mode="minor"))) == 1.0


def test_begins_and_ends_on_tonic():
    m = parse_tokens(mel("p60 d1", "p64 d1", "| p67 d1", "p72 d2"))
    assert gold.begins_on_tonic(m) == 1.0 and gold.ends_on_tonic(m) == 1.0
    m = parse_tokens(mel("p62 d1", "p64 d1", "p67 d2"))
    assert gold.begins_on_tonic(m) == 0.0 and gold.ends_on_tonic(m) == 0.0


def test_no_more_than_four_repeats():
    four = parse_tokens(mel(*["p60 d1"] * 4, "p62 d1"))
    six = parse_tokens(mel(*["p60 d1"] * 6))
    assert gold.no_excess_repeats(four) == 1.0
    assert gold.no_excess_repeats(six) == pytest.approx(1 - 2 / 6)


def test_large_leaps_must_resolve_stepwise_in_opposite_direction():
    resolved = parse_tokens(mel("p60 d1", "p69 d1", "p67 d1", "p65 d1", "p64 d1"))  # up a sixth, then down by step
    unresolved = parse_tokens(mel("p60 d1", "p69 d1", "p71 d1", "p72 d1", "p74 d1"))  # up a sixth, then up
    fifth = parse_tokens(mel("p60 d1", "p67 d1", "p69 d1"))  # a fifth is not a large leap
    assert gold.leaps_resolved(resolved) == 1.0
    assert gold.leaps_resolved(unresolved) == 0.0  # 1 bad of 4 intervals, x4 weight
    assert gold.leaps_resolved(fifth) == 1.0


def test_motif_reuse_rewards_repeated_interval_patterns():
    # intervals +2 +2 -4 | +7 | +2 +2 -4: the 3-interval pattern (2, 2, -4) occurs twice (transposed)
    # among the 5 patterns -> 2/5
    repeated = parse_tokens(mel("p60 d1", "p62 d1", "p64 d1", "p60 d1", "p67 d1", "p69 d1", "p71 d1", "p67 d1"))
    walk = parse_tokens(mel("p60 d1", "p62 d1", "p65 d1", "p64 d1", "p71 d1", "p69 d1"))
    assert gold.motif_reuse(repeated) == pytest.approx(0.4)
    assert gold.motif_reuse(walk) == 0.0


def test_eos_and_grammar_rules():
    assert gold.ends_with_eos(parse_tokens(mel("p60 d1"))) == 1.0
    assert gold.ends_with_eos(parse_tokens(mel("p60 d1", eos=False))) == 0.0
    bad = parse_tokens(mel("p60", "p62 d1", "d1", "<unk>"))
    assert bad.errors == 3 and gold.well_formed(bad) < 1.0
    assert gold.well_formed(parse_tokens(mel("p60 d1", "r d0.5", "| p64 d1"))) == 1.0


def test_gold_score_prefers_a_good_tune_to_a_bad_one():
    good = mel("p60 d1", "p62 d1", "p64 d1", "p60 d1", "| p64 d1", "p65 d1", "p67 d2", "| p60 d1", "p62 d1",
               "p64 d1", "p60 d1", "| p64 d1", "p65 d1", "p67 d2", "| p67 d1", "p64 d1", "p60 d2")
    bad = mel("p61 d1", "p80 d1", "p49 d1", "p66", "p66 d1", "p66 d1", eos=False)
    assert gold.gold_score(good) > gold.gold_score(bad) + 4
    assert gold.gold_score(good) <= gold.MAX_SCORE


# --- Bradley-Terry and raters ------------------------------------------------------------
def test_bradley_terry_loss_and_accuracy_by_hand():
    rc, rr = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    expected = -(math.log(1 / (1 + math.exp(-2))) + math.log(0.5) + math.log(1 / (1 + math.exp(2)))) / 3
    assert float(bradley_terry_loss(rc, rr)) == pytest.approx(expected, rel=1e-6)
    assert bt_accuracy(rc.numpy(), rr.numpy()) == pytest.approx((1 + 0.5 + 0) / 3)


def test_bayes_optimal_accuracy_of_the_raters():
    p = preference_probability([1.0], [0.0], temperature=0.5)
    assert p[0] == pytest.approx(1 / (1 + math.exp(-2)))
    res = bayes_optimal_accuracy([3.0, 1.0, 2.0, 2.0], [1.0, 3.0, 0.0, 2.0], temperature=1.0)
    assert res["realised"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    s2 = 1 / (1 + math.exp(-2))
    assert res["expected"] == pytest.approx((s2 + s2 + s2 + 0.5) / 4)


def test_raters_label_every_pair_of_k_completions():
    assert round_pairs(2) == ([0], [1])
    i, j = round_pairs(4)
    assert sorted(zip(i, j)) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_divergent_raters_label_rounds_and_a_single_reward_is_reported_against_them():
    """raters.profiles=[tonal, melodic]: one rater kind per round labels all its pairs; the
    reward stage's report compares a reward with each kind's Bayes-optimal accuracy."""
    from rlhf.models import tiny_gpt2
    from rlhf.raters import RaterConfig, simulate_preferences
    from rlhf.reward import divergent_raters_report

    with pytest.raises(ConfigError, match="raters.profiles=.*one of gold, tonal, melodic"):
        RaterConfig(profiles=["tonal", "harmonic"]).validate()
    tok = build_tokenizer()
    torch.manual_seed(0)
    policy = tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    cfg = RaterConfig(pairs_per_prompt=4, completions_per_prompt=3, max_new_tokens=12, profiles=["tonal", "melodic"])
    cfg.validate()
    ds = simulate_preferences(policy, tok, ["<bos> <major> p60 d1 |", "<bos> <minor> p67 d1 |"], cfg, seed=0)
    assert len(ds) == 2 * 4 * 3 and set(ds["rater"]) <= {"tonal", "melodic"}
    for row in ds:  # every label came from that round's rater, gold kept beside it
        assert row["rater_chosen"] == pytest.approx(gold.profile_score(row["prompt"] + row["chosen"], row["rater"]))
        assert row["gold_chosen"] == pytest.approx(gold.gold_score(row["prompt"] + row["chosen"]))
    # a "reward model" that is exactly the average of the two kinds: correlation 1 with the mean
    mean = lambda t: (gold.profile_score(t, "tonal") + gold.profile_score(t, "melodic")) / 2  # noqa: E731
    rc = np.array([mean(p + c) for p, c in zip(ds["prompt"], ds["chosen"])])
    rr = np.array([mean(p + c) for p, c in zip(ds["prompt"], ds["rejected"])])
    rep = divergent_raters_report(rc, rr, ds, 0.5)
    assert rep["mean_score_correlation"] == pytest.approx(1.0)
    assert rep["single_reward_ceiling"] == pytest.approx(bt_accuracy(rc, rr))
    assert sum(rep[f"rater_{k}/pairs"] for k in ("tonal", "melodic") if f"rater_{k}/pairs" in rep) == len(ds)


def test_grouped_batches_score_each_text_once_and_keep_every_pair():
    import datasets

    rows = [("x", " a", " b"), ("x", " c", " a"), ("x", " b", " c"), ("y", " a", " d"), ("y", " e", " a")]
    ds = datasets.Dataset.from_dict({"prompt": [r[0] for r in rows], "chosen": [r[1] for r in rows],
                                     "rejected": [r[2] for r in rows]})
    groups = preference_groups(ds)
    assert [len(g[0]) for g in groups] == [3, 3]  # x: a b c; y: a d e (texts include the prompt)
    for max_texts in (2, 3, 4, 64):
        seen = []
        for texts, ch, rj in grouped_batches(groups, max_texts, np.random.default_rng(0)):
            assert len(texts) == len(set(texts)) <= max_texts
            seen += [(texts[c], texts[r]) for c, r in zip(ch, rj)]
        assert sorted(seen) == sorted((p + c, p + r) for p, c, r in rows)  # every pair exactly once


@pytest.mark.parametrize("trainer", ["grouped", pytest.param("trl", marks=pytest.mark.slow)])
def test_reward_trainers_learn_a_token_preference(tmp_path, trainer):
    """Both BT trainers on a toy preference set (chosen = more p72 tokens) rank held-out pairs."""
    import datasets

    from rlhf.models import save_artifact, tiny_gpt2
    from rlhf.reward import RewardStageConfig, train_reward

    tok = build_tokenizer()
    torch.manual_seed(0)
    save_artifact(tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64), tok, tmp_path / "sft", "sft")
    rng = np.random.default_rng(0)

    def pairs(n):
        rows = {"prompt": [], "chosen": [], "rejected": []}
        for _ in range(n):
            a, b = sorted(rng.choice(6, size=2, replace=False))
            filler = lambda k: " ".join(["p72 d1"] * k + ["p60 d1"] * (6 - k))  # noqa: E731
            rows["prompt"].append("<bos> <major> p64 d1 |")
            rows["chosen"].append(f" {filler(b)} <eos>")
            rows["rejected"].append(f" {filler(a)} <eos>")
        return datasets.Dataset.from_dict(rows)

    cfg = RewardStageConfig(trainer=trainer, epochs=6, learning_rate=3e-3, texts_per_batch=8, batch_size=8)
    m = train_reward(cfg, tmp_path / "sft", pairs(60), pairs(30), tmp_path / "rm", device="cpu")
    assert m["heldout_accuracy"] >= 0.9 and m["train_loss"] < 0.69
    assert json.loads((tmp_path / "rm" / "reinforge.json").read_text())["stage"] == "reward"


def test_sft_with_lora_on_a_local_model_dir_trains_only_the_adapted_layers(melodies, melodies_cache, tmp_path):
    """`sft.model=DIR sft.lora_r=4`: peft LoRA on c_attn/c_proj, merged into a plain HF artifact."""
    from rlhf.models import load_policy, save_artifact, tiny_gpt2
    from rlhf.sft import SFTStageConfig, train_sft
    from rlhf.tasks import MelodyTask, RLHFDataConfig

    tok = build_tokenizer()
    torch.manual_seed(0)
    base = tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, n_positions=256)
    save_artifact(base, tok, tmp_path / "base", "sft")
    cfg = SFTStageConfig(model=str(tmp_path / "base"), lora_r=4, max_steps=4, batch_size=4, learning_rate=1e-2)
    task = MelodyTask(RLHFDataConfig(melody=MelodyDataConfig(max_songs=25, cache_dir=melodies_cache)), log=None)
    train_sft(cfg, task, tmp_path / "out", device="cpu")
    tuned, _ = load_policy(tmp_path / "out")
    before, after = base.state_dict(), tuned.state_dict()
    assert torch.equal(before["transformer.wte.weight"], after["transformer.wte.weight"])  # frozen
    assert not torch.equal(before["transformer.h.0.attn.c_attn.weight"], after["transformer.h.0.attn.c_attn.weight"])
    assert not any("lora" in k for k in after)  # adapters merged: a plain GPT-2 the next stage can read


# --- PPO equations on hand-computed tensors ----------------------------------------------
def test_kl_penalized_rewards_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    scores = torch.tensor([2.0, -1.0])
    rewards, kl = kl_penalized_rewards(logp, ref, scores, mask, beta=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]]))
    expected = torch.tensor([[-0.05, 0.1, 2.0], [-0.1, -1.0, 0.0]])
    assert torch.allclose(rewards, expected)


def test_gae_by_hand():
    r = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0]])
    v = torch.tensor([[0.5, 1.0, 1.5], [1.0, 2.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    gamma, lam = 0.9, 0.5
    adv, ret = gae(r, v, mask, gamma, lam)
    # row 0: deltas
    d2 = 2.0 - 1.5
    d1 = 0.0 + 0.9 * 1.5 - 1.0
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    # row 1: ends after 2 tokens (the value 9.0 at the pad is ignored)
    e1 = 1.0 - 2.0
    e0 = 0.5 + 0.9 * 2.0 - 1.0 + gamma * lam * e1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2], [e0, e1, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, (adv + v) * mask)


def test_whiten_clipped_surrogate_value_loss_and_kl_controller():
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    w = whiten(torch.tensor([[1.0, 3.0, 100.0]]), mask)
    assert torch.allclose(w, torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-4)
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    adv = torch.tensor([[1.0, 1.0, 5.0]])
    loss, clipfrac, _ = clipped_surrogate(new, old, adv, mask, clip=0.2)
    # min(1.5, 1.2) * 1 = 1.2 ; min(0.5, 0.8) * 1 = 0.5 -> loss = -(1.2 + 0.5) / 2
    assert float(loss) == pytest.approx(-0.85) and float(clipfrac) == pytest.approx(1.0)
    vl = clipped_value_loss(torch.tensor([[1.0, 0.0, 0.0]]), torch.zeros(1, 3), torch.tensor([[1.0, 1.0, 0.0]]),
                            mask, clip=0.2)
    # token 0: max((1-1)^2, (0.2-1)^2) = 0.64 ; token 1: max(1, 1) = 1 -> 0.5 * mean = 0.41
    assert float(vl) == pytest.approx(0.41)
    ctl = AdaptiveKLController(0.1, target=2.0, horizon=100)
    assert ctl.update(kl=4.0, n=10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    assert AdaptiveKLController(0.1, None, 100).update(50.0, 10) == 0.1


def test_k3_kl_by_hand_and_as_the_surrogate_approx_kl():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[2.0, 0.5, 3.0]]))  # ratios 2, 1/2 and 3 (the last one padding)
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    # (ratio - 1) - log ratio: (1 - ln 2) and (-1/2 + ln 2), averaged over the two real tokens
    expected = ((1 - math.log(2)) + (-0.5 + math.log(2))) / 2
    assert float(k3_kl(new, old, mask)) == pytest.approx(expected, rel=1e-6)
    assert float(k3_kl(new, old)) == pytest.approx((expected * 2 + 2 - math.log(3)) / 3, rel=1e-6)
    assert float(k3_kl(old, old, mask)) == 0.0
    _, _, approx_kl = clipped_surrogate(new, old, torch.ones(1, 3), mask, clip=0.2)
    assert float(approx_kl) == pytest.approx(expected, rel=1e-6)


def test_a_sweep_metric_an_rlhf_stage_never_reports_is_refused_with_the_nearest_name():
    from pipelines.registry import get_pipeline
    from pipelines.tune import SweepConfig, plan_sweep

    search = {"ppo.learning_rate": "loguniform(1e-5,1e-4)"}
    with pytest.raises(ConfigError, match="rlhf-ppo' never reports metric 'final/train_loss'; did you mean 'final/"):
        plan_sweep(SweepConfig(preset="rlhf-ppo", search=search, metric="final/train_loss"))
    plan = plan_sweep(SweepConfig(preset="rlhf-ppo", search=search))  # the declared default
    assert (plan.metric, plan.mode) == ("eval_gold_reward", "max")
    assert plan_sweep(SweepConfig(preset="rlhf-ppo", search=search, metric="final/gold_gain", mode="max"))
    for stage in ("sft", "reward", "ppo", "dpo", "all", "eval"):  # each stage's default is one it reports
        pipe = get_pipeline(f"rlhf-{stage}")
        assert pipe.tune_metric[0] in pipe.metrics and len(set(pipe.metrics)) == len(pipe.metrics)


# --- artifacts and refusals ---------------------------------------------------------------
def test_wrong_artifact_and_tokenizer_mismatch_are_refused(tmp_path):
    from rlhf.models import check_tokenizer, resolve_artifact, save_artifact, tiny_gpt2

    tok = build_tokenizer()
    model = tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2)
    save_artifact(model, tok, tmp_path / "run" / "model", "sft")
    path, stamp = resolve_artifact(tmp_path / "run", ("sft",), "--sft")  # a run dir is accepted
    assert path == tmp_path / "run" / "model" and stamp["stage"] == "sft"
    with pytest.raises(ReinforgeError, match="is a 'sft' artifact.*expected a reward artifact"):
        resolve_artifact(tmp_path / "run", ("reward",), "--reward")
    with pytest.raises(ReinforgeError, match="no such directory"):
        resolve_artifact(tmp_path / "nope", ("sft",), "--sft")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReinforgeError, match="not a reinforge RLHF artifact"):
        resolve_artifact(tmp_path / "empty", ("sft",), "--sft")
    small = tiny_gpt2(build_tokenizer(), n_layer=1, n_embd=32, n_head=2)
    small.resize_token_embeddings(10)
    with pytest.raises(ReinforgeError, match="tokenizer has 55 tokens but the model's embedding has 10"):
        check_tokenizer(tok, small, "--sft x")


def test_bad_configs_are_refused():
    from rlhf.ppo import PPOStageConfig

    with pytest.raises(ConfigError, match="minibatch_size"):
        PPOStageConfig(batch_size=8, minibatch_size=16).validate()
    with pytest.raises(ConfigError, match="data.melody.files: no file 'kinderr'.*did you mean 'kinder0'"):
        load_melodies(MelodyDataConfig(files=["kinderr"], cache_dir="/nonexistent-cache"), log=None)


def test_sft_loss_is_on_the_completion_only_for_prompt_completion_data(tmp_path):
    """A hand-made prompt-completion row through our SFTConfig and TRL's collator: the labels
    are -100 on every prompt token and the completion's ids on the completion tokens."""
    import datasets
    from trl import SFTTrainer

    from rlhf.models import tiny_gpt2
    from rlhf.sft import SFTStageConfig, sft_config

    tok = build_tokenizer()
    prompt, completion = "<bos> <major> p60 d1 |", " p62 d1 p64 d2 <eos>"
    ds = datasets.Dataset.from_list([{"prompt": prompt, "completion": completion}])
    cfg = SFTStageConfig(max_steps=1, batch_size=1)
    for only in (True, False):
        cfg.completion_only_loss = only
        args = sft_config(cfg, "prompt_completion", tok, 64, tmp_path / "trainer", device="cpu")
        trainer = SFTTrainer(model=tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2), args=args, train_dataset=ds,
                             processing_class=tok)
        batch = trainer.data_collator([trainer.train_dataset[0]])
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tok(completion, add_special_tokens=False)["input_ids"]
        assert ids == p_ids + c_ids
        assert labels[len(p_ids):] == c_ids  # the completion is learnt
        # the prompt is not learnt, by default; with sft.completion_only_loss=false it is
        assert labels[:len(p_ids)] == ([-100] * len(p_ids) if only else p_ids)
