"""The deployment recipe in deploy/ is checked as far as a machine without a Docker daemon allows: its
dagster.yaml becomes a real instance on a real PostgreSQL server that records runs and events, it
keeps every setting of the committed dagster_home/dagster.yaml, and the Compose file, the workspace
and the Dockerfile agree with it and with each other on every name they share."""

import re
import shutil
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import psycopg
import pytest
import yaml

from tradebeat_pipeline.settings import PROJECT_DIR, Settings

DEPLOY = PROJECT_DIR / "deploy"
HOME_YAML = PROJECT_DIR / "dagster_home" / "dagster.yaml"
# What only a deployment has: storage on PostgreSQL and runs in containers.
DEPLOY_ONLY = {"storage", "run_launcher"}
# Dagster's instance variables, the store's variables, and the workspace's.
PG_VARIABLES = {"DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOSTNAME", "DAGSTER_PG_DB"}
PG_VARIABLES |= {"DAGSTER_PG_PORT"}
RUN_PROCESSES = ("code", "webserver", "daemon")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def env_references(config: Any) -> set[str]:
    """Every `{env: NAME}` in a Dagster YAML file, at any depth."""
    if isinstance(config, Mapping):
        if set(config) == {"env"}:
            return {str(config["env"])}
        return set().union(*(env_references(v) for v in config.values()))
    if isinstance(config, list):
        return set().union(*(env_references(v) for v in config))
    return set()


def instance_environment(postgres_url: str) -> dict[str, str]:
    """deploy/dagster.yaml's variables pointing at a database of the test server."""
    parts = urlsplit(postgres_url)
    return {
        "DAGSTER_PG_USERNAME": parts.username or "",
        "DAGSTER_PG_PASSWORD": "unused-trust-auth",  # the test server trusts 127.0.0.1
        "DAGSTER_PG_HOSTNAME": parts.hostname or "",
        "DAGSTER_PG_PORT": str(parts.port),
        "DAGSTER_PG_DB": parts.path.lstrip("/"),
    }


def test_the_deployment_instance_keeps_every_section_of_the_committed_one() -> None:
    """One definition in spirit: a change to the run queue, retention, monitoring, scheduler or logs
    of dagster_home/dagster.yaml fails here until deploy/dagster.yaml has it too."""
    home, deploy = load(HOME_YAML), load(DEPLOY / "dagster.yaml")
    assert set(deploy) - set(home) == DEPLOY_ONLY
    assert {key: deploy.get(key) for key in home} == home


