"""The price chart as one self-contained Plotly HTML page (no Dagster inside).

Top: every symbol's close on one log-scale axis, downsampled to hourly rollups, each line starting
where its data starts. Below: per symbol, candlesticks and volume for the recent window, with a range
selector. Explained holes (the exchange has no candles) are shaded; a line never bridges a hole.
plotly.js is written once beside the page, so it opens offline and the page itself stays small.
"""

import html
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tradebeat_pipeline.quality import EXCHANGE, Hole
from tradebeat_pipeline.timewindows import MINUTE_MS

if TYPE_CHECKING:
    import plotly.graph_objects as go


@dataclass(frozen=True)
class SymbolChart:
    symbol: str
    overview: pd.DataFrame  # rollup buckets (timestamp, close, ...), empty buckets as NaN
    recent: pd.DataFrame  # 1-minute candles of the recent window
    holes: list[Hole] = field(default_factory=list)


def _times(ms: pd.Series) -> pd.Series:
    return pd.to_datetime(ms, unit="ms", utc=True)


def _when(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def build_figure(charts: list[SymbolChart], *, title: str) -> "go.Figure":
    """The whole page as one Plotly figure (Plotly is imported here: only the chart run needs it)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = 1 + 2 * len(charts)
    heights = [3.0] + [2.0, 0.7] * len(charts)
    titles = ["All symbols: close, hourly, log scale"]
    for c in charts:
        titles += [f"{c.symbol}: 1-minute candles", f"{c.symbol}: volume"]
    fig = make_subplots(
        rows=rows, cols=1, row_heights=heights, vertical_spacing=0.25 / rows, subplot_titles=titles
    )
    for c in charts:
        overview = c.overview.dropna(subset=["close"], how="all")
        if len(overview):  # the line starts at the symbol's first bucket; NaN buckets break it
            first = overview["timestamp"].iloc[0]
            own = c.overview[c.overview["timestamp"] >= first]
            fig.add_trace(
                go.Scatter(
                    x=_times(own["timestamp"]), y=own["close"], name=c.symbol, mode="lines", connectgaps=False
                ),
                row=1,
                col=1,
            )
    fig.update_yaxes(type="log", row=1, col=1)
    for i, c in enumerate(charts):
        price_row, volume_row = 2 + 2 * i, 3 + 2 * i
        r = c.recent
        x = _times(r["timestamp"])
        fig.add_trace(
            go.Candlestick(
                x=x,
                open=r["open"],
                high=r["high"],
                low=r["low"],
                close=r["close"],
                name=c.symbol,
                showlegend=False,
            ),
            row=price_row,
            col=1,
        )
        fig.add_trace(
            go.Bar(x=x, y=r["volume"], name=f"{c.symbol} volume", showlegend=False, marker_color="#7f8c8d"),
            row=volume_row,
            col=1,
        )
        fig.update_xaxes(
            rangeslider_visible=False,
            rangeselector={
                # Above the subplot's top-left corner, clear of the first axis label.
                "x": 0,
                "y": 1.02,
                "xanchor": "left",
                "yanchor": "bottom",
                "buttons": [
                    {"count": 1, "label": "1h", "step": "hour", "stepmode": "backward"},
                    {"count": 6, "label": "6h", "step": "hour", "stepmode": "backward"},
                    {"step": "all", "label": "all"},
                ],
            },
            row=price_row,
            col=1,
        )
        for hole in c.holes:
            if hole.kind == EXCHANGE:
                for row in (1, price_row, volume_row):
                    fig.add_vrect(
                        x0=_when(hole.start),
                        x1=_when(hole.end + MINUTE_MS),
                        fillcolor="#e67e22",
                        opacity=0.2,
                        line_width=0,
                        row=row,
                        col=1,
                    )
    fig.update_layout(title=title, height=500 + 420 * len(charts), template="plotly_white", hovermode="x")
    return fig


def write_page(fig: "go.Figure", path: Path) -> int:
    """Write the page (plotly.min.js once, beside it); returns the page's own size in bytes. The
    figure's title is the page's too, so a browser tab says what it holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs="directory", full_html=True)  # writes plotly.min.js beside it
    title = html.escape(str(fig.layout.title.text or "tradebeat"))
    page = path.read_text(encoding="utf-8")
    path.write_text(page.replace("<head>", f"<head><title>{title}</title>", 1), encoding="utf-8")
    return path.stat().st_size


# Plotly's default colours, in its order, so the thumbnail's lines match the page's.
_COLOURS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")


def thumbnail_svg(charts: Sequence[SymbolChart], *, width: int = 480, height: int = 150) -> str:
    """A small picture of the overview for the UI's metadata: each symbol's hourly close relative to
    its first, one line each (broken where buckets are empty), the symbols named in their colours.
    SVG drawn here, not by Plotly, whose images need a browser engine of their own."""
    plot_h = height - 22
    series = []
    for c in charts:
        if not len(c.overview):
            continue
        closes = c.overview["close"].to_numpy(dtype=float)
        known = closes[~np.isnan(closes)]
        if len(known):
            series.append((c.symbol, c.overview["timestamp"].to_numpy(dtype=float), closes / known[0]))
    parts = []
    if series:
        # From the first close to the last: a month's overview of one day's data is not a dot.
        t0 = min(float(t[~np.isnan(v)].min()) for _, t, v in series)
        t1 = max(float(t[~np.isnan(v)].max()) for _, t, v in series)
        lo = min(float(np.nanmin(v)) for _, _, v in series)
        hi = max(float(np.nanmax(v)) for _, _, v in series)
        for i, (symbol, times, values) in enumerate(series):
            colour = _COLOURS[i % len(_COLOURS)]
            xs = ((times - t0) / max(t1 - t0, 1) * (width - 4) + 2).tolist()
            ys = (plot_h - (values - lo) / max(hi - lo, 1e-12) * (plot_h - 4) - 2).tolist()
            segments: list[list[str]] = [[]]
            for x, y in zip(xs, ys, strict=True):
                if y != y:  # NaN: an empty bucket ends the line; it never bridges a hole
                    segments.append([])
                else:
                    segments[-1].append(f"{x:.1f},{y:.1f}")
            parts += [
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(seg)}"/>'
                for seg in segments
                if seg
            ]
            parts.append(
                f'<text x="{4 + 110 * i}" y="{height - 6}" fill="{colour}" font-family="sans-serif" '
                f'font-size="12">{html.escape(symbol)}</text>'
            )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><rect width="100%" height="100%" fill="white"/>'
        + "".join(parts)
        + "</svg>"
    )


def human_bytes(size: int) -> str:
    """A size as people read it: 444821 -> '434 KiB'."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024**2:
        return f"{size / 1024:.0f} KiB"
    return f"{size / 1024**2:.1f} MiB"


def screenshot(
    page: Path, png: Path, *, chromium: str, profile_dir: Path, size: tuple[int, int] = (1400, 2200)
) -> None:
    """Render the page in headless Chromium to a PNG (the flags keep it off the network: without them
    it tries to reach Google's hosts at every start)."""
    subprocess.run(  # noqa: S603 (our own argv)
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile_dir}",
            f"--window-size={size[0]},{size[1]}",
            "--virtual-time-budget=5000",
            f"--screenshot={png}",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
