"""``reinforge rlhf``: RLHF stages: sft, reward, ppo, grpo, dpo, seqtutor, all, eval.

    reinforge rlhf sft    [--model DIR|HUB_ID] [--data FILE]
    reinforge rlhf reward --sft DIR [--preferences FILE]
    reinforge rlhf ppo    --sft DIR (--reward DIR | --reward-fn module:function) [--prompts FILE]
    reinforge rlhf grpo   --sft DIR (--reward-fn module:function | --reward DIR) [--prompts FILE]
    reinforge rlhf dpo    --sft DIR [--reward DIR] [--preferences FILE]
    reinforge rlhf seqtutor --sft DIR [--reward-fn module:function|gold] [--prompts FILE]
    reinforge rlhf all    (a chain of stages in one run dir; default sft -> reward -> ppo)
    reinforge rlhf eval   --model DIR [--ref DIR] [--reward DIR] [--reward-fn F] [--prompts FILE]

Each stage has its own parser, so ``reinforge rlhf STAGE --help`` lists only the flags that
stage takes. Artifact flags are not required by argparse: ``--resume`` takes them from the
run dir's config, and a stage missing one refuses in one line (``needs --sft DIR``).
"""

from __future__ import annotations

import argparse

from pipelines.commands.common import add_run_args

ARTIFACTS = "inputs (an artifact is a stage's run dir or its model/ dir)"
# flag -> (config path, metavar, help)
FLAGS = {
    "--model": ("sft.model", "DIR", "the causal LM to fine-tune: a Hugging Face model dir or hub id "
                                    "(default: a small GPT-2 for the built-in tasks)"),
    "--data": ("data.path", "FILE", "your SFT data: text | prompt + completion | messages "
                                    "(jsonl/json/csv/parquet, a saved dataset dir or a hub id)"),
    "--preferences": ("data.preferences", "FILE", "your preference pairs: prompt, chosen, rejected "
                                                  "(explicit or implicit prompt) instead of the task's own"),
    "--prompts": ("data.prompts", "FILE", "your prompts: a prompt column plus any columns the reward function reads"),
    "--sft": ("inputs.sft", "DIR", "the SFT artifact: the starting policy and the frozen reference"),
    "--reward": ("inputs.reward", "DIR", "a reward model: a `reinforge rlhf reward` artifact or any one-label "
                                         "AutoModelForSequenceClassification dir"),
    "--reward-fn": ("inputs.reward_fn", "MOD:FN", "a reward function f(prompts, completions, **columns) -> "
                                                  "list[float], or 'gold' (the task's hidden gold)"),
    "--ref": ("inputs.ref", "DIR", "reference policy for the KL (default: the model's SFT parent)"),
    "--allow-pickle": ("inputs.allow_pickle", None, "load model dirs that hold only pickled weights "
                                                    "(pytorch_model.bin); off: safetensors only"),
}
EVAL_MODEL = ("inputs.model", "DIR", "the policy to evaluate (any rlhf policy artifact or a Hugging Face causal LM dir)")
# stage -> (help, flags)
STAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "sft": ("stage 1: supervised fine-tuning on the task's data (TRL SFTTrainer)", ("--model", "--data")),
    "reward": ("stage 2: Bradley-Terry reward model on preference pairs", ("--sft", "--preferences")),
    "ppo": ("stage 3: PPO against the reward with a KL penalty to the SFT prior",
            ("--sft", "--reward", "--reward-fn", "--prompts")),
    "grpo": ("stage 3: GRPO, G completions per prompt, group-normalised advantages, KL loss to the SFT prior",
             ("--sft", "--reward", "--reward-fn", "--prompts")),
    "dpo": ("baseline: DPO on the same preferences, evaluated beside the SFT model", ("--sft", "--reward", "--preferences")),
    "seqtutor": ("Sequence Tutor: KL-regularised Q-, Psi- or G-learning from the SFT prior on a rule reward "
                 "(--reward-fn; default the task's gold)", ("--sft", "--reward-fn", "--prompts")),
    "all": ("a chain of stages in one run dir (stages=[sft, reward, ppo] by default)",
            ("--model", "--data", "--preferences", "--prompts", "--reward-fn")),
    "eval": ("gold reward, proxy reward and KL of a policy on held-out prompts",
             ("--model", "--ref", "--reward", "--reward-fn", "--prompts")),
}


def _target(stage: str, flag: str) -> tuple[str, str | None, str]:
    return EVAL_MODEL if (stage == "eval" and flag == "--model") else FLAGS[flag]


def register(sub) -> None:
    p = sub.add_parser("rlhf", help="RLHF stages: sft, reward, ppo, grpo, dpo, seqtutor, all, eval",
                       description="RLHF on any Hugging Face causal LM and TRL-format data, or on the built-in "
                                   "melody and arithmetic tasks, checkable against a hidden gold. Each stage "
                                   "writes a Hugging Face model dir to RUN_DIR/model.")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", parser_class=type(p))
    for stage, (help_, flags) in STAGES.items():
        s = stages.add_parser(stage, help=help_, description=help_[0].upper() + help_[1:] + ".")
        g = s.add_argument_group(ARTIFACTS)
        for flag in (*flags, "--allow-pickle"):
            key, metavar, flag_help = _target(stage, flag)
            dest = "cfg:" + key
            if metavar is None:
                g.add_argument(flag, dest=dest, action="store_true", default=None, help=flag_help)
            else:
                g.add_argument(flag, dest=dest, metavar=metavar, help=flag_help)
        add_run_args(s)
        s.set_defaults(handler=handle)
    p.set_defaults(handler=lambda args: p.print_help() or 0)


def handle(args: argparse.Namespace) -> int:
    from pipelines.commands.common import run_pipeline

    extra: dict = {}
    for dest, value in vars(args).items():
        if dest.startswith("cfg:") and value is not None:
            section, key = dest[4:].split(".")
            extra.setdefault(section, {})[key] = value
    run_pipeline(f"rlhf-{args.stage}", args, extra=extra)
    return 0
