"""CHARTS_DIR over HTTP on 127.0.0.1, read-only (no Dagster inside).

The Dagster UI runs in a browser, which refuses `file://` links from an http page; so whatever runs
the UI for this project serves the chart folder here and the chart asset's metadata links to it.
The standard library's handler is enough: it answers only GET and HEAD, and never outside its folder.
"""

import functools
import logging
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger("tradebeat.charts")

HOST = "127.0.0.1"


def chart_url(port: int, name: str) -> str:
    """Where a file of CHARTS_DIR is served."""
    return f"http://{HOST}:{port}/{name}"


class _ChartFiles(SimpleHTTPRequestHandler):
    """Files of one folder; nothing else (no upload exists in this handler)."""

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")  # each materialization rewrites the page
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def serve_charts(directory: Path, port: int) -> ThreadingHTTPServer:
    """Serve `directory` on 127.0.0.1:`port` from a daemon thread; `shutdown()` stops it."""
    directory.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer((HOST, port), functools.partial(_ChartFiles, directory=str(directory)))
    threading.Thread(target=server.serve_forever, name="charts-http", daemon=True).start()
    log.info("charts in %s served on %s", directory, chart_url(server.server_address[1], ""))
    return server
