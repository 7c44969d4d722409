"""Stage 3, PPO with a KL penalty to a frozen prior (Ziegler et al. 2019; Stiennon et al. 2020;
Ouyang et al. 2022), written by hand because TRL no longer ships a PPO trainer.

Per completion token t (policy pi, frozen reference pi_ref = the SFT model, reward model r):

    r_t   = -beta * (log pi(y_t) - log pi_ref(y_t))  +  [t = last] * (r(x, y) - eos_penalty * [no <eos>])
    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)
    A_t   = sum_k (gamma * lambda)^k delta_{t+k}                               (GAE)
    A     <- (A - mean A) / std A                                              (normalisation)
    L_pi  = -mean min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t),  rho_t = pi / pi_old
    L_V   = 1/2 mean max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)

beta is fixed or adapted to a target KL (Ziegler's proportional controller). The critic is a
separate network initialised from the reward model. Rollouts (sampling at temperature 1, no
top-k/top-p) run in ``RolloutWorker`` actors, reference log-probs and reward scores in a
``Scorer`` actor (rlhf/actors.py); the learner (this process) runs the PPO epochs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cluster.errors import ConfigError

# --- the equations ------------------------------------------------------------------------


def kl_penalized_rewards(logp, ref_logp, scores, mask, beta: float):
    """Per-token rewards -beta * (log pi - log pi_ref) with the sequence score added on each
    sequence's last completion token. ``logp``/``ref_logp``/``mask``: B x L; ``scores``: B.
    Returns (rewards, per-token KL estimate log pi - log pi_ref), both zero on padding."""
    import torch

    mask = mask.float()
    kl = (logp - ref_logp) * mask
    rewards = -beta * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(rewards.shape[0]), last] += scores
    return rewards * mask, kl


def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation over B x L tensors; V = 0 after the last token.
    Returns (advantages, returns = advantages + values), zero on padding."""
    import torch

    mask = mask.float()
    B, L = rewards.shape
    adv = torch.zeros_like(rewards)
    running = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(L)):
        nonterminal = mask[:, t + 1] if t + 1 < L else torch.zeros_like(running)
        next_value = values[:, t + 1] * nonterminal if t + 1 < L else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * nonterminal * running
        adv[:, t] = running * mask[:, t]
    return adv, (adv + values) * mask