@pytest.fixture
def deploy_instance(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    """deploy/dagster.yaml exactly as committed, in a DAGSTER_HOME of its own, its variables set."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name, value in instance_environment(postgres_url).items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.get() as instance:
        yield instance


@dg.asset
def probe() -> dg.MaterializeResult:
    """A run with an event worth reading back."""
    return dg.MaterializeResult(metadata={"answer": 42})


def test_the_deployment_instance_records_runs_and_events_on_postgres(
    deploy_instance: dg.DagsterInstance, postgres_url: str, tmp_path: Path
) -> None:
    from dagster_docker import DockerRunLauncher
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    instance = deploy_instance
    # The storages and the launcher the file names; the coordinator the committed file gives too.
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert isinstance(instance.run_launcher, DockerRunLauncher)
    assert instance.run_launcher.networks == ["tradebeat"]
    (tmp_path / "local").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "local"), overrides=load(HOME_YAML)) as local:
        assert type(instance.run_coordinator) is type(local.run_coordinator)

    result = dg.materialize([probe], instance=instance, tags={"tradebeat/kind": "probe"})
    assert result.success
    (record,) = instance.get_run_records(filters=dg.RunsFilter(tags={"tradebeat/kind": "probe"}))
    assert record.dagster_run.run_id == result.run_id
    assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    event = instance.get_latest_materialization_event(dg.AssetKey("probe"))
    assert event is not None and event.run_id == result.run_id
    assert event.asset_materialization is not None
    assert event.asset_materialization.metadata["answer"] == dg.IntMetadataValue(42)

    # The server's own view: the rows are in its tables, none in a SQLite file of the home.
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT run_id FROM runs").fetchall() == [(result.run_id,)]
        events = db.execute("SELECT run_id FROM event_logs WHERE run_id = %s", (result.run_id,)).fetchall()
        tables = {r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert len(events) == len(instance.all_logs(result.run_id)) > 0
    assert {"runs", "event_logs", "jobs", "job_ticks", "instigators"} <= tables
    assert list((tmp_path / "dagster_home").rglob("*.db")) == []


def test_the_instance_file_reads_the_postgres_variables_with_the_psycopg2_scheme() -> None:
    config = load(DEPLOY / "dagster.yaml")
    postgres_db = config["storage"]["postgres"]["postgres_db"]
    # With SQLAlchemy 2.1 the plain `postgresql` scheme selects psycopg 3, whose placeholders break
    # Dagster's `NOTIFY run_events, %(notify_id)s`.
    assert postgres_db["scheme"] == "postgresql+psycopg2"
    assert env_references(config["storage"]) == PG_VARIABLES


# -- docker-compose.yml, workspace.yaml, Dockerfile ---------------------------------------------

COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolated(value: Any, given: Mapping[str, str]) -> Any:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}` as `docker compose` resolves them."""
    if isinstance(value, Mapping):
        return {k: interpolated(v, given) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolated(v, given) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, how, text = match.groups()
        if given.get(name):
            return given[name]
        if how == "?":
            raise AssertionError(f"compose refuses to start without {name}: {text}")
        return text if how == "-" else ""

    return COMPOSE_VARIABLE.sub(one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml resolved as with deploy/env.example's password and nothing else set."""
    return dict(interpolated(load(DEPLOY / "docker-compose.yml"), {"POSTGRES_PASSWORD": "pw"}))


def environment(compose: Mapping[str, Any], service: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in compose["services"][service]["environment"].items()}


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_compose_refuses_to_start_without_a_postgres_password() -> None:
    with pytest.raises(AssertionError, match="POSTGRES_PASSWORD"):
        interpolated(load(DEPLOY / "docker-compose.yml"), {})


def test_every_process_of_the_deployment_gets_every_variable_the_instance_reads(
    compose: dict[str, Any],
) -> None:
    wanted = env_references(load(DEPLOY / "dagster.yaml"))
    for service in RUN_PROCESSES:
        assert wanted - set(environment(compose, service)) == set(), service


def test_runs_get_exactly_the_variables_every_tradebeat_process_gets_and_each_is_set_where_launched(
    compose: dict[str, Any],
) -> None:
    """DockerRunLauncher copies `env_vars` from the daemon's environment and refuses a launch when one
    is unset; every other name must be a tradebeat setting, or a run would silently ignore it."""
    forwarded = load(DEPLOY / "dagster.yaml")["run_launcher"]["config"]["env_vars"]
    assert len(forwarded) == len(set(forwarded))
    assert set(forwarded) == set(compose["x-tradebeat-env"])
    assert set(forwarded) <= set(environment(compose, "daemon"))
    aliases = {info.alias for info in Settings.model_fields.values()}
    assert set(forwarded) - PG_VARIABLES - aliases == set()
    settings = Settings.from_mapping(environment(compose, "daemon"))  # every value is a valid setting
    assert settings.archive_url == "https://data.binance.vision"  # blank would mean "off"


def test_the_store_and_the_instance_are_two_databases_on_the_one_postgres_service(
    compose: dict[str, Any],
) -> None:
    env = environment(compose, "daemon")
    server = compose["services"]["postgres"]["environment"]
    store = urlsplit(env["DATABASE_URL"])
    assert store.hostname == env["DAGSTER_PG_HOSTNAME"] == "postgres"
    assert str(store.port) == env["DAGSTER_PG_PORT"]
    assert store.username == env["DAGSTER_PG_USERNAME"] == server["POSTGRES_USER"]
    assert store.password == env["DAGSTER_PG_PASSWORD"] == server["POSTGRES_PASSWORD"]
    assert env["DAGSTER_PG_DB"] == server["POSTGRES_DB"] != store.path.lstrip("/")
    created = (DEPLOY / "initdb" / "10-tradebeat-database.sql").read_text()
    assert f"CREATE DATABASE {store.path.lstrip('/')};" in created
    assert "./initdb:/docker-entrypoint-initdb.d:ro" in compose["services"]["postgres"]["volumes"]


def test_the_workspace_points_at_the_code_server_compose_starts(compose: dict[str, Any]) -> None:
    (location,) = load(DEPLOY / "workspace.yaml")["load_from"]
    grpc = location["grpc_server"]
    code = compose["services"]["code"]["command"]
    project = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["tool"]["dagster"]
    for service in ("webserver", "daemon"):
        env = environment(compose, service)
        assert env[grpc["host"]["env"]] == "code"
        assert env[grpc["port"]["env"]] == option(code, "-p")
        command = compose["services"][service]["command"]
        assert option(command, "-w") == "/opt/dagster/app/deploy/workspace.yaml"
    assert grpc["location_name"] == option(code, "--location-name") == project["code_location_name"]
    assert option(code, "-m") == project["module_name"]


def test_runs_start_from_the_code_servers_image_on_the_network_every_service_joins(
    compose: dict[str, Any],
) -> None:
    launcher = load(DEPLOY / "dagster.yaml")["run_launcher"]["config"]
    network = launcher["network"]
    assert compose["networks"][network]["name"] == network
    services = compose["services"]
    assert all(network in s["networks"] for s in services.values())
    image = environment(compose, "code")["DAGSTER_CURRENT_IMAGE"]
    assert {services[name]["image"] for name in RUN_PROCESSES} == {image}
    assert services["code"]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}


def test_the_dockerfile_installs_the_locked_docker_launcher_and_the_deployment_instance(
    compose: dict[str, Any],
) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    locked = {
        p["name"]: p["version"] for p in tomllib.loads((PROJECT_DIR / "uv.lock").read_text())["package"]
    }
    pins = dict(re.findall(r"^\s+([a-z][a-z0-9-]*)==([\w.]+)", dockerfile, re.MULTILINE))
    assert "dagster-docker" in pins
    assert {name: locked.get(name) for name in pins} == pins
    assert 'cp deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml"' in dockerfile
    cmd = re.search(r"^CMD (\[.*?\])$", dockerfile, re.MULTILINE | re.DOTALL)
    assert cmd is not None
    assert yaml.safe_load(cmd.group(1).replace("\\\n", "")) == compose["services"]["code"]["command"]
