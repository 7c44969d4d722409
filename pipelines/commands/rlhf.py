"""``reinforge rlhf``: RLHF stages: sft, reward, ppo, dpo, all, eval.

    reinforge rlhf sft    [--config F] [--set k=v]
    reinforge rlhf reward --sft DIR [--preferences FILE]
    reinforge rlhf ppo    --sft DIR --reward DIR
    reinforge rlhf dpo    --sft DIR [--reward DIR] [--preferences FILE]
    reinforge rlhf all    (sft -> reward -> ppo in one run dir)
    reinforge rlhf eval   --model DIR [--ref DIR] [--reward DIR]
"""

from __future__ import annotations

import argparse

from pipelines.commands.common import add_run_args

STAGES = ("sft", "reward", "ppo", "dpo", "all", "eval")


def register(sub) -> None:
    p = sub.add_parser("rlhf", help="RLHF stages: sft, reward, ppo, dpo, all, eval",
                       description="RLHF on the built-in melody task, checkable against a hidden gold reward. "
                                   "Each stage writes a Hugging Face model dir to RUN_DIR/model.")
    p.add_argument("stage", choices=STAGES, metavar="STAGE", help=f"one of: {', '.join(STAGES)}")
    g = p.add_argument_group("artifacts (a stage's run dir or its model/ dir)")
    g.add_argument("--sft", metavar="DIR", help="SFT artifact (for reward, ppo, dpo)")
    g.add_argument("--reward", metavar="DIR", help="reward-model artifact (for ppo; optional for dpo and eval)")
    g.add_argument("--preferences", metavar="FILE", help="your own preference set (prompt/chosen/rejected) "
                                                         "instead of the simulated raters (reward, dpo)")
    g.add_argument("--model", metavar="DIR", help="policy to evaluate (eval)")
    g.add_argument("--ref", metavar="DIR", help="reference policy for the KL (eval; default the model's SFT parent)")
    add_run_args(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from pipelines.commands.common import run_pipeline

    inputs = {k: getattr(args, k) for k in ("sft", "reward") if getattr(args, k)}
    if args.stage == "eval":
        inputs = {k: getattr(args, k) for k in ("model", "ref", "reward") if getattr(args, k)}
    extra: dict = {"inputs": inputs} if inputs and args.stage not in ("sft", "all") else {}
    if args.preferences:
        extra["raters"] = {"preferences": args.preferences}
    run_pipeline(f"rlhf-{args.stage}", args, extra=extra)
    return 0
