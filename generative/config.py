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
    "byol": ("projection_std",), "simsiam": ("projection_std",),
    "cyclegan": ("cycle_loss", "identity_loss"),
    "stylegan": ("resolution", "fade_alpha", "r1_penalty", "mode_seeking"),
    "latent-ddpm": (),
    "hopfield": ("patterns_stored",),
    "rbm": ("reconstruction_error", "free_energy_gap"),
}
MODEL_EVAL_METRICS: dict[str, tuple[str, ...]] = {
    # few-label linear probe (all four self-supervised encoders report it; see generative/contrastive.py)
    "byol": ("linear_probe_accuracy_raw", *(f"probe_accuracy_{k}_per_class{sfx}"
                                            for sfx in ("", "_untrained", "_raw") for k in (1, 5, 10))),
    "simsiam": (),
    "cyclegan": ("class_kept_a_to_b", "class_kept_b_to_a", "target_domain_a_to_b", "target_domain_b_to_a",
                 "cycle_error_a", "cycle_error_b", "class_b_classifier_accuracy", "domain_classifier_accuracy"),
    "stylegan": (),
    "latent-ddpm": ("sampling_s_per_image", "reconstruction_frechet_distance"),
    "hopfield": ("recall_rate", "recall_rate_exact", "stored_fixed_points", "patterns_stored", "patterns_per_neuron",
                 "energy_increases", "capacity_random_hebbian", "capacity_random_pseudo_inverse",
                 "capacity_digits_hebbian", "capacity_digits_pseudo_inverse"),
    "rbm": ("reconstruction_error", "reconstruction_error_untrained", "linear_probe_accuracy_raw"),
}
UNET_DOWNSAMPLING = 4  # two 2x downsamplings in generative.unet.UNet


