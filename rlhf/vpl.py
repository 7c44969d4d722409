"""Pluralistic reward modelling: variational preference learning (VPL; Poddar et al. 2024,
"Personalizing Reinforcement Learning from Human Feedback with Variational Preference
Learning"). ``reward.model_type: vpl``.

One Bradley-Terry model cannot know who labelled a pair, so with raters who disagree it learns
their average (rlhf/reward.py ``divergent_raters_report``). VPL gives every rater a latent
z ~ q(z | a handful of that rater's labelled pairs) and conditions the reward on it:

    e_j          = g(h(x, y_c,j) - h(x, y_r,j))                 the context pair embedding
    mu, log s^2  = W_out mean_j e_j                              encode_rater: q(z | C pairs) = N(mu, s^2)
    r(x, y; z)   = (w + A z) . h(x, y)                           conditioned_reward
    ELBO         = E_q[ sum_q log sigmoid(r(y_c,q; z) - r(y_r,q; z)) ] - beta KL(q || N(0, I))
                                                                 vpl_elbo (one reparameterised z)
    KL           = 1/2 sum_k (mu_k^2 + s_k^2 - 1 - log s_k^2)    kl_to_standard_normal

h is the SFT transformer's final hidden state at the last token (the vector a Hugging Face
sequence-classification head reads), trained end to end as the Bradley-Terry model's is; g is
a small MLP (``reward.encoder_hidden``); the context pairs (``reward.context_pairs``) and the
query pairs of an episode are disjoint pairs of the same rater (the rater id column,
``reward.rater_column``). The head is linear in h with a z-dependent weight, head([h, z]) with
the h-z interaction, so for a fixed z it IS a plain scalar head: ``condition`` writes
r(x, y) = r(x, y; z_rater) as an ordinary one-label ``AutoModelForSequenceClassification``
reward artifact that PPO (``--reward DIR``) or any transformers client uses as it is. The
artifact's ``model/`` is that model at z = 0 (the prior's rater), plus ``vpl.safetensors``
(the encoder g, W_out and A) and, per training rater (``reward.conditioned_raters``), the
conditioned reward at ``model/conditioned/<rater>/``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cluster.errors import ConfigError

VPL_WEIGHTS = "vpl.safetensors"
CONDITIONED = "conditioned"
QUERY_CHUNK = 56  # held-out query pairs scored per inferred z


# --- the equations -------------------------------------------------------------------------
def kl_to_standard_normal(mu, logvar):
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per row."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def encode_rater(encoder, h_chosen, h_rejected):
    """(mu, logvar) of q(z | context pairs): h_* are (E, C, d) features of E raters' C pairs."""
    return encoder(h_chosen - h_rejected)


def conditioned_reward(h, w, latent, z):
    """r(x, y; z) = (w + A z) . h for rows h (N, d) and their latents z (N, k)."""
    return (h * (w + latent(z))).sum(-1)


def vpl_elbo(r_chosen, r_rejected, episode, mu, logvar, kl_weight: float):
    """Mean over episodes e of sum_{q in e} log sigmoid(r_c,q - r_r,q) - beta KL(q_e || N(0, I)),
    with ``episode`` the episode index of every query pair. Returns (elbo, log-likelihood, kl),
    each averaged over episodes."""
    import torch

    loglik = torch.zeros(mu.shape[0], dtype=r_chosen.dtype, device=r_chosen.device)
    loglik = loglik.index_add(0, episode, torch.nn.functional.logsigmoid(r_chosen - r_rejected))
    kl = kl_to_standard_normal(mu, logvar)
    return (loglik - kl_weight * kl).mean(), loglik.mean(), kl.mean()


def kl_weight_at(cfg, step: int, total: int) -> float:
    """beta at optimizer step ``step`` of ``total``: linear from 0 over the first ``kl_warmup``
    of training, then ``kl_weight``."""
    ramp = cfg.kl_warmup * total
    return cfg.kl_weight if ramp <= 0 else cfg.kl_weight * min(1.0, step / ramp)


# --- the modules ---------------------------------------------------------------------------
def make_modules(d_model: int, latent_dim: int, hidden: int):
    """The encoder (pair embedding g, mean pool, W_out -> mu, logvar) and the latent weight A."""
    import torch
    from torch import nn

    class RaterEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
            self.out = nn.Linear(hidden, 2 * latent_dim)

        def forward(self, diff):  # (E, C, d) -> mu, logvar (E, k)
            mu, logvar = self.out(self.embed(diff).mean(1)).chunk(2, dim=-1)
            return mu, logvar.clamp(-8.0, 4.0)

    latent = nn.Linear(latent_dim, d_model, bias=False)
    torch.nn.init.normal_(latent.weight, std=1.0 / math.sqrt(d_model + 1))
    return RaterEncoder(), latent


