"""The vectorised CSV kline parser: the double of each decimal text is the one Python's `float` gives,
bit for bit, and rows that are not plain digits are left to `parse_klines` rather than guessed at."""

import random

import numpy as np
import pandas as pd
import pytest

from tradebeat_pipeline.exchange.binance import KLINE_FIELDS, MalformedAnswer, parse_klines
from tradebeat_pipeline.exchange.kline_csv import parse_kline_csv

ROW = "1577836800000,7195.24,7196.25,7183.14,7186.68,51.642812,1577836859999,371233.51,493,19.59,140888.41,0"
DECIMAL_FIELDS = [1, 2, 3, 4, 5, 7, 9, 10]


def decimal_texts(count: int, seed: int) -> list[str]:
    """Binance-style `%.8f` values of every magnitude, random digit strings up to 36 digits with or
    without a point (".5", "5.", leading zeros), and the integers around 2**53 with points in them."""
    rng = random.Random(seed)
    texts = [f"{10 ** rng.uniform(-8, 11):.8f}" for _ in range(count // 2)]
    while len(texts) < count - 64:
        whole = "".join(rng.choices("0123456789", k=rng.randint(0, 18)))
        fraction = "".join(rng.choices("0123456789", k=rng.randint(0, 18)))
        if whole or fraction:
            texts.append(whole + "." + fraction if fraction or rng.random() < 0.1 else whole)
    for n in range(2**53 - 16, 2**53 + 16):
        digits = str(n)
        texts += [digits, digits[:8] + "." + digits[8:]]
    return texts


def csv_rows(fields: list[list[str]]) -> bytes:
    return "".join(",".join(row) + "\n" for row in fields).encode("ascii")


def test_every_decimal_text_becomes_the_double_python_float_gives() -> None:
    texts = decimal_texts(160_000, seed=20200101)
    template = ROW.split(",")
    rows = []
    for i in range(0, len(texts), len(DECIMAL_FIELDS)):
        row = list(template)
        for f, text in zip(DECIMAL_FIELDS, texts[i : i + len(DECIMAL_FIELDS)], strict=False):
            row[f] = text
        rows.append(row)
    parsed = parse_kline_csv(csv_rows(rows), where="test")
    assert parsed is not None
    candles, _ = parsed
    for column, f in KLINE_FIELDS.items():
        if f in DECIMAL_FIELDS:
            expected = np.array([float(row[f]) for row in rows])
            assert candles[column].to_numpy().view(np.int64).tolist() == expected.view(np.int64).tolist()


def test_plain_rows_give_exactly_the_frame_and_close_times_of_parse_klines() -> None:
    rows = [ROW.split(","), ROW.replace("1577836800000", "1577836860000").split(",")]
    rows[1][7:11] = ["", "", "", ""]  # a source without the optional volumes
    parsed = parse_kline_csv(csv_rows(rows), where="test")
    assert parsed is not None
    expected, close_times = parse_klines([[v or None for v in row] for row in rows], where="test")
    pd.testing.assert_frame_equal(parsed[0], expected, check_exact=True)
    assert parsed[1].tolist() == close_times.tolist() and parsed[1].dtype == close_times.dtype


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("7195.24", " 7195.24"),
        ("7195.24", "+7195.24"),
        ("7195.24", "7.19524e3"),
        ("7195.24", "7_195.24"),
        ("7195.24", "abc"),
        ("7195.24", ""),  # a missing required value
        ("1577836800000", "1577836800000.0"),
        ("140888.41,0", "140888.41,0,1"),  # 13 fields
        ("140888.41,0", "140888.41,0\r"),
    ],
)
def test_rows_that_are_not_plain_digits_are_left_to_parse_klines(before: str, after: str) -> None:
    assert parse_kline_csv((ROW.replace(before, after, 1) + "\n").encode("ascii"), where="test") is None


def test_a_trade_count_that_is_not_whole_is_refused_naming_the_row() -> None:
    text = ROW + "\n" + ROW.replace(",493,", ",493.5,") + "\n"
    with pytest.raises(
        MalformedAnswer, match=r"^test: kline #1 has a trade count that is not whole: '493.5'$"
    ):
        parse_kline_csv(text.encode("ascii"), where="test")


def test_a_refusal_past_the_first_chunk_of_rows_names_its_row_in_the_whole_file() -> None:
    rows = [ROW] * 9000  # ~1 MB: read in chunks of 512 KiB
    rows[7000] = ROW.replace(",493,", ",1.5,")
    with pytest.raises(MalformedAnswer, match=r"kline #7000 has a trade count that is not whole: '1.5'"):
        parse_kline_csv("".join(row + "\n" for row in rows).encode("ascii"), where="test")
