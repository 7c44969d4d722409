"""``reinforge rlhf``: RLHF stages: sft, reward, ppo, dpo, all, eval.

    reinforge rlhf sft    [--config F] [--set k=v]
    reinforge rlhf reward --sft DIR [--preferences FILE]
    reinforge rlhf ppo    --sft DIR --reward DIR
    reinforge rlhf dpo    --sft DIR [--reward DIR] [--preferences FILE]
    reinforge rlhf all    (sft -> reward -> ppo in one run dir)
    reinforge rlhf eval   --model DIR [--ref DIR] [--reward DIR]

Each stage has its own parser, so ``reinforge rlhf STAGE --help`` lists only the flags that
stage takes. Artifact flags are not required by argparse: ``--resume`` takes them from the
run dir's config, and a stage missing one refuses in one line (``needs --sft DIR``).
"""

from __future__ import annotations

import argparse

from pipelines.commands.common import add_run_args

ARTIFACTS = "artifacts (a stage's run dir or its model/ dir)"
# stage -> (help, [(flag, help)]): the artifact and preference flags each stage reads
STAGES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "sft": ("stage 1: supervised fine-tuning on the melody corpus", []),
    "reward": ("stage 2: Bradley-Terry reward model on rater preferences of SFT samples", [
        ("--sft", "the SFT artifact whose samples are rated and whose transformer the reward model starts from"),
        ("--preferences", "your own preference set (prompt/chosen/rejected) instead of the simulated raters"),
    ]),
    "ppo": ("stage 3: PPO against the reward model with a KL penalty to the SFT prior", [
        ("--sft", "the SFT artifact: the starting policy and the frozen reference"),
        ("--reward", "the reward-model artifact (from `reinforge rlhf reward`)"),
    ]),
    "dpo": ("baseline: DPO on the same preferences, evaluated beside the SFT model", [
        ("--sft", "the SFT artifact: the starting policy and the frozen reference"),
        ("--reward", "a reward-model artifact: reuse its preference set and report its proxy reward (optional)"),
        ("--preferences", "your own preference set (prompt/chosen/rejected) instead of the simulated raters"),
    ]),
    "all": ("sft -> reward -> ppo in one run dir", []),
    "eval": ("gold reward, proxy reward and KL of a policy on held-out prompts", [
        ("--model", "the policy to evaluate (any rlhf policy artifact or a Hugging Face causal LM dir)"),
        ("--ref", "reference policy for the KL (default: the model's SFT parent)"),
        ("--reward", "reward model for the proxy reward (default: the model's reward parent)"),
    ]),
}
INPUT_FLAGS = ("sft", "reward", "model", "ref")


def register(sub) -> None:
    p = sub.add_parser("rlhf", help="RLHF stages: sft, reward, ppo, dpo, all, eval",
                       description="RLHF on the built-in melody task, checkable against a hidden gold reward. "
                                   "Each stage writes a Hugging Face model dir to RUN_DIR/model.")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", parser_class=type(p))
    for stage, (help_, flags) in STAGES.items():
        s = stages.add_parser(stage, help=help_, description=help_[0].upper() + help_[1:] + ".")
        if flags:
            g = s.add_argument_group(ARTIFACTS)
            for flag, flag_help in flags:
                g.add_argument(flag, metavar="FILE" if flag == "--preferences" else "DIR", help=flag_help)
        add_run_args(s)
        s.set_defaults(handler=handle)
    p.set_defaults(handler=lambda args: p.print_help() or 0)


def handle(args: argparse.Namespace) -> int:
    from pipelines.commands.common import run_pipeline

    inputs = {k: v for k in INPUT_FLAGS if (v := getattr(args, k, None))}
    extra: dict = {"inputs": inputs} if inputs else {}
    if getattr(args, "preferences", None):
        extra["raters"] = {"preferences": args.preferences}
    run_pipeline(f"rlhf-{args.stage}", args, extra=extra)
    return 0
