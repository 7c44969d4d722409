"""Latent diffusion (Rombach et al. 2022, the model behind Stable Diffusion): a DDPM trained in
the latent space of a frozen, separately trained autoencoder (here a ``gen`` VAE or cVAE run).

    encode        z_0 = s * mu_phi(x)      (gen.latent_source=mean)
                  z_0 = s * (mu_phi(x) + sigma_phi(x) eps)   (=sample: a draw from q(z|x), as SD does)
    scale factor  s = 1 / std(z)  over every entry of the training set's latents, so z_0 has unit
                  variance like the N(0, I) the diffusion ends in (SD's ``scale_factor`` 0.18215)
    L_simple      E_{t, z_0, eps} || eps - eps_theta(sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, t, c) ||^2
    guidance      eps = (1 + w) eps_theta(z_t, t, c) - w eps_theta(z_t, t, none)   (labels dropped
                  with probability gen.cond_drop in training)
    sample        z_T ~ N(0, I) -> T ancestral steps (Algorithm 2) -> x = sigmoid(D_phi(z_0 / s))

The schedule, ``q_sample``, ``epsilon_loss``, ``guided_epsilon`` and the sampling loop are
``generative.ddpm``'s. The noise network eps_theta is a residual MLP over the latent vector with
the time + class embedding (``generative.unet.TimeClassEmbedding``) added in every block.

The checkpoint is self-contained: besides eps_theta it holds the frozen autoencoder's weights,
its architecture (a small integer buffer) and the scale factor (buffers of one module), so
``reinforge gen sample`` decodes with exactly the weights the latents came from, even when the
autoencoder's run dir was moved, deleted, or trained further. ``gen.autoencoder`` records where
they were loaded from.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cluster.errors import ConfigError
from generative.ddpm import Schedule, descend, epsilon_loss, guided_samples
from generative.nets import ema_copy, one_hot, unwrap
from generative.unet import TimeClassEmbedding
from generative.vae import VAE, reparameterize

AUTOENCODERS = ("vae", "cvae")
TRAIN_HINT = ("train one with 'reinforge gen train --config gen-vae-autoencoder-digits' and pass "
              "--set gen.autoencoder=RUN_DIR")


# --- the equations -------------------------------------------------------------------------------
def scale_factor(latents: torch.Tensor) -> torch.Tensor:
    """s = 1 / std over every entry of the training latents (Stable Diffusion's scale factor)."""
    return 1.0 / latents.detach().flatten().std().clamp_min(1e-8)


def drop_labels(y: torch.Tensor, p: float, null_label: int) -> torch.Tensor:
    """Classifier-free guidance training: each label becomes the 'no label' token with probability p."""
    drop = torch.rand(len(y), device=y.device) < p
    return torch.where(drop, torch.full_like(y, null_label), y)


# --- networks ------------------------------------------------------------------------------------
class LatentBlock(nn.Module):
    """h + W2 silu(W1 silu(LN(h)) + E silu(emb)): a pre-norm residual MLP block with the embedding added."""

    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1, self.emb, self.fc2 = nn.Linear(hidden, hidden), nn.Linear(emb_dim, hidden), nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        r = self.fc1(F.silu(self.norm(h))) + self.emb(F.silu(emb))
        return h + self.fc2(F.silu(r))


class LatentDenoiser(nn.Module):
    """eps_theta(z_t, t, c) for latent vectors (B, z_dim); label index num_classes = no label."""

    def __init__(self, z_dim: int, hidden: int = 256, blocks: int = 4, emb_dim: int = 64, num_classes: int = 0):
        super().__init__()
        self.embed = TimeClassEmbedding(emb_dim, num_classes)
        self.inp = nn.Linear(z_dim, hidden)
        self.blocks = nn.ModuleList(LatentBlock(hidden, 4 * emb_dim) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, z_dim))

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, y)
        h = self.inp(z)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