def masked_mean(x, mask):
    mask = mask.float()
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def whiten(x, mask, eps: float = 1e-8):
    """(x - mean) / std over the real tokens only."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) / (var + eps).sqrt() * mask.float()


def k3_kl(logp_new, logp_old, mask=None):
    """KL(old || new) by the k3 estimator (Schulman 2020, "Approximating KL divergence"):
    mean of (ratio - 1) - log(ratio), ratio = exp(logp_new - logp_old), over samples drawn
    from the old policy. Unbiased and never negative, unlike the mean of -log(ratio)."""
    import torch

    log_ratio = logp_new - logp_old
    k3 = (torch.exp(log_ratio) - 1.0) - log_ratio
    return k3.mean() if mask is None else masked_mean(k3, mask)


def clipped_surrogate(logp, old_logp, advantages, mask, clip: float = 0.2):
    """PPO's clipped policy loss; also returns the clip fraction and approx KL(old || new)
    (``k3_kl``)."""
    import torch

    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    loss = -masked_mean(torch.min(unclipped, clipped), mask)
    clipfrac = masked_mean(((ratio - 1.0).abs() > clip).float(), mask)
    return loss, clipfrac, k3_kl(logp, old_logp, mask)


def clipped_value_loss(values, old_values, returns, mask, clip: float = 0.2):
    """1/2 max((V - R)^2, (V_old + clip(V - V_old) - R)^2), masked mean."""
    import torch

    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (v_clipped - returns) ** 2), mask)


class AdaptiveKLController:
    """beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)  (Ziegler et al. 2019)."""

    def __init__(self, init_beta: float, target: float | None, horizon: int):
        self.value, self.target, self.horizon = init_beta, target, horizon

    def update(self, kl: float, n: int) -> float:
        if self.target:
            err = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
            self.value *= 1.0 + err * n / self.horizon
        return self.value


# --- the configuration --------------------------------------------------------------------


@dataclass
class PPOStageConfig:
    iterations: int = 40
    batch_size: int = 32  # prompts (= completions) per iteration
    max_new_tokens: int = 112
    update_epochs: int = 4  # passes of PPO over each iteration's batch
    minibatch_size: int = 16
    learning_rate: float = 3e-5
    critic_learning_rate: float = 1e-4
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    gamma: float = 1.0
    gae_lambda: float = 0.95
    kl_coef: float = 0.05  # beta (initial value when target_kl is set)
    target_kl: float | None = None  # per-sequence KL target: adaptive beta; None = fixed beta
    kl_horizon: int = 2000
    missing_eos_penalty: float = 1.0  # subtracted from the score of completions without <eos>
    normalize_advantages: bool = True  # advantages to mean 0, std 1 over the batch's tokens
    max_grad_norm: float = 1.0
    num_rollout_workers: int = 1
    actor_cpus: float = 0.5
    eval_every: int = 5
    eval_prompts: int = 64  # held-out completions per evaluation (the held-out prompts, repeated as needed)
    checkpoint_every: int = 10
    toy_reward_token: str | None = None  # e.g. "p60": reward = count of that token (tests; no reward model)

    def validate(self) -> None:
        for k in ("iterations", "batch_size", "max_new_tokens", "update_epochs", "minibatch_size",
                  "num_rollout_workers", "eval_every", "eval_prompts", "checkpoint_every"):
            if getattr(self, k) < 1:
                raise ConfigError(f"ppo.{k} must be >= 1, got {getattr(self, k)}")
        if self.minibatch_size > self.batch_size:
            raise ConfigError(f"ppo.minibatch_size={self.minibatch_size} exceeds ppo.batch_size={self.batch_size}")
        if self.learning_rate <= 0 or self.critic_learning_rate <= 0:
            raise ConfigError("ppo.learning_rate and ppo.critic_learning_rate must be > 0")
        if self.kl_coef < 0 or not 0 < self.clip_range < 1 or not 0 <= self.gae_lambda <= 1 \
                or not 0 < self.gamma <= 1:
            raise ConfigError("need ppo.kl_coef >= 0, 0 < ppo.clip_range < 1, 0 <= ppo.gae_lambda <= 1, "
                              "0 < ppo.gamma <= 1")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ConfigError("ppo.target_kl must be > 0 (or null for a fixed beta)")


# --- the loop -----------------------------------------------------------------------------


def value_estimates(critic, batch):
    """V(s_t) for the state before each completion token (B x L, zero on padding)."""
    from rlhf.models import hidden_states

    P = batch["prompt_width"]
    h = hidden_states(critic, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    return critic.score(h[:, P - 1:-1]).squeeze(-1).float() * batch["completion_mask"]


def _unshared(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict without aliases (GPT-2 ties lm_head to the embedding; safetensors refuses
    shared tensors); ``tie_weights()`` restores the alias on load."""
    seen, out = set(), {}
    for k, v in state.items():
        if v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        out[k] = v
    return out


def _sub(batch: dict[str, Any], idx) -> dict[str, Any]:
    return {k: (v[idx] if hasattr(v, "shape") and v.dim() > 0 else v) for k, v in batch.items()}


def actor_resources(cfg: PPOStageConfig, cluster_gpus: float):
    """What each of PPO's actors (the rollout workers and the scorer) asks Ray for: its CPU
    share, and when the cluster has a GPU, half of one GPU split among all of them (the
    learner keeps the other half)."""
    from cluster.runtime import Resources

    gpus = 0.5 / (cfg.num_rollout_workers + 1) if cluster_gpus >= 1 else 0.0
    return Resources(num_cpus=cfg.actor_cpus, num_gpus=gpus)


