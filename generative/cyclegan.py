"""CycleGAN (Zhu et al. 2017): unpaired image-to-image translation between domains A and B.

Two generators G: A -> B and F: B -> A, two discriminators D_A (real A vs F(b)) and D_B (real B vs
G(a)), trained with the least-squares adversarial loss (Mao et al. 2017) and cycle consistency:

    lsgan_d_loss            L_D   = 1/2 E[(D(x) - 1)^2] + 1/2 E[D(fake)^2]          (for D_A and D_B)
    lsgan_g_loss            L_GAN = E[(D_B(G(a)) - 1)^2]  (and E[(D_A(F(b)) - 1)^2] for F)
    cycle_consistency_loss  L_cyc = E||F(G(a)) - a||_1 + E||G(F(b)) - b||_1
    identity_loss           L_idt = E||G(b) - b||_1 + E||F(a) - a||_1

    generators:      min_{G,F}  L_GAN(G, D_B) + L_GAN(F, D_A) + lambda_cyc L_cyc + lambda_idt L_idt
    discriminators:  min_{D_A}  L_D(D_A; a, F(b)),   min_{D_B}  L_D(D_B; b, G(a))   (fakes detached)

lambda_cyc is ``gen.cycle_weight`` (10), lambda_idt ``gen.identity_weight`` (0 = off; Zhu et al.
use 0.5 lambda_cyc for photo <-> painting). The generators are ResNet-style encoder-decoders at
half resolution with instance norm; the discriminators are PatchGANs scoring 4x4 patches. No
history pool of fakes (Shrivastava et al.): the discriminators see the current generators' output.

Data: ``digit-domains`` (generative.data.digit_domains): each row is an A image (plain digit) in
channel 0 and an unrelated B image (another digit, thick and inverted) in channel 1.

Evaluation (``evaluate``) on the held-out rows, with judges trained in-project on the training
split only and cached as safetensors: the digits classifier (domain A), a classifier of styled
digits (domain B), and a domain classifier (A, B, or neither: one of the two style changes alone).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from generative import data as gdata
from generative.nets import unwrap


# --- the equations -------------------------------------------------------------------------------
def lsgan_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """1/2 E[(D(x) - 1)^2] + 1/2 E[D(fake)^2]: real patches towards 1, fakes towards 0."""
    return 0.5 * ((real_scores - 1) ** 2).mean() + 0.5 * (fake_scores**2).mean()


def lsgan_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """E[(D(G(a)) - 1)^2]: the generator wants its fakes scored as real."""
    return ((fake_scores - 1) ** 2).mean()


def cycle_consistency_loss(a: torch.Tensor, a_rec: torch.Tensor, b: torch.Tensor, b_rec: torch.Tensor) -> torch.Tensor:
    """E||F(G(a)) - a||_1 + E||G(F(b)) - b||_1 (mean absolute error per pixel), a_rec = F(G(a))."""
    return (a_rec - a).abs().mean() + (b_rec - b).abs().mean()


def identity_loss(a: torch.Tensor, f_of_a: torch.Tensor, b: torch.Tensor, g_of_b: torch.Tensor) -> torch.Tensor:
    """E||G(b) - b||_1 + E||F(a) - a||_1: a generator fed its own target domain leaves it alone."""
    return (g_of_b - b).abs().mean() + (f_of_a - a).abs().mean()


# --- networks ------------------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1, padding_mode="reflect"), nn.InstanceNorm2d(ch), nn.ReLU(),
            nn.Conv2d(ch, ch, 3, padding=1, padding_mode="reflect"), nn.InstanceNorm2d(ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Zhu et al.'s generator, scaled to 16x16 / 32x32 (one downsampling instead of two):
    c7s1-k, d2k, R2k x blocks, u k, c7s1-1 + tanh. Images in [-1, 1]."""

    def __init__(self, channels: int = 1, ch: int = 32, blocks: int = 3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, ch, 7, padding=3, padding_mode="reflect"), nn.InstanceNorm2d(ch), nn.ReLU(),
            nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * ch), nn.ReLU(),
            *[ResidualBlock(2 * ch) for _ in range(blocks)],
            nn.ConvTranspose2d(2 * ch, ch, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(ch), nn.ReLU(),
            nn.Conv2d(ch, channels, 7, padding=3, padding_mode="reflect"), nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """A PatchGAN: one real/fake score per patch (a 4x4 map at 16x16 input), no sigmoid (LSGAN)."""

    def __init__(self, channels: int = 1, size: int = 16, ch: int = 32):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        c, s = ch, size // 2
        while s > 4:
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.InstanceNorm2d(2 * c), nn.LeakyReLU(0.2)]
            c, s = 2 * c, s // 2
        layers += [nn.Conv2d(c, 2 * c, 3, 1, 1), nn.InstanceNorm2d(2 * c), nn.LeakyReLU(0.2),
                   nn.Conv2d(2 * c, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --- the model the training loop drives ----------------------------------------------------------
class CycleGANModel:
    """G: A -> B, F: B -> A, D_A, D_B; one Adam over both generators and one over both critics."""

    num_classes = 0  # nothing to condition on: ``gen sample --label`` is refused

    def __init__(self, cfg, data_shape: tuple[int, ...], num_classes: int, device: torch.device):
        self.cfg, self.device = cfg, device
        size, ch = data_shape[-1], max(cfg.hidden // 2, 4)
        self.G = ResnetGenerator(1, ch, cfg.residual_blocks).to(device)
        self.F = ResnetGenerator(1, ch, cfg.residual_blocks).to(device)
        self.D_A = PatchDiscriminator(1, size, ch).to(device)
        self.D_B = PatchDiscriminator(1, size, ch).to(device)
        betas = (0.5, 0.999)  # Zhu et al.
        self.opt_g = torch.optim.Adam(itertools.chain(self.G.parameters(), self.F.parameters()),
                                      lr=cfg.learning_rate, betas=betas)
        self.opt_d = torch.optim.Adam(itertools.chain(self.D_A.parameters(), self.D_B.parameters()),
                                      lr=cfg.learning_rate, betas=betas)

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "F": self.F, "D_A": self.D_A, "D_B": self.D_B}

    def set_modules(self, mods: dict[str, nn.Module]) -> None:
        self.G, self.F, self.D_A, self.D_B = mods["G"], mods["F"], mods["D_A"], mods["D_B"]

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_g, "D": self.opt_d}

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, it: int) -> dict[str, Any]:
        """One generator step, then one step of both discriminators on the same (detached) fakes.
        ``y`` (both rows' labels) is never looked at: the translation is learnt unpaired."""
        cfg = self.cfg
        a, b = x[:, :1] * 2 - 1, x[:, 1:2] * 2 - 1  # [0, 1] -> [-1, 1]
        # generators
        fake_b, fake_a = self.G(a), self.F(b)
        a_rec, b_rec = self.F(fake_b), self.G(fake_a)
        adversarial = lsgan_g_loss(self.D_B(fake_b)) + lsgan_g_loss(self.D_A(fake_a))
        cycle = cycle_consistency_loss(a, a_rec, b, b_rec)
        loss = adversarial + cfg.cycle_weight * cycle
        with torch.set_grad_enabled(cfg.identity_weight > 0):  # reported either way
            idt = identity_loss(a, self.F(a), b, self.G(b))
        if cfg.identity_weight > 0:
            loss = loss + cfg.identity_weight * idt
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()  # also fills the discriminators' grads; cleared before their step
        self.opt_g.step()
        # discriminators: real vs the fakes just made, one forward each on both together
        n = len(a)
        scores_a = self.D_A(torch.cat([a, fake_a.detach()]))
        scores_b = self.D_B(torch.cat([b, fake_b.detach()]))
        d_loss = lsgan_d_loss(scores_a[:n], scores_a[n:]) + lsgan_d_loss(scores_b[:n], scores_b[n:])
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        return {"d_loss": float(d_loss.detach()), "g_loss": float(adversarial.detach()),
                "cycle_loss": float(cycle.detach()), "identity_loss": float(idt.detach())}

    # --- translation ----------------------------------------------------------------------------
    @torch.no_grad()
    def translate(self, images: torch.Tensor, direction: str = "a_to_b") -> torch.Tensor:
        """(N, 1, S, S) in [0, 1] through G (``a_to_b``) or F (``b_to_a``), in eval mode."""
        net = unwrap(self.G if direction == "a_to_b" else self.F)
        was = net.training
        net.eval()
        out = (net(images.to(self.device) * 2 - 1) + 1) / 2
        net.train(was)
        return out

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """CycleGAN draws nothing from noise: ``sample(n)`` is G's translation of the first ``n``
        held-out domain-A digits into domain B (repeating them when n exceeds the 180 held out)."""
        a = gdata.digit_domains(self.cfg.image_size, "test")[0][:, :1]
        return self.translate(a[torch.arange(n) % len(a)], "a_to_b")

    def evaluate(self, cfg, run_dir: Path, seed: int = 0) -> tuple[dict[str, Any], list[Path]]:
        """Class kept and target domain reached, both ways, and the cycle errors, on held-out rows;
        ``plots/translations.png``: rows a, G(a), F(G(a)), b, F(b), G(F(b))."""
        from generative.metrics import digits_classifier
        from generative.plots import save_image_grid

        torch.manual_seed(seed)
        x, y, _ = gdata.digit_domains(cfg.image_size, "test")
        a, b = x[:, :1], x[:, 1:2]
        fake_b, fake_a = self.translate(a, "a_to_b").cpu(), self.translate(b, "b_to_a").cpu()
        a_rec, b_rec = self.translate(fake_b, "b_to_a").cpu(), self.translate(fake_a, "a_to_b").cpu()
        judge_a, judge_b, judge_domain = digits_classifier(cfg.image_size), class_b_classifier(cfg.image_size), \
            domain_classifier(cfg.image_size)
        with torch.no_grad():
            domain_test = domain_judge_data(a, b)
            out: dict[str, Any] = {
                "class_kept_a_to_b": agreement(judge_b(fake_b), y[:, 0]),
                "class_kept_b_to_a": agreement(judge_a(fake_a), y[:, 1]),
                "target_domain_a_to_b": agreement(judge_domain(fake_b), torch.full_like(y[:, 0], DOMAIN_B)),
                "target_domain_b_to_a": agreement(judge_domain(fake_a), torch.full_like(y[:, 1], DOMAIN_A)),
                "cycle_error_a": float((a_rec - a).abs().mean()),
                "cycle_error_b": float((b_rec - b).abs().mean()),
                # the judges on held-out real images: how far their verdicts can be trusted
                "class_b_classifier_accuracy": agreement(judge_b(b), y[:, 1]),
                "domain_classifier_accuracy": agreement(judge_domain(domain_test[0]), domain_test[1]),
            }
        k = min(8, len(a))
        grid = torch.cat([a[:k], fake_b[:k], a_rec[:k], b[:k], fake_a[:k], b_rec[:k]])
        path = save_image_grid(grid, Path(run_dir) / "plots" / "translations.png", nrow=k,
                               title="rows: a, G(a), F(G(a)); b, F(b), G(F(b))")
        return out, [path]


