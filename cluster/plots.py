"""PNG plots of logged metrics (matplotlib, headless)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def plot_metrics(
    rows: list[dict[str, Any]],
    path: str | os.PathLike,
    y: list[str] | str,
    x: str = "step",
    title: str | None = None,
) -> Path | None:
    """Plot one or more metric curves against ``x``; returns the PNG path (None if no data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ys = [y] if isinstance(y, str) else list(y)
    series = {}
    for key in ys:
        pts = [(r[x], r[key]) for r in rows if x in r and isinstance(r.get(key), (int, float))]
        if pts:
            series[key] = pts
    if not series:
        return None
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 2.6 * len(series)), squeeze=False, sharex=True)
    for ax, (key, pts) in zip(axes[:, 0], series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(x)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
