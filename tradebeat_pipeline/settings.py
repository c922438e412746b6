"""Environment → typed settings, declared once, read when a resource or the CLI starts.

Each variable is one field of `Settings`: its type, default, bounds and description (which is its
documentation; `.env.example` is checked against it). pydantic-settings reads the project's `.env`
and validates; the process environment is handed over on top of it, so it wins.

Nothing here runs at import: callers ask for `Settings.load()` when they start, so a bad value stops
that start with a message naming the variable, and definitions still load without any environment.
"""

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUseDefault
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from tradebeat_pipeline.errors import Refused

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DAGSTER_HOME = PROJECT_DIR / "dagster_home"
ARCHIVE_URL_VARIABLE = "BINANCE_ARCHIVE_URL"

# What a value of each type must be, for the refusal message.
_KINDS: dict[Any, str] = {int: "a whole number", float: "a number"}


class SettingsError(Refused, ValueError):
    """A configuration variable holds a value tradebeat cannot use."""


class Settings(BaseSettings):
    """tradebeat's configuration; the alias of each field is its environment variable."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",  # the environment holds much else
        case_sensitive=True,
        env_ignore_empty=True,
        validate_default=True,  # relative default paths are resolved like given ones
        populate_by_name=True,  # Settings(db_path=...) as well as Settings(DB_PATH=...)
    )

    api_url: str = Field(
        "https://api.binance.com",
        alias="BINANCE_API_URL",
        description="Base URL of a Binance-compatible REST server (scheme://host[:port]); "
        "point it at the sandbox exchange (`uv run tradebeat sandbox`) to run offline.",
    )
    archive_url: str | None = Field(
        "https://data.binance.vision",
        alias="BINANCE_ARCHIVE_URL",  # ARCHIVE_URL_VARIABLE: pydantic's plugin needs the literal
        description="Base URL of Binance's public kline archives (daily and monthly zip files, "
        "scheme://host[/path]); history is read from them before the REST API, which then only fills "
        "the days no archive covers. Empty or `off` turns the archives off (everything from REST).",
    )
    api_key: SecretStr | None = Field(
        None,
        alias="BINANCE_API_KEY",
        description="Binance API key: optional, public market data needs none. Never logged or stored.",
    )
    secret_key: SecretStr | None = Field(
        None,
        alias="BINANCE_SECRET_KEY",
        description="Binance API secret: optional, public market data needs none. Never logged or stored.",
    )
    db_path: Path = Field(
        Path("data/tradebeat.sqlite"),
        alias="DB_PATH",
        description="SQLite file of the candle store (relative paths are taken from the project folder).",
    )
    database_url: SecretStr | None = Field(
        None,
        alias="DATABASE_URL",
        description="PostgreSQL URL of a candle store shared by several machines "
        "(postgresql://user:password@host:port/database); when set it is used instead of the SQLite "
        "file at DB_PATH. Messages name its host and database only, never the password.",
    )
    backfill_minutes: int = Field(
        1440,
        ge=1,
        alias="BACKFILL_MINUTES",
        description="History loaded when a symbol is added, in minutes; loaded as the whole UTC days "
        "that cover it.",
    )
    heartbeat_buffer_seconds: float = Field(
        5.0,
        ge=0,
        le=50,
        allow_inf_nan=False,
        alias="HEARTBEAT_BUFFER_SECONDS",
        description="Seconds the heartbeat waits after a minute closes before fetching it.",
    )
    freshness_minutes: int = Field(
        2,
        ge=1,
        alias="FRESHNESS_MINUTES",
        description="The `fresh` check fails when a symbol's newest candle is more than this many "
        "minutes behind the last closed minute.",
    )
    log_level: str = Field(
        "INFO",
        alias="LOG_LEVEL",
        description="DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    )
    log_dir: Path = Field(
        Path("logs"),
        alias="LOG_DIR",
        description="Folder of the per-component rotating log files (heartbeat.log, backfill.log, ...), "
        "safe with several processes writing at once. Relative to the project.",
    )
    log_max_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1,
        alias="LOG_MAX_BYTES",
        description="Size at which a log file is rotated.",
    )
    log_backups: int = Field(
        5,
        ge=1,
        alias="LOG_BACKUPS",
        description="Rotated files kept per component.",
    )
    retry_attempts: int = Field(
        6,
        ge=1,
        alias="EXCHANGE_RETRY_ATTEMPTS",
        description="How often a failing exchange request is tried.",
    )
    retry_backoff_seconds: float = Field(
        0.5,
        ge=0,
        le=60,
        allow_inf_nan=False,
        alias="EXCHANGE_RETRY_BACKOFF_SECONDS",
        description="The first wait between tries of a failing exchange request (it doubles, up to 30 s).",
    )
    timeout_seconds: float = Field(
        10.0,
        ge=0,
        le=120,
        allow_inf_nan=False,
        alias="EXCHANGE_TIMEOUT_SECONDS",
        description="Seconds before an unanswered request is retried.",
    )
    run_retention_days: int = Field(
        2,
        ge=0,
        alias="RUN_RETENTION_DAYS",
        description="Heartbeat, rollup and chart runs older than this many days are deleted by the daily "
        "retention job (each month's newest successful run of each is kept, so partition status "
        "stays true); backfill runs are never deleted.",
    )
    rate_budget_share: float = Field(
        0.5,
        gt=0,
        le=1,
        allow_inf_nan=False,
        alias="RATE_BUDGET_SHARE",
        description="Share of the exchange's declared request-weight budget that all tradebeat processes "
        "together may use (shared through rate-budget-<host>.json beside DB_PATH, or the store's "
        "database when DATABASE_URL is set; heartbeats first).",
    )
    symbols: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        alias="SYMBOLS",
        description="Symbols to track, comma-separated ccxt spot symbols; the symbols sensor registers "
        "them on its first tick (validated against the exchange) and loads BACKFILL_MINUTES of history.",
    )
    charts_dir: Path = Field(
        Path("charts"),
        alias="CHARTS_DIR",
        description="Folder the price chart page (price_chart.html) is written to.",
    )
    charts_port: int = Field(
        3011,
        ge=1,
        le=65535,
        alias="CHARTS_PORT",
        description="Port on 127.0.0.1 where `tradebeat dev` and `tradebeat demo` serve CHARTS_DIR "
        "read-only: the Dagster UI's chart link and thumbnail point there (a browser will not open "
        "file:// links from a web page).",
    )
    chart_days: int = Field(
        30,
        ge=1,
        alias="CHART_DAYS",
        description="Days of hourly closes in the chart's overview.",
    )
    chart_window_hours: int = Field(
        24,
        ge=1,
        alias="CHART_WINDOW_HOURS",
        description="Hours of 1-minute candlesticks per symbol in the chart.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment arrives as init values from `load` (so tests can pass their own mapping
        instead of os.environ), then the `.env` file; nothing else is read behind the caller's back."""
        return (init_settings, dotenv_settings)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, env_file: Path | None = None) -> "Settings":
        """Read the process environment (or `environ` instead of it) over the project's `.env`
        (TRADEBEAT_ENV_FILE if set); the environment wins, a missing `.env` is no error."""
        if env_file is None:
            env_file = Path(os.environ.get("TRADEBEAT_ENV_FILE", PROJECT_DIR / ".env"))
        return cls._validated(os.environ if environ is None else environ, env_file)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> "Settings":
        """Settings from these variables alone (no environment, no `.env`)."""
        return cls._validated(values, None)

    @classmethod
    def _validated(cls, values: Mapping[str, str], env_file: Path | None) -> "Settings":
        names = {info.alias for info in cls.model_fields.values()}
        given: dict[str, Any] = {name: value for name, value in values.items() if name in names}
        if _set_empty(ARCHIVE_URL_VARIABLE, given, env_file):
            # Empty means unset for every other variable; for this one the documented meaning is
            # "no archives", as `off`, so a user blanking it never gets the default host instead.
            given[ARCHIVE_URL_VARIABLE] = "off"
        try:
            # `_env_file` is pydantic-settings' per-call .env path; mypy sees only the fields.
            return cls(_env_file=env_file, **given)  # type: ignore[call-arg]
        except ValidationError as exc:
            raise SettingsError(cls._explain(exc)) from None

    @classmethod
    def _explain(cls, exc: ValidationError) -> str:
        """pydantic's errors as sentences that name the variable and the value it got."""
        by_alias = {info.alias: info for info in cls.model_fields.values()}
        sentences = []
        for error in exc.errors(include_url=False):
            name = str(error["loc"][0]) if error["loc"] else "a setting"
            info = by_alias.get(name)
            raw = error.get("input")
            if error["type"] == "value_error":
                sentences.append(str(error["ctx"]["error"]))
            elif error["type"].endswith("_parsing") and info is not None:
                kind = _KINDS.get(info.annotation, "valid")
                sentences.append(f"{name} must be {kind}, got {raw!r}")
            elif info is not None and _bounds(info):
                sentences.append(f"{name} must be {_bounds(info)}, got {raw!r}")
            else:
                sentences.append(f"{name}: {error['msg']}, got {raw!r}")
        return "; ".join(sentences)

    # -- per-variable rules pydantic's types and bounds do not say -----------------------

    @field_validator("api_url")
    @classmethod
    def _base_url(cls, raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"BINANCE_API_URL must be an http(s) base URL such as https://api.binance.com, got {raw!r}"
            )
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and urlsplit(url.get_secret_value()).scheme not in ("postgresql", "postgres"):
            # Not the value itself: it may hold a password.
            raise ValueError("DATABASE_URL must be a postgresql://user:password@host:port/database URL")
        return url

    @field_validator("archive_url")
    @classmethod
    def _archive_url(cls, raw: str | None) -> str | None:
        if raw is None or raw.lower() == "off":
            return None
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(
                "BINANCE_ARCHIVE_URL must be an http(s) base URL such as https://data.binance.vision, "
                f"or off, got {raw!r}"
            )
        return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, raw: Any) -> Any:
        level = raw.upper() if isinstance(raw, str) else raw
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {raw!r}")
        return level

    @field_validator("symbols", mode="before")
    @classmethod
    def _comma_separated(cls, raw: Any) -> Any:
        return tuple(s.strip() for s in raw.split(",") if s.strip()) if isinstance(raw, str) else raw

    @field_validator("db_path", "log_dir", "charts_dir")
    @classmethod
    def _in_project(cls, path: Path) -> Path:
        path = path.expanduser()
        return path if path.is_absolute() else PROJECT_DIR / path

    # Defined last: pydantic runs "before" validators last-defined first, so this one sees the raw value.
    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """`NAME=` or `NAME=  ` leaves the default, as if the variable were not set."""
        if isinstance(value, str):
            value = value.strip()
            if not value:
                raise PydanticUseDefault()
        return value

    def install_logs(self) -> None:
        """Per-component rotating files under LOG_DIR at LOG_LEVEL, with the API keys redacted."""
        from tradebeat_pipeline import logs  # logs reads its defaults from this module

        logs.install(
            self.log_dir,
            level=self.log_level,
            max_bytes=self.log_max_bytes,
            backups=self.log_backups,
            secrets=[
                *(key.get_secret_value() for key in (self.api_key, self.secret_key) if key is not None),
                *([password] if (password := self.database_password()) else []),
            ],
        )

    def database_password(self) -> str | None:
        """The password inside DATABASE_URL, so logs can redact it wherever it might appear."""
        if self.database_url is None:
            return None
        return urlsplit(self.database_url.get_secret_value()).password


