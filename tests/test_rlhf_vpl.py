"""The VPL reward model (rlhf/vpl.py): its ELBO against a hand computation; it separates two
kinds of raters with opposite preferences where one Bradley-Terry model cannot (fixed features,
the real training and evaluation loops); through the CLI on a user's preference file: refused in
one line without a rater id column, and with one, an artifact whose conditioned rewards are
plain transformers reward models scoring as r(x, z) does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cluster.errors import ConfigError


def test_vpl_elbo_and_kl_against_a_hand_computation():
    import torch

    from rlhf.vpl import kl_to_standard_normal, vpl_elbo

    r_c, r_r = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 0.5])
    episode = torch.tensor([0, 0, 1])
    mu = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, 0.0], [math.log(2.0), 0.0]])
    ls = lambda x: math.log(1.0 / (1.0 + math.exp(-x)))  # noqa: E731
    kl = [0.5 * 0.25, 0.5 * (2.0 - 1.0 - math.log(2.0))]
    assert kl_to_standard_normal(mu, logvar).tolist() == pytest.approx(kl)
    loglik = [ls(1.0) + ls(-1.0), ls(1.5)]
    elbo, ll, kl_mean = vpl_elbo(r_c, r_r, episode, mu, logvar, kl_weight=0.5)
    assert float(elbo) == pytest.approx(np.mean([loglik[0] - 0.5 * kl[0], loglik[1] - 0.5 * kl[1]]), rel=1e-6)
    assert float(ll) == pytest.approx(np.mean(loglik), rel=1e-6)
    assert float(kl_mean) == pytest.approx(np.mean(kl), rel=1e-6)


def test_kl_annealing_ramps_beta_from_zero_to_the_kl_weight():
    from rlhf.reward import RewardStageConfig
    from rlhf.vpl import kl_weight_at

    cfg = RewardStageConfig(model_type="vpl", kl_weight=0.5, kl_warmup=0.25)
    assert [kl_weight_at(cfg, s, 100) for s in (0, 5, 25, 99)] == pytest.approx([0.0, 0.1, 0.5, 0.5])
    assert kl_weight_at(RewardStageConfig(model_type="vpl", kl_weight=0.5), 0, 100) == 0.5  # no warm-up


class FixedFeatures:
    """A stand-in transformer: each text's feature vector from a table, a scalar head w."""

    def __init__(self, table: dict[str, np.ndarray]):
        import torch

        self.table = {t: torch.tensor(v, dtype=torch.float32) for t, v in table.items()}
        self.score = torch.nn.Linear(len(next(iter(table.values()))), 1, bias=False)

    def parameters(self):
        return self.score.parameters()

    def to(self, dev):
        return self

    def train(self, mode=True):
        return self


def toy_raters(seed: int, raters: list[str], rounds: int = 12, k: int = 4):
    """Texts with features (f, 3 noise dims); rater "hi*" prefers f high, "lo*" f low; each
    rater labels all pairs of k fresh texts per round."""
    import datasets

    rng = np.random.default_rng(seed)
    rows, table = [], {}
    for who in raters:
        for r in range(rounds):
            texts = [f"{who}-{seed}-{r}-{i}" for i in range(k)]
            for t in texts:
                table[t] = np.concatenate([[rng.uniform(-1, 1)], rng.normal(size=3)])
            for i in range(k):
                for j in range(i + 1, k):
                    a, b = texts[i], texts[j]
                    a_wins = (table[a][0] > table[b][0]) == who.startswith("hi")
                    rows.append({"prompt": "", "chosen": a if a_wins else b, "rejected": b if a_wins else a, "rater": who})
    return datasets.Dataset.from_list(rows), table


