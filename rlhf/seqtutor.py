"""Sequence Tutor (Jaques et al. 2017, "Sequence Tutor: Conservative fine-tuning of sequence
generation models with KL-control"): off-policy, KL-regularised Q-learning over tokens from a
frozen prior p (the SFT model) and a rule reward r (on the melody task: the music-theory
rules of rlhf/gold.py).

Notation. A state s is the prompt plus the tokens sampled so far, an action a is the next
token, s' = s + a. beta is ``seqtutor.kl_coef``, the same coefficient as PPO's ``kl_coef``:
Psi- and G-learning maximise exactly PPO's objective

    E_pi[ sum_t r(s_t, a_t) ] - beta * KL(pi || p),          i.e. (divided by beta)
    E_pi[ sum_t r(s_t, a_t) / beta + log p(a_t | s_t) - log pi(a_t | s_t) ].

The paper writes the per-token reward as r_MT / c + log p(a | s): its c is beta here; the
lecture's r_rules + (1/c) log p is the same reward times beta (its 1/c is beta). Values are
kept in the paper's units (nats, the units of log p), so every value network starts as the
prior itself. Targets, with d = 1 on the last completion token (<eos> or the length limit,
where nothing follows) and Q^- the target network:

    kl_q_target  y = r / beta + log p(a | s) + gamma (1 - d) max_a' Q^-(s', a')
                 (Q-learning on the KL-shaped reward; its greedy policy ignores the entropy
                 half of the KL, as in the paper's section 3.1)
    psi_target   y = r / beta + log p(a | s) + gamma (1 - d) logsumexp_a' Psi^-(s', a')
                 (Psi-learning, Rawlik et al. 2012; pi(a | s) = exp Psi(s, a), normalised at
                 the fixed point)
    g_target     y = r / beta + gamma (1 - d) log sum_a' p(a' | s') exp G^-(s', a')
                 (G-learning, Fox et al. 2016; pi(a | s) proportional to p(a | s) exp G(s, a))

    td_loss      L = mean over real tokens of (Q(s, a) - y)^2

The value network is a copy of the SFT model; its next-token logits l(s, .) give the values
(``q_values``): Q = Psi = l - logsumexp(l_p) (l_p the frozen prior's logits), G = l - l_p, so at
the start Q = Psi = log p and G = 0, and for every variant the policy is softmax(l): the
trained network, saved as it is, is the policy (softmax of Q), readable by plain transformers.
With r = 0, Psi = log p and G = 0 are fixed points of their targets: the prior is where KL
control rests without a reward; Q-learning's max moves off it even then. In this
parameterisation Psi- and G-learning are one algorithm: G = Psi - log p(a | s), and g_target is
psi_target minus the same log p(a | s), so their squared errors (and updates) coincide.

The rule reward per token (``rule_reward: prefix``, the default): the gold is a function of a
whole text, and it is defined on every prefix (a prefix parses as a shorter melody), so the
reward of token t is its difference on prefixes, r_t = R(x, y_<=t) - R(x, y_<t)
(``prefix_differences``); with gamma = 1 the return is R(x, y) - R(x), the whole-sequence
score up to a constant of the prompt, so the objective is PPO's with the same reward, but a
note out of key costs at once rather than at the end. ``rule_reward: final`` gives R(x, y) at
the last token only (any reward function). The rule reward is ``--reward-fn`` (a
module:function or ``gold``, the default on tasks that have one).

Replay memory: every sampled completion's token transitions (s_t, a_t, r_t, s_t+1, d_t), kept
per completion (a transformer computes all of one completion's Q(s_t, .) in one pass) up to
``buffer_size`` transitions, the oldest completion dropped first; an update draws
``minibatch_size`` completions uniformly and regresses on all their transitions. The target
network is a hard copy every ``target_update_every`` updates, or Polyak
theta^- <- tau theta + (1 - tau) theta^- after every update when ``tau`` > 0. Exploration
(``exploration``): ``boltzmann`` samples softmax(l / temperature), ``epsilon_greedy`` the
greedy token, each mixed with a uniform token with probability ``epsilon``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cluster.errors import ConfigError
from rlhf.models import PolicyTraining

ALGOS = ("q", "psi", "g")
EXPLORATION = ("boltzmann", "epsilon_greedy")
RULE_REWARD = ("prefix", "final")

# --- the equations ------------------------------------------------------------------------


def q_values(logits, prior_logits, algo: str):
    """Q(s, .) (B x L x V) from the network's next-token logits: Q = Psi = l - logsumexp(l_p)
    (``q``, ``psi``; = log p at the start), G = l - l_p (``g``; = 0 at the start)."""
    if algo == "g":
        return logits - prior_logits
    return logits - prior_logits.logsumexp(-1, keepdim=True)


def kl_q_target(rewards, prior_logp, next_q, done, kl_coef: float, gamma: float):
    """y = r / beta + log p(a | s) + gamma (1 - d) max_a' Q^-(s', a'). ``rewards``,
    ``prior_logp`` (log p of the token taken), ``done``: B x L; ``next_q``: B x L x V."""
    return rewards / kl_coef + prior_logp + gamma * (1.0 - done) * next_q.max(-1).values


def psi_target(rewards, prior_logp, next_psi, done, kl_coef: float, gamma: float):
    """y = r / beta + log p(a | s) + gamma (1 - d) logsumexp_a' Psi^-(s', a')."""
    return rewards / kl_coef + prior_logp + gamma * (1.0 - done) * next_psi.logsumexp(-1)


