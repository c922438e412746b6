"""Environment → typed settings, in one place, read when a resource or the CLI starts.

Nothing here runs at import: callers ask for `Settings.load()` when they start, so a bad value stops
that start with a message naming the variable, and definitions still load without any environment.
"""

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from tradebeat_pipeline import logs

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_API_URL = "https://api.binance.com"
DEFAULT_DB_PATH = PROJECT_DIR / "data" / "tradebeat.sqlite"
DEFAULT_DAGSTER_HOME = PROJECT_DIR / "dagster_home"
DEFAULT_LOG_DIR = PROJECT_DIR / "logs"
DEFAULT_CHARTS_DIR = PROJECT_DIR / "charts"


class SettingsError(ValueError):
    """A configuration variable holds a value tradebeat cannot use."""


@dataclass(frozen=True)
class Settings:
    api_url: str = DEFAULT_API_URL
    api_key: str | None = None
    secret_key: str | None = None
    db_path: Path = DEFAULT_DB_PATH
    backfill_minutes: int = 1440
    heartbeat_buffer_seconds: float = 5.0
    log_level: str = "INFO"
    retry_attempts: int = 6
    retry_backoff_seconds: float = 0.5
    timeout_seconds: float = 10.0
    rate_budget_share: float = 0.5
    symbols: tuple[str, ...] = ()
    freshness_minutes: int = 2
    log_dir: Path = DEFAULT_LOG_DIR
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5
    charts_dir: Path = DEFAULT_CHARTS_DIR
    chart_days: int = 30
    chart_window_hours: int = 24
    run_retention_days: int = 2

    def __repr__(self) -> str:
        # Keys must never reach a log line or an exception message, even by accident.
        return (
            f"Settings(api_url={self.api_url!r}, api_key={'***' if self.api_key else None}, "
            f"secret_key={'***' if self.secret_key else None}, db_path={str(self.db_path)!r}, "
            f"backfill_minutes={self.backfill_minutes}, "
            f"heartbeat_buffer_seconds={self.heartbeat_buffer_seconds}, log_level={self.log_level!r}, "
            f"retry_attempts={self.retry_attempts}, "
            f"retry_backoff_seconds={self.retry_backoff_seconds}, "
            f"rate_budget_share={self.rate_budget_share}, symbols={self.symbols!r}, "
            f"freshness_minutes={self.freshness_minutes}, log_dir={str(self.log_dir)!r})"
        )

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, env_file: Path | None = None) -> "Settings":
        """Read the process environment over the project's `.env` (the environment wins)."""
        if env_file is None:
            env_file = Path(os.environ.get("TRADEBEAT_ENV_FILE", PROJECT_DIR / ".env"))
        values: dict[str, str] = {}
        if env_file.is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> "Settings":
        def get(name: str) -> str | None:
            raw = values.get(name)
            return raw.strip() if raw is not None and raw.strip() != "" else None

        return cls(
            api_url=_api_url(get("BINANCE_API_URL") or DEFAULT_API_URL),
            api_key=get("BINANCE_API_KEY"),
            secret_key=get("BINANCE_SECRET_KEY"),
            db_path=_db_path(get("DB_PATH")),
            backfill_minutes=_positive_int("BACKFILL_MINUTES", get("BACKFILL_MINUTES"), 1440),
            heartbeat_buffer_seconds=_seconds(
                "HEARTBEAT_BUFFER_SECONDS", get("HEARTBEAT_BUFFER_SECONDS"), 5.0, 50
            ),
            log_level=_log_level(get("LOG_LEVEL")),
            retry_attempts=_positive_int("EXCHANGE_RETRY_ATTEMPTS", get("EXCHANGE_RETRY_ATTEMPTS"), 6),
            retry_backoff_seconds=_seconds(
                "EXCHANGE_RETRY_BACKOFF_SECONDS", get("EXCHANGE_RETRY_BACKOFF_SECONDS"), 0.5, 60
            ),
            timeout_seconds=_seconds("EXCHANGE_TIMEOUT_SECONDS", get("EXCHANGE_TIMEOUT_SECONDS"), 10.0, 120),
            rate_budget_share=_share(get("RATE_BUDGET_SHARE")),
            symbols=tuple(s.strip() for s in (get("SYMBOLS") or "").split(",") if s.strip()),
            freshness_minutes=_positive_int("FRESHNESS_MINUTES", get("FRESHNESS_MINUTES"), 2),
            log_dir=_project_path(get("LOG_DIR"), DEFAULT_LOG_DIR),
            log_max_bytes=_positive_int("LOG_MAX_BYTES", get("LOG_MAX_BYTES"), 10 * 1024 * 1024),
            log_backups=_positive_int("LOG_BACKUPS", get("LOG_BACKUPS"), 5),
            charts_dir=_project_path(get("CHARTS_DIR"), DEFAULT_CHARTS_DIR),
            chart_days=_positive_int("CHART_DAYS", get("CHART_DAYS"), 30),
            chart_window_hours=_positive_int("CHART_WINDOW_HOURS", get("CHART_WINDOW_HOURS"), 24),
            run_retention_days=_non_negative_int("RUN_RETENTION_DAYS", get("RUN_RETENTION_DAYS"), 2),
        )

    def install_logs(self) -> None:
        """Per-component rotating files under LOG_DIR at LOG_LEVEL, with the API keys redacted."""
        logs.install(
            self.log_dir,
            level=self.log_level,
            max_bytes=self.log_max_bytes,
            backups=self.log_backups,
            secrets=(self.api_key, self.secret_key),
        )


def _api_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            f"BINANCE_API_URL must be an http(s) base URL such as https://api.binance.com, got {raw!r}"
        )
    return f"{parts.scheme}://{parts.netloc}"


def _db_path(raw: str | None) -> Path:
    return _project_path(raw, DEFAULT_DB_PATH)


def _project_path(raw: str | None, default: Path) -> Path:
    if raw is None:
        return default
    path = Path(raw).expanduser()
    return path if path.is_absolute() else PROJECT_DIR / path


def _positive_int(name: str, raw: str | None, default: int) -> int:
    return _int(name, raw, default, minimum=1)


def _non_negative_int(name: str, raw: str | None, default: int) -> int:
    return _int(name, raw, default, minimum=0)


def _int(name: str, raw: str | None, default: int, *, minimum: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        limit = "greater than 0" if minimum == 1 else f"at least {minimum}"
        raise SettingsError(f"{name} must be {limit}, got {value}")
    return value


def _seconds(name: str, raw: str | None, default: float, maximum: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 <= value <= maximum:
        raise SettingsError(f"{name} must be between 0 and {maximum:g} seconds, got {value:g}")
    return value


def _share(raw: str | None) -> float:
    if raw is None:
        return 0.5
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"RATE_BUDGET_SHARE must be a fraction such as 0.5, got {raw!r}") from None
    if not 0 < value <= 1:
        raise SettingsError(f"RATE_BUDGET_SHARE must be above 0 and at most 1, got {value:g}")
    return value


def _log_level(raw: str | None) -> str:
    level = (raw or "INFO").upper()
    if level not in logging.getLevelNamesMapping():
        raise SettingsError(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {raw!r}")
    return level