def dagster_home() -> Path:
    """The Dagster home every tradebeat command and `tradebeat dev` use: DAGSTER_HOME as Dagster
    reads it, else the project's dagster_home/ (its committed dagster.yaml holds the run queue)."""
    return Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME)


def default(name: str) -> Any:
    """The declared default of setting `name` (a field name), for code that takes the same knob as a
    parameter: the value lives in the declaration only."""
    return Settings.model_fields[name].default


def _bounds(info: FieldInfo) -> str:
    """'between 0 and 50', 'above 0 and at most 1', 'at least 1' from a field's declared bounds."""
    bounds = {
        key: getattr(rule, key)
        for rule in info.metadata
        for key in ("ge", "gt", "le")
        if getattr(rule, key, None) is not None
    }
    low = (
        f"at least {bounds['ge']:g}"
        if "ge" in bounds
        else f"above {bounds['gt']:g}"
        if "gt" in bounds
        else ""
    )
    if "le" not in bounds:
        return low
    if "ge" in bounds:
        return f"between {bounds['ge']:g} and {bounds['le']:g}"
    return f"{low} and at most {bounds['le']:g}" if low else f"at most {bounds['le']:g}"


def _set_empty(name: str, given: Mapping[str, Any], env_file: Path | None) -> bool:
    """`name` set to the empty string: in the given environment, or else in the `.env` file."""
    if name in given:
        return bool(given[name] == "")
    if env_file is None or not env_file.is_file():
        return False
    from dotenv import dotenv_values

    return bool(dotenv_values(env_file).get(name) == "")
