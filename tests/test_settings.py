from pathlib import Path

import pytest

from connector.errors import ConfigurationError
from connector.settings import load_settings

SECRET = "charles-secret-value-123"

BASE = {
    "SFCHARLES_SALESFORCE_LOGIN_URL": "https://login.example.test",
    "SFCHARLES_SALESFORCE_CLIENT_ID": "client-id",
    "SFCHARLES_SALESFORCE_CLIENT_SECRET": "client-secret-value",
    "SFCHARLES_CHARLES_BASE_URL": "https://tenant.example.test",
    "SFCHARLES_CHARLES_API_KEY": SECRET,
}


def problems_of(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ)
    return str(info.value)


def test_valid_environment_loads() -> None:
    settings = load_settings(BASE)
    assert settings.charles_base_url == "https://tenant.example.test"
    assert settings.resolved_auth() == "client_credentials"
    assert settings.charles_max_in_flight == 8


def test_urls_have_no_default() -> None:
    message = problems_of({})
    assert "SFCHARLES_SALESFORCE_LOGIN_URL: missing" in message
    assert "SFCHARLES_CHARLES_BASE_URL: missing" in message


def test_every_problem_reported_at_once() -> None:
    message = problems_of({**BASE, "SFCHARLES_CHARLES_MAX_IN_FLIGHT": "0", "SFCHARLES_POLL_INTERVAL_S": "soon", "SFCHARLES_TYPO": "1"})
    assert "3 problems" in message
    assert "SFCHARLES_CHARLES_MAX_IN_FLIGHT" in message
    assert "SFCHARLES_POLL_INTERVAL_S" in message
    assert "SFCHARLES_TYPO: unknown variable" in message


def test_login_url_must_be_https() -> None:
    message = problems_of({**BASE, "SFCHARLES_SALESFORCE_LOGIN_URL": "http://login.example.test"})
    assert "SFCHARLES_SALESFORCE_LOGIN_URL" in message
    assert "https" in message


def test_default_region_validated() -> None:
    message = problems_of({**BASE, "SFCHARLES_DEFAULT_REGION": "XX"})
    assert "SFCHARLES_DEFAULT_REGION: 'XX' is not" in message


def test_secret_from_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file-secret\n")
    environ = {key: value for key, value in BASE.items() if key != "SFCHARLES_CHARLES_API_KEY"}
    settings = load_settings({**environ, "SFCHARLES_CHARLES_API_KEY_FILE": str(key_file)})
    assert settings.charles_api_key.get_secret_value() == "from-file-secret"


def test_secret_file_missing_named(tmp_path: Path) -> None:
    environ = {key: value for key, value in BASE.items() if key != "SFCHARLES_CHARLES_API_KEY"}
    message = problems_of({**environ, "SFCHARLES_CHARLES_API_KEY_FILE": str(tmp_path / "absent")})
    assert "SFCHARLES_CHARLES_API_KEY_FILE: cannot read" in message


def test_secret_and_file_both_set_rejected(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("x")
    message = problems_of({**BASE, "SFCHARLES_CHARLES_API_KEY_FILE": str(key_file)})
    assert "set only one of them" in message


def test_jwt_needs_username() -> None:
    environ = {key: value for key, value in BASE.items() if key != "SFCHARLES_SALESFORCE_CLIENT_SECRET"}
    message = problems_of({**environ, "SFCHARLES_SALESFORCE_AUTH": "jwt", "SFCHARLES_SALESFORCE_PRIVATE_KEY": "pem"})
    assert "SFCHARLES_SALESFORCE_USERNAME" in message


def test_repr_hides_secrets() -> None:
    settings = load_settings(BASE)
    assert SECRET not in repr(settings)
    assert "client-secret-value" not in repr(settings)


def test_invalid_secret_not_echoed() -> None:
    message = problems_of({**BASE, "SFCHARLES_CHARLES_API_KEY": "", "SFCHARLES_CHARLES_MAX_IN_FLIGHT": SECRET})
    assert SECRET not in message.replace("SFCHARLES_CHARLES_MAX_IN_FLIGHT", "")


def test_config_file_with_sections(tmp_path: Path) -> None:
    config = tmp_path / "connector.toml"
    config.write_text('poll_interval_s = 15\n[charles]\nmax_in_flight = 4\n')
    settings = load_settings({**BASE, "SFCHARLES_CONFIG_FILE": str(config)})
    assert settings.poll_interval_s == 15
    assert settings.charles_max_in_flight == 4


def test_environment_overrides_config_file(tmp_path: Path) -> None:
    config = tmp_path / "connector.yaml"
    config.write_text("poll_interval_s: 15\n")
    settings = load_settings({**BASE, "SFCHARLES_CONFIG_FILE": str(config), "SFCHARLES_POLL_INTERVAL_S": "30"})
    assert settings.poll_interval_s == 30


def test_config_file_refuses_secrets(tmp_path: Path) -> None:
    config = tmp_path / "connector.toml"
    config.write_text('[charles]\napi_key = "in-a-file"\n')
    message = problems_of({**BASE, "SFCHARLES_CONFIG_FILE": str(config)})
    assert "contains a secret" in message
    assert "in-a-file" not in message


def test_config_file_unknown_key_named(tmp_path: Path) -> None:
    config = tmp_path / "connector.toml"
    config.write_text("[charles]\nmax_inflight = 4\n")
    message = problems_of({**BASE, "SFCHARLES_CONFIG_FILE": str(config)})
    assert "unknown key 'charles.max_inflight'" in message


def test_empty_secret_rejected_by_name(tmp_path: Path) -> None:
    empty = tmp_path / "key"
    empty.write_text("\n")
    environ = {key: value for key, value in BASE.items() if key != "SFCHARLES_CHARLES_API_KEY"}
    message = problems_of({**environ, "SFCHARLES_CHARLES_API_KEY_FILE": str(empty)})
    assert "SFCHARLES_CHARLES_API_KEY_FILE: is empty" in message


def test_log_level_any_case() -> None:
    assert load_settings({**BASE, "SFCHARLES_LOG_LEVEL": "debug"}).log_level == "DEBUG"
