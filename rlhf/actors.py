"""Ray actors for PPO, placed through ``cluster.runtime.make_actor`` (GPU when present):

- ``RolloutWorker``: a copy of the policy that samples completions (temperature 1, no
  top-k/top-p); the learner pushes new weights to it after every update.
- ``Scorer``: the frozen reference (the SFT model) and the reward: per-token reference
  log-probs of each completion and the reward-model score of each full sequence.

Models travel as (class name, config dict, state dict) through the object store, so actors on
other nodes need no shared filesystem.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def model_spec(model) -> dict[str, Any]:
    return {"arch": type(model).__name__, "config": model.config.to_dict(),
            "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def build_from_spec(spec: dict[str, Any], device):
    import transformers

    from rlhf.models import disable_dropout

    cls = getattr(transformers, spec["arch"])
    config_cls = transformers.AutoConfig.for_model(spec["config"]["model_type"]).__class__
    config = config_cls.from_dict(spec["config"])
    model = cls(config)
    model.load_state_dict(spec["state"], strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    disable_dropout(model)
    return model.to(device).eval()


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
    """Reference log-probs and rewards. ``reward`` is a reward-model spec or a toy reward
    ``("count", token_id)`` = how many times a token occurs in the completion (tests)."""

    def __init__(self, ref_spec: dict[str, Any], reward: Any, reward_offset: float, tokenizer,
                 use_gpu: bool = False, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.device = _device(use_gpu)
        self.ref = build_from_spec(ref_spec, self.device)
        self.toy = reward if isinstance(reward, tuple) else None
        self.rm = None if self.toy else build_from_spec(reward, self.device)
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
            else:
                scores = sequence_scores(self.rm, batch["input_ids"], batch["attention_mask"], self.offset,
                                         batch["position_ids"])
        return ref_logp.cpu().numpy(), scores.cpu().numpy()
