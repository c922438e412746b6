"""Resources: thin Dagster adapters that build the plain exchange client and store at run time.

Optional settings have defaults (public market data needs no API key), so they are read from the
environment/.env by `Settings.load()` when a resource is used, never while definitions load;
`dg.EnvVar` has no notion of a default and would make every variable mandatory. ccxt is imported
only when a client is opened.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from tradebeat_pipeline.budget import Lane, shared_ledger
from tradebeat_pipeline.settings import Settings
from tradebeat_pipeline.store import CandleStore, open_store

if TYPE_CHECKING:
    from tradebeat_pipeline.archive import ArchiveReader
    from tradebeat_pipeline.exchange.ccxt_client import CcxtExchange


def run_settings() -> Settings:
    """The settings of this run, tick or command, with its per-component log files installed (once
    per process and directory)."""
    settings = Settings.load()
    settings.install_logs()
    return settings


class ExchangeResource(dg.ConfigurableResource):
    """The exchange, reached through ccxt. Fields left unset come from the environment."""

    api_url: str | None = None
    rate_budget_share: float | None = None
    timeout_ms: int | None = None
    concurrency: int = 8

    def open(self, lane: Lane = Lane.BULK) -> "CcxtExchange":
        """A new client; call it inside the event loop that will use it.

        Its request weight comes out of the budget every process of this deployment shares (a
        ledger in the PostgreSQL store's database when DATABASE_URL is set, else a file beside the
        SQLite database); the heartbeat asks in the beat lane, which goes first.
        """
        from tradebeat_pipeline.exchange.ccxt_client import CcxtExchange

        settings = Settings.load()
        api_url = self.api_url or settings.api_url
        exchange = CcxtExchange(
            api_url=api_url,
            api_key=settings.api_key,
            secret_key=settings.secret_key,
            rate_budget_share=self.rate_budget_share or settings.rate_budget_share,
            lane=lane,
            timeout_ms=self.timeout_ms or int(settings.timeout_seconds * 1000),
            concurrency=self.concurrency,
            max_attempts=settings.retry_attempts,
            backoff_s=settings.retry_backoff_seconds,
            ledger=shared_ledger(settings, api_url),  # the deployment's ledger: file or database
        )
        return exchange


class ArchivesResource(dg.ConfigurableResource):
    """Binance's public kline archives (BINANCE_ARCHIVE_URL; `off` or empty: none). Another host
    than the API, with no request weight, so their downloads spend nothing of the shared budget."""

    archive_url: str | None = None
    max_parallel: int = 4

    def open(self) -> "ArchiveReader":
        """A reader over one HTTP session; call it inside the event loop that will use it."""
        from tradebeat_pipeline.archive import ArchiveReader

        settings = Settings.load()
        return ArchiveReader(
            self.archive_url or settings.archive_url,
            max_parallel=self.max_parallel,
            attempts=settings.retry_attempts,
            backoff_s=settings.retry_backoff_seconds,
            timeout_s=settings.timeout_seconds,
        )


class StoreResource(dg.ConfigurableResource):
    """The candle store DATABASE_URL or DB_PATH names (or the SQLite file `db_path` when set)."""

    db_path: str | None = None

    def open(self) -> CandleStore:
        return open_store(Path(self.db_path) if self.db_path else Settings.load())
