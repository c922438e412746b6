"""Per-component rotating log files that several processes can write at once (no Dagster inside).

Every component logs under `tradebeat.<component>` (heartbeat, backfill, symbols, exchange, store,
sandbox, cli, ...). `install()` adds, once per process, a handler on the `tradebeat` logger that writes
each record to `LOG_DIR/<component>.log`. Inside Dagster runs the same records also reach the run's
log in the UI (the `tradebeat` logger is one of the instance's managed Python loggers).

Several processes write the same files (daemon, webserver, run workers, CLI), so `RotatingFileHandler`
is not enough: one process would rotate a file another still appends to, and lines get lost. Here
every write happens under an exclusive `flock` on `<file>.lock`: the writer checks the size of the file
*at the path* (not of its own, possibly rotated, descriptor), rotates if the next line would not fit,
reopens if another process rotated, and appends the whole line with one `write` on an `O_APPEND`
descriptor. Lines are never split or interleaved, and none is lost to a rotation.
"""

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

ROOT = "tradebeat"
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5

_installed: dict[str, "ComponentFiles"] = {}
_install_lock = threading.Lock()


class UtcFormatter(logging.Formatter):
    """`2026-11-27T07:30:00.123Z INFO tradebeat.heartbeat message`."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class Redact(logging.Filter):
    """Replace secret values wherever they appear in a line (message, arguments, traceback)."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class LockedRotatingFile:
    """One log file shared by many processes: rotation and appends under an exclusive flock."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock_path = path.with_name(path.name + ".lock")
        self._thread_lock = threading.Lock()

    def write(self, line: str) -> None:
        data = line.encode("utf-8", "backslashreplace")
        with self._thread_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                try:
                    size = self.path.stat().st_size
                except FileNotFoundError:
                    size = 0
                if size and size + len(data) > self.max_bytes:
                    self._rotate()
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            finally:
                os.close(lock_fd)  # closing the descriptor releases the flock

    def _rotate(self) -> None:
        """x.log → x.log.1 → … → x.log.N (the oldest is dropped); called with the lock held."""
        if self.backups <= 0:
            self.path.unlink(missing_ok=True)
            return
        oldest = self.path.with_name(f"{self.path.name}.{self.backups}")
        oldest.unlink(missing_ok=True)
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                src.rename(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))


class ComponentFiles(logging.Handler):
    """Routes `tradebeat.<component>[.more]` records to `<dir>/<component>.log`."""

    def __init__(self, directory: Path, max_bytes: int, backups: int, secrets: Iterable[str | None]) -> None:
        super().__init__()
        self.directory = directory
        self.max_bytes = max_bytes
        self.backups = backups
        self.redactor = Redact(secrets)
        self.setFormatter(UtcFormatter(FORMAT))
        self._files: dict[str, LockedRotatingFile] = {}

    def component(self, name: str) -> str:
        parts = name.split(".")
        return parts[1] if len(parts) > 1 and parts[0] == ROOT else "tradebeat"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.redactor.redact(self.format(record)).replace("\n", "\n    ") + "\n"
            name = self.component(record.name)
            target = self._files.get(name)
            if target is None:
                target = self._files[name] = LockedRotatingFile(
                    self.directory / f"{name}.log", self.max_bytes, self.backups
                )
            target.write(line)
        except Exception:
            self.handleError(record)


def install(
    directory: Path,
    *,
    level: str = "INFO",
    max_bytes: int = DEFAULT_MAX_BYTES,
    backups: int = DEFAULT_BACKUPS,
    secrets: Iterable[str | None] = (),
) -> ComponentFiles:
    """Write tradebeat's log records to per-component files in `directory` (idempotent per process
    and directory), at `level`."""
    root = logging.getLogger(ROOT)
    root.setLevel(level)
    key = str(directory.resolve())
    with _install_lock:
        handler = _installed.get(key)
        if handler is None:
            handler = ComponentFiles(directory, max_bytes, backups, secrets)
            root.addHandler(handler)
            _installed[key] = handler
        else:
            handler.redactor = Redact([*handler.redactor.secrets, *secrets])
    return handler


def uninstall(directory: Path) -> None:
    """Stop writing to `directory` (tests, a process changing LOG_DIR)."""
    with _install_lock:
        handler = _installed.pop(str(directory.resolve()), None)
    if handler is not None:
        logging.getLogger(ROOT).removeHandler(handler)
