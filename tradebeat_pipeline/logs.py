"""Per-component rotating log files that several processes can write at once (no Dagster inside).

Every component logs under `tradebeat.<component>` (heartbeat, backfill, symbols, exchange, store,
sandbox, cli, ...). `install()` adds, once per process, a handler on the `tradebeat` logger that writes
each record to `LOG_DIR/<component>.log`. Inside Dagster runs the same records also reach the run's
log in the UI (the `tradebeat` logger is one of the instance's managed Python loggers).

Several processes write the same files (daemon, webserver, run workers, CLI), so `RotatingFileHandler`
is not enough: one process would rotate a file another still appends to, and lines get lost. Each file
is a `concurrent_log_handler.ConcurrentRotatingFileHandler`: the size check, the rotation and the
append all happen under an exclusive lock on a `.__<component>.lock` file beside it, and a writer whose
open file was rotated away by another process reopens the path first. Lines are never split or
interleaved, and none is lost to a rotation. Here stay only what the library does not do: routing by
component, the UTC line format, redaction, and rotating *before* a line would overflow the file.
"""

import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from concurrent_log_handler import ConcurrentRotatingFileHandler

from tradebeat_pipeline.settings import default

ROOT = "tradebeat"
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
DEFAULT_LEVEL: str = default("log_level")
DEFAULT_MAX_BYTES: int = default("log_max_bytes")
DEFAULT_BACKUPS: int = default("log_backups")

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


class LineFormatter(UtcFormatter):
    """One record as one line of the file: secrets redacted, continuation lines indented (so a
    traceback still reads as one record and every new line starts with a timestamp)."""

    def __init__(self, redactor: Redact) -> None:
        super().__init__(FORMAT)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.redact(super().format(record)).replace("\n", "\n    ")


class ComponentFile(ConcurrentRotatingFileHandler):
    """One component's file; rotates before a line would push it past `maxBytes`.

    The library rotates once the file has *reached* maxBytes, so files overshoot by a line; the
    size is read at the path (under the lock), so a rotation by another process is seen.
    """

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.maxBytes <= 0:
            return False
        try:
            size = os.path.getsize(self.baseFilename)
        except FileNotFoundError:
            return False
        line = len(self.format(record).encode("utf-8", "replace")) + len(self.terminator)
        return bool(size) and size + line > self.maxBytes


class ComponentFiles(logging.Handler):
    """Routes `tradebeat.<component>[.more]` records to `<dir>/<component>.log`."""

    def __init__(self, directory: Path, max_bytes: int, backups: int, secrets: Iterable[str | None]) -> None:
        super().__init__()
        self.directory = directory
        self.max_bytes = max_bytes
        self.backups = backups
        self.setFormatter(LineFormatter(Redact(secrets)))
        self._files: dict[str, ComponentFile] = {}

    @property
    def redactor(self) -> Redact:
        assert isinstance(self.formatter, LineFormatter)
        return self.formatter.redactor

    @redactor.setter
    def redactor(self, redactor: Redact) -> None:
        assert isinstance(self.formatter, LineFormatter)
        self.formatter.redactor = redactor  # the component files share this formatter

    def component(self, name: str) -> str:
        parts = name.split(".")
        return parts[1] if len(parts) > 1 and parts[0] == ROOT else "tradebeat"

    def emit(self, record: logging.LogRecord) -> None:
        # Called under this handler's lock (logging.Handler.handle), so `_files` needs no other.
        try:
            name = self.component(record.name)
            target = self._files.get(name)
            if target is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                target = ComponentFile(
                    str(self.directory / f"{name}.log"),
                    maxBytes=self.max_bytes,
                    backupCount=self.backups,
                    encoding="utf-8",
                    unicode_error_policy="replace",
                )
                target.setFormatter(self.formatter)
                self._files[name] = target
        except Exception:
            self.handleError(record)
            return
        target.emit(record)  # reports its own errors through handleError

    def close(self) -> None:
        """Close every component file (their descriptors and locks stay open between writes)."""
        self.acquire()
        try:
            for target in self._files.values():
                target.close()
            self._files.clear()
        finally:
            self.release()
        super().close()


def install(
    directory: Path,
    *,
    level: str = DEFAULT_LEVEL,
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
        handler.close()
