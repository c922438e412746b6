"""Layout rules the package keeps: database drivers and SQL live in `store/` only, callers use the
`CandleStore` interface rather than its implementation, and the pure modules load without Dagster
(so the CLI starts fast and each can be tested apart from the orchestrator)."""

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tradebeat_pipeline"
STORE = PACKAGE / "store"

# Everything but the Dagster definitions (defs/, definitions.py) and the CLI, which drives Dagster.
PURE_MODULES = (
    "tradebeat_pipeline.exchange",
    "tradebeat_pipeline.exchange.ccxt_client",
    "tradebeat_pipeline.exchange.binance",
    "tradebeat_pipeline.exchange.kline_csv",
    "tradebeat_pipeline.history",
    "tradebeat_pipeline.store",
    "tradebeat_pipeline.store.sqlite",
    "tradebeat_pipeline.store.postgres",
    "tradebeat_pipeline.store.common",
    "tradebeat_pipeline.store.budget_ledger",
    "tradebeat_pipeline.ingest",
    "tradebeat_pipeline.timewindows",
    "tradebeat_pipeline.quality",
    "tradebeat_pipeline.rollups",
    "tradebeat_pipeline.chart",
    "tradebeat_pipeline.budget",
    "tradebeat_pipeline.settings",
    "tradebeat_pipeline.logs",
    "tradebeat_pipeline.candles",
    "tradebeat_pipeline.symbols",
    "tradebeat_pipeline.heartbeat",
    "tradebeat_pipeline.health",
    "tradebeat_pipeline.retention",
    "tradebeat_pipeline.archive",
    "tradebeat_pipeline.progress",
    "tradebeat_pipeline.errors",
)

DRIVERS = re.compile(r"^(?:sqlite3|psycopg\d*|adbc\w*)$")
IMPLEMENTATION = "tradebeat_pipeline.store.sqlite"
_TABLES = r"(?:symbols|price_data|gaps|rollups)"
# SQL keywords are written in capitals throughout, so prose ("rolled up from symbols") never matches.
# `candles` is left out of the tables: it is also the name rollups.py gives DuckDB for a frame.
SQL = re.compile(
    r"\bINSERT\s+(?:OR\s+\w+\s+)?INTO\b"
    r"|\bDELETE\s+FROM\b"
    rf"|\bUPDATE\s+{_TABLES}\b"
    rf"|\b(?:FROM|JOIN)\s+{_TABLES}\b"
    r"|\b(?:CREATE|ALTER|DROP)\s+(?:TABLE|VIEW|INDEX)\b"
    r"|\bPRAGMA\s+\w+"
)


def outside_the_store() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if STORE not in p.parents)


def imported(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) for every import; `from a import b` also yields a.b, since b may be a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            yield node.lineno, node.module
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)


def offences(path: Path) -> list[tuple[str, int, str]]:
    """(file, line, what) for each driver import, implementation import and SQL statement in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    where = str(path.relative_to(ROOT))
    found = [(where, line, f"import {m}") for line, m in imported(tree) if DRIVERS.match(m.split(".")[0])]
    found += [(where, line, f"import {m}") for line, m in imported(tree) if m == IMPLEMENTATION]
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [(where, node.lineno, f"SQL {m.group()}") for m in SQL.finditer(node.value)]
    return sorted(set(found))


def test_the_scan_recognises_the_stores_own_driver_import_and_sql() -> None:
    found = {what for _, _, what in offences(STORE / "sqlite.py")}
    assert {"import sqlite3", "SQL INSERT INTO", "SQL UPDATE symbols", "SQL FROM price_data"} <= found
    assert {"SQL DELETE FROM", "SQL CREATE TABLE", "SQL PRAGMA user_version"} <= found
    assert {what for _, _, what in offences(STORE / "__init__.py")} == {f"import {IMPLEMENTATION}"}


def test_no_module_outside_the_store_imports_a_database_driver_or_holds_sql() -> None:
    found = [o for path in outside_the_store() for o in offences(path) if o[2] != f"import {IMPLEMENTATION}"]
    assert found == []


def test_no_module_outside_the_store_imports_the_implementation_rather_than_the_interface() -> None:
    found = [o for path in outside_the_store() for o in offences(path) if o[2] == f"import {IMPLEMENTATION}"]
    assert found == []


# Run in a fresh interpreter per module: prints "no dagster", or the package lines that imported it.
_CHILD = """
import importlib, sys, traceback
package = sys.argv[2]
chain = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "dagster" and not chain:
            chain.extend(f"{f.filename[len(package):]}:{f.lineno}"
                         for f in traceback.extract_stack() if f.filename.startswith(package))
        return None
sys.meta_path.insert(0, Spy())
importlib.import_module(sys.argv[1])
print("dagster via " + " -> ".join(chain) if "dagster" in sys.modules else "no dagster")
"""


@pytest.fixture(scope="module")
def pure_imports() -> dict[str, subprocess.CompletedProcess[str]]:
    """Import each pure module in its own interpreter, all at once: one after another takes minutes."""
    procs = {
        module: subprocess.Popen(
            [sys.executable, "-c", _CHILD, module, str(PACKAGE.parent) + "/"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module in PURE_MODULES
    }
    done = {}
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        done[module] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


@pytest.mark.parametrize("module", PURE_MODULES)
def test_a_pure_module_imports_without_dagster(
    module: str, pure_imports: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = pure_imports[module]
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "no dagster"
