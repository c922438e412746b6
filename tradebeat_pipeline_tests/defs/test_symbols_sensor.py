"""Every decision of the symbols sensor is said where the user looks: a line in the tick's log
(`context.log`, shown with the tick in the UI) and a tick result of its own (the partitions it adds
and deletes, the runs it launches, and the skip reason the UI shows beside a tick without runs).

The real sensor is evaluated against a real instance in a temporary Dagster home, validating
against the sandbox exchange over HTTP.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from tradebeat_pipeline.cli import main
from tradebeat_pipeline.defs.automation import symbols_sensor
from tradebeat_pipeline.defs.partitions import SYMBOLS_PARTITIONS_NAME
from tradebeat_pipeline.defs.resources import ExchangeResource, StoreResource
from tradebeat_pipeline.sandbox.server import Sandbox


class Lines(logging.Handler):
    """The records of one tick's log, as (level name, message)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))


@dataclass(frozen=True)
class Tick:
    result: dg.SensorResult
    log: list[tuple[str, str]]

    @property
    def added(self) -> list[str]:
        requests = self.result.dynamic_partitions_requests or []
        return [
            k for r in requests if isinstance(r, dg.AddDynamicPartitionsRequest) for k in r.partition_keys
        ]

    @property
    def deleted(self) -> list[str]:
        requests = self.result.dynamic_partitions_requests or []
        return [
            k for r in requests if isinstance(r, dg.DeleteDynamicPartitionsRequest) for k in r.partition_keys
        ]

    @property
    def skip_reason(self) -> str | None:
        reason = self.result.skip_reason
        return None if reason is None else reason.skip_message

    @property
    def onboarding(self) -> list[str]:
        return [r.tags["tradebeat/onboard"] for r in self.result.run_requests or []]


def tick(instance: dg.DagsterInstance, cursor: str | None = None) -> Tick:
    """One evaluation of the real sensor, with the lines it wrote to the tick's log."""
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"exchange": ExchangeResource(), "store": StoreResource()},
    )
    lines = Lines()
    context.log.addHandler(lines)
    result = symbols_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return Tick(result, lines.lines)


def added_in_the_ui(instance: dg.DagsterInstance, *keys: str) -> None:
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(keys))  # what "Add a partition" does


def backfilled_months(result: dg.SensorResult) -> str:
    """The months of the (one) onboarding run, as its log line should name them."""
    (run,) = result.run_requests or []
    first = run.tags["dagster/asset_partition_range_start"].split("|")[0]
    last = run.tags["dagster/asset_partition_range_end"].split("|")[0]
    return first if first == last else f"{first}..{last}"


@pytest.mark.parametrize(("typed", "symbol"), [("btc/usdt", "BTC/USDT"), ("s001/usdt", "S001/USDT")])
def test_a_symbol_typed_in_lower_case_is_renamed_and_the_tick_log_says_so(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance, typed: str, symbol: str
) -> None:
    added_in_the_ui(instance, typed)
    done = tick(instance)
    assert (done.added, done.deleted, done.onboarding) == ([symbol], [typed], [symbol])
    assert done.log == [
        ("INFO", f"renamed partition {typed!r} to {symbol} (symbols are kept in one upper-case spelling)"),
        ("INFO", f"onboarded {symbol}: backfilling {backfilled_months(done.result)} as one run"),
    ]


