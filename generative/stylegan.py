"""A style-based generator (Karras et al. 2019) grown progressively (Karras et al. 2018).

Mapping network and styles:

    w = mapping(z) = f(z / rms(z))                           f: gen.mapping_layers FC layers, lr x 0.01
    (y_s, y_b) = A_l(w)                                      a learned affine map per synthesis layer l
    adain(x, y_s, y_b) = y_s (x - mu(x)) / sigma(x) + y_b    mu, sigma per sample and channel

Synthesis, from a learned constant 4x4 input; at every resolution r = 4, 8, ..., S two layers

    x <- adain(lrelu(conv3x3(upsample(x)) + B_l * noise + b_l), A_l(w_l))    noise ~ N(0, 1) per pixel,
                                                                            B_l a learned per-channel scale
    toRGB_r(x) = conv1x1(x)                                  image = tanh(toRGB_S(x))   output_image

Style mixing regularisation (probability gen.style_mixing): two codes, a random crossover layer c,

    mix_styles(w1, w2, c)_l = w1 for l < c, w2 for l >= c

Progressive growing (ProGAN): while resolution r fades in, the generator's image and the
discriminator's input are blended with the previous resolution's path,

    fade_in(low, high, alpha) = (1 - alpha) upsample(low) + alpha high      alpha: 0 -> 1 over gen.fade_epochs

and the real images are shown at the same resolution and blend. The schedule
(``schedule``: gen.stable_epochs at 4x4; per later resolution gen.fade_epochs of fade-in, then
gen.stable_epochs; the last resolution to the end) is a function of the global step, so a
resumed run continues it. The discriminator grows mirror-wise (fromRGB per resolution, the same
fade-in, a minibatch-stddev channel at 4x4). Losses: the non-saturating GAN loss of
``generative.gan`` with the R1 penalty on real images,

    L_D = -E[log D(x)] - E[log(1 - D(G(z)))] + gamma/2 E[||grad_x D(x)||^2]     L_G = -E[log D(G(z))]

(R1 every gen.r1_every discriminator steps, weighted r1_every times: StyleGAN2's lazy regularisation.)
With gen.mode_seeking = lambda > 0 the generator's loss adds MSGAN's mode-seeking term (Mao et al.
2019), pairing the first half of a generated batch with the second,

    L_ms = 1 / mean_i( ||G(z_i) - G(z'_i)||_1 / ||z_i - z'_i||_1 )          L_G <- L_G + lambda L_ms

which pushes the images of distant latents apart (AdaIN normalises each sample on its own, so
nothing else in the generator keeps samples apart as the batch norm of a DCGAN generator does).

All weights use the equalised learning rate (N(0, 1) init, scaled by 1/sqrt(fan_in) at run time).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from generative.config import progressive_resolutions
from generative.gan import minimax_d_loss, non_saturating_g_loss
from generative.nets import ema_copy, unwrap

MAPPING_LR_MUL = 0.01  # the mapping network's learning-rate multiplier (StyleGAN)
LRELU = 0.2
BETAS = (0.0, 0.99)  # Adam betas of StyleGAN / ProGAN


# --- the equations -------------------------------------------------------------------------------
def adain(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """AdaIN(x, y) = y_s (x - mu(x)) / sigma(x) + y_b, per sample and channel; scale, bias: (B, C)."""
    return scale[:, :, None, None] * F.instance_norm(x, eps=eps) + bias[:, :, None, None]


def mapping(layers: nn.ModuleList, z: torch.Tensor) -> torch.Tensor:
    """w = f(z / rms(z)): pixel norm of the latent, then the fully connected layers with leaky ReLU."""
    w = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
    for layer in layers:
        w = F.leaky_relu(layer(w), LRELU) * math.sqrt(2)
    return w


def mix_styles(w1: torch.Tensor, w2: torch.Tensor, crossover: torch.Tensor | int, num_layers: int) -> torch.Tensor:
    """Per-layer styles (B, L, D): w1 for layers l < crossover, w2 for l >= crossover (per sample)."""
    c = torch.as_tensor(crossover, device=w1.device).reshape(-1, 1)
    take_first = torch.arange(num_layers, device=w1.device)[None, :] < c  # (B or 1, L)
    return torch.where(take_first[..., None], w1[:, None, :], w2[:, None, :])


def style_mixing(n: int, num_layers: int, active_layers: int, prob: float, device) -> torch.Tensor:
    """The crossover per sample: with probability ``prob`` uniform in [1, active_layers), else
    ``num_layers`` (one w for every layer). ``active_layers``: the layers of the current resolution."""
    cross = torch.full((n,), num_layers, dtype=torch.long, device=device)
    if active_layers > 1 and prob > 0:
        mix = torch.rand(n, device=device) < prob
        cross[mix] = torch.randint(1, active_layers, (int(mix.sum()),), device=device)
    return cross


def fade_in(low: torch.Tensor, high: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) upsample(low) + alpha high: ProGAN's blend while a resolution is added."""
    return torch.lerp(F.interpolate(low, scale_factor=2, mode="nearest"), high, float(alpha))