def test_vpl_separates_raters_with_opposite_preferences_where_bradley_terry_cannot():
    import torch

    from rlhf.reward import RewardStageConfig, bradley_terry_loss, bt_accuracy
    from rlhf.vpl import VPLRewardModel, evaluate_vpl, make_modules, train_vpl

    train, table = toy_raters(0, ["hi0", "hi1", "hi2", "lo0", "lo1", "lo2"], rounds=8)
    held, held_table = toy_raters(1, ["hi9", "lo9"], rounds=10)  # raters never seen in training
    table.update(held_table)
    # 48 episodes of 6 query pairs, 12 per step, 4 steps an epoch: 60 steps
    cfg = RewardStageConfig(model_type="vpl", latent_dim=2, context_pairs=6, encoder_hidden=16, epochs=15,
                            texts_per_batch=48, learning_rate=3e-2, weight_decay=0.0, kl_weight=0.1,
                            logging_steps=20)
    torch.manual_seed(0)
    lm = FixedFeatures(table)

    class Toy(VPLRewardModel):
        def features(self, ids, texts, batch_size=None):
            return torch.stack([lm.table[t] for t in texts])

    enc, latent = make_modules(4, cfg.latent_dim, cfg.encoder_hidden)
    model = Toy(lm, lambda t, add_special_tokens=False: {"input_ids": [0]}, enc, latent, {})
    train_vpl(cfg, model, train, seed=0, device="cpu")
    vpl = evaluate_vpl(model, held, cfg.context_pairs, "rater", seed=0)
    assert vpl["vpl_raters"] == 2 and vpl["vpl_pairs"] == len(held)
    assert vpl["vpl_accuracy"] > 0.9, vpl

    w = torch.zeros(4, requires_grad=True)  # one Bradley-Terry reward on the same features
    opt = torch.optim.Adam([w], lr=0.05)
    hc = torch.stack([lm.table[t] for t in train["chosen"]])
    hr = torch.stack([lm.table[t] for t in train["rejected"]])
    for _ in range(200):
        opt.zero_grad()
        bradley_terry_loss(hc @ w, hr @ w).backward()
        opt.step()
    hc = torch.stack([lm.table[t] for t in held["chosen"]])
    hr = torch.stack([lm.table[t] for t in held["rejected"]])
    bt = bt_accuracy((hc @ w).detach().numpy(), (hr @ w).detach().numpy())
    assert 0.35 < bt < 0.65, bt


def test_vpl_training_resumed_from_a_checkpoint_ends_with_the_same_weights(tmp_path):
    """Checkpoints every 3 steps hold the transformer, encoder, A, optimizer, schedule and both
    random generators; a run resumed from step 3 of 8 ends where the uninterrupted one did."""
    import shutil

    import torch

    from cluster.rundir import RunDir
    from rlhf.reward import RewardStageConfig
    from rlhf.vpl import VPLRewardModel, make_modules, train_vpl

    train, table = toy_raters(0, ["hi0", "lo0"], rounds=4)
    cfg = RewardStageConfig(model_type="vpl", latent_dim=2, context_pairs=3, encoder_hidden=8, epochs=4,
                            texts_per_batch=24, learning_rate=1e-2, weight_decay=0.0, logging_steps=5,
                            checkpoint_every=3)

    class Lm(torch.nn.Module):  # the fixed features with a trainable score head, as a module
        def __init__(self):
            super().__init__()
            self.score = torch.nn.Linear(4, 1, bias=False)

    def run(path: Path):
        torch.manual_seed(0)
        lm = Lm()
        feats = {t: torch.tensor(v, dtype=torch.float32) for t, v in table.items()}

        class Toy(VPLRewardModel):
            def features(self, ids, texts, batch_size=None):
                return torch.stack([feats[t] for t in texts])

        enc, latent = make_modules(4, cfg.latent_dim, cfg.encoder_hidden)
        model = Toy(lm, lambda t, add_special_tokens=False: {"input_ids": [0]}, enc, latent, {})
        with RunDir(path, tensorboard=False, resume=(path / "checkpoints").is_dir()) as rd:
            loss = train_vpl(cfg, model, train, run_dir=rd, seed=0, device="cpu")
        return loss, [p.detach().clone() for p in model.parameters()]

    loss_a, full = run(tmp_path / "a")
    steps = sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("step_*"))
    assert len(steps) >= 2, steps
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / steps[0], tmp_path / "b" / "checkpoints" / steps[0])
    loss_b, resumed = run(tmp_path / "b")
    assert loss_b == pytest.approx(loss_a, rel=1e-6)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(full, resumed))


def test_vpl_keys_are_checked():
    from rlhf.reward import RewardStageConfig
    from rlhf.vpl import check_simulated_raters

    with pytest.raises(ConfigError, match="reward.model_type='gp': use bt"):
        RewardStageConfig(model_type="gp").validate()
    with pytest.raises(ConfigError, match="leave reward.trainer=grouped"):
        RewardStageConfig(model_type="vpl", trainer="trl").validate()
    with pytest.raises(ConfigError, match="reward.context_pairs"):
        RewardStageConfig(model_type="vpl", context_pairs=0).validate()
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="reward.kl_warmup=.*in \\[0, 1\\]"):
            RewardStageConfig(model_type="vpl", kl_warmup=bad).validate()
    with pytest.raises(ConfigError, match=r"raters.profiles=\[tonal,melodic\]"):
        check_simulated_raters(["gold"], "rater", simulated=True)
    check_simulated_raters(["tonal", "melodic"], "rater", simulated=True)