def agreement(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


# --- the judges (trained on the training split only, cached as safetensors) ------------------------
DOMAIN_A, DOMAIN_B, DOMAIN_NEITHER = 0, 1, 2


def domain_judge_data(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and domain labels for the domain classifier: real A, real B, and 'neither': A digits
    with only one of B's two style changes (inverted only, thickened only), so that passing as B
    takes both changes."""
    inverted_only = 1 - a
    thick_only = 1 - gdata.style_b(a)
    half = len(a) // 2
    neither = torch.cat([inverted_only[:half], thick_only[half:]])
    labels = [torch.full((len(t),), c, dtype=torch.long) for t, c in ((a, DOMAIN_A), (b, DOMAIN_B),
                                                                    (neither, DOMAIN_NEITHER))]
    return torch.cat([a, b, neither]), torch.cat(labels)


def _judge(name: str, size: int, classes: int, images_labels) -> nn.Module:
    """A ``generative.metrics.DigitsClassifier`` with ``classes`` outputs, trained once on
    ``images_labels()`` (training data) and cached under the cache dir like the digits classifier."""
    from generative.metrics import DigitsClassifier, cached_classifier, fit_classifier

    def fresh() -> nn.Module:
        m = DigitsClassifier(size)
        m.out = nn.Linear(m.out.in_features, classes)
        return m

    def train() -> nn.Module:
        torch.manual_seed(0)
        return fit_classifier(fresh(), *images_labels())

    return cached_classifier(gdata.cache_dir() / f"digit-domains-{name}-{size}.safetensors", fresh, train)


def class_b_classifier(size: int = 16) -> nn.Module:
    """Digit class of domain-B images: trained on every training digit under ``style_b``."""
    def data():
        x, y = gdata.digits(size, "train")
        return gdata.style_b(x), y

    return _judge("class-b", size, 10, data)


def domain_classifier(size: int = 16) -> nn.Module:
    """A, B or neither (see ``domain_judge_data``), trained on the training rows."""
    def data():
        x, _, _ = gdata.digit_domains(size, "train")
        return domain_judge_data(x[:, :1], x[:, 1:2])

    return _judge("domain", size, 3, data)
