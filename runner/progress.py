"""A live progress line per stage and the final summary table."""
from __future__ import annotations

import sys
import time


class Line:
    """On a terminal: one line rewritten in place. Elsewhere (CI, logs): a line at most every `every` s."""

    def __init__(self, label: str, stream=sys.stderr, every: float = 15.0):
        self.label, self.stream, self.every = label, stream, every
        self.tty = stream.isatty()
        self.t0 = time.time()
        self.last = 0.0
        self.width = 0

    def _elapsed(self) -> str:
        s = int(time.time() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"

    def update(self, msg: str) -> None:
        text = f"{self.label} {self._elapsed()} {msg}"
        now = time.time()
        if self.tty:
            text = text[:max(20, _columns() - 1)]
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
            self.stream.flush()
        elif now - self.last >= self.every:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last = now

    def done(self, msg: str) -> None:
        text = f"{self.label} {msg}"
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width) + "\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _columns() -> int:
    import shutil
    return shutil.get_terminal_size((120, 20)).columns


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)
