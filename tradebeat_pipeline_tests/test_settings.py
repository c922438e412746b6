"""Settings: read on demand, defaults for everything optional, bad values named."""

from pathlib import Path

import pytest

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
