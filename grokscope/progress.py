"""A tiny progress bar on stderr, for training and analysis (no dependency).

It draws only when enabled and the stream is a terminal, at most every ``min_interval`` seconds, so
logs, pipes and tests stay clean.

>>> import io
>>> with Progress(100, desc="train", stream=io.StringIO()) as bar:   # not a TTY: silent
...     bar.update(50, train_loss=0.5)
>>> bar.enabled
False
>>> format_fields({"epoch": 12, "test_acc": 0.98765, "train_loss": 1.5e-06})
'epoch 12  test_acc 0.988  train_loss 1.5e-06'
"""

import io
import sys
import time
from typing import TextIO


def format_fields(fields: dict) -> str:
    """``name value`` pairs, numbers to 3 significant digits."""
    parts = []
    for name, value in fields.items():
        if isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{name} {value}")
    return "  ".join(parts)


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """A one-line progress bar: ``desc [####----] n/total  fields  rate  eta``.

    Args:
        total: the count that means done (epochs, checkpoints...).
        desc: a short label in front of the bar.
        initial: where the count starts (a resumed run starts part-way).
        enabled: False silences the bar; None or True draw only when ``stream`` is a TTY.
        stream: where to draw (stderr by default).
        min_interval: the shortest time between redraws, in seconds.
    """

    def __init__(self, total: int, *, desc: str = "", initial: int = 0, enabled: bool | None = True,
                 stream: TextIO | io.TextIOBase | None = None, min_interval: float = 0.2, width: int = 24):
        self.total, self.desc, self.n, self.width = max(int(total), 0), desc, int(initial), width
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = enabled is not False and bool(isatty and isatty())
        self.min_interval = min_interval
        self.fields: dict = {}
        self._start_n, self._start = self.n, time.monotonic()
        self._last_draw = -float("inf")
        self._last_len = 0

    def update(self, n: int | None = None, **fields) -> None:
        """Move to count ``n`` (absolute; None keeps it) and replace the shown ``fields`` given."""
        if n is not None:
            self.n = int(n)
        self.fields.update(fields)
        if self.enabled and time.monotonic() - self._last_draw >= self.min_interval:
            self._draw()

    def _draw(self) -> None:
        now = time.monotonic()
        self._last_draw = now
        done = min(self.n / self.total, 1.0) if self.total else 1.0
        filled = int(done * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = now - self._start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        eta = f"eta {_format_seconds((self.total - self.n) / rate)}" if rate > 0 and self.n < self.total else ""
        parts = [self.desc, f"[{bar}] {self.n}/{self.total}", format_fields(self.fields),
                 f"{rate:.3g}/s" if rate else "", eta, _format_seconds(elapsed)]
        line = "  ".join(part for part in parts if part)
        self.stream.write("\r" + line + " " * max(self._last_len - len(line), 0))
        self.stream.flush()
        self._last_len = len(line)

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
            self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
