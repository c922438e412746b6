"""CHARTS_DIR over HTTP on 127.0.0.1, read-only (no Dagster inside).

The Dagster UI runs in a browser, which refuses `file://` links from an http page; so whatever runs
the UI for this project serves the chart folder here and the chart asset's metadata links to it.
The standard library's handler is enough: it answers only GET and HEAD, and never outside its folder.
"""

import functools
import html
import logging
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger("tradebeat.charts")

HOST = "127.0.0.1"
CHART_PAGE = "price_chart.html"  # the price_chart asset's page in CHARTS_DIR

# What a page not drawn yet answers (still a 404): a newcomer who opens the link before the first
# chart run learns when it comes and how to draw it now, instead of a bare "File not found".
_NOT_DRAWN = """<!doctype html><html><head><meta charset="utf-8"><title>Not drawn yet</title></head>
<body><h1>{name} has not been drawn yet</h1>
<p>chart_schedule draws the price chart every 15 minutes, once candles are stored. To draw it now,
open the <code>price_chart</code> asset in the Dagster UI and click <b>Materialize</b>, then reload
this page.</p></body></html>
"""


def chart_url(port: int, name: str) -> str:
    """Where a file of CHARTS_DIR is served."""
    return f"http://{HOST}:{port}/{name}"


class _ChartFiles(SimpleHTTPRequestHandler):
    """Files of one folder; nothing else (no upload exists in this handler)."""

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")  # each materialization rewrites the page
        super().end_headers()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A missing page says why and what to do; anything else is the standard answer."""
        name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
        if code != 404 or not name.endswith(".html"):
            super().send_error(code, message, explain)
            return
        body = _NOT_DRAWN.format(name=html.escape(name)).encode()
        self.send_response(404, "Not drawn yet")
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def serve_charts(directory: Path, port: int) -> ThreadingHTTPServer:
    """Serve `directory` on 127.0.0.1:`port` from a daemon thread; `shutdown()` stops it."""
    directory.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer((HOST, port), functools.partial(_ChartFiles, directory=str(directory)))
    threading.Thread(target=server.serve_forever, name="charts-http", daemon=True).start()
    log.info("charts in %s served on %s", directory, chart_url(server.server_address[1], ""))
    return server
