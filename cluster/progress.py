"""One progress display for all long work: a tqdm bar with its rate and headline metrics on a
terminal, plain periodic lines when stderr is not one (a log file, a Ray job's output), so a
run sent to a file still says how far it got.

    with progress(total=1_000_000, desc="PPO", unit="step", initial=0) as bar:
        bar.update(2048, episode_return=12.5)
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

PLAIN_EVERY_S = 30.0  # seconds between plain lines when stderr is not a terminal


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


class Progress:
    def __init__(self, total: float | None, desc: str, unit: str = "it", initial: float = 0,
                 stream: TextIO | None = None, plain_every_s: float = PLAIN_EVERY_S, force_plain: bool = False):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = initial
        self.stream = stream or sys.stderr
        self.plain_every_s = plain_every_s
        self.postfix: dict[str, Any] = {}
        self.t0 = self.t_last = time.monotonic()
        self.n0 = initial
        self._bar = None
        self._closed = False
        is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        if is_tty and not force_plain:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit != "it",
                             dynamic_ncols=True, mininterval=0.5, file=self.stream)

    def rate(self) -> float:
        return (self.n - self.n0) / max(time.monotonic() - self.t0, 1e-9)

    def line(self) -> str:
        done = f"{_fmt(self.n)}/{_fmt(self.total)}" if self.total else _fmt(self.n)
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f" {k}={_fmt(v)}" for k, v in self.postfix.items())
        return f"{self.desc}: {done} {self.unit}{pct} {self.rate():.3g} {self.unit}/s{extra}"

    def update(self, n: float = 1, **postfix: Any) -> None:
        self.n += n
        if postfix:
            self.postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self.t_last >= self.plain_every_s:
            self.t_last = now
            print(self.line(), file=self.stream, flush=True)

    def set(self, n: float, **postfix: Any) -> None:
        """Move to absolute position ``n``."""
        self.update(n - self.n, **postfix)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        else:
            print(self.line() + " done", file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(total: float | None, desc: str, unit: str = "it", initial: float = 0, **kw: Any) -> Progress:
    return Progress(total, desc, unit=unit, initial=initial, **kw)
