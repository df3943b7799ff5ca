"""A progress bar on stderr (rank 0 only): redrawn in place on a terminal, a line per 10% otherwise."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, title: str, enabled: bool = True, stream=None):
        self.total, self.title, self.enabled = max(1, total), title, enabled
        self.stream = stream or sys.stderr
        self.done, self.start, self._last_decile = 0, time.perf_counter(), -1
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def step(self, label: str = "", n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        if not self.enabled:
            return
        frac = self.done / self.total
        elapsed = time.perf_counter() - self.start
        width = 30
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        line = f"{self.title} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s {label}"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
            if self.done == self.total:
                self.stream.write("\n")
        elif int(frac * 10) > self._last_decile or self.done == self.total:
            self._last_decile = int(frac * 10)
            self.stream.write(line + "\n")
        self.stream.flush()
