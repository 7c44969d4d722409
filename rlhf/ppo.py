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
separate network initialised from the reward model (from the SFT model when the reward is a
function only). The reward r(x, y) is a reward model, a reward function or both
(rlhf/rewards.py). Rollouts (sampling at temperature 1, no top-k/top-p) run in
``RolloutWorker`` actors, reference log-probs and reward-model scores in a ``Scorer`` actor
(``RolloutGroup``, rlhf/actors.py, shared with GRPO); the learner (this process) runs the PPO
epochs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cluster.errors import ConfigError
from rlhf.models import PolicyTraining

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
class RLLoopSettings:
    """The loop settings PPO and GRPO share: their Ray actors, evaluations and checkpoints."""

    max_grad_norm: float = 1.0
    num_rollout_workers: int = 1
    actor_cpus: float = 0.5
    eval_every: int = 5
    eval_prompts: int = 64  # held-out completions per evaluation (the held-out prompts, repeated as needed)
    checkpoint_every: int = 10


@dataclass
class PPOStageConfig(PolicyTraining, RLLoopSettings):
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
        from cluster.run_config import check_ranges

        check_ranges("ppo", self, {"kl_horizon": ">= 1", "value_clip_range": "> 0", "max_grad_norm": "> 0",
                                   "actor_cpus": "> 0", "missing_eos_penalty": ">= 0"})
        self.validate_policy_training("ppo")


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


def minibatches(rng: np.random.Generator, batch: dict[str, Any], size: int, epochs: int, minibatch_size: int):
    """(indices, minibatch, completion mask) over ``epochs`` shuffled passes of a batch of
    ``size`` completions (PPO's and GRPO's update loop)."""
    import torch

    for _ in range(epochs):
        order = torch.as_tensor(rng.permutation(size))
        for start in range(0, size, minibatch_size):
            idx = order[start:start + minibatch_size]
            mb = _sub(batch, idx)
            yield idx, mb, mb["completion_mask"]


def gradient_step(model, optimizer, loss, max_grad_norm: float) -> None:
    import torch

    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()


def as_prompts(prompts):
    """A ``PromptSet`` (plain lists of prompt strings are wrapped)."""
    from rlhf.tasks import PromptSet

    return prompts if isinstance(prompts, PromptSet) else PromptSet(list(prompts))


class Rollouts:
    """Sampling and scoring shared by PPO and GRPO: the rollout group's completions, their
    reference log-probs, their reward (model and/or function) and, for evaluation only, the
    task's gold."""

    def __init__(self, group, tokenizer, reward=None, task=None, missing_eos_penalty: float = 0.0):
        from rlhf.rewards import Reward

        self.group, self.tok = group, tokenizer
        self.reward = reward if reward is not None else Reward(has_model=True)
        self.task, self.missing_eos_penalty = task, missing_eos_penalty

    def texts(self, comps: list[list[int]]) -> list[str]:
        if self.task is not None:
            return self.task.completion_texts(self.tok, comps)
        return [self.tok.decode(c, skip_special_tokens=True) for c in comps]

    def gold(self, prompts, texts: list[str]) -> list[float] | None:
        return self.task.gold(prompts.prompts, texts, prompts.columns) if self.task is not None and self.task.has_gold \
            else None

    def sample(self, prompts, max_new_tokens: int, device) -> dict[str, Any]:
        """Completions of ``prompts`` (a PromptSet) packed into one batch on ``device``, with
        the reference log-probs, the (penalised) rewards and the gold."""
        import torch

        from rlhf.models import pack

        comps = self.group.generate(prompts.prompts, max_new_tokens)
        prompt_ids = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts.prompts]
        ref_logp, model_scores = self.group.score(prompt_ids, comps)
        texts = self.texts(comps)
        scores = self.reward.combine(model_scores, prompts.prompts, texts, prompts.columns)
        batch = pack(prompt_ids, comps, self.tok.pad_token_id)
        batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
        eos = self.tok.eos_token_id
        has_eos = torch.tensor([bool(c) and c[-1] == eos for c in comps], device=device)
        scores_t = torch.tensor(scores, device=device).float()
        return {"batch": batch, "ref_logp": torch.tensor(np.array(ref_logp), device=device), "scores": scores_t,
                "penalised": scores_t - self.missing_eos_penalty * (~has_eos).float(), "has_eos": has_eos.float(),
                "texts": texts, "gold": self.gold(prompts, texts)}