class VPLRewardModel:
    """The reward transformer (a one-label sequence-classification model whose score weight is
    w), the rater encoder and A."""

    def __init__(self, lm, tokenizer, encoder, latent, info: dict[str, Any]):
        self.lm, self.tokenizer, self.encoder, self.latent, self.info = lm, tokenizer, encoder, latent, info

    def parameters(self):
        return [*self.lm.parameters(), *self.encoder.parameters(), *self.latent.parameters()]

    def to(self, dev):
        for m in (self.lm, self.encoder, self.latent):
            m.to(dev)
        return self

    def train(self, mode: bool = True):
        for m in (self.lm, self.encoder, self.latent):
            m.train(mode)

    @property
    def w(self):
        return self.lm.score.weight[0]

    def features(self, ids: dict[str, list[int]], texts: list[str], batch_size: int | None = None):
        return last_token_features(self.lm, self.tokenizer, ids, texts, batch_size)


def last_token_features(lm, tokenizer, ids: dict[str, list[int]], texts: list[str], batch_size: int | None = None):
    """h of each text: a sequence-classification model's final hidden state at the last token
    (texts left-padded), the vector its score head reads. ``ids``: text -> token ids."""
    import torch

    from rlhf.models import hidden_states, pack

    dev = lm.score.weight.device
    step = batch_size or max(1, len(texts))
    out = []
    for i in range(0, len(texts), step):
        b = pack([ids[t] for t in texts[i:i + step]], [[] for _ in texts[i:i + step]], tokenizer.pad_token_id)
        h = hidden_states(lm, b["input_ids"].to(dev), b["attention_mask"].to(dev), b["position_ids"].to(dev))
        out.append(h[:, -1].float())
    return torch.cat(out) if out else torch.zeros(0, lm.score.weight.shape[1], device=dev)


def check_rater_column(ds, column: str) -> None:
    """VPL needs to know who labelled each pair; one line naming the column and the fix."""
    if column not in ds.column_names:
        raise ConfigError(f"reward.model_type=vpl needs a rater id column {column!r} in the preference set (who "
                          f"labelled each pair; columns: {', '.join(ds.column_names)}): add it, name yours with "
                          f"reward.rater_column=NAME, simulate several rater kinds with raters.profiles=[tonal,melodic], "
                          "or use reward.model_type=bt")


def check_simulated_raters(profiles: list[str], column: str, simulated: bool) -> None:
    """Simulated raters of one kind write no rater column: refuse before sampling."""
    if simulated and column == "rater" and len(set(profiles)) < 2:
        raise ConfigError(f"reward.model_type=vpl needs a rater id column 'rater': the simulated raters write one only "
                          f"with several rater kinds (raters.profiles={profiles}): set raters.profiles=[tonal,melodic], "
                          "or use reward.model_type=bt")


# --- episodes: disjoint context and query pairs of one rater ---------------------------------
def rater_pairs(ds, column: str) -> dict[str, list[int]]:
    """rater id -> the indices of its pairs."""
    out: dict[str, list[int]] = {}
    for i, who in enumerate(ds[column]):
        out.setdefault(str(who), []).append(i)
    return out


def training_episodes(ds, column: str) -> list[tuple[str, list[int]]]:
    """(rater, query pair indices): per rater, its pairs grouped by shared texts (one rating round
    of K completions = one group, ``preference_groups``), so each text of a group is scored once
    for all its pairs."""
    from rlhf.reward import full_texts

    full_c, full_r, _ = full_texts(ds)
    episodes = []
    for who, idx in rater_pairs(ds, column).items():
        parent: dict[int, int] = {}
        first: dict[str, int] = {}

        def root(i: int, parent: dict[int, int] = parent) -> int:
            while parent.setdefault(i, i) != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i in idx:  # union pairs that share a text
            for t in (full_c[i], full_r[i]):
                j = first.setdefault(t, i)
                parent[root(i)] = root(j)
        groups: dict[int, list[int]] = {}
        for i in idx:
            groups.setdefault(root(i), []).append(i)
        episodes += [(who, g) for g in groups.values()]
    return episodes