def g_target(rewards, next_prior_logp, next_g, done, kl_coef: float, gamma: float):
    """y = r / beta + gamma (1 - d) log sum_a' p(a' | s') exp G^-(s', a'); ``next_prior_logp``
    is log p(. | s'), B x L x V."""
    return rewards / kl_coef + gamma * (1.0 - done) * (next_prior_logp + next_g).logsumexp(-1)


def td_target(algo: str, rewards, prior_logits, actions, next_values, done, kl_coef: float, gamma: float):
    """The target of ``algo`` from the prior's logits at every state (B x L x V) and the target
    network's values at the next state (``next_values``, B x L x V, row t = s_t+1)."""
    import torch

    prior_logp_all = torch.log_softmax(prior_logits, dim=-1)
    if algo == "g":
        return g_target(rewards, shift_next(prior_logp_all), next_values, done, kl_coef, gamma)
    prior_logp = prior_logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    fn = kl_q_target if algo == "q" else psi_target
    return fn(rewards, prior_logp, next_values, done, kl_coef, gamma)


def td_loss(q_taken, target, mask):
    """Mean over real tokens of (Q(s, a) - y)^2, the target held fixed."""
    mask = mask.float()
    return (((q_taken - target.detach()) ** 2) * mask).sum() / mask.sum().clamp(min=1.0)


def shift_next(x):
    """Row t <- row t + 1 along dim 1 (the next state's values), zeros after the last."""
    import torch

    return torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)


def prefix_differences(prefix_scores: list[float]) -> list[float]:
    """r_t = R(y_<=t) - R(y_<t) from the scores of the prefixes of length 0..n (n + 1 values)."""
    return [b - a for a, b in zip(prefix_scores, prefix_scores[1:])]


def polyak_update(target, online, tau: float) -> None:
    """theta^- <- tau theta + (1 - tau) theta^-."""
    import torch

    with torch.no_grad():
        for tp, op in zip(target.parameters(), online.parameters()):
            tp.lerp_(op, tau)


def behaviour_logits(logits, exploration: str, temperature: float, epsilon: float):
    """Log-probabilities of the exploration policy: softmax(l / T) (``boltzmann``) or the greedy
    token (``epsilon_greedy``), mixed with a uniform token with probability epsilon."""
    import math

    import torch

    if exploration == "epsilon_greedy":
        logp = torch.full_like(logits, -math.inf).scatter(-1, logits.argmax(-1, keepdim=True), 0.0)
    else:
        logp = torch.log_softmax(logits / temperature, dim=-1)
    if epsilon <= 0:
        return logp
    uniform = torch.full_like(logits, math.log(epsilon / logits.shape[-1]))
    return torch.logaddexp(logp + math.log1p(-epsilon), uniform)


# --- the configuration --------------------------------------------------------------------


