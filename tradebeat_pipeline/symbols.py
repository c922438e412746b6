"""Symbols, apart from Dagster and standard library only: the spelling tradebeat accepts (checked
before anything heavy is imported, so a typo is refused at once), and the lifecycle decisions of the
symbols sensor: what it must validate, onboard and retire on a tick, and the history it loads.
"""

import json
import re
from dataclasses import dataclass, field
from datetime import date

from tradebeat_pipeline.errors import Refused
from tradebeat_pipeline.timewindows import MINUTE_MS, month_of

_SYMBOL_RE = re.compile(r"[A-Z0-9]{1,20}/[A-Z0-9]{1,20}")
SYMBOL_FORM = "a ccxt spot symbol BASE/QUOTE such as BTC/USDT"


class SymbolError(Refused, ValueError):
    """A string that is not a ccxt unified spot symbol."""


def normalize_symbol(raw: str) -> str:
    """Upper-case and trim a symbol, refusing anything but BASE/QUOTE so it is safe as a key."""
    if not isinstance(raw, str):
        raise SymbolError(f"symbol must be text, expected {SYMBOL_FORM}")
    symbol = raw.strip().upper()
    if not _SYMBOL_RE.fullmatch(symbol):
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        hint = " (derivatives symbols with ':' are not supported)" if ":" in symbol else ""
        raise SymbolError(f"invalid symbol {shown!r}{hint}: expected {SYMBOL_FORM}")
    return symbol


@dataclass
class SymbolsCursor:
    """What the sensor has done: symbols onboarded (history backfill launched), SYMBOLS entries seen."""

    onboarded: set[str] = field(default_factory=set)
    setting_seen: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, text: str | None) -> "SymbolsCursor":
        if not text:
            return cls()
        data = json.loads(text)
        return cls(set(data.get("onboarded", [])), set(data.get("setting_seen", [])))

    def dump(self) -> str:
        return json.dumps({"onboarded": sorted(self.onboarded), "setting_seen": sorted(self.setting_seen)})


@dataclass(frozen=True)
class SymbolsPlan:
    candidates: list[str]  # partition keys or SYMBOLS entries to validate and onboard, as typed
    retired: list[str]  # onboarded symbols whose partition is gone: deactivate


def plan_symbols(partitions: list[str], setting: list[str], cursor: SymbolsCursor) -> SymbolsPlan:
    """New partitions and never-seen SYMBOLS entries are candidates; vanished partitions retire."""
    candidates = [p for p in partitions if p not in cursor.onboarded]
    candidates += [s for s in setting if s not in cursor.setting_seen and s not in candidates]
    retired = sorted(cursor.onboarded - set(partitions))
    return SymbolsPlan(candidates, retired)


def history_months(now_ms: int, backfill_minutes: int, newest_stored_ms: int | None) -> tuple[date, date]:
    """Months an onboarding backfill loads: the whole months covering BACKFILL_MINUTES, reaching back
    to the newest candle already stored, so a re-added symbol's hole is filled too."""
    first = month_of(now_ms - backfill_minutes * MINUTE_MS)
    if newest_stored_ms is not None:
        first = min(first, month_of(newest_stored_ms))
    return first, month_of(now_ms)


@dataclass(frozen=True)
class OnboardingRun:
    symbols: list[str]
    first_month: date
    last_month: date


def onboarding_runs(order: list[str], history: dict[str, tuple[date, date]]) -> list[OnboardingRun]:
    """Group symbols to onboard into as few runs as possible: a run's partition range is a rectangle
    (months × symbols adjacent in partition order), so a group shares its months and has no other
    symbol between its members. 100 symbols added together become ONE backfill run."""
    runs: list[OnboardingRun] = []
    open_group = False
    for symbol in order:
        months = history.get(symbol)
        if months is None:
            open_group = False  # an already onboarded symbol sits here: a range must not cover it
            continue
        if open_group and (runs[-1].first_month, runs[-1].last_month) == months:
            runs[-1].symbols.append(symbol)
        else:
            runs.append(OnboardingRun([symbol], *months))
            open_group = True
    return runs
