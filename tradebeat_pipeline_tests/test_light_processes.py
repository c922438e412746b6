"""Every process imports only what its work needs: `--help` and refused input answer before Dagster,
ccxt or pandas load; loading the definitions (every code server, sensor tick and run worker) loads
neither ccxt, Plotly nor DuckDB; and a client for the exchange loads ccxt's Binance alone. Each case
runs in a fresh interpreter, as the command would."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HEAVY_FOR_THE_CLI = ("dagster", "ccxt", "pandas")

CLI = """
import json, sys
from tradebeat_pipeline.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def run_python(code: str, *args: str, env_dir: Path) -> dict[str, Any]:
    """Run `code` in a fresh interpreter pointed at an empty project state; its last line is JSON."""
    env = {
        "PATH": "/usr/bin:/bin",
        "DB_PATH": str(env_dir / "none.sqlite"),
        "DAGSTER_HOME": str(env_dir / "home"),
        "LOG_DIR": str(env_dir / "logs"),
        "TRADEBEAT_ENV_FILE": str(env_dir / "none.env"),
    }
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.stdout, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], 0),
        (["symbols", "add", "BTCUSDT"], 2),
        (["symbols", "add", "BTC/USDT", "eth-usdt"], 2),
        (["backfill", "BTC/USDT", "--start", "2020-13-01", "--end", "2020-01-02"], 2),
        (["gaps", "BTC/USDT:USDT", "--start", "2020-01-01", "--end", "2020-01-02"], 2),
        (["export", "BTC/USDT", "--start", "2020-01-02", "--end", "2020-01-01", "--out", "x.parquet"], 2),
    ],
    ids=[
        "help",
        "malformed symbol",
        "one malformed of two",
        "malformed day",
        "derivatives",
        "reversed range",
    ],
)
def test_help_and_refused_input_answer_without_importing_dagster_ccxt_or_pandas(
    tmp_path: Path, argv: list[str], code: int
) -> None:
    result = run_python(CLI, *argv, env_dir=tmp_path)
    assert result["code"] == code
    assert [m for m in HEAVY_FOR_THE_CLI if m in result["modules"]] == []


def test_loading_the_definitions_imports_neither_ccxt_plotly_nor_duckdb(tmp_path: Path) -> None:
    code = (
        "import json, sys; from tradebeat_pipeline.definitions import defs; defs.resolve_all_asset_specs();"
        "print(json.dumps({'modules': sorted({m.split('.')[0] for m in sys.modules})}))"
    )
    modules = run_python(code, env_dir=tmp_path)["modules"]
    assert [m for m in ("ccxt", "plotly", "duckdb") if m in modules] == []


def test_an_exchange_client_loads_ccxts_binance_and_no_other_exchange(tmp_path: Path) -> None:
    code = (
        "import json, sys; from tradebeat_pipeline.exchange.ccxt_client import CcxtExchange;"
        "print(json.dumps({'modules': sorted(m for m in sys.modules if m.startswith('ccxt.'))}))"
    )
    modules = run_python(code, env_dir=tmp_path)["modules"]
    exchanges = {m.split(".")[2] for m in modules if m.startswith("ccxt.async_support.")}
    exchanges -= {"base"}
    assert exchanges == {"binance"}
    assert "ccxt.okx" not in modules and "ccxt.binance" not in modules
