"""A throwaway PostgreSQL cluster from Debian's binaries on 127.0.0.1 and a free port: the one start-up
the tests' `postgres_server` fixture and the benchmarks share, so a benchmark measures the server the
tests prove correct; and deploy/dagster.yaml pointed at it, for a Dagster instance on it. Plain
functions, no pytest: the fixture turns `ClusterUnavailable` into a failure (never a skip)."""

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

from tradebeat_pipeline.settings import PROJECT_DIR

PG_LIB = Path("/usr/lib/postgresql")  # Debian's postgresql package: <version>/bin, not on PATH
# Tests never crash their server, so they need no durability; a benchmark keeps the server's defaults.
NOT_DURABLE = "-F -c synchronous_commit=off -c full_page_writes=off"


class ClusterUnavailable(RuntimeError):
    """PostgreSQL is not installed or its server would not start; the message holds its own words."""


@dataclass(frozen=True)
class PostgresServer:
    """A throwaway cluster on 127.0.0.1 with trust authentication for its one superuser."""

    port: int
    user: str = "tradebeat"
    host: str = "127.0.0.1"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"


def pg_tool(name: str) -> str:
    """`name` on PATH, else from the newest Debian PostgreSQL installed."""
    installed = sorted(
        PG_LIB.glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    found = shutil.which(name) or (str(installed[-1]) if installed else None)
    if found is None:
        raise ClusterUnavailable(f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql)")
    return found


def free_port() -> int:
    """A port nothing on 127.0.0.1 listens on now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_cluster(*, durable: bool = False, prefix: str = "tradebeat-pg-") -> Iterator[PostgresServer]:
    """initdb + pg_ctl start in a temporary folder, as the unprivileged `postgres` user when run as
    root (PostgreSQL refuses to run as root); stopped and removed when the block ends."""
    initdb, pg_ctl = pg_tool("initdb"), pg_tool("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix=prefix))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"
    server = PostgresServer(free_port())
    options = f"-h 127.0.0.1 -p {server.port} -k {root}" + ("" if durable else f" {NOT_DURABLE}")
    steps = [
        [initdb, "-D", str(data), "-A", "trust", "-U", server.user, "-E", "UTF8", "--no-sync"],
        [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "120", "start"],
    ]
    try:
        for step in steps:
            done = subprocess.run([*as_user, *step], cwd=root, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise ClusterUnavailable(
                    f"the PostgreSQL test server could not start: {Path(step[0]).name} exited with "
                    f"{done.returncode}: {done.stderr.strip()[-2000:]} {tail}"
                )
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                cwd=root,
                capture_output=True,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def fresh_database(server: PostgresServer, prefix: str = "test") -> Iterator[str]:
    """A new, empty database on `server` (its URL), dropped when the block ends."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.url(name)
    finally:
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def deployment_instance(home: Path, server: PostgresServer, database_url: str) -> dict[str, str]:
    """deploy/dagster.yaml in `home` with its one change for a machine without Docker (the default
    run launcher), and the variables it reads, pointing at `database_url` on `server`."""
    config = yaml.safe_load((PROJECT_DIR / "deploy" / "dagster.yaml").read_text())
    del config["run_launcher"]  # DockerRunLauncher needs a Docker daemon
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return {
        "DAGSTER_PG_USERNAME": server.user,
        "DAGSTER_PG_PASSWORD": "unused-trust-auth",
        "DAGSTER_PG_HOSTNAME": server.host,
        "DAGSTER_PG_PORT": str(server.port),
        "DAGSTER_PG_DB": database_url.rsplit("/", 1)[1],
    }