class PPOLearner:
    """Policy + critic + the frozen-prior actors; ``iteration()`` = rollout, score, update."""

    def __init__(self, cfg: PPOStageConfig, policy, critic, tokenizer, reward_spec: Any, reward_offset: float,
                 seed: int = 0, device: str = "cpu"):
        import torch

        from cluster.runtime import cluster_gpus, make_actor
        from cluster.seeding import worker_seed
        from rlhf.actors import RolloutWorker, Scorer, model_spec
        from rlhf.models import disable_dropout

        self.cfg, self.tok, self.device = cfg, tokenizer, torch.device(device)
        self.policy, self.critic = policy.to(self.device), critic.to(self.device)
        for m in (self.policy, self.critic):
            disable_dropout(m)
        self.opt_pi = torch.optim.Adam(self.policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
        self.opt_v = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_learning_rate, eps=1e-5)
        self.kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.iteration_done = 0
        self.rng = np.random.default_rng(seed)
        res = actor_resources(cfg, cluster_gpus())
        gpus = res.num_gpus
        spec = model_spec(self.policy)  # the reference is the initial policy (the SFT model)
        self.workers = [make_actor(RolloutWorker, spec, tokenizer, worker_seed(seed, i), gpus > 0, resources=res)
                        for i in range(cfg.num_rollout_workers)]
        self.scorer = make_actor(Scorer, spec, reward_spec, reward_offset, tokenizer, gpus > 0, resources=res)

    def close(self) -> None:
        import ray

        for a in [*self.workers, self.scorer]:
            ray.kill(a)
        self.workers, self.scorer = [], None

    # rollouts ------------------------------------------------------------------------------
    def push_weights(self) -> None:
        import ray

        ref = ray.put({k: v.detach().cpu() for k, v in self.policy.state_dict().items()})
        ray.get([w.set_weights.remote(ref) for w in self.workers])

    def generate(self, prompts: list[str]) -> list[list[int]]:
        import ray

        shards = np.array_split(np.arange(len(prompts)), len(self.workers))
        futs = [w.generate.remote([prompts[i] for i in s], self.cfg.max_new_tokens)
                for w, s in zip(self.workers, shards) if len(s)]
        return [c for part in ray.get(futs) for c in part]

    def rollout(self, prompts: list[str]) -> dict[str, Any]:
        """Sample, score with the reference and the reward, and compute everything PPO needs."""
        import ray
        import torch

        from rlhf.models import completion_logprobs, pack

        comps = self.generate(prompts)
        prompt_ids = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        ref_logp, scores = ray.get(self.scorer.score.remote(prompt_ids, comps))
        batch = pack(prompt_ids, comps, self.tok.pad_token_id)
        batch = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in batch.items()}
        mask = batch["completion_mask"]
        eos = self.tok.eos_token_id
        has_eos = torch.tensor([bool(c) and c[-1] == eos for c in comps], device=self.device)
        scores_t = torch.tensor(np.array(scores), device=self.device).float()
        penalised = scores_t - self.cfg.missing_eos_penalty * (~has_eos).float()
        with torch.no_grad():
            logp, entropy = completion_logprobs(self.policy, batch)
            values = value_estimates(self.critic, batch)
        ref = torch.tensor(np.array(ref_logp), device=self.device)
        rewards, kl = kl_penalized_rewards(logp, ref, penalised, mask, self.kl_ctl.value)
        adv, returns = gae(rewards, values, mask, self.cfg.gamma, self.cfg.gae_lambda)
        if self.cfg.normalize_advantages:
            adv = whiten(adv, mask)
        texts = [p + " " + self.tok.decode(c).strip() for p, c in zip(prompts, comps)]
        return {"batch": batch, "logp": logp, "values": values, "adv": adv, "returns": returns,
                "texts": texts, "scores": scores_t, "kl_seq": kl.sum(1), "entropy": masked_mean(entropy, mask),
                "has_eos": has_eos.float(), "lengths": mask.sum(1).float()}

    # the update ----------------------------------------------------------------------------
    def update(self, ro: dict[str, Any]) -> dict[str, float]:
        import torch

        from rlhf.models import completion_logprobs

        cfg = self.cfg
        B = ro["logp"].shape[0]
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clip_fraction": [], "approx_kl": []}
        self.policy.train()
        self.critic.train()
        for _ in range(cfg.update_epochs):
            order = torch.as_tensor(self.rng.permutation(B))
            for start in range(0, B, cfg.minibatch_size):
                idx = order[start:start + cfg.minibatch_size]
                mb = _sub(ro["batch"], idx)
                mask = mb["completion_mask"]
                logp, _ = completion_logprobs(self.policy, mb)
                pg_loss, clipfrac, approx_kl = clipped_surrogate(logp, ro["logp"][idx], ro["adv"][idx], mask,
                                                                 cfg.clip_range)
                self.opt_pi.zero_grad()
                pg_loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.opt_pi.step()
                v = value_estimates(self.critic, mb)
                v_loss = clipped_value_loss(v, ro["values"][idx], ro["returns"][idx], mask, cfg.value_clip_range)
                self.opt_v.zero_grad()
                v_loss.backward()
                torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                self.opt_v.step()
                for k, x in zip(stats, (pg_loss, v_loss, clipfrac, approx_kl)):
                    stats[k].append(float(x.detach()))
        self.policy.eval()
        self.critic.eval()
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def iteration(self, prompts: list[str], gold_fn=None) -> dict[str, float]:
        t0 = time.perf_counter()
        ro = self.rollout(prompts)
        t1 = time.perf_counter()
        stats = self.update(ro)
        self.push_weights()
        kl = float(ro["kl_seq"].mean())
        beta = self.kl_ctl.value
        self.kl_ctl.update(kl, len(prompts))
        self.iteration_done += 1
        out = {"proxy_reward": float(ro["scores"].mean()), "kl": kl, "beta": beta,
               "entropy": float(ro["entropy"]), "eos_fraction": float(ro["has_eos"].mean()),
               "completion_length": float(ro["lengths"].mean()), "rollout_s": t1 - t0,
               "iteration_s": time.perf_counter() - t0, **stats}
        if gold_fn is not None:  # evaluation only: the policy never sees it
            out["gold_reward"] = float(np.mean([gold_fn(t) for t in ro["texts"]]))
        return out

    def evaluate(self, prompts: list[str], gold_fn) -> dict[str, float]:
        """Held-out prompts: mean gold reward, proxy reward and KL(pi || pi_ref) per sequence."""
        ro = self.rollout(prompts)
        return {"eval_gold_reward": float(np.mean([gold_fn(t) for t in ro["texts"]])),
                "eval_proxy_reward": float(ro["scores"].mean()), "eval_kl": float(ro["kl_seq"].mean()),
                "eval_eos_fraction": float(ro["has_eos"].mean())}

    # checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"model": _unshared(self.policy.state_dict()), "critic": _unshared(self.critic.state_dict()),
                "optimizer": self.opt_pi.state_dict(), "critic_optimizer": self.opt_v.state_dict(),
                "state": {"iteration": self.iteration_done, "beta": self.kl_ctl.value,
                          "rng": self.rng.bit_generator.state}}

    def restore(self, objects: dict[str, Any]) -> None:
        self.policy.load_state_dict(objects["model"], strict=False)
        self.policy.tie_weights()
        self.critic.load_state_dict(objects["critic"], strict=False)
        self.opt_pi.load_state_dict(objects["optimizer"])
        self.opt_v.load_state_dict(objects["critic_optimizer"])
        st = objects["state"]
        self.iteration_done, self.kl_ctl.value = int(st["iteration"]), float(st["beta"])
        self.rng.bit_generator.state = st["rng"]
        self.push_weights()


