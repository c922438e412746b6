"""Archive parse throughput: one month of SYN/USDT from its zip on disk to the candle frame.

    uv run python benchmarks/archive_parse.py

The monthly file is built by the sandbox exactly as it serves it (44,640 candles of 2025-03, times in
microseconds) and written to a temporary file; then `read_archive` is timed as the reader runs it after
a download: sha256 of the file, unzip, CSV rows through the REST parser, µs → ms, checks. Best of 5.
"""

import tempfile
import time
from datetime import date
from pathlib import Path

from tradebeat_pipeline.archive import archive_urls, read_archive
from tradebeat_pipeline.sandbox.archive import ArchiveShelf, locate
from tradebeat_pipeline.sandbox.market_data import SYNTHETIC_START, SyntheticSeries

MONTH = date(2025, 3, 1)
REPEATS = 5


def main() -> None:
    file = archive_urls("http://127.0.0.1", "SYNUSDT", MONTH)
    wanted = locate("monthly", "SYNUSDT", file.name)
    assert wanted is not None
    built = ArchiveShelf().build(SyntheticSeries(SYNTHETIC_START), wanted, None)
    assert built is not None
    body, checksum = built
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / file.name
        path.write_bytes(body)
        best = float("inf")
        for _ in range(REPEATS):
            started = time.perf_counter()
            result = read_archive(path, file, checksum)
            best = min(best, time.perf_counter() - started)
    print(f"{file.name}: {len(body) / 1e6:.1f} MB zip, {result.rows:,} candles")
    print(f"zip → frame: {best * 1000:.0f} ms, {result.rows / best:,.0f} candles/s (best of {REPEATS})")


if __name__ == "__main__":
    main()