def progressive_resolutions(spec: str | list[int] | tuple[int, ...], image_size: int) -> list[int]:
    """gen.resolutions ("4,8,16" or [4, 8, 16]) as a list; it must run 4, 8, ... up to the data size."""
    want = [4 * 2**i for i in range(max(0, (image_size // 4).bit_length()))]
    fix = f"use gen.resolutions={','.join(map(str, want))}"
    try:
        res = [int(v) for v in str(spec).strip("[]() ").replace(" ", "").split(",") if v] \
            if isinstance(spec, str) else [int(v) for v in spec]
    except ValueError:
        raise ConfigError(f"gen.resolutions={spec!r} is not a list of integers; {fix}") from None
    if res != want:
        raise ConfigError(f"gen.resolutions={spec!r} must start at 4, double at each step and end at "
                          f"gen.image_size={image_size}; {fix}")
    return res


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
    predictor_hidden: int = 128  # width of the predictor q (BYOL) / h (SimSiam): Linear-BN-ReLU-Linear
    probe_draws: int = 5  # self-supervised encoders on digits: random label draws averaged by the few-label probe
    # ---- CycleGAN (generative/cyclegan.py) ----
    cycle_weight: float = 10.0  # lambda of ||F(G(a)) - a||_1 + ||G(F(b)) - b||_1
    identity_weight: float = 0.0  # weight of ||G(b) - b||_1 + ||F(a) - a||_1 (Zhu et al.: 0.5 x cycle; 0 = off)
    residual_blocks: int = 3  # ResNet blocks in each generator, at half resolution
    # ---- style-based generator (generative/stylegan.py) ----
    style_dim: int = 64  # w, the mapping network's output (z is gen.latent_dim, 64 by default for images)
    mapping_layers: int = 4  # fully connected layers of the mapping network z -> w
    resolutions: str | list[int] = "4,8,16"  # progressive growing: 4, 8, ... up to gen.image_size ("4,8,16" or [4, 8, 16])
    fade_epochs: int = 3  # epochs over which each new resolution fades in (alpha 0 -> 1)
    stable_epochs: int = 3  # epochs at each resolution once faded in (the last one trains to the end)
    style_mixing: float = 0.9  # probability that a generated batch mixes two w's at a random crossover layer
    r1_gamma: float = 10.0  # R1 penalty gamma/2 E||grad D(x)||^2 on real images (0 = off)
    r1_every: int = 4  # R1 on every k-th discriminator step, weighted k times (lazy regularisation)
    mode_seeking: float = 0.0  # stylegan: weight of MSGAN's mode-seeking term in the generator's loss (0 = off)
    # ---- latent diffusion (generative/latent_ddpm.py) ----
    autoencoder: str = ""  # latent-ddpm: RUN_DIR of a 'gen train --model vae|cvae --data digits' run (frozen)
    latent_source: Literal["mean", "sample"] = "mean"  # latent-ddpm: z = mu(x), or a draw from q(z|x) each step
    # ---- Hopfield network (generative/hopfield.py) and RBM (generative/rbm.py) ----
    binarize: bool = False  # threshold images at 0.5 (hopfield and rbm need binary units: digits are grey)
    hopfield_rule: Literal["hebbian", "pseudo-inverse"] = "hebbian"  # W = (1/N) sum xi xi^T, or the projection rule
    hopfield_patterns: int = 20  # distinct binarised images stored (P; P/N = 0.078 at 16x16)
    hopfield_sweeps: int = 20  # most asynchronous sweeps (N single-unit updates each) per recall
    corruption: float = 0.1  # fraction of a stored pattern's pixels flipped before recall
    cd_k: int = 1  # RBM: Gibbs steps of contrastive divergence CD-k (its hidden units: gen.hidden)
    persistent_cd: bool = False  # RBM: negative chains persist across updates (PCD, Tieleman 2008)
    gibbs_steps: int = 1000  # RBM: Gibbs steps of the chains that draw samples
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
        # Hopfield network and RBM: binary units, so binarised digits; their sizes and rates
        if self.model in ("hopfield", "rbm"):
            if self.data != "digits":
                raise ConfigError(f"{self.model} has binary units over image pixels and {self.data!r} holds no "
                                  "such images; use --data digits --set gen.binarize=true")
            if not self.binarize:
                raise ConfigError(f"{self.model} needs binary units and digits are grey levels in [0, 1]; "
                                  "set gen.binarize=true (pixels thresholded at 0.5)")
        elif self.binarize:
            raise ConfigError(f"gen.binarize is read by hopfield and rbm only; drop it for {self.model!r}")
        # every key's range is checked whatever the model (a wrong value is wrong before it is read)
        check_ranges("gen", self, {"hopfield_patterns": (">= 1", "distinct images stored, e.g. 20"),
                                   "hopfield_sweeps": ">= 1", "corruption": "[0, 0.5]",
                                   "cd_k": (">= 1", "1 = CD-1"), "gibbs_steps": ">= 1"})
        # latent diffusion: gen.autoencoder (a file) is checked by the gen pipeline's preflight,
        # generative.latent_ddpm.check_autoencoder, before the run dir or Ray starts
        # BYOL / SimSiam: the predictor's width; the few-label probe's draws
        check_ranges("gen", self, {"predictor_hidden": (">= 1", "width of the predictor MLP, e.g. 128"),
                                   "probe_draws": (">= 1", "random label draws per few-label probe, e.g. 5")})
        # style-based generator: its sizes and the progressive-growing schedule 4, 8, ..., gen.image_size
        if self.model == "stylegan":
            if self.data != "digits":
                raise ConfigError(f"stylegan generates images and {self.data!r} holds none it can grow; use --data digits")
            progressive_resolutions(self.resolutions, self.image_size)
        check_ranges("gen", self, {"style_dim": ">= 1", "mapping_layers": ">= 1", "fade_epochs": ">= 0",
                                   "stable_epochs": ">= 0", "style_mixing": "[0, 1]",
                                   "r1_gamma": (">= 0", "0 = no R1 penalty"), "r1_every": ">= 1",
                                   "mode_seeking": (">= 0", "0 = off")})
        # CycleGAN: the loss weights and the generators' depth
        check_ranges("gen", self, {"cycle_weight": (">= 0", "lambda of the cycle loss; 10 in Zhu et al."),
                                   "identity_weight": (">= 0", "0 = no identity loss"),
                                   "residual_blocks": ">= 0"})
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