class PolicyLearner:
    """What PPO and GRPO learners share: the policy being trained (with LoRA when asked), its
    optimizer, the rollout group (workers + scorer) and the seeded generator."""

    def __init__(self, cfg, policy, tokenizer, reward_spec: Any, reward_offset: float, reward=None, task=None,
                 seed: int = 0, device: str = "cpu"):
        import torch

        from cluster.runtime import cluster_gpus
        from rlhf.actors import RolloutGroup
        from rlhf.models import disable_dropout, prepare_policy

        self.cfg, self.tok, self.device = cfg, tokenizer, torch.device(device)
        self.policy = prepare_policy(policy, cfg).to(self.device)
        disable_dropout(self.policy)
        self.opt_pi = torch.optim.Adam([p for p in self.policy.parameters() if p.requires_grad],
                                       lr=cfg.learning_rate, eps=1e-5)
        self.iteration_done = 0
        self.rng = np.random.default_rng(seed)
        self.group = RolloutGroup(self.policy, tokenizer, reward_spec, reward_offset, cfg.num_rollout_workers,
                                  actor_resources(cfg, cluster_gpus()), seed)
        self.rollouts = Rollouts(self.group, tokenizer, reward, task, cfg.missing_eos_penalty)

    def close(self) -> None:
        self.group.close()

    def use_config_hyperparameters(self) -> None:
        """After a restore, the config's learning rates (and fixed KL coefficient) replace the
        checkpoint's: a plain resume changes nothing, and a PBT exploit, which copies another
        trial's checkpoint under newly perturbed settings, trains with the new ones."""
        for group in self.opt_pi.param_groups:
            group["lr"] = self.cfg.learning_rate

    def push_weights(self) -> None:
        self.group.push(self.policy)

    def evaluate(self, prompts) -> dict[str, float]:
        """Held-out prompts, one completion each: mean gold reward (when the task has one),
        proxy reward and KL(pi || pi_ref) per sequence."""
        ro = self.rollout(as_prompts(prompts))
        out = {"eval_proxy_reward": float(ro["scores"].mean()), "eval_kl": float(ro["kl_seq"].mean()),
               "eval_eos_fraction": float(ro["has_eos"].mean())}
        if ro["gold"] is not None:
            out["eval_gold_reward"] = float(np.mean(ro["gold"]))
        return out


