"""The generative pipeline's own config: one plain dataclass, validated on construction.

``pipelines/gen_pipeline.py`` composes it into the experiment (``gen:`` section of a preset).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from cluster.errors import ConfigError
from cluster.run_config import check_ranges

MODELS = ("gan", "minimax-gan", "wgan", "wgan-gp", "cgan", "vae", "cvae", "ddpm", "simclr", "moco",
          "byol", "simsiam", "cyclegan", "stylegan", "latent-ddpm", "hopfield", "rbm")
DATASETS = ("ring8", "grid25", "digits", "atari-frames", "digit-domains")
LABELLED = {"digits"}
IMAGE_DATA = {"digits", "atari-frames"}

Model = Literal["gan", "minimax-gan", "wgan", "wgan-gp", "cgan", "vae", "cvae", "ddpm", "simclr", "moco",
                "byol", "simsiam", "cyclegan", "stylegan", "latent-ddpm", "hopfield", "rbm"]
Data = Literal["ring8", "grid25", "digits", "atari-frames", "digit-domains"]

# What each model needs from its data: labels (conditional models), images (self-supervised).
NEEDS_LABELS = {"cgan", "cvae"}
NEEDS_IMAGES = {"simclr", "moco", "byol", "simsiam"}
# Models that learn an encoder and have nothing to sample (``gen sample`` refuses them).
ENCODER_ONLY = {"simclr", "moco", "byol", "simsiam"}
# Models whose ``data`` must be the two unpaired image domains (and only they may use it).
NEEDS_TWO_DOMAINS = {"cyclegan"}

# Metric names each model reports beyond the shared ones (gen_pipeline's vocabulary):
# per-epoch rows, and the final evaluation (also logged with the ``eval/`` prefix).
MODEL_ROW_METRICS: dict[str, tuple[str, ...]] = {
    "byol": (), "simsiam": (),
    "cyclegan": ("cycle_loss", "identity_loss"),
    "stylegan": ("resolution", "fade_alpha"),
    "latent-ddpm": (),
    "hopfield": ("patterns_stored",),
    "rbm": ("reconstruction_error", "free_energy_gap"),
}
MODEL_EVAL_METRICS: dict[str, tuple[str, ...]] = {
    "byol": (), "simsiam": (),
    "cyclegan": ("class_kept_a_to_b", "class_kept_b_to_a", "target_domain_a_to_b", "target_domain_b_to_a",
                 "cycle_error_a", "cycle_error_b"),
    "stylegan": (),
    "latent-ddpm": ("sampling_s_per_image",),
    "hopfield": ("recall_rate", "patterns_per_neuron", "energy_increases"),
    "rbm": ("reconstruction_error", "linear_probe_accuracy_raw"),
}
UNET_DOWNSAMPLING = 4  # two 2x downsamplings in generative.unet.UNet


@dataclass
class GenConfig:
    model: Model = "wgan-gp"
    data: Data = "ring8"
    workers: int = 1  # Ray Train workers (0 = in-process, for unit tests and debugging)
    use_gpu: bool = False  # one GPU per Train worker
    max_failures: int = 1  # Ray Train FailureConfig: restarts of the worker group from the last checkpoint
    epochs: int = 10
    batch_size: int = 256  # per worker
    learning_rate: float = 2e-4
    dataset_size: int = 20_000  # points drawn for ring8/grid25 (fixed dataset, seeded)
    image_size: int = 16  # digits are padded/upsampled from 8x8 to this (16 or 32)
    hidden: int = 128  # width of MLPs (2-D) / base channels of CNNs (images: hidden // 2)
    latent_dim: int = 0  # 0: a sensible default per model and data (2-D: 2 for VAE, 8 for GAN; images: 32 / 64)
    # GAN family
    critic_steps: int = 1  # discriminator/critic steps per generator step (WGANs: 5 is classic)
    gp_weight: float = 10.0  # WGAN-GP lambda
    clip_value: float = 0.01  # WGAN weight clipping
    lr_decay: Literal["none", "linear"] = "none"  # GANs: learning rate decays linearly to 0 over the run
    ema_decay: float = 0.0  # GANs and DDPM: sample from an exponential moving average of G / eps (0 = off)
    # VAE family
    beta: float = 1.0  # weight of KL(q(z|x) || N(0, I))
    # DDPM
    timesteps: int = 200
    schedule: Literal["linear", "cosine"] = "linear"
    beta_start: float = 1e-4  # linear schedule endpoints (scaled by 1000/timesteps as in improved-DDPM)
    beta_end: float = 0.02
    sampling_variance: Literal["beta", "posterior"] = "posterior"  # sigma_t^2 in Algorithm 2
    clip_denoised: bool = False  # images: clip the predicted x0 to [-1, 1] at every step (Ho et al.'s code)
    class_conditional: bool = True  # DDPM on labelled data: class embedding + classifier-free guidance
    cond_drop: float = 0.1  # probability of dropping the label in training (classifier-free guidance)
    guidance_scale: float = 2.0  # w in eps = (1 + w) eps(x, c) - w eps(x)
    cross_attention: bool = False  # condition through cross-attention on the class token instead of adding it
    # contrastive
    temperature: float = 0.2  # NT-Xent / InfoNCE temperature
    projection_dim: int = 64
    moco_momentum: float = 0.99  # EMA of the online encoder: MoCo's key encoder and BYOL's target
    moco_queue: int = 256  # keep well below the data set size, or older keys of the same image act as negatives
    # ---- BYOL / SimSiam (generative/contrastive.py) ----
    # ---- CycleGAN (generative/cyclegan.py) ----
    # ---- style-based generator (generative/stylegan.py) ----
    # ---- latent diffusion (generative/latent_ddpm.py) ----
    # ---- Hopfield network (generative/hopfield.py) and RBM (generative/rbm.py) ----
    # evaluation / output
    eval_samples: int = 2500  # samples for the mode / digits metrics
    grid_samples: int = 64  # images in the PNG sample grid
    atari_game: str = "ALE/Pong-v5"
    atari_frames: int = 2000  # frame stacks recorded for the atari-frames dataset
    log_every: int = 1  # epochs between reports (each report carries a checkpoint)

    def validate(self) -> None:
        if self.model in NEEDS_LABELS and self.data not in LABELLED:
            raise ConfigError(
                f"model {self.model!r} is class-conditional but data {self.data!r} has no labels; "
                f"use --data digits or an unconditional model ({'gan' if self.model == 'cgan' else 'vae'})"
            )
        if self.model in NEEDS_IMAGES and self.data not in IMAGE_DATA:
            raise ConfigError(
                f"model {self.model!r} learns image encoders with image augmentations; "
                f"use --data digits or atari-frames, not {self.data!r}"
            )
        if self.data == "atari-frames" and self.model not in ("vae", *sorted(ENCODER_ONLY)):
            raise ConfigError(
                f"atari-frames trains encoders for the RL torso; use --model vae, "
                f"{', '.join(sorted(ENCODER_ONLY))}, not {self.model!r}"
            )
        if self.model in NEEDS_TWO_DOMAINS and self.data != "digit-domains":
            raise ConfigError(
                f"{self.model} translates between two unpaired image domains and {self.data!r} has one; "
                "use --data digit-domains"
            )
        if self.data == "digit-domains" and self.model not in NEEDS_TWO_DOMAINS:
            raise ConfigError(f"digit-domains holds two unpaired domains for cyclegan; use --data digits "
                              f"for {self.model!r}")
        # ---- model-specific checks (one block per model; see the section markers above) ----
        if self.data == "digits" and self.model == "ddpm" and self.image_size % UNET_DOWNSAMPLING:
            raise ConfigError(
                f"gen.image_size={self.image_size} is not divisible by the U-Net's downsampling "
                f"({UNET_DOWNSAMPLING}); use 16 or 32"
            )
        if self.image_size not in (16, 32):
            raise ConfigError(f"gen.image_size={self.image_size} must be 16 or 32 (digits are padded to one of them)")
        check_ranges("gen", self, {
            **dict.fromkeys(("epochs", "batch_size", "dataset_size", "timesteps", "eval_samples", "grid_samples",
                             "hidden", "critic_steps", "log_every", "atari_frames", "projection_dim"), ">= 1"),
            "workers": (">= 0", "0: in-process"), "max_failures": ">= 0",
            "latent_dim": (">= 0", "0: a default per model and data"),
            "learning_rate": "> 0", "temperature": "> 0", "beta": ">= 0",
            "gp_weight": ">= 0", "clip_value": "> 0", "guidance_scale": (">= 0", "0: no guidance"),
            "ema_decay": ("[0, 1)", "0 = no weight averaging; e.g. 0.999"), "cond_drop": "[0, 1)",
            "moco_momentum": "(0, 1)", "moco_queue": (">= 1", "keys kept as negatives"),
            "beta_start": "(0, 1)", "beta_end": "(0, 1)",
        })
        if self.schedule == "linear" and not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError("gen.beta_start < gen.beta_end must both lie in (0, 1)")

    # --- derived ---------------------------------------------------------------------------
    @property
    def is_2d(self) -> bool:
        return self.data in ("ring8", "grid25")

    @property
    def conditional(self) -> bool:
        return self.model in NEEDS_LABELS or (self.model == "ddpm" and self.class_conditional and self.data in LABELLED)

    @property
    def z_dim(self) -> int:
        if self.latent_dim:
            return self.latent_dim
        if self.is_2d:
            return 2 if self.model in ("vae", "cvae") else 8
        return 32 if self.model in ("vae", "cvae") else 64

    def to_dict(self) -> dict:
        return asdict(self)
