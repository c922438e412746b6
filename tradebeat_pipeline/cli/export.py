"""`tradebeat export`: stored candles of a range as zstd Parquet, rolled up on the fly for 5m/1h/1d
(the same code as the rollup assets), so an export is never staler than the candles."""

import argparse
from datetime import date

import pandas as pd

from tradebeat_pipeline import progress
from tradebeat_pipeline.candles import empty_candles
from tradebeat_pipeline.rollups import export_parquet, rollup
from tradebeat_pipeline.settings import Settings
from tradebeat_pipeline.store import open_store
from tradebeat_pipeline.timewindows import DAY_MS, day_window, last_closed_minute

# Candles are read a month at a time, so the progress bar moves on a long range.
READ_CHUNK_MS = 30 * DAY_MS


def export(args: argparse.Namespace, settings: Settings) -> int:
    symbol: str = args.symbol
    start: date = args.start
    end: date = args.end
    window = (day_window(start)[0], min(day_window(end)[1], last_closed_minute()))
    chunks = [(a, min(a + READ_CHUNK_MS, window[1])) for a in range(window[0], window[1], READ_CHUNK_MS)]
    frames = []
    with open_store(settings) as store, progress.shown():
        progress.begin(f"{symbol}: reading candles", total=len(chunks))
        for a, b in chunks:  # an unknown symbol is refused (UnknownSymbol is a Refused)
            frames.append(store.read_candles(symbol, a, b))
            progress.advance(1)
    candles = pd.concat(frames, ignore_index=True) if frames else empty_candles()
    frame = candles if args.timeframe == "1m" else rollup(candles, args.timeframe, *window)
    size = export_parquet(frame, args.out)
    print(
        f"{symbol}: {len(frame)} {args.timeframe} rows {start}..{end} written to {args.out} ({size:,} bytes)"
    )
    return 0
