"""Symbols, apart from Dagster and standard library only: the spelling tradebeat accepts (checked
before anything heavy is imported, so a typo is refused at once), and the lifecycle decisions of the
symbols sensor: what it must validate, onboard and retire on a tick, and the history it loads.
"""

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

from tradebeat_pipeline.errors import Refused
from tradebeat_pipeline.timewindows import MINUTE_MS, month_key, month_of

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
        hint = " (derivatives symbols with ':' are not supported)" if ":" in symbol else ""
        raise SymbolError(f"invalid symbol {shown(raw)}{hint}: expected {SYMBOL_FORM}")
    return symbol


def shown(raw: str) -> str:
    """A typed symbol quoted for a message: escaped, and cut at 40 characters (it may be hostile)."""
    return repr(raw if len(raw) <= 40 else raw[:40] + "…")


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

    @property
    def span(self) -> str:
        """The symbols as the run's tag and log line name them: one, or first..last (n symbols)."""
        first, last = self.symbols[0], self.symbols[-1]
        return first if first == last else f"{first}..{last} ({len(self.symbols)} symbols)"


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


class Refusal(StrEnum):
    """Why a typed symbol is not onboarded."""

    MALFORMED = "malformed"
    NOT_LISTED = "not listed on the exchange"
    NOT_TRADING = "not trading on the exchange"


@dataclass(frozen=True)
class Verdict:
    """What checking one typed symbol found: its one spelling, or why it is refused."""

    symbol: str | None  # the normalised spelling; None when malformed
    refusal: Refusal | None = None
    detail: str = ""  # the checker's own words for a refusal


class DecisionKind(StrEnum):
    """What the symbols sensor did about a symbol on a tick; each kind is said in the tick's log."""

    NORMALISED = "normalised"  # btc/usdt became BTC/USDT
    DUPLICATE = "duplicate"  # a second spelling of a registered symbol, removed
    REJECTED = "rejected"  # malformed, or not listed / not trading on the exchange
    ONBOARDED = "onboarded"  # a history backfill launched
    RETIRED = "retired"  # its partition was deleted: deactivated, candles kept


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    message: str  # one line for the tick's log, naming the symbol as typed

    @property
    def level(self) -> int:
        return logging.WARNING if self.kind == DecisionKind.REJECTED else logging.INFO


@dataclass
class TickPlan:
    """One tick's judgement of its candidates: which symbols to onboard (normalised, in order),
    which partitions to add and delete, and a decision for each thing it changed."""

    onboard: list[str] = field(default_factory=list)
    add: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)


def judge_candidates(
    plan: SymbolsPlan, partitions: list[str], onboarded: set[str], verdicts: dict[str, Verdict]
) -> TickPlan:
    """Decide, per candidate as typed, what happens to it: a refused partition is deleted, a
    partition typed in another spelling is replaced by (or, when that is already there, merged
    into) its normalised one, and every symbol new to the sensor is onboarded once."""
    tick = TickPlan()
    for raw in plan.candidates:
        is_partition = raw in partitions
        source = f"partition {shown(raw)}" if is_partition else f"SYMBOLS entry {shown(raw)}"
        verdict = verdicts[raw]
        if verdict.refusal is not None or verdict.symbol is None:
            action = "partition deleted" if is_partition else "ignored"
            reason = f"{verdict.refusal} ({verdict.detail})" if verdict.detail else str(verdict.refusal)
            tick.decisions.append(Decision(DecisionKind.REJECTED, f"rejected {source} as {reason}; {action}"))
            if is_partition:
                tick.delete.append(raw)
            continue
        symbol = verdict.symbol
        known = symbol in onboarded or symbol in tick.onboard
        if raw != symbol and (known or (is_partition and symbol in partitions)):
            if is_partition:
                tick.delete.append(raw)
                message = f"removed {source}: a second spelling of {symbol}, which is already registered"
            else:
                message = f"{source} is {symbol}, already registered"
            tick.decisions.append(Decision(DecisionKind.DUPLICATE, message))
        elif raw != symbol:
            if is_partition:
                tick.delete.append(raw)
                message = f"renamed {source} to {symbol} (symbols are kept in one upper-case spelling)"
            else:
                message = f"read {source} as {symbol}"
            tick.decisions.append(Decision(DecisionKind.NORMALISED, message))
        if known:
            continue
        tick.onboard.append(symbol)
        if symbol not in partitions and symbol not in tick.add:
            tick.add.append(symbol)
    return tick


def onboarded_decision(run: OnboardingRun) -> Decision:
    """The line saying which symbols one onboarding run backfills, and which months."""
    months = month_key(run.first_month)
    if run.last_month != run.first_month:
        months += f"..{month_key(run.last_month)}"
    return Decision(DecisionKind.ONBOARDED, f"onboarded {run.span}: backfilling {months} as one run")


def retired_decision(symbol: str) -> Decision:
    return Decision(DecisionKind.RETIRED, f"retired {symbol}: partition removed, candles kept")


def tick_summary(decisions: list[Decision], registered: int, shown_at_most: int = 3) -> str:
    """The tick's one-line result when it launches no run (Dagster shows it as the skip reason):
    what it decided, or that nothing was new."""
    if not decisions:
        return f"nothing to do: no symbol added or removed ({registered} registered)"
    lines = [d.message for d in decisions[:shown_at_most]]
    if len(decisions) > shown_at_most:
        lines.append(f"and {len(decisions) - shown_at_most} more in the tick's log")
    return "; ".join(lines)
