"""Asset checks of `ohlcv_1m`, evaluated in the same step as every materialization, over the run's
own partitions, from the report of the write itself (the IO manager records it on the batch when it
commits). The judgement lives in `quality.py`; this module turns it into check results with metadata
the asset page can show."""

from collections.abc import Iterator, Sequence

import dagster as dg
import pandas as pd

from tradebeat_pipeline.candles import SYMBOL_COLUMN
from tradebeat_pipeline.defs.metadata import FreshMetadata, GapsMetadata, OhlcMetadata
from tradebeat_pipeline.ingest import Batch
from tradebeat_pipeline.quality import MAX_LISTED, GapReport, Hole, check_ohlc, covered_by_exchange
from tradebeat_pipeline.store import CandleStore
from tradebeat_pipeline.timewindows import MINUTE_MS, iso_utc

OHLC_VALID = "ohlc_valid"
GAPS_EXPLAINED = "gaps_explained"
FRESH = "fresh"

CHECK_SPECS = [
    dg.AssetCheckSpec(
        OHLC_VALID,
        asset="ohlcv_1m",
        description="high ≥ max(open, close), low ≤ min(open, close), prices > 0, volume ≥ 0, no NaN, "
        "minute-aligned open times. Impossible candles are stored as received and named here; "
        "flat zero-volume (halted) minutes are valid and counted.",
    ),
    dg.AssetCheckSpec(
        GAPS_EXPLAINED,
        asset="ohlcv_1m",
        description="Every closed minute of the run's partitions is stored or a hole the exchange "
        "itself has (kind `exchange`). Holes that are `pending` or `fetch_failed` fail the check. A "
        "heartbeat judges the minutes it fetched plus the holes recorded in its months.",
    ),
    dg.AssetCheckSpec(
        FRESH,
        asset="ohlcv_1m",
        description="Each symbol's newest candle is at most FRESHNESS_MINUTES behind the last closed "
        "minute of the run's window (WARN when the exchange itself has no candles there).",
    ),
]


def evaluate(store: CandleStore, batch: Batch, *, freshness_minutes: int) -> Iterator[dg.AssetCheckResult]:
    """All three checks for what this run wrote, from the write's own report (the store is asked
    again only about the holes of a symbol that lags)."""
    report = batch.report
    if report is None:
        raise RuntimeError("the batch was not written: the IO manager records its report before checks")
    yield ohlc_valid(batch.candles)
    elsewhere = [(s, h) for s, holes in report.holes_elsewhere.items() for h in holes]
    yield gaps_explained([r for reports in report.gaps.values() for r in reports], elsewhere)
    yield fresh(store, report.windows, report.newest, freshness_minutes)


def ohlc_valid(candles: pd.DataFrame) -> dg.AssetCheckResult:
    report = check_ohlc(candles)
    has_symbol = SYMBOL_COLUMN in candles.columns
    violations = report.violations
    extra: dict[str, dg.RawMetadataValue] = {}
    if len(violations):
        shown = violations.head(MAX_LISTED).assign(time_utc=lambda f: f["timestamp"].map(iso_utc))
        columns = [SYMBOL_COLUMN] * has_symbol + [
            "time_utc",
            "open",
            "high",
            "low",
            "close",
            "volume",
            "problem",
        ]
        extra["violating_rows"] = dg.MetadataValue.md(_markdown(shown[columns]))
    if report.halted:
        extra["halted"] = dg.MetadataValue.md(
            "\n".join(
                f"- {iso_utc(a)} → {iso_utc(b)} ({(b - a) // MINUTE_MS + 1} min, flat, zero volume)"
                for a, b in report.halted[:MAX_LISTED]
            )
        )
    metadata = OhlcMetadata(report.rows, len(violations), report.halted_minutes)
    return dg.AssetCheckResult(
        check_name=OHLC_VALID,
        passed=report.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata.as_dict(**extra),
    )


def gaps_explained(
    reports: Sequence[GapReport], elsewhere: Sequence[tuple[str, Hole]] = ()
) -> dg.AssetCheckResult:
    """Every judged minute stored or the exchange's own hole; for a beat, which judges only what it
    fetched, also no unexplained hole recorded elsewhere in its months (`elsewhere`)."""
    holes = [(r.symbol, h) for r in reports for h in r.holes] + list(elsewhere)
    unexplained = sum(r.unexplained for r in reports)
    unexplained_elsewhere = sum(h.minutes for _, h in elsewhere)
    metadata = GapsMetadata(
        expected_minutes=sum(r.expected for r in reports),
        stored=sum(r.stored for r in reports),
        halted=sum(r.halted for r in reports),
        explained_minutes=sum(r.explained for r in reports),
        unexplained_minutes=unexplained,
        holes=len(holes),
        unexplained_elsewhere_minutes=unexplained_elsewhere if elsewhere else None,
    )
    extra = {"hole_list": dg.MetadataValue.md(_holes_markdown(holes))} if holes else {}
    return dg.AssetCheckResult(
        check_name=GAPS_EXPLAINED,
        passed=unexplained + unexplained_elsewhere == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata.as_dict(**extra),
    )


def fresh(
    store: CandleStore,
    windows: dict[str, list[tuple[int, int]]],
    newest: dict[str, int | None],
    freshness_minutes: int,
) -> dg.AssetCheckResult:
    """Lag of each symbol's newest candle behind the last closed minute of its window."""
    ends = {symbol: runs[-1][1] for symbol, runs in windows.items() if runs}
    listed = store.first_candles(list(ends))
    lagging: dict[str, str] = {}
    severity = dg.AssetCheckSeverity.WARN
    worst = 0
    for symbol, end in ends.items():
        last_closed = end - MINUTE_MS
        first = listed.get(symbol)
        if first is not None and first > last_closed:
            continue  # the exchange had no history yet
        stored = newest.get(symbol)
        since = stored + MINUTE_MS if stored is not None else windows[symbol][0][0]
        lag = (last_closed - since) // MINUTE_MS + 1
        worst = max(worst, lag)
        if lag <= freshness_minutes:
            continue
        by_exchange = covered_by_exchange(store.holes(symbol, since, end), since, last_closed)
        lagging[symbol] = f"{lag} min behind {iso_utc(last_closed)}" + (
            " (the exchange has no candles there)" if by_exchange else ""
        )
        if not by_exchange:
            severity = dg.AssetCheckSeverity.ERROR
    metadata = FreshMetadata(freshness_minutes, worst, lagging or "none")
    return dg.AssetCheckResult(
        check_name=FRESH, passed=not lagging, severity=severity, metadata=metadata.as_dict()
    )


def _holes_markdown(holes: Sequence[tuple[str, Hole]]) -> str:
    lines = ["| symbol | start | end | minutes | kind |", "|---|---|---|---|---|"]
    lines += [
        f"| {s} | {iso_utc(h.start)} | {iso_utc(h.end)} | {h.minutes} | {h.kind} |"
        for s, h in holes[:MAX_LISTED]
    ]
    if len(holes) > MAX_LISTED:
        lines.append(f"\n…and {len(holes) - MAX_LISTED} more; `tradebeat gaps SYMBOL` lists them all")
    return "\n".join(lines)


def _markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
