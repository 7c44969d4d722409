"""Ray actors shared by PPO and GRPO, placed through ``cluster.runtime.make_actor`` (GPU when
present), and the ``RolloutGroup`` that drives them:

- ``RolloutWorker``: a copy of the policy that samples completions (temperature 1, no
  top-k/top-p); the learner pushes its trainable weights to it after every update.
- ``Scorer``: the frozen reference (the SFT model) and, when there is one, the reward model:
  per-token reference log-probs of each completion and the reward-model score of each
  full sequence.

Models travel as (class name, config dict, state dict[, LoRA config]) through the object
store, so actors on other nodes need no shared filesystem; with LoRA only the adapter weights
travel after each update.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def model_spec(model) -> dict[str, Any]:
    """What an actor needs to rebuild ``model``: a plain transformers model, or a peft model
    (its base's class and config, its LoRA config, and its full state)."""
    base = model.get_base_model() if hasattr(model, "peft_config") else model
    spec = {"arch": type(base).__name__, "config": base.config.to_dict(),
            "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if hasattr(model, "peft_config"):
        spec["lora"] = model.peft_config["default"].to_dict()
    return spec


def build_from_spec(spec: dict[str, Any], device):
    import transformers

    from rlhf.models import disable_dropout

    cls = getattr(transformers, spec["arch"])
    config_cls = transformers.AutoConfig.for_model(spec["config"]["model_type"]).__class__
    config = config_cls.from_dict(spec["config"])
    model = cls(config)
    if spec.get("lora"):
        from peft import LoraConfig, get_peft_model

        lora = {k: v for k, v in spec["lora"].items() if k in LoraConfig.__dataclass_fields__}
        model = get_peft_model(model, LoraConfig(**lora))
    model.load_state_dict(spec["state"], strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    disable_dropout(model)
    return model.to(device).eval()


def trainable_state(model) -> dict[str, Any]:
    """The weights an update changes (all of them, or the LoRA adapters alone), by their
    ``state_dict`` names, on the CPU."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k in names}


def _device(want_gpu: bool):
    import torch

    return torch.device("cuda" if want_gpu and torch.cuda.is_available() else "cpu")


class RolloutWorker:
    def __init__(self, policy_spec: dict[str, Any], tokenizer, seed: int, use_gpu: bool = False, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.device = _device(use_gpu)
        self.model = build_from_spec(policy_spec, self.device)
        self.tok = tokenizer
        self.seed = seed
        self.calls = 0

    def set_weights(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state, strict=False)

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
        from rlhf.models import sample

        self.calls += 1
        return sample(self.model, self.tok, prompts, max_new_tokens, temperature=1.0,
                      generator_seed=self.seed * 100_003 + self.calls)


class Scorer:
    """Reference log-probs and reward-model scores. ``reward`` is a reward-model spec, a toy
    reward ``("count", token_id)`` = how many times a token occurs in the completion (tests),
    or None (the reward is a function only: scores are zeros)."""

    def __init__(self, ref_spec: dict[str, Any], reward: Any, reward_offset: float, tokenizer,
                 use_gpu: bool = False, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.device = _device(use_gpu)
        self.ref = build_from_spec(ref_spec, self.device)
        self.toy = reward if isinstance(reward, tuple) else None
        self.rm = build_from_spec(reward, self.device) if isinstance(reward, dict) else None
        self.offset = reward_offset
        self.tok = tokenizer

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(reference log-probs of the completion tokens, B x Lmax padded with 0; scores, B)."""
        import torch

        from rlhf.models import completion_logprobs, pack, sequence_scores

        batch = pack(prompt_ids, completion_ids, self.tok.pad_token_id)
        batch = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in batch.items()}
        with torch.no_grad():
            ref_logp, _ = completion_logprobs(self.ref, batch)
            if self.toy:
                scores = torch.tensor([float(sum(t == self.toy[1] for t in c)) for c in completion_ids])
            elif self.rm is not None:
                scores = sequence_scores(self.rm, batch["input_ids"], batch["attention_mask"], self.offset,
                                         batch["position_ids"])
            else:
                scores = torch.zeros(len(completion_ids))
        return ref_logp.cpu().numpy(), scores.cpu().numpy()


class RolloutGroup:
    """The rollout workers and the scorer of one PPO or GRPO run: ``generate`` shards prompts
    over the workers, ``score`` asks the scorer, ``push`` sends the learner's new weights."""

    def __init__(self, policy, tokenizer, reward_spec: Any, reward_offset: float, num_workers: int, resources,
                 seed: int):
        from cluster.runtime import make_actor
        from cluster.seeding import worker_seed

        gpu = resources.num_gpus > 0
        spec = model_spec(policy)  # the reference is the initial policy (the SFT model)
        self.workers = [make_actor(RolloutWorker, spec, tokenizer, worker_seed(seed, i), gpu, resources=resources)
                        for i in range(num_workers)]
        self.scorer = make_actor(Scorer, spec, reward_spec, reward_offset, tokenizer, gpu, resources=resources)

    def push(self, policy) -> None:
        import ray

        ref = ray.put(trainable_state(policy))
        ray.get([w.set_weights.remote(ref) for w in self.workers])

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
        import ray

        shards = np.array_split(np.arange(len(prompts)), len(self.workers))
        futs = [w.generate.remote([prompts[i] for i in s], max_new_tokens)
                for w, s in zip(self.workers, shards) if len(s)]
        return [c for part in ray.get(futs) for c in part]

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]):
        import ray

        return ray.get(self.scorer.score.remote(prompt_ids, completion_ids))

    def close(self) -> None:
        import ray

        for a in [*self.workers, self.scorer]:
            if a is not None:
                ray.kill(a)
        self.workers, self.scorer = [], None