def draw_context(pool: list[int], exclude: set[int], n: int, rng: np.random.Generator) -> list[int]:
    """n of the rater's pairs outside the episode's queries (with replacement when too few)."""
    outside = [i for i in pool if i not in exclude] or pool
    return [outside[k] for k in rng.choice(len(outside), size=n, replace=len(outside) < n)]


def episode_batches(episodes, max_texts: int, full_c, full_r, rng: np.random.Generator):
    """Lists of episodes, in random order, whose query texts fill at most ``max_texts``."""
    batch: list = []
    texts: set[str] = set()
    for e in rng.permutation(len(episodes)):
        who, q = episodes[e]
        new = {full_c[i] for i in q} | {full_r[i] for i in q}
        if batch and len(texts | new) > max_texts:
            yield batch
            batch, texts = [], set()
        batch.append((who, q))
        texts |= new
    if batch:
        yield batch


def episode_terms(model: VPLRewardModel, ids, full_c, full_r, batch, contexts, sample: bool, generator=None):
    """r_c, r_r of every query pair under its episode's z, the episode index of each pair, and
    the episodes' (mu, logvar). ``contexts``: the context pair indices of each episode; the
    context features carry no gradient into the transformer (the encoder still trains)."""
    import torch

    q_texts = list(dict.fromkeys(t for _, q in batch for i in q for t in (full_c[i], full_r[i])))
    c_texts = list(dict.fromkeys(t for ctx in contexts for i in ctx for t in (full_c[i], full_r[i])))
    with torch.no_grad():
        hc = dict(zip(c_texts, model.features(ids, c_texts, 256)))
    h = model.features(ids, q_texts)
    row = {t: n for n, t in enumerate(q_texts)}
    ctx_c = torch.stack([torch.stack([hc[full_c[i]] for i in ctx]) for ctx in contexts])
    ctx_r = torch.stack([torch.stack([hc[full_r[i]] for i in ctx]) for ctx in contexts])
    mu, logvar = encode_rater(model.encoder, ctx_c, ctx_r)
    z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator, device=mu.device) if sample else mu
    pairs = [(e, i) for e, (_, q) in enumerate(batch) for i in q]
    dev = h.device
    episode = torch.tensor([e for e, _ in pairs], device=dev)
    ch = torch.tensor([row[full_c[i]] for _, i in pairs], device=dev)
    rj = torch.tensor([row[full_r[i]] for _, i in pairs], device=dev)
    r_c = conditioned_reward(h[ch], model.w, model.latent, z[episode])
    r_r = conditioned_reward(h[rj], model.w, model.latent, z[episode])
    return r_c, r_r, episode, mu, logvar


# --- training --------------------------------------------------------------------------------
def new_vpl_model(cfg, sft_dir: Path, task=None, allow_pickle: bool = False) -> VPLRewardModel:
    from rlhf.reward import reward_model_from_sft

    lm, tok = reward_model_from_sft(sft_dir, dropout=not cfg.disable_dropout, task=task, allow_pickle=allow_pickle)
    encoder, latent = make_modules(lm.score.weight.shape[1], cfg.latent_dim, cfg.encoder_hidden)
    return VPLRewardModel(lm, tok, encoder, latent, {"latent_dim": cfg.latent_dim, "encoder_hidden": cfg.encoder_hidden,
                                                     "context_pairs": cfg.context_pairs, "kl_weight": cfg.kl_weight,
                                                     "kl_warmup": cfg.kl_warmup,
                                                     "rater_column": cfg.rater_column})


def token_ids(tokenizer, ds) -> tuple[dict[str, list[int]], list[str], list[str]]:
    from rlhf.reward import full_texts

    full_c, full_r, texts = full_texts(ds)
    return {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts}, full_c, full_r


