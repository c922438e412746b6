"""Settings: read on demand, defaults for everything optional, bad values named."""

from pathlib import Path

import pytest
from dotenv import dotenv_values

from tradebeat_pipeline.settings import PROJECT_DIR, Settings, SettingsError


def test_defaults_need_no_environment_at_all() -> None:
    settings = Settings.from_mapping({})
    assert settings.api_url == "https://api.binance.com"
    assert settings.db_path == PROJECT_DIR / "data" / "tradebeat.sqlite"
    assert settings.backfill_minutes == 1440
    assert settings.heartbeat_buffer_seconds == 5.0
    assert settings.api_key is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BACKFILL_MINUTES", "a day"),
        ("BACKFILL_MINUTES", "-5"),
        ("HEARTBEAT_BUFFER_SECONDS", "soon"),
        ("HEARTBEAT_BUFFER_SECONDS", "120"),
        ("LOG_LEVEL", "LOUD"),
        ("BINANCE_API_URL", "ftp://example"),
        ("BINANCE_API_URL", "api.binance.com"),
        ("EXCHANGE_RETRY_ATTEMPTS", "0"),
        ("RATE_BUDGET_SHARE", "1.5"),
    ],
)
def test_an_invalid_value_stops_with_a_message_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_mapping({name: value})


def test_the_environment_wins_over_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("BACKFILL_MINUTES=100\nLOG_LEVEL=DEBUG\n")
    settings = Settings.load({"BACKFILL_MINUTES": "200"}, env_file=env_file)
    assert (settings.backfill_minutes, settings.log_level) == (200, "DEBUG")


def test_api_keys_never_show_in_the_settings_repr() -> None:
    settings = Settings.from_mapping({"BINANCE_API_KEY": "k3y-value", "BINANCE_SECRET_KEY": "s3cret"})
    assert "k3y-value" not in repr(settings)
    assert "s3cret" not in repr(settings)


def test_a_relative_db_path_is_taken_from_the_project_folder() -> None:
    assert Settings.from_mapping({"DB_PATH": "x/y.sqlite"}).db_path == PROJECT_DIR / "x" / "y.sqlite"


def test_api_keys_never_show_in_repr_str_or_a_dump_but_reach_whoever_asks_for_them() -> None:
    key, secret = "K3yValueThatMustNotShow", "S3cretValueThatMustNotShow"
    settings = Settings.from_mapping({"BINANCE_API_KEY": key, "BINANCE_SECRET_KEY": secret})
    for text in (repr(settings), str(settings), f"{settings}", settings.model_dump_json()):
        assert key not in text and secret not in text
    assert settings.api_key is not None and settings.api_key.get_secret_value() == key
    assert settings.secret_key is not None and settings.secret_key.get_secret_value() == secret


def test_blank_values_mean_unset_and_symbols_are_comma_separated() -> None:
    settings = Settings.from_mapping(
        {
            "BINANCE_API_KEY": "  ",
            "BACKFILL_MINUTES": "",
            "LOG_LEVEL": " debug ",
            "SYMBOLS": " BTC/USDT, ,ETH/USDT",
        }
    )
    assert settings.api_key is None and settings.backfill_minutes == 1440
    assert (settings.log_level, settings.symbols) == ("DEBUG", ("BTC/USDT", "ETH/USDT"))


def test_the_api_url_is_reduced_to_its_scheme_and_host() -> None:
    settings = Settings.from_mapping({"BINANCE_API_URL": "http://127.0.0.1:18081/api/v3/ping?x=1"})
    assert settings.api_url == "http://127.0.0.1:18081"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BACKFILL_MINUTES", "a day", "BACKFILL_MINUTES must be a whole number, got 'a day'"),
        ("HEARTBEAT_BUFFER_SECONDS", "120", "HEARTBEAT_BUFFER_SECONDS must be between 0 and 50"),
        ("EXCHANGE_TIMEOUT_SECONDS", "nan", "EXCHANGE_TIMEOUT_SECONDS must be between 0 and 120"),
        ("RATE_BUDGET_SHARE", "0", "RATE_BUDGET_SHARE must be above 0 and at most 1"),
        ("RUN_RETENTION_DAYS", "-1", "RUN_RETENTION_DAYS must be at least 0"),
        ("LOG_BACKUPS", "0", "LOG_BACKUPS must be at least 1"),
    ],
)
def test_the_refusal_says_what_the_variable_must_be(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_mapping({name: value})
    assert str(refused.value).startswith(message)
    assert refused.value.__cause__ is None and refused.value.__suppress_context__  # no pydantic dump


def test_a_bad_value_in_the_env_file_is_named_too(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("CHART_DAYS=a month\n")
    with pytest.raises(SettingsError, match="CHART_DAYS must be a whole number, got 'a month'"):
        Settings.load({}, env_file=env_file)


def test_environ_replaces_the_process_environment_and_a_missing_env_file_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKFILL_MINUTES", "7")
    assert Settings.load({}, env_file=tmp_path / "absent.env").backfill_minutes == 1440
    monkeypatch.setenv("TRADEBEAT_ENV_FILE", str(tmp_path / "absent.env"))
    assert Settings.load().backfill_minutes == 7


def example_variables() -> dict[str, str | None]:
    return dotenv_values(PROJECT_DIR / ".env.example")


def test_env_example_lists_exactly_the_declared_settings() -> None:
    declared = {info.alias for info in Settings.model_fields.values()}
    assert set(example_variables()) == declared


def test_env_example_shows_the_declared_defaults() -> None:
    # SYMBOLS has no default (none are tracked until asked); the example shows how to ask for two.
    example = {k: v for k, v in example_variables().items() if v is not None and k != "SYMBOLS"}
    assert Settings.from_mapping(example) == Settings.from_mapping({})


def test_every_setting_is_documented_in_its_declaration() -> None:
    assert all(info.description for info in Settings.model_fields.values())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "https://data.binance.vision"),
        ("", None),  # blank means no archives, as documented (for other settings blank is unset)
        ("off", None),
        (" OFF ", None),
        ("http://127.0.0.1:18081/", "http://127.0.0.1:18081"),
        ("https://mirror.example/binance/", "https://mirror.example/binance"),
    ],
)
def test_the_archive_url_defaults_to_binance_and_off_turns_the_archives_off(
    value: str | None, expected: str | None
) -> None:
    given = {} if value is None else {"BINANCE_ARCHIVE_URL": value}
    assert Settings.from_mapping(given).archive_url == expected


def test_a_blank_archive_url_in_the_env_file_turns_the_archives_off(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("BINANCE_ARCHIVE_URL=\n")

    assert Settings.load(environ={}, env_file=env_file).archive_url is None


@pytest.mark.parametrize("value", ["data.binance.vision", "ftp://data.binance.vision", "https://x/?a=1"])
def test_a_bad_archive_url_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match="BINANCE_ARCHIVE_URL must be an http"):
        Settings.from_mapping({"BINANCE_ARCHIVE_URL": value})