@dataclass
class SeqTutorStageConfig(PolicyTraining):
    algo: str = "psi"  # q | psi | g (see the module docstring)
    kl_coef: float = 0.1  # beta: the reward enters as r / beta next to log p (PPO's kl_coef, the paper's c)
    gamma: float = 1.0
    learning_rate: float = 1e-4
    iterations: int = 60
    batch_size: int = 16  # prompts (= completions) sampled per iteration into the replay memory
    max_new_tokens: int = 112
    updates_per_iteration: int = 4  # gradient steps per iteration
    minibatch_size: int = 16  # completions drawn from the replay memory per gradient step (all their tokens)
    buffer_size: int = 50_000  # token transitions kept; the oldest completions go first
    target_update_every: int = 20  # updates between hard copies of the target network (when tau = 0)
    tau: float = 0.0  # > 0: Polyak update of the target network after every update instead
    exploration: str = "boltzmann"  # boltzmann | epsilon_greedy
    temperature: float = 1.0  # Boltzmann exploration: sample softmax(l / temperature)
    epsilon: float = 0.0  # probability of a uniformly random token while exploring
    rule_reward: str = "prefix"  # prefix: per-token differences of the rule reward on prefixes; final: at the end
    max_grad_norm: float = 1.0
    eval_every: int = 5
    eval_prompts: int = 64  # held-out completions per evaluation (the held-out prompts, repeated as needed)
    checkpoint_every: int = 10

    def validate(self) -> None:
        for key, allowed in (("algo", ALGOS), ("exploration", EXPLORATION), ("rule_reward", RULE_REWARD)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"seqtutor.{key}={getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        from cluster.run_config import check_ranges

        check_ranges("seqtutor", self, {
            **dict.fromkeys(("iterations", "batch_size", "max_new_tokens", "updates_per_iteration", "minibatch_size",
                             "buffer_size", "target_update_every", "eval_every", "eval_prompts",
                             "checkpoint_every"), ">= 1"),
            "kl_coef": ("> 0", "the reward is divided by it; a small value lets the rules dominate the prior"),
            "gamma": "(0, 1]", "tau": ("[0, 1)", "0: hard target copies"), "epsilon": "[0, 1)",
            "learning_rate": "> 0", "temperature": "> 0", "max_grad_norm": "> 0"})
        self.validate_policy_training("seqtutor")


# --- the replay memory --------------------------------------------------------------------


class ReplayMemory:
    """Completions with their per-token rewards, up to ``capacity`` token transitions."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.items: list[tuple[list[int], list[int], list[float]]] = []
        self.transitions = 0

    def __len__(self) -> int:
        return len(self.items)

    def add(self, prompt_ids: list[int], completion: list[int], rewards: list[float]) -> None:
        if not completion:
            return
        self.items.append((list(prompt_ids), list(completion), list(rewards)))
        self.transitions += len(completion)
        while self.transitions > self.capacity and len(self.items) > 1:
            self.transitions -= len(self.items.pop(0)[1])

    def sample(self, rng: np.random.Generator, n: int):
        idx = rng.choice(len(self.items), size=n, replace=len(self.items) < n)
        return [self.items[int(i)] for i in idx]

    def state(self) -> dict[str, Any]:
        """Tensors only (checkpoints are safetensors + JSON)."""
        import torch

        def cat(k: int, dtype):
            flat = [x for item in self.items for x in item[k]]
            return torch.tensor(flat, dtype=dtype)

        return {"prompts": cat(0, torch.long), "prompt_lengths": torch.tensor([len(i[0]) for i in self.items]),
                "completions": cat(1, torch.long), "rewards": cat(2, torch.float64),
                "completion_lengths": torch.tensor([len(i[1]) for i in self.items])}

    def load(self, st: dict[str, Any]) -> None:
        self.items, self.transitions = [], 0
        p, c, r = st["prompts"].tolist(), st["completions"].tolist(), st["rewards"].tolist()
        i = j = 0
        for lp, lc in zip(st["prompt_lengths"].tolist(), st["completion_lengths"].tolist()):
            self.add(p[i:i + lp], c[j:j + lc], r[j:j + lc])
            i, j = i + lp, j + lc


# --- the learner --------------------------------------------------------------------------


def next_token_logits(model, batch):
    """l(s_t, .) for the state before each completion token: B x L x V (float)."""
    P = batch["prompt_width"]
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 position_ids=batch["position_ids"], use_cache=False).logits[:, P - 1:-1].float()


def exploring(model, cfg: SeqTutorStageConfig):
    """``model`` as the exploration policy, for ``rlhf.models.sample`` at temperature 1."""
    import torch

    class Explorer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, **kw):
            out = self.net(**kw)
            out.logits = behaviour_logits(out.logits.float(), cfg.exploration, cfg.temperature, cfg.epsilon)
            return out

    return Explorer()


class SeqTutorLearner:
    """The value network (= the policy), its target copy, the frozen prior and the replay
    memory; ``iteration()`` = explore, store, ``updates_per_iteration`` TD updates. Runs in
    this process (no Ray actors: off-policy updates need no rollout workers at this size)."""

    def __init__(self, cfg: SeqTutorStageConfig, policy, prior, tokenizer, reward, task=None, seed: int = 0,
                 device: str = "cpu"):
        import torch

        from rlhf.models import disable_dropout, prepare_policy
        from rlhf.ppo import Rollouts

        self.cfg, self.tok, self.device = cfg, tokenizer, torch.device(device)
        self.policy = prepare_policy(policy, cfg).to(self.device)
        self.target = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.prior = prior.to(self.device).eval().requires_grad_(False)
        for m in (self.policy, self.target, self.prior):
            disable_dropout(m)
        self.opt = torch.optim.Adam([p for p in self.policy.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                    eps=1e-5)
        self.memory = ReplayMemory(cfg.buffer_size)
        self.rng = np.random.default_rng(seed)
        self.iteration_done = self.updates_done = 0
        self.rollouts = Rollouts(None, tokenizer, reward, task)  # texts, gold and the reward (run_and_save reads it)

    def close(self) -> None:
        pass

    # rollouts ------------------------------------------------------------------------------
    def rule_rewards(self, prompts, comps: list[list[int]]) -> list[list[float]]:
        """Per-token rule rewards of each completion (``prefix`` differences or ``final``)."""
        reward = self.rollouts.reward
        if self.cfg.rule_reward == "final":
            scores = reward.combine(None, prompts.prompts, self.rollouts.texts(comps), prompts.columns)
            return [[0.0] * (len(c) - 1) + [float(s)] if c else [] for c, s in zip(comps, scores)]
        idx = [i for i, c in enumerate(comps) for _ in range(len(c) + 1)]
        prefixes = [c[:t] for c in comps for t in range(len(c) + 1)]
        rep = prompts.take(idx)
        flat = reward.combine(None, rep.prompts, self.rollouts.texts(prefixes), rep.columns).tolist()
        out, k = [], 0
        for c in comps:
            out.append(prefix_differences(flat[k:k + len(c) + 1]))
            k += len(c) + 1
        return out

    def rollout(self, prompts, explore: bool) -> dict[str, Any]:
        import torch

        from rlhf.models import completion_logprobs, pack, sample

        model = exploring(self.policy, self.cfg) if explore else self.policy
        seed = int(self.rng.integers(2**31 - 1))
        comps = sample(model, self.tok, prompts.prompts, self.cfg.max_new_tokens, temperature=1.0,
                       generator_seed=seed)
        prompt_ids = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts.prompts]
        texts = self.rollouts.texts(comps)
        scores = self.rollouts.reward.combine(None, prompts.prompts, texts, prompts.columns)
        batch = {k: (v.to(self.device) if hasattr(v, "to") else v)
                 for k, v in pack(prompt_ids, comps, self.tok.pad_token_id).items()}
        with torch.no_grad():
            logp, entropy = completion_logprobs(self.policy, batch)
            ref_logp, _ = completion_logprobs(self.prior, batch)
        mask = batch["completion_mask"].float()
        eos = self.tok.eos_token_id
        return {"comps": comps, "prompt_ids": prompt_ids, "scores": np.asarray(scores, dtype=np.float64),
                "gold": self.rollouts.gold(prompts, texts), "kl_seq": ((logp - ref_logp) * mask).sum(1),
                "entropy": float((entropy * mask).sum() / mask.sum().clamp(min=1.0)),
                "has_eos": np.array([bool(c) and c[-1] == eos for c in comps], dtype=np.float64),
                "lengths": np.array([len(c) for c in comps], dtype=np.float64)}

    def evaluate(self, prompts) -> dict[str, float]:
        """Held-out prompts, one completion each from the policy softmax(l): the rule reward
        (``eval_proxy_reward``), the gold, KL(pi || p) per sequence, the <eos> fraction."""
        from rlhf.ppo import as_prompts

        ro = self.rollout(as_prompts(prompts), explore=False)
        out = {"eval_proxy_reward": float(ro["scores"].mean()), "eval_kl": float(ro["kl_seq"].mean()),
               "eval_eos_fraction": float(ro["has_eos"].mean())}
        if ro["gold"] is not None:
            out["eval_gold_reward"] = float(np.mean(ro["gold"]))
        return out

    # the update ----------------------------------------------------------------------------
    def update(self) -> dict[str, float]:
        import torch

        from rlhf.models import pack
        from rlhf.ppo import gradient_step

        cfg = self.cfg
        items = self.memory.sample(self.rng, cfg.minibatch_size)
        batch = {k: (v.to(self.device) if hasattr(v, "to") else v)
                 for k, v in pack([i[0] for i in items], [i[1] for i in items], self.tok.pad_token_id).items()}
        mask = batch["completion_mask"]
        B, L = mask.shape
        rewards = torch.zeros(B, L, device=self.device)
        done = torch.zeros(B, L, device=self.device)
        for b, (_, comp, r) in enumerate(items):
            rewards[b, :len(comp)] = torch.tensor(r, dtype=torch.float32)
            done[b, len(comp) - 1] = 1.0  # <eos> or the length limit: nothing follows
        actions = batch["input_ids"][:, batch["prompt_width"]:]
        with torch.no_grad():
            prior_logits = next_token_logits(self.prior, batch)
            next_values = shift_next(q_values(next_token_logits(self.target, batch), prior_logits, cfg.algo))
            y = td_target(cfg.algo, rewards, prior_logits, actions, next_values, done, cfg.kl_coef, cfg.gamma)
        self.policy.train()
        q = q_values(next_token_logits(self.policy, batch), prior_logits, cfg.algo)
        q_taken = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        loss = td_loss(q_taken, y, mask)
        gradient_step(self.policy, self.opt, loss, cfg.max_grad_norm)
        self.policy.eval()
        self.updates_done += 1
        if cfg.tau > 0:
            polyak_update(self.target, self.policy, cfg.tau)
        elif self.updates_done % cfg.target_update_every == 0:
            self.target.load_state_dict(self.policy.state_dict())
        m = mask.float()
        n = m.sum().clamp(min=1.0)
        return {"td_loss": float(loss.detach()), "q_mean": float((q_taken.detach() * m).sum() / n),
                "target_mean": float((y * m).sum() / n)}

    def iteration(self, prompts) -> dict[str, float]:
        from rlhf.ppo import as_prompts

        t0 = time.perf_counter()
        prompts = as_prompts(prompts)
        ro = self.rollout(prompts, explore=True)
        for pid, comp, r in zip(ro["prompt_ids"], ro["comps"], self.rule_rewards(prompts, ro["comps"])):
            self.memory.add(pid, comp, r)
        t1 = time.perf_counter()
        stats = [self.update() for _ in range(self.cfg.updates_per_iteration)] if len(self.memory) else []
        self.iteration_done += 1
        out = {"proxy_reward": float(ro["scores"].mean()), "kl": float(ro["kl_seq"].mean()),
               "entropy": ro["entropy"], "eos_fraction": float(ro["has_eos"].mean()),
               "completion_length": float(ro["lengths"].mean()), "rollout_s": t1 - t0,
               "iteration_s": time.perf_counter() - t0, "buffer_transitions": self.memory.transitions,
               **{k: float(np.mean([s[k] for s in stats])) for k in (stats[0] if stats else {})}}
        if ro["gold"] is not None:
            out["gold_reward"] = float(np.mean(ro["gold"]))
        return out

    # checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        from rlhf.ppo import _unshared

        return {"model": _unshared(self.policy.state_dict()), "target": _unshared(self.target.state_dict()),
                "optimizer": self.opt.state_dict(), "memory": self.memory.state(),
                "state": {"iteration": self.iteration_done, "updates": self.updates_done,
                          "rng": self.rng.bit_generator.state}}

    def restore(self, objects: dict[str, Any]) -> None:
        for model, key in ((self.policy, "model"), (self.target, "target")):
            model.load_state_dict(objects[key], strict=False)
            model.tie_weights()
        self.opt.load_state_dict(objects["optimizer"])
        for group in self.opt.param_groups:  # the config's learning rate, as PPO's restore
            group["lr"] = self.cfg.learning_rate
        self.memory.load(objects["memory"])
        st = objects["state"]
        self.iteration_done, self.updates_done = int(st["iteration"]), int(st["updates"])
        self.rng.bit_generator.state = st["rng"]


def train_seqtutor(cfg: SeqTutorStageConfig, sft_dir: Path, train, held, out_dir: Path, run_dir=None, seed: int = 0,
                   device: str = "auto", log=print, reward=None, task=None, allow_pickle: bool = False) -> dict[str, Any]:
    """Sequence Tutor from the SFT artifact (the value network's start and the frozen prior)
    against the rule reward (``reward``: a ``rlhf.rewards.Reward`` with a function); save the
    policy as a ``seqtutor`` artifact. Resumes from the run dir's latest checkpoint."""
    from cluster.runtime import select_device
    from rlhf.models import load_policy
    from rlhf.ppo import run_and_save

    if reward is None or reward.fn is None:
        raise ConfigError("rlhf seqtutor needs a rule reward: --reward-fn module:function (or gold on a task "
                          "that has one)")
    dev = select_device(device)
    policy, tok = load_policy(sft_dir, "--sft", allow_pickle)
    prior, _ = load_policy(sft_dir, "--sft", allow_pickle)
    learner = SeqTutorLearner(cfg, policy, prior, tok, reward, task=task, seed=seed, device=str(dev))
    return run_and_save(learner, "seqtutor", train, held, out_dir, run_dir, log, sft_dir, None, task,
                        algo=cfg.algo, rule_reward=cfg.rule_reward, gamma=cfg.gamma)