def test_a_second_spelling_of_a_registered_symbol_is_removed_and_the_tick_says_why(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    assert main(["symbols", "add", "BTC/USDT"]) == 0
    first = tick(instance)
    added_in_the_ui(instance, "btc/usdt")
    done = tick(instance, first.result.cursor)
    line = "removed partition 'btc/usdt': a second spelling of BTC/USDT, which is already registered"
    assert (done.added, done.deleted, done.onboarding) == ([], ["btc/usdt"], [])
    assert done.log == [("INFO", line)]
    assert done.skip_reason == line


def test_two_new_spellings_of_one_symbol_are_one_rename_and_one_removal(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    added_in_the_ui(instance, "eth/usdt", "Eth/Usdt")
    done = tick(instance)
    assert (done.added, sorted(done.deleted), done.onboarding) == (
        ["ETH/USDT"],
        ["Eth/Usdt", "eth/usdt"],
        ["ETH/USDT"],
    )
    assert [message.split(":")[0] for _, message in done.log] == [
        "renamed partition 'eth/usdt' to ETH/USDT (symbols are kept in one upper-case spelling)",
        "removed partition 'Eth/Usdt'",
        "onboarded ETH/USDT",
    ]


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("FOO/BAR", "as not listed on the exchange (FOO/BAR is not listed as a spot market on 127.0.0.1:"),
        ("LUNA/USDT", "as not trading on the exchange (LUNA/USDT is listed on 127.0.0.1:"),
        ("BTCUSDT", "as malformed (invalid symbol 'BTCUSDT': expected a ccxt spot symbol BASE/QUOTE"),
    ],
)
def test_a_refused_symbol_is_deleted_with_its_reason_in_the_log_and_the_tick(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance, typed: str, reason: str
) -> None:
    added_in_the_ui(instance, typed)
    done = tick(instance)
    ((level, line),) = done.log
    assert (done.added, done.deleted, done.onboarding) == ([], [typed], [])
    assert (level, line.startswith(f"rejected partition {typed!r} {reason}")) == ("WARNING", True)
    assert line.endswith("; partition deleted")
    assert done.skip_reason == line


def test_a_refused_symbols_setting_entry_is_reported_and_left_alone(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYMBOLS", "FOO/BAR")
    done = tick(instance)
    ((level, line),) = done.log
    assert (done.added, done.deleted, level) == ([], [], "WARNING")
    assert line.startswith("rejected SYMBOLS entry 'FOO/BAR' as not listed on the exchange")
    assert line.endswith("; ignored")


def test_a_symbols_setting_entry_in_lower_case_is_read_in_upper_case_and_says_so(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYMBOLS", "sol/usdt")
    done = tick(instance)
    assert (done.added, done.deleted, done.onboarding) == (["SOL/USDT"], [], ["SOL/USDT"])
    assert done.log[0] == ("INFO", "read SYMBOLS entry 'sol/usdt' as SOL/USDT")


def test_an_onboarded_symbol_says_which_months_its_one_backfill_run_loads(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    added_in_the_ui(instance, "ETH/USDT", "SOL/USDT")
    done = tick(instance)
    months = backfilled_months(done.result)
    assert done.onboarding == ["ETH/USDT..SOL/USDT (2 symbols)"]
    assert done.log == [
        ("INFO", f"onboarded ETH/USDT..SOL/USDT (2 symbols): backfilling {months} as one run")
    ]
    assert done.skip_reason is None  # a tick with a run shows the run (Dagster allows no reason beside it)


def test_a_removed_symbol_is_retired_and_the_tick_says_so(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    added_in_the_ui(instance, "ETH/USDT")
    first = tick(instance)
    instance.delete_dynamic_partition(SYMBOLS_PARTITIONS_NAME, "ETH/USDT")
    done = tick(instance, first.result.cursor)
    line = "retired ETH/USDT: partition removed, candles kept"
    assert (done.log, done.skip_reason) == ([("INFO", line)], line)


def test_a_tick_with_nothing_new_says_so_and_logs_nothing(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    added_in_the_ui(instance, "ETH/USDT")
    first = tick(instance)
    done = tick(instance, first.result.cursor)
    assert (done.log, done.added, done.deleted, done.onboarding) == ([], [], [], [])
    assert done.skip_reason == "nothing to do: no symbol added or removed (1 registered)"


def test_many_decisions_in_one_tick_are_summed_up_and_all_logged(
    env: Path, sandbox: Sandbox, instance: dg.DagsterInstance
) -> None:
    refused = ["A/X", "B/X", "C/X", "D/X", "E/X"]
    added_in_the_ui(instance, *refused)
    done = tick(instance)
    assert len(done.log) == 5
    assert done.skip_reason is not None
    assert done.skip_reason.count("rejected partition") == 3
    assert done.skip_reason.endswith("; and 2 more in the tick's log")
