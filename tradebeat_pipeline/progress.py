"""Progress of long work (candles fetched, rows exported), reported to whoever listens in this process.

Library code calls `advance(n)` after each page; nothing listens by default, so a run launched by
the daemon pays one function call per page. The CLI listens while it runs a backfill, a repair or an
export in its own process, and shows a bar on a terminal (rich) or plain lines otherwise.
"""

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:
    from rich.progress import TaskID


class Listener(Protocol):
    def started(self, what: str, total: int) -> None: ...
    def advanced(self, done: int) -> None: ...
    def finished(self) -> None: ...


_listener: Listener | None = None
_lock = threading.Lock()
_done = 0


def begin(what: str, total: int) -> None:
    """Long work of `total` units starts (candles to fetch, rows to write)."""
    global _done
    with _lock:
        _done = 0
        if _listener is not None:
            _listener.started(what, total)


def advance(units: int) -> None:
    """`units` more are done."""
    global _done
    with _lock:
        _done += units
        if _listener is not None:
            _listener.advanced(_done)


@contextmanager
def shown(out: TextIO | None = None) -> Iterator[None]:
    """Show progress while the block runs: a bar on a terminal, a line per tenth otherwise."""
    global _listener
    stream = out or sys.stderr
    listener: Listener = _Bar(stream) if stream.isatty() else _Lines(stream)
    with _lock:
        _listener = listener
    try:
        yield
    finally:
        with _lock:
            _listener = None
        listener.finished()


class _Lines:
    """Plain lines for logs and pipes: one at every tenth of the work."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.what, self.total, self.next = out, "", 0, 0

    def started(self, what: str, total: int) -> None:
        self.what, self.total, self.next = what, total, max(1, total // 10)

    def advanced(self, done: int) -> None:
        if self.total and done >= self.next:
            print(f"{self.what}: {min(done, self.total):,} of {self.total:,}", file=self.out, flush=True)
            self.next = done + max(1, self.total // 10)

    def finished(self) -> None:
        return None


class _Bar:
    """A rich progress bar on a terminal."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console
        from rich.progress import Progress

        self.progress = Progress(console=Console(file=out), transient=True)
        self.task: TaskID | None = None

    def started(self, what: str, total: int) -> None:
        if self.task is None:
            self.progress.start()
        else:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(what, total=total)

    def advanced(self, done: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=done)

    def finished(self) -> None:
        if self.task is not None:
            self.progress.stop()