def output_image(rgb: torch.Tensor) -> torch.Tensor:
    """image = tanh(toRGB(x)), in (-1, 1) as the DCGAN generator's. Digits are mostly background
    at exactly -1; after instance-normalised features a linear toRGB only approaches it (grey,
    blotchy backgrounds that the discriminator tells apart at once)."""
    return torch.tanh(rgb)


def schedule(epoch: float, num_levels: int, fade_epochs: float, stable_epochs: float) -> tuple[int, float]:
    """(level, alpha) at a (fractional) epoch: level 0 (4x4) trains ``stable_epochs``; each later
    level fades in over ``fade_epochs`` (alpha 0 -> 1), then trains ``stable_epochs`` at alpha 1;
    the last level trains to the end."""
    if num_levels == 1 or epoch < stable_epochs:
        return 0, 1.0
    t = epoch - stable_epochs
    period = fade_epochs + stable_epochs
    level = num_levels - 1 if period <= 0 else min(1 + int(t // period), num_levels - 1)
    t_in = t - (level - 1) * period
    return level, (min(1.0, t_in / fade_epochs) if fade_epochs > 0 else 1.0)


def r1_penalty(critic, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(D(x), E[||grad_x D(x)||^2]) on real images (Mescheder et al. 2018). Pass the plain critic
    (DDP does not support double backward)."""
    real = real.detach().requires_grad_(True)
    scores = critic(real)
    (grads,) = torch.autograd.grad(scores.sum(), real, create_graph=True)
    return scores, grads.pow(2).flatten(1).sum(1).mean()


def mode_seeking_loss(images: torch.Tensor, z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MSGAN's L_ms = 1 / mean_i(||G(z_i) - G(z'_i)||_1 / ||z_i - z'_i||_1) (mean absolute
    differences), the first half of the batch paired with the second."""
    half = len(images) // 2
    d_img = (images[:half] - images[half:2 * half]).abs().flatten(1).mean(1)
    d_z = (z[:half] - z[half:2 * half]).abs().flatten(1).mean(1)
    return 1.0 / ((d_img / d_z.clamp_min(eps)).mean() + eps)


def downsample_reals(x: torch.Tensor, resolution: int, level: int, alpha: float) -> torch.Tensor:
    """Real images at the current resolution, blended with the previous one while it fades in."""
    x = F.adaptive_avg_pool2d(x, resolution) if x.shape[-1] != resolution else x
    return fade_in(F.avg_pool2d(x, 2), x, alpha) if level > 0 and alpha < 1 else x


# --- layers with the equalised learning rate ------------------------------------------------------
class EqualLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), bias_init / lr_mul))
        self.scale, self.lr_mul = lr_mul / math.sqrt(in_dim), lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale, self.pad = 1 / math.sqrt(c_in * k * k), k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.pad)


