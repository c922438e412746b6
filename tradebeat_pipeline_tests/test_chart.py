"""The chart's thumbnail: one line per symbol, broken where its buckets are empty, each named."""

import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd

from tradebeat_pipeline.chart import SymbolChart, thumbnail_svg

SVG = "{http://www.w3.org/2000/svg}"
HOUR = 3_600_000


def overview(closes: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"timestamp": [i * HOUR for i in range(len(closes))], "close": closes})


def test_the_thumbnail_draws_each_symbol_and_never_bridges_an_empty_bucket() -> None:
    charts = [
        SymbolChart("BTC/USDT", overview([1.0, 2.0, np.nan, 3.0, 4.0]), pd.DataFrame()),
        SymbolChart("ETH/USDT", overview([5.0, 6.0, 7.0, 8.0, 9.0]), pd.DataFrame()),
    ]
    svg = ET.fromstring(thumbnail_svg(charts))
    lines = svg.findall(f"{SVG}polyline")
    assert [len(line.attrib["points"].split()) for line in lines] == [2, 2, 5]
    assert [t.text for t in svg.findall(f"{SVG}text")] == ["BTC/USDT", "ETH/USDT"]


def test_a_symbol_without_closes_is_left_out_of_the_thumbnail() -> None:
    charts = [SymbolChart("BTC/USDT", overview([np.nan, np.nan]), pd.DataFrame())]
    svg = ET.fromstring(thumbnail_svg(charts))
    assert svg.findall(f"{SVG}polyline") == [] and svg.findall(f"{SVG}text") == []


def test_the_thumbnail_spans_from_the_first_close_to_the_last_not_the_whole_overview() -> None:
    charts = [SymbolChart("BTC/USDT", overview([np.nan, np.nan, 1.0, 2.0, np.nan]), pd.DataFrame())]
    (line,) = ET.fromstring(thumbnail_svg(charts, width=104)).findall(f"{SVG}polyline")
    xs = [float(point.split(",")[0]) for point in line.attrib["points"].split()]
    assert xs == [2.0, 102.0]