def train_ppo(cfg: PPOStageConfig, sft_dir: Path, reward_dir: Path | None, train_prompts: list[str],
              eval_prompts: list[str], out_dir: Path, run_dir=None, seed: int = 0, device: str = "auto",
              log=print) -> dict[str, Any]:
    """Run PPO from the SFT artifact against the reward model (or the toy reward); save the
    policy as a ``ppo`` artifact. Resumes from the run dir's latest checkpoint."""
    import json

    from transformers import AutoModelForSequenceClassification

    from cluster.checkpoint import load_checkpoint
    from cluster.progress import progress
    from cluster.runtime import select_device
    from rlhf.actors import model_spec
    from rlhf.gold import gold_score
    from rlhf.models import load_policy, load_reward_model, save_artifact

    dev = select_device(device)
    policy, tok = load_policy(sft_dir, "--sft")
    if cfg.toy_reward_token:
        tid = tok.convert_tokens_to_ids(cfg.toy_reward_token)
        if tid is None or tid == tok.unk_token_id:
            raise ConfigError(f"ppo.toy_reward_token={cfg.toy_reward_token!r} is not in the tokenizer's vocabulary")
        reward_spec, offset = ("count", int(tid)), 0.0
        critic = AutoModelForSequenceClassification.from_pretrained(str(sft_dir), num_labels=1)
        critic.config.pad_token_id = tok.pad_token_id
    else:
        rm, rm_tok = load_reward_model(reward_dir, "--reward")
        if rm_tok.get_vocab() != tok.get_vocab():
            raise ConfigError(f"--reward {reward_dir}: its tokenizer differs from the SFT model's ({sft_dir}); "
                              "train the reward model from this SFT model")
        offset = float(json.loads((Path(reward_dir) / "reinforge.json").read_text()).get("reward_offset", 0.0))
        reward_spec = model_spec(rm)
        critic = rm  # the critic starts from the reward model (a separate copy from the scorer's)
    learner = PPOLearner(cfg, policy, critic, tok, reward_spec, offset, seed=seed, device=str(dev))
    try:
        ckpt = run_dir.latest_checkpoint() if run_dir is not None else None
        if ckpt is not None:
            learner.restore(load_checkpoint(ckpt).objects)
            log(f"resumed PPO at iteration {learner.iteration_done} from {ckpt}")
        gold = gold_score if not cfg.toy_reward_token else None
        first = last_eval = None
        if learner.iteration_done == 0:
            first = last_eval = learner.evaluate(eval_prompts, gold_score)
            if run_dir is not None:
                run_dir.log(first, step=0)
        history = []
        with progress(total=cfg.iterations, desc="PPO", unit="it", initial=learner.iteration_done) as bar:
            while learner.iteration_done < cfg.iterations:
                idx = learner.rng.choice(len(train_prompts), size=cfg.batch_size,
                                         replace=len(train_prompts) < cfg.batch_size)
                m = learner.iteration([train_prompts[i] for i in idx], gold)
                it = learner.iteration_done
                if it % cfg.eval_every == 0 or it == cfg.iterations:
                    last_eval = learner.evaluate(eval_prompts, gold_score)
                    m.update(last_eval)
                history.append(m)
                if run_dir is not None:
                    run_dir.log(m, step=it)
                    if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
                        run_dir.save_checkpoint(it, learner.state(), keep=2)
                # proxy and gold of the same training samples: the gap between them is over-optimisation
                shown = {"gold": m["gold_reward"]} if "gold_reward" in m else {}
                bar.update(1, proxy=m["proxy_reward"], **shown, kl=m["kl"])
        policy = learner.policy.to("cpu")
        policy.config.use_cache = True
        save_artifact(policy, tok, out_dir, "ppo", parent={"sft": str(sft_dir), "reward": str(reward_dir)},
                      kl_coef=cfg.kl_coef, iterations=learner.iteration_done)
    finally:
        learner.close()
    out = {"iterations": learner.iteration_done, "final_beta": learner.kl_ctl.value}
    if history:
        out["iteration_s"] = float(np.mean([h["iteration_s"] for h in history]))
        out["final_proxy_reward"] = history[-1]["proxy_reward"]
    if first:
        out.update({f"sft_{k.removeprefix('eval_')}": v for k, v in first.items()})
    if last_eval:
        out.update({f"ppo_{k.removeprefix('eval_')}": v for k, v in last_eval.items()})
    if first and last_eval:  # what PPO added over its starting point, on the same held-out prompts
        out["gold_gain"] = out["ppo_gold_reward"] - out["sft_gold_reward"]
    return out