class PPOLearner(PolicyLearner):
    """Policy + critic + the frozen-prior actors; ``iteration()`` = rollout, score, update."""

    def __init__(self, cfg: PPOStageConfig, policy, critic, tokenizer, reward_spec: Any, reward_offset: float,
                 reward=None, task=None, seed: int = 0, device: str = "cpu"):
        import torch

        from rlhf.models import disable_dropout

        super().__init__(cfg, policy, tokenizer, reward_spec, reward_offset, reward, task, seed, device)
        self.critic = critic.to(self.device)
        disable_dropout(self.critic)
        self.opt_v = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_learning_rate, eps=1e-5)
        self.kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)

    # rollouts ------------------------------------------------------------------------------
    def rollout(self, prompts) -> dict[str, Any]:
        """Sample, score with the reference and the reward, and compute everything PPO needs."""
        import torch

        from rlhf.models import autocast, completion_logprobs

        ro = self.rollouts.sample(as_prompts(prompts), self.cfg.max_new_tokens, self.device)
        batch = ro["batch"]
        mask = batch["completion_mask"]
        with torch.no_grad(), autocast(self.device):
            logp, entropy = completion_logprobs(self.policy, batch)
            values = value_estimates(self.critic, batch)
        rewards, kl = kl_penalized_rewards(logp, ro["ref_logp"], ro["penalised"], mask, self.kl_ctl.value)
        adv, returns = gae(rewards, values, mask, self.cfg.gamma, self.cfg.gae_lambda)
        if self.cfg.normalize_advantages:
            adv = whiten(adv, mask)
        return {**ro, "logp": logp, "values": values, "adv": adv, "returns": returns, "kl_seq": kl.sum(1),
                "entropy": masked_mean(entropy, mask), "lengths": mask.sum(1).float()}

    # the update ----------------------------------------------------------------------------
    def update(self, ro: dict[str, Any]) -> dict[str, float]:

        from rlhf.models import autocast, completion_logprobs

        cfg = self.cfg
        B = ro["logp"].shape[0]
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clip_fraction": [], "approx_kl": []}
        self.policy.train()
        self.critic.train()
        for idx, mb, mask in minibatches(self.rng, ro["batch"], B, cfg.update_epochs, cfg.minibatch_size):
            with autocast(self.device):
                logp, _ = completion_logprobs(self.policy, mb)
            pg_loss, clipfrac, approx_kl = clipped_surrogate(logp, ro["logp"][idx], ro["adv"][idx], mask,
                                                             cfg.clip_range)
            gradient_step(self.policy, self.opt_pi, pg_loss, cfg.max_grad_norm)
            with autocast(self.device):
                v = value_estimates(self.critic, mb)
            v_loss = clipped_value_loss(v, ro["values"][idx], ro["returns"][idx], mask, cfg.value_clip_range)
            gradient_step(self.critic, self.opt_v, v_loss, cfg.max_grad_norm)
            for k, x in zip(stats, (pg_loss, v_loss, clipfrac, approx_kl)):
                stats[k].append(float(x.detach()))
        self.policy.eval()
        self.critic.eval()
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def iteration(self, prompts) -> dict[str, float]:
        t0 = time.perf_counter()
        ro = self.rollout(prompts)
        t1 = time.perf_counter()
        stats = self.update(ro)
        self.push_weights()
        kl = float(ro["kl_seq"].mean())
        beta = self.kl_ctl.value
        self.kl_ctl.update(kl, ro["logp"].shape[0])
        self.iteration_done += 1
        out = {"proxy_reward": float(ro["scores"].mean()), "kl": kl, "beta": beta,
               "entropy": float(ro["entropy"]), "eos_fraction": float(ro["has_eos"].mean()),
               "completion_length": float(ro["lengths"].mean()), "rollout_s": t1 - t0,
               "iteration_s": time.perf_counter() - t0, **stats}
        if ro["gold"] is not None:  # evaluation only: the policy never sees it
            out["gold_reward"] = float(np.mean(ro["gold"]))
        return out

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
        self.use_config_hyperparameters()
        self.push_weights()

    def use_config_hyperparameters(self) -> None:
        super().use_config_hyperparameters()
        for group in self.opt_v.param_groups:
            group["lr"] = self.cfg.critic_learning_rate
        if self.cfg.target_kl is None:  # a fixed beta is a setting; an adaptive one is state
            self.kl_ctl.value = self.cfg.kl_coef


def policy_loop(learner, iterations: int, batch_size: int, eval_every: int, checkpoint_every: int,
                train, held, run_dir=None, desc: str = "PPO", log=print) -> tuple[list, dict | None, dict | None]:
    """The loop PPO and GRPO share: resume from the run dir's latest checkpoint, evaluate the
    starting policy, then ``learner.iteration`` on seeded random prompt batches with held-out
    evaluations, metric rows, checkpoints and one progress bar. Returns (rows, first eval,
    last eval)."""
    from cluster.checkpoint import load_checkpoint
    from cluster.progress import progress

    ckpt = run_dir.latest_checkpoint() if run_dir is not None else None
    if ckpt is not None:
        learner.restore(load_checkpoint(ckpt).objects)
        log(f"resumed {desc} at iteration {learner.iteration_done} from {ckpt}")
    first = last_eval = None
    if learner.iteration_done == 0:
        first = last_eval = learner.evaluate(held)
        if run_dir is not None:
            run_dir.log(first, step=0)
    history = []
    with progress(total=iterations, desc=desc, unit="it", initial=learner.iteration_done) as bar:
        while learner.iteration_done < iterations:
            idx = learner.rng.choice(len(train), size=batch_size, replace=len(train) < batch_size)
            m = learner.iteration(train.take(idx))
            it = learner.iteration_done
            if it % eval_every == 0 or it == iterations:
                last_eval = learner.evaluate(held)
                m.update(last_eval)
            history.append(m)
            if run_dir is not None:
                run_dir.log(m, step=it)
                if it % checkpoint_every == 0 or it == iterations:
                    run_dir.save_checkpoint(it, learner.state(), keep=2)
            # proxy and gold of the same training samples: the gap between them is over-optimisation
            shown = {"gold": m["gold_reward"]} if "gold_reward" in m else {}
            bar.update(1, reward=m["proxy_reward"], **shown, kl=m["kl"])
    return history, first, last_eval


