"""``reinforge gen``: generative pretraining with Ray Train: GANs, VAEs, DDPM, contrastive.

    reinforge gen train --model wgan-gp --data ring8 [--workers N] [--epochs E] [--set gen.KEY=VALUE]
    reinforge gen sample --checkpoint RUN_DIR --n 64 [--label 3] [--out samples.png]
"""

from __future__ import annotations

import argparse

from generative.config import DATASETS, ENCODER_ONLY, MODELS
from pipelines.commands.common import add_run_args, print_summary, resolve_args


def register(sub) -> None:
    p = sub.add_parser("gen", help="generative pretraining with Ray Train: GANs, VAEs, DDPM, contrastive")
    gsub = p.add_subparsers(dest="gen_command", metavar="{train,sample}", parser_class=type(p))
    t = gsub.add_parser("train", help="train a model with Ray Train (TorchTrainer, DDP)")
    t.add_argument("--model", help=f"one of {', '.join(MODELS)} (gen.model)")
    t.add_argument("--data", help=f"one of {', '.join(DATASETS)} (gen.data)")
    t.add_argument("--workers", type=int, help="Ray Train workers (gen.workers; 0 = in-process)")
    t.add_argument("--epochs", type=int, help="passes over the data set (gen.epochs)")
    t.add_argument("--gpu", action="store_true", help="one GPU per Train worker (gen.use_gpu)")
    add_run_args(t)
    t.set_defaults(handler=handle_train)
    s = gsub.add_parser("sample", help="draw samples from a trained run and write a PNG")
    s.add_argument("--checkpoint", required=True, metavar="DIR", help="run dir or checkpoint dir of 'gen train'")
    s.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--label", type=int, help="class to generate (class-conditional models on digits)")
    s.add_argument("--guidance", type=float, help="classifier-free guidance scale w (DDPM; default: as trained)")
    s.add_argument("--out", metavar="PNG", help="output image (default CHECKPOINT_RUN/plots/sample-N.png)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(handler=handle_sample)
    p.set_defaults(handler=lambda args: (p.print_help(), 0)[1])


def handle_train(args: argparse.Namespace) -> int:
    from pipelines import config as cfgmod
    from pipelines.registry import execute

    gen = {k: v for k, v in (("model", args.model), ("data", args.data), ("workers", args.workers),
                             ("epochs", args.epochs)) if v is not None}
    if args.gpu:
        gen["use_gpu"] = True
    preset = None
    if not args.config and not args.resume and gen.get("model") and gen.get("data"):
        name = f"gen-{gen['model']}-{gen['data']}"  # tuned settings for this pair, when a preset exists
        if (cfgmod.PRESET_DIR / f"{name}.yaml").is_file():
            preset = name
    resolved = resolve_args("gen", args, {"gen": gen} if gen else None, preset=preset)
    rd, result = execute(resolved, resume=args.resume)
    print_summary(rd.path, result)
    return 0


def handle_sample(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    import torch

    from cluster.errors import ConfigError, ReinforgeError
    from generative.plots import save_image_grid, save_scatter
    from generative.train import load_trained

    if args.n < 1:
        raise ConfigError(f"--n {args.n}: ask for at least one sample")
    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise ConfigError(f"--guidance {args.guidance:g} must be a finite number >= 0 (0: no guidance)")
    torch.manual_seed(args.seed)
    model, cfg, ckpt = load_trained(args.checkpoint)
    if cfg.model in ENCODER_ONLY:
        raise ConfigError(f"{cfg.model} trains an encoder and cannot sample; use its encoder/ or a gan/vae/ddpm run")
    labels = None
    if args.label is not None:
        if not getattr(model, "num_classes", 0):
            raise ReinforgeError(f"--label needs a class-conditional model (cgan, cvae, ddpm on digits), not {cfg.model}")
        if not 0 <= args.label < model.num_classes:
            raise ReinforgeError(f"--label {args.label}: digits classes are 0..{model.num_classes - 1}")
        labels = torch.full((args.n,), args.label, dtype=torch.long)
    kwargs = {"guidance": args.guidance} if args.guidance is not None and cfg.model in ("ddpm", "latent-ddpm") else {}
    samples = model.sample(args.n, labels, **kwargs)
    run_root = ckpt.path.parent.parent if ckpt.path.parent.name == "checkpoints" else ckpt.path.parent
    out = Path(args.out) if args.out else run_root / "plots" / f"sample-{args.n}.png"
    title = f"{cfg.model} on {cfg.data}" + (f", class {args.label}" if labels is not None else "")
    if cfg.is_2d:
        save_scatter(samples, cfg.data, out, title)
    else:
        save_image_grid(samples, out, nrow=8, title=title)
    print(f"{args.n} samples from {ckpt.path} (epoch {ckpt.step}) -> {out}")
    return 0