def train_vpl(cfg, model: VPLRewardModel, train_pairs, run_dir=None, seed: int = 0, device: str = "auto") -> float:
    """Maximise ``vpl_elbo`` over episodes (AdamW, linear decay, grad-norm clip 1); returns the
    mean training loss -ELBO / query pairs per episode."""
    import torch

    from cluster.checkpoint import load_checkpoint
    from cluster.progress import progress
    from cluster.runtime import select_device
    from rlhf.checkpoints import trainable_state

    dev = select_device(device)
    model.to(dev).train()
    col = cfg.rater_column
    ids, full_c, full_r = token_ids(model.tokenizer, train_pairs)
    episodes = training_episodes(train_pairs, col)
    pools = rater_pairs(train_pairs, col)
    per_epoch = sum(1 for _ in episode_batches(episodes, cfg.texts_per_batch, full_c, full_r, np.random.default_rng(seed)))
    total = max(1, math.ceil(cfg.epochs * per_epoch))
    params = model.parameters()
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / total)
    gen = torch.Generator(device=dev).manual_seed(seed)
    rng = np.random.default_rng(seed + 7)
    step, losses, window = 0, [], []
    latest = run_dir.latest_checkpoint() if run_dir is not None else None
    if latest is not None:  # the same resume as the grouped BT trainer's, plus the two generators
        ckpt = load_checkpoint(latest)
        model.lm.load_state_dict(ckpt["model"], strict=False)
        model.encoder.load_state_dict(ckpt["encoder"])
        model.latent.load_state_dict(ckpt["latent"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        gen.set_state(ckpt["generator"]["z"].cpu())
        rng.bit_generator.state = ckpt["state"]["rng"]
        step, losses = int(ckpt["state"]["step"]), list(ckpt["state"]["losses"])
        print(f"resumed the VPL reward model at step {step} from {latest}")
    done = step
    with progress(total=total, desc="vpl reward", unit="step", initial=step) as bar:
        for epoch in range(math.ceil(cfg.epochs)):
            for batch in episode_batches(episodes, cfg.texts_per_batch, full_c, full_r,
                                         np.random.default_rng(seed + 1 + epoch)):
                if done > 0:  # trained on before the checkpoint this run resumed from
                    done -= 1
                    continue
                contexts = [draw_context(pools[who], set(q), cfg.context_pairs, rng) for who, q in batch]
                r_c, r_r, episode, mu, logvar = episode_terms(model, ids, full_c, full_r, batch, contexts, True, gen)
                elbo, loglik, kl = vpl_elbo(r_c, r_r, episode, mu, logvar, kl_weight_at(cfg, step, total))
                loss = -elbo * len(batch) / len(r_c)  # per query pair, the scale of the BT loss
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                step += 1
                losses.append(loss.item())
                window.append((float((r_c > r_r).float().mean()), kl.item()))
                if step % cfg.logging_steps == 0:
                    acc, kl_mean = np.mean(window, axis=0)
                    row = {"reward/loss": float(np.mean(losses[-cfg.logging_steps:])), "reward/accuracy": float(acc),
                           "reward/kl": float(kl_mean), "reward/learning_rate": sched.get_last_lr()[0],
                           "reward/epoch": step / per_epoch}
                    bar.update(0, loss=row["reward/loss"], accuracy=row["reward/accuracy"], kl=row["reward/kl"])
                    if run_dir is not None:
                        run_dir.log(row, step=step)
                    window = []
                if run_dir is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                    run_dir.save_checkpoint(step, {
                        "model": trainable_state(model.lm), "encoder": model.encoder.state_dict(),
                        "latent": model.latent.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "generator": {"z": gen.get_state()},
                        "state": {"step": step, "losses": losses, "rng": rng.bit_generator.state}}, keep=2)
                bar.update(1)
                if step >= total:
                    return float(np.mean(losses))
    return float(np.mean(losses)) if losses else float("nan")


# --- inference and evaluation ----------------------------------------------------------------
def infer_z(model: VPLRewardModel, ds, pair_index: list[int]):
    """The posterior mean of z given these labelled pairs of one rater."""
    import torch

    ids, full_c, full_r = token_ids(model.tokenizer, ds.select(pair_index))
    with torch.no_grad():
        model.train(False)
        hc, hr = model.features(ids, full_c, 256), model.features(ids, full_r, 256)
        return encode_rater(model.encoder, hc[None], hr[None])[0][0]


def evaluate_vpl(model: VPLRewardModel, ds, context_pairs: int, column: str, seed: int = 0) -> dict[str, float]:
    """Held-out accuracy per rater: its pairs in chunks of ``QUERY_CHUNK`` (fewer for a rater with
    few pairs), each chunk scored under z = the posterior mean given ``context_pairs`` other
    pairs of the same rater (a rater with no other pairs is skipped). ``vpl_accuracy`` over every scored pair; per rater kind
    (``vpl_accuracy_<kind>``) when the rater ids are kinds (the simulated raters)."""
    import torch

    from rlhf.gold import RATER_PROFILES

    model.train(False)
    ids, full_c, full_r = token_ids(model.tokenizer, ds)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        texts = list(ids)
        h = dict(zip(texts, model.features(ids, texts, 256)))
        correct: dict[str, list[float]] = {}
        for who, pool in rater_pairs(ds, column).items():
            order = [pool[k] for k in rng.permutation(len(pool))]
            chunk = min(QUERY_CHUNK, max(1, len(pool) - context_pairs))  # a small rater: fewer queries per z
            for s in range(0, len(order), chunk):
                q = order[s:s + chunk]
                if len(pool) == len(q):
                    continue  # nothing left of this rater to infer z from
                ctx = draw_context(pool, set(q), context_pairs, rng)
                hc = torch.stack([h[full_c[i]] for i in ctx])[None]
                hr = torch.stack([h[full_r[i]] for i in ctx])[None]
                z = encode_rater(model.encoder, hc, hr)[0][0]
                rc = conditioned_reward(torch.stack([h[full_c[i]] for i in q]), model.w, model.latent, z[None]).cpu().numpy()
                rr = conditioned_reward(torch.stack([h[full_r[i]] for i in q]), model.w, model.latent, z[None]).cpu().numpy()
                correct.setdefault(who, []).extend(np.where(rc > rr, 1.0, np.where(rc == rr, 0.5, 0.0)).tolist())
    scored = [c for cs in correct.values() for c in cs]
    out = {"vpl_pairs": len(scored), "vpl_raters": len(correct),
           "vpl_accuracy": float(np.mean(scored)) if scored else float("nan")}
    for who, cs in correct.items():
        if who in RATER_PROFILES:
            out[f"vpl_accuracy_{who}"] = float(np.mean(cs))
    return out


# --- the artifact ----------------------------------------------------------------------------
def conditioned_lm(model: VPLRewardModel, z):
    """A copy of the reward transformer whose scalar head is w + A z: r(x, y) = r(x, y; z)."""
    import torch

    lm = copy.deepcopy(model.lm).to("cpu")
    with torch.no_grad():
        lm.score.weight[0] = (model.w + model.latent(z.to(model.w.device))).to("cpu")
    return lm


def centred_save(lm, tokenizer, texts_ds, out_dir: Path, task, **info) -> float:
    """Centre on the SFT samples of ``texts_ds`` (offset folded where the architecture allows) and
    save as a reward artifact; returns the offset."""
    from rlhf.models import fold_offset, save_artifact
    from rlhf.reward import pair_scores

    lm.eval()
    offset = pair_scores(lm, tokenizer, texts_ds)[2]
    folded = fold_offset(lm, offset)
    save_artifact(lm, tokenizer, out_dir, "reward", task=task.stamp() if task is not None else None,
                  reward_offset=offset, offset_folded=folded, **info)
    return offset


def condition(vpl_dir: str | Path, pairs, out_dir: str | Path, rater: str = "rater", task=None) -> Path:
    """Write r(x, y) = r(x, y; z) with z inferred from ``pairs`` (one rater's labelled
    preference pairs, TRL format) as a plain reward artifact (``--reward OUT_DIR``)."""
    model = load_vpl(vpl_dir)
    z = infer_z(model, pairs, list(range(len(pairs))))
    centred_save(conditioned_lm(model, z), model.tokenizer, pairs, Path(out_dir), task,
                 parent={"vpl": str(vpl_dir)}, model_type="vpl-conditioned", rater=rater, z=z.tolist())
    return Path(out_dir)


def save_vpl(model: VPLRewardModel, out_dir: Path, train_pairs, task, conditioned_raters: int, seed: int,
             **info) -> dict[str, Any]:
    """model/ = the transformer at z = 0 (centred) + ``vpl.safetensors`` + ``conditioned/<rater>/``
    for the first ``conditioned_raters`` training raters (z from up to 8 x context_pairs of
    their pairs). Returns the offsets and each rater's z."""
    from safetensors.torch import save_file

    model.to("cpu").train(False)
    rng = np.random.default_rng(seed)
    pools = rater_pairs(train_pairs, model.info["rater_column"])
    kept = {}
    for who in sorted(pools)[:conditioned_raters]:
        pool = pools[who]
        pick = sorted(rng.choice(len(pool), size=min(len(pool), 8 * model.info["context_pairs"]), replace=False))
        kept[who] = (infer_z(model, train_pairs, [pool[k] for k in pick]), len(pick))
    lms = {who: conditioned_lm(model, z) for who, (z, _) in kept.items()}  # before the base is centred
    offset = centred_save(model.lm, model.tokenizer, train_pairs, out_dir, task, model_type="vpl", vpl=model.info, **info)
    state = {f"encoder.{k}": v.contiguous() for k, v in model.encoder.state_dict().items()}
    state.update({f"latent.{k}": v.contiguous() for k, v in model.latent.state_dict().items()})
    save_file(state, str(out_dir / VPL_WEIGHTS))
    out: dict[str, Any] = {"reward_offset": offset, "conditioned": {}}
    for who, lm in lms.items():
        z, n = kept[who]
        sub = out_dir / CONDITIONED / who
        off = centred_save(lm, model.tokenizer, train_pairs, sub, task, model_type="vpl-conditioned", rater=who,
                           z=z.tolist(), context=n, parent={"vpl": str(out_dir)})
        out["conditioned"][who] = {"dir": str(sub), "offset": off, "z": z.tolist()}
    return out


def load_vpl(model_dir: str | Path, allow_pickle: bool = False) -> VPLRewardModel:
    """The VPL reward model of a ``reward.model_type=vpl`` artifact (a run dir or its model/)."""
    from safetensors.torch import load_file

    from rlhf.models import STAMP, load_reward_model, resolve_artifact

    path, stamp = resolve_artifact(model_dir, ("reward",), "--reward")
    if stamp.get("model_type") != "vpl" or not (path / VPL_WEIGHTS).is_file():
        raise ConfigError(f"--reward {model_dir}: not a VPL reward model (no {VPL_WEIGHTS}); train one with "
                          "reward.model_type=vpl")
    lm, tok = load_reward_model(path, "--reward", allow_pickle)
    info = json.loads((path / STAMP).read_text())["vpl"]
    encoder, latent = make_modules(lm.score.weight.shape[1], info["latent_dim"], info["encoder_hidden"])
    state = load_file(str(path / VPL_WEIGHTS))
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    latent.load_state_dict({k[len("latent."):]: v for k, v in state.items() if k.startswith("latent.")})
    model = VPLRewardModel(lm, tok, encoder, latent, info)
    model.train(False)
    return model


def train_vpl_reward(cfg, sft_dir: Path, train_pairs, heldout_pairs, out_dir: Path, run_dir=None, seed: int = 0,
                     device: str = "auto", temperature: float | None = None, task=None,
                     allow_pickle: bool = False) -> dict[str, Any]:
    """The reward stage with ``reward.model_type=vpl``: train, save, evaluate held-out per rater
    (``evaluate_vpl``) next to the z = 0 reward's Bradley-Terry numbers (``evaluate_pairs``,
    which for simulated raters also gives each kind's Bayes-optimal accuracy)."""
    from rlhf.reward import evaluate_pairs

    for ds in (train_pairs, heldout_pairs):
        check_rater_column(ds, cfg.rater_column)
    model = new_vpl_model(cfg, sft_dir, task, allow_pickle)
    train_loss = train_vpl(cfg, model, train_pairs, run_dir, seed, device)
    saved = save_vpl(model, out_dir, train_pairs, task, cfg.conditioned_raters, seed, parent={"sft": str(sft_dir)})
    model = load_vpl(out_dir)  # what the artifact holds (centred)
    metrics: dict[str, Any] = {"train_loss": train_loss, "reward_offset": saved["reward_offset"]}
    metrics.update(evaluate_pairs(model.lm, model.tokenizer, heldout_pairs, 0.0, temperature))
    metrics.update(evaluate_vpl(model, heldout_pairs, cfg.context_pairs, cfg.rater_column, seed))
    for k in list(metrics):
        if k.startswith("rater_") and k.endswith("/bayes_optimal_accuracy"):
            kind = k[len("rater_"):-len("/bayes_optimal_accuracy")]
            if f"vpl_accuracy_{kind}" in metrics:
                metrics[f"vpl_gap_{kind}"] = metrics[k] - metrics[f"vpl_accuracy_{kind}"]
    metrics["vpl_conditioned"] = {k: v["dir"] for k, v in saved["conditioned"].items()}
    stamp = out_dir / "reinforge.json"
    doc = json.loads(stamp.read_text())
    doc["heldout"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    stamp.write_text(json.dumps(doc, indent=2, default=str))
    return metrics