def loop_result(learner, history: list, first: dict | None, last_eval: dict | None, trained: str) -> dict[str, Any]:
    """The final metrics of a PPO or GRPO run: ``sft_*`` (the starting policy) and ``<trained>_*``
    on the same held-out prompts, and the gold gain between them."""
    out: dict[str, Any] = {"iterations": learner.iteration_done}
    if history:
        out["iteration_s"] = float(np.mean([h["iteration_s"] for h in history]))
        out["final_proxy_reward"] = history[-1]["proxy_reward"]
    if first:
        out.update({f"sft_{k.removeprefix('eval_')}": v for k, v in first.items()})
    if last_eval:
        out.update({f"{trained}_{k.removeprefix('eval_')}": v for k, v in last_eval.items()})
    if first and last_eval and "eval_gold_reward" in first:  # what RL added over its start, same prompts
        out["gold_gain"] = out[f"{trained}_gold_reward"] - out["sft_gold_reward"]
    return out


def train_ppo(cfg: PPOStageConfig, sft_dir: Path, reward_dir: Path | None, train, held, out_dir: Path,
              run_dir=None, seed: int = 0, device: str = "auto", log=print, reward=None, task=None,
              allow_pickle: bool = False) -> dict[str, Any]:
    """Run PPO from the SFT artifact against the reward (a reward model, a function, both, or
    the toy token count); save the policy as a ``ppo`` artifact. Resumes from the run dir's
    latest checkpoint."""
    from cluster.runtime import select_device
    from rlhf.models import load_policy
    from rlhf.rewards import Reward, critic_from_sft, reward_model_spec

    dev = select_device(device)
    policy, tok = load_policy(sft_dir, "--sft", allow_pickle)
    reward = reward if reward is not None else Reward(has_model=True)
    if cfg.toy_reward_token:
        tid = tok.convert_tokens_to_ids(cfg.toy_reward_token)
        if tid is None or tid == tok.unk_token_id:
            raise ConfigError(f"ppo.toy_reward_token={cfg.toy_reward_token!r} is not in the tokenizer's vocabulary")
        reward_spec, offset, critic = ("count", int(tid)), 0.0, critic_from_sft(sft_dir, tok, allow_pickle)
        reward.has_model = True
    elif reward_dir is not None:
        rm, reward_spec, offset = reward_model_spec(reward_dir, tok, sft_dir, allow_pickle)
        critic = rm  # the critic starts from the reward model (a separate copy from the scorer's)
    else:
        reward_spec, offset, critic = None, 0.0, critic_from_sft(sft_dir, tok, allow_pickle)
    learner = PPOLearner(cfg, policy, critic, tok, reward_spec, offset, reward=reward, task=task, seed=seed,
                         device=str(dev))
    out = run_and_save(learner, "ppo", train, held, out_dir, run_dir, log, sft_dir, reward_dir, task)
    out["final_beta"] = learner.kl_ctl.value
    return out


def run_and_save(learner, stage: str, train, held, out_dir: Path, run_dir, log, sft_dir, reward_dir, task,
                 **info: Any) -> dict[str, Any]:
    """PPO's and GRPO's run: ``policy_loop``, then the policy saved as a ``stage`` artifact
    with its lineage; the actors are stopped whatever happens. Returns ``loop_result``."""
    from rlhf.models import finished_policy, save_artifact

    cfg, reward = learner.cfg, learner.rollouts.reward
    try:
        history, first, last_eval = policy_loop(learner, cfg.iterations, cfg.batch_size, cfg.eval_every,
                                                cfg.checkpoint_every, as_prompts(train), as_prompts(held), run_dir,
                                                stage.upper(), log)
        policy = finished_policy(learner.policy.to("cpu"), cfg)
        save_artifact(policy, learner.tok, out_dir, stage, task=task.stamp() if task is not None else None,
                      parent={"sft": str(sft_dir), "reward": str(reward_dir) if reward_dir else None,
                              "reward_fn": reward.fn_name or None},
                      kl_coef=cfg.kl_coef, iterations=learner.iteration_done, **info)
    finally:
        learner.close()
    return loop_result(learner, history, first, last_eval, stage)
