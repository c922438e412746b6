"""Archive parse throughput: a 30-day month of SYN/USDT (43,200 candles), vectorised reader vs REST parser.

    uv run python benchmarks/archive_parse.py

The monthly file is built by the sandbox exactly as it serves it (2025-04, times in microseconds) and
written to a temporary file. Timed, best of 7, wall clock, one thread:
- the REST parser: `parse_klines` on the CSV's rows already split into fields, as an answer gives them
  (the split itself not counted);
- `parse_archive_bytes`: the CSV's bytes to the checked frame (header, µs → ms, time checks);
- `parse_archive_zip`: the zip on disk to the frame, inflating included;
- `read_archive`: what the reader runs on a file, sha256 of the zip included.
Each result is checked equal to the REST parser's frame first.
"""

import io
import tempfile
import time
import zipfile
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from tradebeat_pipeline.archive import archive_urls, parse_archive_bytes, parse_archive_zip, read_archive
from tradebeat_pipeline.exchange.binance import parse_klines
from tradebeat_pipeline.sandbox.archive import ArchiveShelf, locate
from tradebeat_pipeline.sandbox.market_data import SYNTHETIC_START, SyntheticSeries

MONTH = date(2025, 4, 1)
REPEATS = 7


def best_of(run: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    file = archive_urls("http://127.0.0.1", "SYNUSDT", MONTH)
    wanted = locate("monthly", "SYNUSDT", file.name)
    assert wanted is not None
    built = ArchiveShelf().build(SyntheticSeries(SYNTHETIC_START), wanted, None)
    assert built is not None
    body, checksum = built
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        csv = archive.read(archive.infolist()[0])
    rows = [line.split(",") for line in csv.decode("ascii").splitlines()]
    reference, _ = parse_klines(rows, where=file.name)
    reference["timestamp"] //= 1000
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / file.name
        path.write_bytes(body)
        pd.testing.assert_frame_equal(parse_archive_zip(path, file)[0], reference, check_exact=True)
        timings = {
            "REST parser (parse_klines, rows split)": best_of(lambda: parse_klines(rows, where=file.name)),
            "CSV bytes → frame (parse_archive_bytes)": best_of(lambda: parse_archive_bytes(csv, file)),
            "zip → frame (parse_archive_zip)": best_of(lambda: parse_archive_zip(path, file)),
            "sha256 + zip → frame (read_archive)": best_of(lambda: read_archive(path, file, checksum)),
        }
    rest = timings["REST parser (parse_klines, rows split)"]
    print(f"{file.name}: {len(body) / 1e6:.1f} MB zip, {len(csv) / 1e6:.1f} MB CSV, {len(rows):,} candles")
    for label, seconds in timings.items():
        rate = len(rows) / seconds
        print(f"{label:42s} {seconds * 1000:6.1f} ms  {rate:>11,.0f} candles/s  x{rest / seconds:.1f}")


if __name__ == "__main__":
    main()
