"""The chart folder over HTTP on 127.0.0.1: its files, read-only, nothing outside it."""

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tradebeat_pipeline.chart_server import CHART_PAGE, chart_url, serve_charts


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    charts = tmp_path / "charts"
    server = serve_charts(charts, 0)  # a free port
    yield charts, int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_a_chart_file_is_served_as_written(served: tuple[Path, int]) -> None:
    charts, port = served
    (charts / "price_chart.html").write_text("<html>chart</html>")
    with urllib.request.urlopen(chart_url(port, "price_chart.html"), timeout=10) as answer:
        assert (answer.status, answer.read()) == (200, b"<html>chart</html>")


def test_the_server_listens_on_loopback_only(tmp_path: Path) -> None:
    server = serve_charts(tmp_path / "charts", 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()


def test_nothing_can_be_written_through_it(served: tuple[Path, int]) -> None:
    charts, port = served
    request = urllib.request.Request(chart_url(port, "x.html"), data=b"<script>", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 501
    assert not (charts / "x.html").exists()


def test_a_file_outside_the_chart_folder_is_not_served(served: tuple[Path, int]) -> None:
    charts, port = served
    (charts.parent / "secret.txt").write_text("keys")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/../secret.txt", timeout=10)
    assert refused.value.code == 404


def test_a_chart_page_not_drawn_yet_says_how_to_draw_it(served: tuple[Path, int]) -> None:
    _, port = served
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(chart_url(port, CHART_PAGE), timeout=10)
    page = missing.value.read().decode()
    assert missing.value.code == 404
    assert f"{CHART_PAGE} has not been drawn yet" in page
    assert "Materialize" in page


def test_a_missing_file_other_than_a_page_gets_the_plain_not_found(served: tuple[Path, int]) -> None:
    _, port = served
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(chart_url(port, "price_chart.svg"), timeout=10)
    assert missing.value.code == 404
    assert "not been drawn" not in missing.value.read().decode()