def _touch_all(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """out + 0 * (every parameter): the layers of resolutions not in use still get (zero)
    gradients, so DistributedDataParallel's reducer sees every parameter in every step."""
    return out + 0.0 * sum(p.sum() for p in module.parameters())


# --- networks ------------------------------------------------------------------------------------
def channels_per_level(base: int, num_levels: int) -> list[int]:
    """Feature maps per resolution: ``base`` at 4x4 and 8x8, halved for each doubling after that."""
    return [max(8, base // 2 ** max(0, k - 1)) for k in range(num_levels)]


class StyleLayer(nn.Module):
    """[upsample] -> conv3x3 (none on the constant) -> + B * noise -> + b, lrelu -> adain(., A(w))."""

    def __init__(self, c_in: int, c_out: int, style_dim: int, up: bool = False, conv: bool = True):
        super().__init__()
        self.up = up
        self.conv = EqualConv2d(c_in, c_out, 3) if conv else None
        self.noise_strength = nn.Parameter(torch.zeros(c_out))  # B: a learned per-channel scale
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.affine = EqualLinear(style_dim, 2 * c_out)  # A: w -> (y_s, y_b)
        with torch.no_grad():
            self.affine.bias[:c_out].fill_(1.0)  # y_s starts at 1

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if self.conv is not None:
            x = self.conv(x)
        if noise is None:
            noise = torch.randn(len(x), 1, *x.shape[-2:], device=x.device)
        x = x + self.noise_strength[None, :, None, None] * noise
        x = F.leaky_relu(x + self.bias[None, :, None, None], LRELU) * math.sqrt(2)
        scale, bias = self.affine(w).chunk(2, dim=1)
        return adain(x, scale, bias)


class Generator(nn.Module):
    """z -> w (mapping) -> styles per layer -> synthesis from a constant 4x4, grown to ``size``."""

    def __init__(self, z_dim: int, style_dim: int, mapping_layers: int, resolutions: list[int], base: int,
                 out_channels: int = 1):
        super().__init__()
        self.resolutions = resolutions
        self.num_layers = 2 * len(resolutions)
        ch = channels_per_level(base, len(resolutions))
        self.mapping = nn.ModuleList(EqualLinear(z_dim if i == 0 else style_dim, style_dim, lr_mul=MAPPING_LR_MUL)
                                     for i in range(mapping_layers))
        self.const = nn.Parameter(torch.ones(1, ch[0], 4, 4))
        self.blocks = nn.ModuleList()
        for k, c in enumerate(ch):
            first = StyleLayer(c, c, style_dim, conv=False) if k == 0 else StyleLayer(ch[k - 1], c, style_dim, up=True)
            self.blocks.append(nn.ModuleList([first, StyleLayer(c, c, style_dim)]))
        self.to_rgb = nn.ModuleList(EqualConv2d(c, out_channels, 1) for c in ch)
        # (level, alpha x 1e6) of the last training step: integers, so an EMA copy keeps them exact
        self.register_buffer("stage", torch.tensor([len(resolutions) - 1, 1_000_000], dtype=torch.long))

    def styles(self, z: torch.Tensor, z2: torch.Tensor | None = None,
               crossover: torch.Tensor | int | None = None) -> torch.Tensor:
        w = mapping(self.mapping, z)
        if z2 is None:
            return w[:, None, :].expand(-1, self.num_layers, -1)
        return mix_styles(w, mapping(self.mapping, z2), crossover, self.num_layers)

    def synthesis(self, ws: torch.Tensor, level: int, alpha: float,
                  noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        x = self.const.expand(len(ws), -1, -1, -1)
        low = None
        for k in range(level + 1):
            for j, layer in enumerate(self.blocks[k]):
                x = layer(x, ws[:, 2 * k + j], None if noise is None else noise[2 * k + j])
            if k == level - 1 and alpha < 1:
                low = self.to_rgb[k](x)
        img = self.to_rgb[level](x)
        return output_image(fade_in(low, img, alpha) if low is not None else img)

    def forward(self, z: torch.Tensor, level: int, alpha: float, z2: torch.Tensor | None = None,
                crossover: torch.Tensor | None = None) -> torch.Tensor:
        return _touch_all(self, self.synthesis(self.styles(z, z2, crossover), level, alpha))


class MinibatchStd(nn.Module):
    """Appends the mean standard deviation over groups of ``group`` samples as one more channel."""

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = math.gcd(self.group, b)
        std = x.reshape(g, -1, c, h, w).var(0, unbiased=False).add(1e-8).sqrt().mean((1, 2, 3))  # (b // g,)
        return torch.cat([x, std.repeat(g)[:, None, None, None].expand(b, 1, h, w)], dim=1)


class Discriminator(nn.Module):
    """The mirror image: fromRGB per resolution, two convs and a 2x average pool per block,
    minibatch stddev and two linear layers at 4x4; the same fade-in as the generator."""

    def __init__(self, resolutions: list[int], base: int, in_channels: int = 1):
        super().__init__()
        ch = channels_per_level(base, len(resolutions))
        self.from_rgb = nn.ModuleList(EqualConv2d(in_channels, c, 1) for c in ch)
        self.blocks = nn.ModuleList([nn.Identity()] + [
            nn.ModuleList([EqualConv2d(ch[k], ch[k], 3), EqualConv2d(ch[k], ch[k - 1], 3)]) for k in range(1, len(ch))])
        self.mbstd = MinibatchStd()
        self.final_conv = EqualConv2d(ch[0] + 1, ch[0], 3)
        self.fc = EqualLinear(ch[0] * 16, ch[0])
        self.out = EqualLinear(ch[0], 1)

    @staticmethod
    def _act(x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, LRELU) * math.sqrt(2)

    def _block(self, k: int, x: torch.Tensor) -> torch.Tensor:
        for conv in self.blocks[k]:
            x = self._act(conv(x))
        return F.avg_pool2d(x, 2)

    def forward(self, img: torch.Tensor, level: int, alpha: float) -> torch.Tensor:
        x = self._act(self.from_rgb[level](img))
        if level > 0:
            x = self._block(level, x)
            if alpha < 1:
                x = torch.lerp(self._act(self.from_rgb[level - 1](F.avg_pool2d(img, 2))), x, float(alpha))
            for k in range(level - 1, 0, -1):
                x = self._block(k, x)
        x = self._act(self.final_conv(self.mbstd(x)))
        x = self.out(self._act(self.fc(x.flatten(1))))
        return _touch_all(self, x.squeeze(-1))


# --- the model the training loop drives ----------------------------------------------------------
class StyleGANModel:
    """stylegan: mapping network, AdaIN styles, noise inputs, style mixing, progressive growing."""

    def __init__(self, cfg, data_shape: tuple[int, ...], num_classes: int, device: torch.device):
        self.cfg, self.device = cfg, device
        self.num_classes = 0  # unconditional
        self.size, channels = data_shape[-1], data_shape[0]
        self.resolutions = progressive_resolutions(cfg.resolutions, self.size)
        self.z_dim = cfg.z_dim
        base = cfg.hidden // 2
        self.G = Generator(self.z_dim, cfg.style_dim, cfg.mapping_layers, self.resolutions, base, channels).to(device)
        self.D = Discriminator(self.resolutions, base, channels).to(device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.learning_rate, betas=BETAS)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.learning_rate, betas=BETAS)
        self.G_ema = ema_copy(self.G, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.steps_per_epoch: int | None = None  # from set_total_steps; else from the data set size

    # --- schedule ------------------------------------------------------------------------------
    def set_total_steps(self, total: int) -> None:
        self.steps_per_epoch = max(1, total // max(1, self.cfg.epochs))

    def _steps_per_epoch(self) -> int:
        if self.steps_per_epoch is None:  # driven without the training loop: one worker's epoch
            from generative.data import digits

            self.steps_per_epoch = max(1, len(digits(self.size, "train")[0]) // self.cfg.batch_size)
        return self.steps_per_epoch

    def stage_at(self, it: int) -> tuple[int, float]:
        """(level, alpha) at global step ``it``: the schedule is a function of the step alone."""
        return schedule(it / self._steps_per_epoch(), len(self.resolutions), self.cfg.fade_epochs,
                        self.cfg.stable_epochs)

    def trained_stage(self) -> tuple[int, float]:
        level, alpha = unwrap(self.G).stage.tolist()
        return int(level), alpha / 1e6

    # --- protocol ------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D, **({"G_ema": self.G_ema} if self.G_ema is not None else {})}

    def trainable(self) -> set[str]:
        return {"G", "D"}

    def set_modules(self, mods: dict[str, nn.Module]) -> None:
        self.G, self.D = mods["G"], mods["D"]
        self.G_ema = mods.get("G_ema", self.G_ema)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_g, "D": self.opt_d}

    def _latents(self, n: int, level: int) -> dict[str, Any]:
        z = torch.randn(n, self.z_dim, device=self.device)
        if self.cfg.style_mixing <= 0:
            return {"z": z}
        cross = style_mixing(n, 2 * len(self.resolutions), 2 * (level + 1), self.cfg.style_mixing, self.device)
        return {"z": z, "z2": torch.randn(n, self.z_dim, device=self.device), "crossover": cross}

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, it: int) -> dict[str, Any]:
        cfg, n = self.cfg, len(x)
        level, alpha = self.stage_at(it)
        unwrap(self.G).stage.copy_(torch.tensor([level, round(alpha * 1e6)]))
        real = downsample_reals(x * 2 - 1, self.resolutions[level], level, alpha)
        # discriminator: non-saturating loss + gamma/2 R1 on the reals
        with torch.no_grad():
            fake = self.G(level=level, alpha=alpha, **self._latents(n, level))
        fake_s = self.D(fake, level, alpha)
        out: dict[str, Any] = {}
        if cfg.r1_gamma > 0 and it % cfg.r1_every == 0:  # lazy: every k-th step, weighted k times
            real_s, r1 = r1_penalty(lambda v: unwrap(self.D)(v, level, alpha), real)
            d_loss = minimax_d_loss(real_s, fake_s) + cfg.r1_gamma / 2 * cfg.r1_every * r1
            out["r1_penalty"] = float(r1.detach())
        else:
            real_s = self.D(real, level, alpha)
            d_loss = minimax_d_loss(real_s, fake_s)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        out.update(d_loss=float(d_loss.detach()), d_real=float(torch.sigmoid(real_s.detach()).mean()),
                   d_fake=float(torch.sigmoid(fake_s.detach()).mean()))
        # generator
        latents = self._latents(n, level)
        fake = self.G(level=level, alpha=alpha, **latents)
        g_loss = non_saturating_g_loss(self.D(fake, level, alpha))
        if cfg.mode_seeking > 0 and n >= 2:
            ms = mode_seeking_loss(fake, latents["z"])
            g_loss = g_loss + cfg.mode_seeking * ms
            out["mode_seeking"] = float(ms.detach())
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()  # also fills D's grads; they are cleared before D's next step
        self.opt_g.step()
        if self.G_ema is not None:
            self.G_ema.update_parameters(unwrap(self.G))
        out.update(g_loss=float(g_loss.detach()), resolution=float(self.resolutions[level]), fade_alpha=alpha)
        return out

    # --- sampling ------------------------------------------------------------------------------
    def _sampler(self) -> Generator:
        return self.G_ema.module if self.G_ema is not None else unwrap(self.G)

    def _to_image(self, x: torch.Tensor) -> torch.Tensor:
        """Model space [-1, 1] at the trained resolution -> [0, 1] at the data size."""
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=self.size, mode="nearest")
        return ((x + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        level, alpha = self.trained_stage()
        G = self._sampler()
        return self._to_image(G.synthesis(G.styles(torch.randn(n, self.z_dim, device=self.device)), level, alpha))

    @torch.no_grad()
    def mixing_grid(self, n_a: int = 6, n_b: int = 6, crossover: int | None = None) -> torch.Tensor:
        """(n_a + 1) x (n_b + 1) images: row 0 the B sources, column 0 the A sources, cell (i, j)
        the coarse styles (layers < crossover: the lower half of the resolutions) of A_i with the
        fine styles of B_j. One noise draw for the whole grid, so only the styles differ."""
        level, alpha = self.trained_stage()
        G = self._sampler()
        L = G.num_layers
        crossover = 2 * max(1, len(self.resolutions) // 2) if crossover is None else crossover
        w_a = mapping(G.mapping, torch.randn(n_a, self.z_dim, device=self.device))
        w_b = mapping(G.mapping, torch.randn(n_b, self.z_dim, device=self.device))
        noise = [torch.randn(1, 1, r, r, device=self.device) for r in self.resolutions for _ in range(2)]

        def render(ws: torch.Tensor) -> torch.Tensor:
            return self._to_image(G.synthesis(ws, level, alpha, [v.expand(len(ws), -1, -1, -1) for v in noise]))

        single = lambda w: w[:, None, :].expand(-1, L, -1)  # noqa: E731
        a_imgs, b_imgs = render(single(w_a)), render(single(w_b))
        mixed = render(mix_styles(w_a.repeat_interleave(n_b, 0), w_b.repeat(n_a, 1), crossover, L))
        blank = torch.ones_like(a_imgs[:1])
        rows = [torch.cat([blank, b_imgs])]
        rows += [torch.cat([a_imgs[i : i + 1], mixed[i * n_b : (i + 1) * n_b]]) for i in range(n_a)]
        return torch.cat(rows)

    def evaluate(self, cfg, run_dir: Path, seed: int) -> tuple[dict[str, Any], list[Path]]:
        """Samples at full resolution: digits metrics, a sample grid and a style-mixing grid."""
        from generative.metrics import digits_metrics
        from generative.plots import save_image_grid

        torch.manual_seed(seed)
        plots = Path(run_dir) / "plots"
        samples = self.sample(cfg.eval_samples)
        metrics = digits_metrics(samples, None, self.size)
        level, alpha = self.trained_stage()
        tag = f"stylegan on {cfg.data} (trained at {self.resolutions[level]}x{self.resolutions[level]}, alpha {alpha:.2f})"
        paths = [save_image_grid(samples[: cfg.grid_samples], plots / "samples.png", nrow=8, title=tag)]
        n_b = 6
        paths.append(save_image_grid(self.mixing_grid(6, n_b), plots / "style_mixing.png", nrow=n_b + 1,
                                     title="rows: coarse styles of A (left), columns: fine styles of B (top)"))
        return metrics, paths
