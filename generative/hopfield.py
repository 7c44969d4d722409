"""Hopfield network (Hopfield 1982): an associative memory of binary +-1 patterns.

    patterns      xi^mu in {-1, +1}^N, mu = 1..P  (N = gen.image_size^2 pixels of binarised digits)
    Hebbian       W = (1/N) sum_mu xi^mu xi^mu^T,  W_ii = 0                       (hebbian_weights)
    pseudo-inverse W = X^T (X X^T)^-1 X, X = [xi^1 .. xi^P]^T (P x N),  W_ii = 0  (pseudo_inverse_weights)
                  (the projection onto the span of the patterns, Personnaz et al. 1985; Kanter &
                  Sompolinsky 1987 zero its diagonal: stored patterns stay fixed points while the
                  diagonal is below 1, and the basins of attraction grow)
    energy        E(s) = -1/2 s^T W s                                              (energy)
    async update  pick unit i (each sweep visits all N units in a random order):
                  h_i = sum_j W_ij s_j,  s_i <- sign(h_i)  (s_i kept when h_i = 0)   (async_step)
                  with W symmetric and W_ii = 0, Delta E = -(s_i' - s_i) h_i <= 0: the energy never rises
    recall        async sweeps from a corrupted pattern until a sweep changes nothing (a fixed
                  point) or gen.hopfield_sweeps sweeps                              (recall)
    capacity      random patterns, Hebbian rule: recall breaks down near P ~ 0.138 N (Amit, Gutfreund
                  & Sompolinsky 1985). Binarised digits are strongly correlated (mostly background),
                  so the Hebbian rule holds far fewer of them; the pseudo-inverse rule removes the
                  correlations and stores them (up to P < N, with basins that shrink as P/N grows)

Storage is one-shot, not gradient descent. In the Ray Train loop, ``train_step`` keeps the first
gen.hopfield_patterns *distinct* binarised images it sees (the loop shuffles each epoch with a
seeded generator, so the memory is a seeded random subset of the training digits) in the buffer
``patterns`` and, for the Hebbian rule, adds their outer products to the buffer ``W`` as they
arrive (the pseudo-inverse rule recomputes ``W`` from the patterns held so far). Once the memory
is full the remaining batches and epochs change nothing. Everything is a buffer of one module,
so the checkpoint holds the memory. With several Train workers each worker fills its memory from
its own shard; the checkpoint is rank 0's.

``evaluate`` measures recall from gen.corruption flipped pixels, counts any asynchronous step that
raised the energy (there must be none), and draws the capacity curve for random patterns and for
binarised digits under both rules.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

# A recall counts when the fixed point lies within this fraction of N pixels of the stored
# pattern (2%: 5 of 256 pixels). Hebbian retrieval states of random patterns carry a few wrong
# bits near capacity (~1.6% at P = 0.138 N), so exact equality would hide the classical curve.
RECALL_TOLERANCE = 0.02
RECALL_TRIALS = 4  # corrupted copies of each stored pattern in evaluate()
CAPACITY_LOADS = (0.02, 0.05, 0.08, 0.10, 0.12, 0.14, 0.17, 0.20, 0.25, 0.30)  # P/N on evaluate()'s curve
RULES = ("hebbian", "pseudo-inverse")


# --- the equations ---------------------------------------------------------------------------
def to_spins(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (already binarised, or thresholded here at 0.5) -> (B, N) states in {-1, +1}."""
    return torch.where(x.flatten(1) > 0.5, 1.0, -1.0)


def to_images(s: torch.Tensor, size: int) -> torch.Tensor:
    """(B, N) states in {-1, +1} -> (B, 1, size, size) images in {0, 1}."""
    return ((s + 1) / 2).view(len(s), 1, size, size)


def hebbian_weights(patterns: torch.Tensor) -> torch.Tensor:
    """W = (1/N) sum_mu xi^mu xi^mu^T with a zero diagonal; ``patterns`` is (P, N) in {-1, +1}."""
    n = patterns.shape[1]
    w = patterns.t() @ patterns / n
    return w.fill_diagonal_(0.0)


def pseudo_inverse_weights(patterns: torch.Tensor) -> torch.Tensor:
    """W = X^T (X X^T)^+ X (projection onto the patterns' span) with a zero diagonal."""
    x = patterns.double()
    w = (x.t() @ torch.linalg.pinv(x @ x.t(), hermitian=True) @ x).to(patterns.dtype)
    return w.fill_diagonal_(0.0)


