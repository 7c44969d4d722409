"""Mode capture along one 2-D GAN run, for trying settings quickly (not a ``reinforge bench`` target).

The library's own ``GANModel`` and losses, driven in one process with one thread (no Ray), with
several EMA copies of the generator (``generative.nets.ema_copy``) evaluated side by side every
``--every`` generator steps: modes captured and the high-quality fraction (2,500 samples) of
the raw generator and of each average. The README's table of WGAN-GP attempts comes from it:

    python benchmarks/gen_gan_trajectory.py --data grid25 --hidden 256 --gp 0.1 --gsteps 4000 --ema 0.99 0.999
    python benchmarks/gen_gan_trajectory.py --data ring8 --model minimax-gan --critic 1 --gsteps 4000
"""

from __future__ import annotations

import argparse
import json
import time

import _common  # noqa: F401  (puts the repository root on sys.path)


def main() -> None:
    import torch

    from generative.config import GenConfig
    from generative.data import mixture
    from generative.gan import GANModel
    from generative.metrics import mode_metrics
    from generative.nets import ema_copy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="grid25", choices=("ring8", "grid25"))
    p.add_argument("--model", default="wgan-gp", choices=("gan", "minimax-gan", "wgan-gp"))
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--gp", type=float, default=0.1, help="gradient-penalty weight lambda")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--decay", default="linear", choices=("none", "linear"))
    p.add_argument("--gsteps", type=int, default=4000, help="generator steps")
    p.add_argument("--critic", type=int, default=5, help="critic steps per generator step")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--z", type=int, default=8, help="latent dimension")
    p.add_argument("--ema", type=float, nargs="*", default=[0.99, 0.999], help="EMA decays to evaluate")
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    cfg = GenConfig(model=a.model, data=a.data, hidden=a.hidden, gp_weight=a.gp, learning_rate=a.lr,
                    lr_decay=a.decay, critic_steps=a.critic, latent_dim=a.z, batch_size=a.batch)
    model = GANModel(cfg, (2,), 0, torch.device("cpu"))
    model.set_total_steps(a.gsteps * a.critic)
    data = mixture(a.data, 100_000, a.seed)
    emas = {d: ema_copy(model.G, d) for d in a.ema}
    gen, t0 = torch.Generator().manual_seed(a.seed + 1), time.perf_counter()
    z = torch.randn(2500, model.z_dim, generator=torch.Generator().manual_seed(7))
    for it in range(a.gsteps * a.critic):
        out = model.train_step(data[torch.randint(0, len(data), (a.batch,), generator=gen)], None, it)
        if "g_loss" not in out:
            continue
        for e in emas.values():
            e.update_parameters(model.G)
        if model.g_step % a.every and model.g_step != a.gsteps:
            continue
        row = {"g_step": model.g_step, "seconds": round(time.perf_counter() - t0)}
        with torch.no_grad():
            for name, G in {"raw": model.G, **{f"ema{d}": e.module for d, e in emas.items()}}.items():
                m = mode_metrics(G(z), a.data)
                row[name] = [m["modes_captured"], round(m["high_quality_fraction"], 3)]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