class FrozenAutoencoder(nn.Module):
    """The autoencoder's VAE, never trained here (always in eval mode: its decoder has batch norm),
    plus buffers ``arch`` = (channels, size, z_dim, num_classes, hidden) and ``scale_factor``.

    ``load_state_dict`` rebuilds the VAE from the stored ``arch`` first, so a checkpoint loads
    into a placeholder built without the autoencoder's run dir."""

    def __init__(self, vae: VAE | None = None, arch: tuple[int, ...] = (1, 16, 1, 0, 16)):
        super().__init__()
        self.register_buffer("arch", torch.tensor(arch, dtype=torch.long))
        self.register_buffer("scale_factor", torch.tensor(1.0))
        self.vae = vae if vae is not None else self._build(arch)
        self.requires_grad_(False)
        self.train(False)

    @staticmethod
    def _build(arch) -> VAE:
        c, s, z, k, hidden = (int(a) for a in arch)
        return VAE((c, s, s), z, k, hidden)

    @property
    def z_dim(self) -> int:
        return int(self.arch[2])

    @property
    def num_classes(self) -> int:
        return int(self.arch[3])

    def train(self, mode: bool = True) -> FrozenAutoencoder:
        return super().train(False)  # frozen: batch-norm statistics stay as the autoencoder left them

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        arch = tuple(int(a) for a in state_dict["arch"])
        if arch != tuple(int(a) for a in self.arch):
            self.vae = self._build(arch).to(self.arch.device)
            self.arch = torch.tensor(arch, dtype=torch.long, device=self.arch.device)
            self.requires_grad_(False)
            self.train(False)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _cond(self, y: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        if y is None:  # a cVAE decodes with a label; unconditional latents get one of each in turn
            y = torch.arange(n, device=self.arch.device) % self.num_classes
        return one_hot(y, self.num_classes)

    @torch.no_grad()
    def latents(self, x: torch.Tensor, y: torch.Tensor | None = None, sample: bool = False) -> torch.Tensor:
        """Unscaled z: mu(x), or a draw z = mu + sigma eps from q(z|x)."""
        mu, logvar = self.vae.encode(x, self._cond(y, len(x)))
        return reparameterize(mu, logvar) if sample else mu

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None, sample: bool = False) -> torch.Tensor:
        """z_0 = s * z: the scaled latents the diffusion model learns."""
        return self.scale_factor * self.latents(x, y, sample)

    @torch.no_grad()
    def decode(self, z0: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x = sigmoid(D(z_0 / s)): images in [0, 1]."""
        return self.vae.mean(self.vae.decode(z0 / self.scale_factor, self._cond(y, len(z0))))


# --- the autoencoder run -------------------------------------------------------------------------
def check_autoencoder(cfg) -> None:
    """Refuse (ConfigError, one line) a gen.autoencoder that is empty, missing, not a generative
    run, not a vae/cvae run, or trained on other data or another image size."""
    from cluster.checkpoint import load_checkpoint
    from cluster.errors import CheckpointError

    if cfg.data != "digits":
        raise ConfigError(f"latent-ddpm decodes digit images through a VAE and {cfg.data!r} is not digits; "
                          "use --data digits")
    path = cfg.autoencoder
    if not path:
        raise ConfigError(f"latent-ddpm needs a trained autoencoder and gen.autoencoder is empty; {TRAIN_HINT}")
    where = f"gen.autoencoder={path}"
    if not Path(path).exists():
        raise ConfigError(f"{where} does not exist; {TRAIN_HINT}")
    try:
        state = load_checkpoint(path)["state"]
        ae = state["config"]
        model, data, size = ae["model"], ae["data"], ae["image_size"]
    except CheckpointError as exc:
        raise ConfigError(f"{where} holds no readable checkpoint ({exc}); {TRAIN_HINT}") from None
    except (KeyError, TypeError):
        raise ConfigError(f"{where} is not a 'reinforge gen train' run (no gen config in its checkpoint); "
                          f"{TRAIN_HINT}") from None
    if model not in AUTOENCODERS:
        raise ConfigError(f"{where} is a {model} run, not an autoencoder; pass the RUN_DIR of a vae or cvae run "
                          f"({TRAIN_HINT.split(' and ')[0]})")
    z_dim = ae.get("latent_dim") or 32  # generative.config.GenConfig.z_dim of a digits VAE
    if cfg.latent_dim and cfg.latent_dim != z_dim:
        raise ConfigError(f"gen.latent_dim={cfg.latent_dim} but {where} has {z_dim} latent dimensions; "
                          f"leave gen.latent_dim at 0 (it is taken from the autoencoder)")
    if (data, size) != (cfg.data, cfg.image_size):
        raise ConfigError(f"{where} was trained on {data} at image_size {size}, not {cfg.data} at "
                          f"{cfg.image_size}; train the autoencoder on the same data "
                          f"('reinforge gen train --model {model} --data {cfg.data}') or set gen.image_size={size}")


def load_autoencoder(path: str, device: torch.device) -> FrozenAutoencoder:
    """The trained VAE/cVAE of a run dir (its safetensors checkpoint, nothing unpickled), frozen.
    Built here rather than through ``generative.train.load_trained``, which imports every model
    (this one included): ``check_autoencoder`` has made sure it is a vae/cvae on digits."""
    from cluster.checkpoint import load_checkpoint
    from generative.config import GenConfig
    from generative.vae import VAEModel

    ckpt = load_checkpoint(path)
    cfg = GenConfig(**ckpt["state"]["config"])
    model = VAEModel(cfg, (1, cfg.image_size, cfg.image_size), 10 if cfg.data == "digits" else 0, torch.device("cpu"))
    for k, m in model.modules().items():
        unwrap(m).load_state_dict(ckpt["model"][k])
    vae = unwrap(model.net)
    arch = (1, cfg.image_size, vae.z_dim, vae.num_classes, cfg.hidden)
    return FrozenAutoencoder(vae, arch).to(device)


# --- the model the training loop drives ----------------------------------------------------------
class LatentDDPMModel:
    """Class-conditional (classifier-free guided) DDPM on a frozen VAE's scaled latents, on digits."""

    def __init__(self, cfg, data_shape: tuple[int, ...], num_classes: int, device: torch.device):
        self.cfg, self.device, self.data_shape = cfg, device, data_shape
        self.num_classes = num_classes if cfg.class_conditional else 0
        self.sched = Schedule.make(cfg.schedule, cfg.timesteps, cfg.beta_start, cfg.beta_end)
        if cfg.autoencoder and Path(cfg.autoencoder).exists():
            self.ae = load_autoencoder(cfg.autoencoder, device)
            self.ae.scale_factor.fill_(float(scale_factor(self.training_latents())))
            cfg.latent_dim = self.ae.z_dim  # recorded in the checkpoint's config: it sizes eps_theta on reload
        else:  # loading a checkpoint (restore fills in the stored autoencoder) or a bare object
            self.ae = FrozenAutoencoder(arch=(data_shape[0], data_shape[-1], cfg.z_dim, 0, 16)).to(device)
        self.net: nn.Module = LatentDenoiser(self.ae.z_dim, cfg.hidden, num_classes=self.num_classes).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate)
        self.net_ema = ema_copy(self.net, cfg.ema_decay) if cfg.ema_decay > 0 else None

    @torch.no_grad()
    def training_latents(self) -> torch.Tensor:
        """Unscaled latents of the whole training split (mu, or one draw each from q(z|x))."""
        from generative import data as gdata

        train = gdata.load(self.cfg, "train")
        return self.ae.latents(train.x.to(self.device), train.y.to(self.device),
                               sample=self.cfg.latent_source == "sample")

    def modules(self) -> dict[str, nn.Module]:
        return {"eps": self.net, "autoencoder": self.ae,
                **({"eps_ema": self.net_ema} if self.net_ema is not None else {})}

    def trainable(self) -> set[str]:
        return {"eps"}  # the autoencoder is frozen and the averaged copy gets no gradients

    def set_modules(self, mods: dict[str, nn.Module]) -> None:
        self.net, self.ae = mods["eps"], mods["autoencoder"]
        self.net_ema = mods.get("eps_ema", self.net_ema)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"eps": self.opt}

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, it: int) -> dict[str, Any]:
        z0 = self.ae.encode(x, y, sample=self.cfg.latent_source == "sample")
        cond = drop_labels(y, self.cfg.cond_drop, self.num_classes) if self.num_classes and y is not None else None
        loss = epsilon_loss(self.net, self.sched, z0, cond)  # L_simple on the scaled latents
        return {"loss": descend(loss, self.opt, self.net, self.net_ema)}

    @torch.no_grad()
    def sample_latents(self, n: int, labels: torch.Tensor | None = None,
                       guidance: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scaled z_0 from the reverse process, the labels used)."""
        w = self.cfg.guidance_scale if guidance is None else guidance
        z, y = guided_samples(self.net, self.net_ema, self.sched, (n, self.ae.z_dim), self.device, self.num_classes,
                              labels, w, self.cfg.sampling_variance)
        return z, y if y is not None else labels

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, guidance: float | None = None) -> torch.Tensor:
        z, y = self.sample_latents(n, labels, guidance)
        return self.ae.decode(z, None if y is None else y.to(self.device)).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """D(E(x)) through the scaled latents: the best the diffusion model can reach."""
        return self.ae.decode(self.ae.encode(x, y), y)

    # --- evaluation (generative.evaluate.evaluate calls this instead of its generic path) -------
    @torch.no_grad()
    def evaluate(self, cfg, run_dir: Path, seed: int = 0) -> tuple[dict[str, Any], list[Path]]:
        from generative import data as gdata
        from generative.metrics import digits_metrics
        from generative.plots import save_image_grid

        torch.manual_seed(seed)
        n = cfg.eval_samples
        labels = torch.arange(n) % 10 if self.num_classes else None
        t0 = time.perf_counter()
        samples = self.sample(n, labels).cpu()
        seconds = time.perf_counter() - t0
        out: dict[str, Any] = dict(digits_metrics(samples, labels, cfg.image_size))
        out["sampling_s_per_image"] = seconds / n
        test = gdata.load(cfg, "test")
        recon = self.reconstruct(test.x.to(self.device), test.y.to(self.device)).cpu()
        out["reconstruction_frechet_distance"] = digits_metrics(recon, None, cfg.image_size)[
            "classifier_frechet_distance"]
        rows = max(1, min(cfg.grid_samples, n) // 10)
        grid = self.sample(rows * 10, torch.arange(rows * 10) % 10).cpu()  # row r, column c: class c
        tag = f"latent-ddpm on {cfg.data} (w = {cfg.guidance_scale:g})" if self.num_classes else \
            f"latent-ddpm on {cfg.data}"
        paths = [save_image_grid(grid, Path(run_dir) / "plots" / "samples.png", nrow=10, title=tag),
                 save_image_grid(torch.cat([test.x[:10], recon[:10]]), Path(run_dir) / "plots" / "reconstructions.png",
                                 nrow=10, title="held-out digits (top) and their autoencoder reconstructions")]
        return out, paths