# --- through the CLI, on a user's model and preference file ---------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.test_rlhf_any_model import QA, build_tokenizer, save_model, write_jsonl

    root = tmp_path_factory.mktemp("vpl")
    tok = build_tokenizer()
    model = save_model("llama", tok, root / "llama")
    rows = [{"prompt": q, "chosen": f" {x}", "rejected": f" {y}", "rater": who}
            for rep in range(3) for q, a, b in QA
            for who, (x, y) in (("right", (a, b)), ("contrary", (b, a)))]
    paths = {"no_rater": write_jsonl(root / "prefs.jsonl", [{k: v for k, v in r.items() if k != "rater"} for r in rows]),
             "rater": write_jsonl(root / "prefs_rater.jsonl", rows), "root": root}
    # the untrained model stamped as an SFT artifact stands in for `reinforge rlhf sft` (what the reward stage reads)
    from transformers import AutoModelForCausalLM

    from rlhf.models import save_artifact

    save_artifact(AutoModelForCausalLM.from_pretrained(model), tok, root / "sft" / "model", "sft")
    paths["sft"] = root / "sft"
    return paths


VPL = ["--set", "data.task=text", "--set", "reward.model_type=vpl", "--set", "reward.epochs=1", "--set", "reward.context_pairs=2",
       "--set", "reward.latent_dim=2", "--set", "data.eval_fraction=0.5"]


def test_vpl_without_a_rater_column_is_refused_in_one_line(world):
    from tests.conftest import run_cli_inprocess

    res = run_cli_inprocess("rlhf", "reward", "--run-dir", str(world["root"] / "bad"), "--sft", str(world["sft"]),
                            "--preferences", str(world["no_rater"]), *VPL)
    assert res.returncode == 2, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert "reward.model_type=vpl needs a rater id column 'rater'" in line and "reward.rater_column" in line
    assert "Traceback" not in res.stderr
    assert not (world["root"] / "bad" / "model").exists()


def test_vpl_artifact_loads_and_its_conditioned_rewards_are_plain_reward_models(world):
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf.models import pack, sequence_scores
    from rlhf.vpl import conditioned_reward, infer_z, load_vpl, rater_pairs, token_ids
    from tests.conftest import run_cli_inprocess

    out = world["root"] / "vpl"
    res = run_cli_inprocess("rlhf", "reward", "--run-dir", str(out), "--sft", str(world["sft"]),
                            "--preferences", str(world["rater"]), *VPL)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["vpl_raters"] == 2 and 0.0 <= result["vpl_accuracy"] <= 1.0
    stamp = json.loads((out / "model" / "reinforge.json").read_text())
    assert stamp["stage"] == "reward" and stamp["model_type"] == "vpl" and stamp["vpl"]["latent_dim"] == 2
    vpl = load_vpl(out)
    import datasets

    train = datasets.load_from_disk(str(out / "preferences" / "train"))
    pool = rater_pairs(train, "rater")["contrary"]
    z = infer_z(vpl, train, pool)
    cond = Path(result["vpl_conditioned"]["contrary"])
    assert cond == out / "model" / "conditioned" / "contrary"
    hf = AutoModelForSequenceClassification.from_pretrained(cond).eval()  # plain transformers, no reinforge code
    ids, full_c, full_r = token_ids(vpl.tokenizer, train)
    texts = full_c[:4] + full_r[:4]
    with torch.no_grad():
        r_vpl = conditioned_reward(vpl.features(ids, texts), vpl.w, vpl.latent, z[None]).numpy()
        b = pack([ids[t] for t in texts], [[] for _ in texts], vpl.tokenizer.pad_token_id)
        r_hf = sequence_scores(hf, b["input_ids"], b["attention_mask"], 0.0, b["position_ids"]).numpy()
    # the same reward up to the centring constant (z from all of the rater's pairs, as the export)
    np.testing.assert_allclose(r_hf - r_hf.mean(), r_vpl - r_vpl.mean(), atol=1e-4)