def weights(patterns: torch.Tensor, rule: str) -> torch.Tensor:
    """The weight matrix of ``rule`` (hebbian | pseudo-inverse)."""
    if rule == "hebbian":
        return hebbian_weights(patterns)
    if rule == "pseudo-inverse":
        return pseudo_inverse_weights(patterns)
    raise ValueError(f"unknown Hopfield rule {rule!r}; use hebbian or pseudo-inverse")


def energy(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """E(s) = -1/2 s^T W s for each row of ``s`` (B, N), or (R, B, N) with W (R, N, N)."""
    return -0.5 * ((s @ w) * s).sum(dim=-1)


def async_step(s: torch.Tensor, w: torch.Tensor, i: int, field: torch.Tensor | None = None) -> torch.Tensor:
    """One asynchronous update of unit ``i`` in every row of ``s`` (in place): s_i <- sign(h_i),
    h_i = sum_j W_ij s_j, the unit kept when h_i = 0. ``field`` = s @ W, when given, is the
    current local field of every unit and is kept up to date (the cheap way to run many steps).
    ``s`` is (B, N) with W (N, N), or (R, B, N) with R weight matrices (R, N, N) run side by side.
    Returns the change of s_i (0 or +-2 per row)."""
    h = field[..., i] if field is not None else (s @ w[..., :, i, None])[..., 0]
    new = torch.where(h > 0, 1.0, torch.where(h < 0, -1.0, s[..., i]))
    ds = new - s[..., i]
    s[..., i] = new
    if field is not None:
        field += ds[..., None] * w[..., i, None, :]
    return ds


def is_fixed_point(s: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Per row: no unit would change under async_step, i.e. s_i h_i >= 0 for every i (h = s W)."""
    return (s * field >= 0).all(dim=-1)


def recall(s0: torch.Tensor, w: torch.Tensor, max_sweeps: int = 20, generator: torch.Generator | None = None,
           track_energy: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """Asynchronous sweeps (all N units, a fresh random order each sweep) from the states ``s0``
    (B, N) until every row is at a fixed point (no update would change a unit, so a further
    sweep would change nothing) or ``max_sweeps``. Returns (final states, info): ``sweeps`` run, ``converged`` (bool per row),
    and with ``track_energy`` the count of single steps where ``energy`` (recomputed from scratch
    after every step) rose above its value before the step (``energy_increases``, must be 0)."""
    s = s0.clone().float()
    n = s.shape[-1]
    field = s @ w
    increases, sweeps = 0, 0
    w64 = w.double() if track_energy else None  # energy in float64: a rise of any size is seen
    e = energy(s.double(), w64) if track_energy else None
    converged = is_fixed_point(s, field)
    while not converged.all() and sweeps < max_sweeps:
        sweeps += 1
        for i in torch.randperm(n, generator=generator).tolist():
            async_step(s, w, i, field)
            if track_energy:
                e_new = energy(s.double(), w64)
                increases += int((e_new > e + 1e-9 * (1 + e.abs())).sum())
                e = e_new
        converged = is_fixed_point(s, field)
    info: dict[str, Any] = {"sweeps": sweeps, "converged": converged}
    if track_energy:
        info["energy_increases"] = increases
    return s, info


def corrupt(patterns: torch.Tensor, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each row with exactly round(fraction * N) of its units flipped, at random positions."""
    p, n = patterns.shape
    flips = int(round(fraction * n))
    order = torch.rand(p, n, generator=generator).argsort(dim=1)[:, :flips]
    out = patterns.clone()
    out.scatter_(1, order, -out.gather(1, order))
    return out


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Number of differing units per row."""
    return (a != b).sum(dim=-1)


def recall_rate(patterns: torch.Tensor, w: torch.Tensor, corruption: float, trials: int = RECALL_TRIALS,
                max_sweeps: int = 20, seed: int = 0, tolerance: float = RECALL_TOLERANCE,
                track_energy: bool = False) -> dict[str, Any]:
    """Recall of every stored pattern (``patterns`` (P, N) with W (N, N), or R memories side by
    side: (R, P, N) with (R, N, N)) from ``trials`` corrupted copies each: ``recall_rate`` (the
    fraction ending within tolerance * N units of their pattern; one value per memory),
    ``recall_rate_exact`` (ending on it exactly) and the states (``corrupted``, ``recalled``)."""
    g = torch.Generator().manual_seed(seed)
    target = torch.cat([patterns] * trials, dim=-2)
    start = corrupt(target.reshape(-1, target.shape[-1]), corruption, g).view_as(target)
    final, info = recall(start, w, max_sweeps, g, track_energy)
    d = hamming(final, target)
    rate = (d <= tolerance * patterns.shape[-1]).float().mean(dim=-1)
    exact = (d == 0).float().mean(dim=-1)
    return {"recall_rate": rate.tolist() if rate.dim() else float(rate),
            "recall_rate_exact": exact.tolist() if exact.dim() else float(exact),
            "corrupted": start, "recalled": final, **info}


def random_patterns(p: int, n: int, seed: int = 0) -> torch.Tensor:
    """P independent uniform +-1 patterns of N units (the classical capacity analysis)."""
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(p, n, generator=g) < 0.5, -1.0, 1.0)


def distinct(patterns: torch.Tensor, p: int) -> torch.Tensor:
    """The first ``p`` distinct rows of ``patterns``, in order."""
    keep: list[torch.Tensor] = []
    seen: set[bytes] = set()
    for row in patterns:
        key = (row > 0).numpy().tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(row)
            if len(keep) == p:
                break
    return torch.stack(keep) if keep else patterns[:0]


def capacity_curve(digit_patterns: torch.Tensor, corruption: float, loads=CAPACITY_LOADS, trials: int = 2,
                   max_sweeps: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """Recall rate against load P/N for random +-1 patterns and for ``digit_patterns`` (distinct
    binarised digits, (M, N)), both rules: one row per (load, patterns, rule). At each load the
    four memories recall side by side (one batched run)."""
    n = digit_patterns.shape[1]
    rows = []
    for alpha in loads:
        p = max(1, int(round(alpha * n)))
        kinds = {"random": random_patterns(p, n, seed + p)}
        if len(digit_patterns) >= p:
            kinds["digits"] = digit_patterns[:p]
        combos = [(kind, rule) for kind in kinds for rule in RULES]
        pats = torch.stack([kinds[kind] for kind, _ in combos])
        w = torch.stack([weights(kinds[kind], rule) for kind, rule in combos])
        r = recall_rate(pats, w, corruption, trials, max_sweeps, seed)
        for j, (kind, rule) in enumerate(combos):
            rows.append({"patterns_per_neuron": p / n, "patterns": p, "kind": kind, "rule": rule,
                         "recall_rate": r["recall_rate"][j], "recall_rate_exact": r["recall_rate_exact"][j]})
    return rows


def capacity(rows: list[dict[str, Any]], kind: str, rule: str, threshold: float = 0.95) -> float:
    """The largest load on the curve up to which every point recalls >= ``threshold`` (0 if none)."""
    best = 0.0
    for r in sorted((r for r in rows if r["kind"] == kind and r["rule"] == rule), key=lambda r: r["patterns"]):
        if r["recall_rate"] < threshold:
            break
        best = r["patterns_per_neuron"]
    return best


# --- the model -------------------------------------------------------------------------------
class HopfieldMemory(nn.Module):
    """The memory as buffers (so checkpoints hold it): patterns (P, N), how many are held, and W."""

    def __init__(self, capacity: int, n: int):
        super().__init__()
        self.register_buffer("patterns", torch.zeros(capacity, n))
        self.register_buffer("stored", torch.zeros((), dtype=torch.long))
        self.register_buffer("W", torch.zeros(n, n))

    def held(self) -> torch.Tensor:
        return self.patterns[: int(self.stored)]


class HopfieldModel:
    """``--model hopfield``: store gen.hopfield_patterns binarised digits, recall them."""

    def __init__(self, cfg, data_shape: tuple[int, ...], num_classes: int, device: torch.device):
        self.cfg, self.device, self.num_classes = cfg, torch.device("cpu"), 0
        self.size = data_shape[-1]
        self.n = self.size * self.size
        self.memory = HopfieldMemory(cfg.hopfield_patterns, self.n)
        self._keys: set[bytes] | None = None

    def modules(self) -> dict[str, nn.Module]:
        return {"hopfield": self.memory}

    def set_modules(self, mods: dict[str, nn.Module]) -> None:
        self.memory = mods["hopfield"]
        self._keys = None

    def optimizers(self) -> dict:
        return {}  # storage is one-shot: no gradient, no optimiser

    def trainable(self) -> set[str]:
        return set()  # nothing for DDP to synchronise

    @torch.no_grad()
    def store(self, xi: torch.Tensor) -> int:
        """Add the new distinct rows of ``xi`` (B, N) in {-1, +1} while the memory has room;
        returns how many were added."""
        m = self.memory
        if self._keys is None:
            self._keys = {(row > 0).numpy().tobytes() for row in m.held()}
        added = []
        for row in xi:
            if int(m.stored) + len(added) >= len(m.patterns):
                break
            key = (row > 0).numpy().tobytes()
            if key not in self._keys:
                self._keys.add(key)
                added.append(row)
        if not added:
            return 0
        new = torch.stack(added)
        start = int(m.stored)
        m.patterns[start : start + len(new)] = new
        m.stored.fill_(start + len(new))
        if self.cfg.hopfield_rule == "hebbian":  # accumulate the outer products as they arrive
            m.W += new.t() @ new / self.n
            m.W.fill_diagonal_(0.0)
        else:
            m.W.copy_(pseudo_inverse_weights(m.held()))
        return len(new)

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, it: int) -> dict[str, Any]:
        self.store(to_spins(x.cpu()))
        return {"patterns_stored": float(self.memory.stored)}

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Recall from uniformly random states: the attractors (stored patterns, their mixtures
        and inversions) as images in {0, 1}."""
        s0 = torch.where(torch.rand(n, self.n) < 0.5, -1.0, 1.0)
        s, _ = recall(s0, self.memory.W, self.cfg.hopfield_sweeps)
        return to_images(s, self.size)

    @torch.no_grad()
    def evaluate(self, cfg, run_dir: Path, seed: int = 0) -> tuple[dict[str, Any], list[Path]]:
        from generative import data as gdata
        from generative.plots import save_image_grid

        plots = Path(run_dir) / "plots"
        stored = self.memory.held()
        w = self.memory.W
        r = recall_rate(stored, w, cfg.corruption, RECALL_TRIALS, cfg.hopfield_sweeps, seed, track_energy=True)
        fixed, _ = recall(stored, w, 1)
        out: dict[str, Any] = {
            "recall_rate": r["recall_rate"], "recall_rate_exact": r["recall_rate_exact"],
            "stored_fixed_points": float((hamming(fixed, stored) == 0).float().mean()),
            "patterns_stored": len(stored), "patterns_per_neuron": len(stored) / self.n,
            "energy_increases": r["energy_increases"],
        }
        k = min(10, len(stored))
        grid = torch.cat([stored[:k], r["corrupted"][:k], r["recalled"][:k]])
        paths = [save_image_grid(to_images(grid, self.size), plots / "recall.png", nrow=k,
                                 title=f"stored / {cfg.corruption:.0%} corrupted / recalled ({cfg.hopfield_rule}, "
                                       f"P/N={len(stored) / self.n:.3f}, recall {r['recall_rate']:.2f})")]
        paths.append(save_image_grid(self.sample(min(cfg.grid_samples, 32)), plots / "samples.png",
                                     title="attractors reached from random states"))
        digits = distinct(to_spins(gdata.digits(cfg.image_size, "train")[0]), int(max(CAPACITY_LOADS) * self.n) + 1)
        rows = capacity_curve(digits, cfg.corruption, loads=CAPACITY_LOADS, seed=seed)
        for kind in ("random", "digits"):
            for rule in RULES:
                out[f"capacity_{kind}_{rule.replace('-', '_')}"] = capacity(rows, kind, rule)
        paths.append(save_capacity_plot(rows, plots / "capacity.png", cfg.corruption, self.n))
        return out, paths


def save_capacity_plot(rows: list[dict[str, Any]], path: str | Path, corruption: float, n: int) -> Path:
    """Recall rate against P/N: random patterns and binarised digits, Hebbian and pseudo-inverse."""
    from generative.plots import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    styles = {"hebbian": "-", "pseudo-inverse": "--"}
    colours = {"random": "tab:blue", "digits": "tab:orange"}
    for kind in ("random", "digits"):
        for rule in RULES:
            pts = sorted((r["patterns_per_neuron"], r["recall_rate"]) for r in rows
                         if r["kind"] == kind and r["rule"] == rule)
            if pts:
                ax.plot(*zip(*pts), styles[rule], marker="o", ms=3, color=colours[kind],
                        label=f"{kind} patterns, {rule}")
    ax.axvline(0.138, color="grey", lw=0.8, ls=":")
    ax.text(0.14, 0.5, "0.138 N", fontsize=7, color="grey")
    ax.set_xlabel("patterns stored per neuron P/N")
    ax.set_ylabel(f"recall rate (within {math.floor(RECALL_TOLERANCE * n)} px)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"Hopfield capacity, N={n}, {corruption:.0%} of the pixels flipped", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return _save(plt, fig, path)
