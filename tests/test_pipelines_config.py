"""Several pipelines in one config file, and the settings of replicas."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.errors import ConfigurationError
from connector.settings import load_pipelines, load_settings
from tests.test_settings import BASE, SECRET

TWO_PIPELINES = """
default_region = "US"
poll_interval_s = 30

[charles]
max_in_flight = 16

[pipelines.eu-contacts]
charles_base_url = "https://eu.example.test"
charles_api_key_file = "{eu_key}"

[pipelines.us_leads]
poll_interval_s = 120
[pipelines.us_leads.salesforce]
client_id = "us-client"
"""


def write_config(tmp_path: Path, text: str, name: str = "sfcharles.toml") -> Path:
    eu_key = tmp_path / "eu.key"
    eu_key.write_text("eu-charles-key-value\n")
    path = tmp_path / name
    path.write_text(text.replace("{eu_key}", str(eu_key)))
    return path


def test_pipelines_inherit_top_level_values_and_override_them(tmp_path: Path) -> None:
    config = write_config(tmp_path, TWO_PIPELINES)
    eu, us = load_pipelines({**BASE, "SFCHARLES_CONFIG_FILE": str(config)})
    assert (eu.pipeline, us.pipeline) == ("eu-contacts", "us_leads")
    assert eu.charles_base_url == "https://eu.example.test"
    assert eu.charles_api_key.get_secret_value() == "eu-charles-key-value"
    assert us.charles_api_key.get_secret_value() == SECRET
    assert (eu.poll_interval_s, us.poll_interval_s) == (30, 120)
    assert us.salesforce_client_id == "us-client"
    assert eu.salesforce_client_id == "client-id"
    assert eu.charles_max_in_flight == us.charles_max_in_flight == 16
    assert eu.default_region == us.default_region == "US"


def test_environment_overrides_one_pipeline(tmp_path: Path) -> None:
    config = write_config(tmp_path, TWO_PIPELINES)
    environ = {
        **BASE,
        "SFCHARLES_CONFIG_FILE": str(config),
        "SFCHARLES_PIPELINES__US_LEADS__POLL_INTERVAL_S": "45",
        "SFCHARLES_PIPELINES__EU_CONTACTS__CHARLES_API_KEY": "from-environment-key",
    }
    eu, us = load_pipelines(environ)
    assert us.poll_interval_s == 45
    assert eu.poll_interval_s == 30
    assert eu.charles_api_key.get_secret_value() == "from-environment-key"


def test_load_settings_chooses_pipeline(tmp_path: Path) -> None:
    environ = {**BASE, "SFCHARLES_CONFIG_FILE": str(write_config(tmp_path, TWO_PIPELINES))}
    assert load_settings(environ, pipeline="us_leads").pipeline == "us_leads"
    with pytest.raises(ConfigurationError, match=r"2 pipelines are configured \(eu-contacts, us_leads\); choose one with --pipeline"):
        load_settings(environ)
    with pytest.raises(ConfigurationError, match="--pipeline 'asia': no such pipeline"):
        load_settings(environ, pipeline="asia")


def test_pipeline_problems_are_named_by_pipeline_and_key(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
[pipelines.eu]
charles_api_key = "inline-secret-value"
state_url = "sqlite:///other.db"
poll_interval_s = 0
colour = "blue"

[pipelines."Bad Name"]
""",
    )
    with pytest.raises(ConfigurationError) as info:
        load_pipelines({**BASE, "SFCHARLES_CONFIG_FILE": str(config), "SFCHARLES_PIPELINES__ASIA__POLL_INTERVAL_S": "5"})
    message = str(info.value)
    assert "key 'pipelines.eu.charles_api_key' contains a secret; set pipelines.eu.charles_api_key_file" in message
    assert "inline-secret-value" not in message
    assert "key 'pipelines.eu.state_url' cannot be set per pipeline" in message
    assert f"pipeline eu: {config}: key pipelines.eu.poll_interval_s: Input should be greater than or equal to 1" in message
    assert "unknown key 'pipelines.eu.colour'" in message
    assert "pipeline name 'Bad Name' is not valid" in message
    assert "SFCHARLES_PIPELINES__ASIA__POLL_INTERVAL_S: no pipeline of the config file matches 'ASIA'" in message


def test_pipeline_names_must_differ_as_variables(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[pipelines.eu-a]\n[pipelines.eu_a]\n")
    with pytest.raises(ConfigurationError, match="share the variable prefix SFCHARLES_PIPELINES__EU_A__"):
        load_pipelines({**BASE, "SFCHARLES_CONFIG_FILE": str(config)})


def test_yaml_pipelines(tmp_path: Path) -> None:
    config = write_config(tmp_path, "pipelines:\n  eu:\n    poll_interval_s: 15\n  us: {}\n", name="sfcharles.yaml")
    eu, us = load_pipelines({**BASE, "SFCHARLES_CONFIG_FILE": str(config)})
    assert (eu.pipeline, eu.poll_interval_s, us.pipeline, us.poll_interval_s) == ("eu", 15, "us", 60)


def test_single_pipeline_name_conflicts_with_a_list(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[pipelines.eu]\n")
    with pytest.raises(ConfigurationError, match="SFCHARLES_PIPELINE: names the single pipeline"):
        load_pipelines({**BASE, "SFCHARLES_CONFIG_FILE": str(config), "SFCHARLES_PIPELINE": "eu"})


def test_state_url_from_a_file(tmp_path: Path) -> None:
    url_file = tmp_path / "state-url"
    url_file.write_text("postgresql+psycopg://sfcharles:db-password-1@127.0.0.1:5432/sfcharles\n")
    settings = load_settings({**BASE, "SFCHARLES_STATE_URL_FILE": str(url_file)})
    assert settings.state_url == "postgresql+psycopg://sfcharles:db-password-1@127.0.0.1:5432/sfcharles"


def test_replica_settings(tmp_path: Path) -> None:
    settings = load_settings(BASE)
    assert settings.replica_id and (settings.leader_heartbeat_s, settings.leader_lease_s) == (2.0, 10.0)
    message = str(pytest.raises(ConfigurationError, load_settings, {**BASE, "SFCHARLES_LEADER_LEASE_S": "3"}).value)
    assert "SFCHARLES_LEADER_LEASE_S (3.0) must be at least twice SFCHARLES_LEADER_HEARTBEAT_S (2.0)" in message
    message = str(pytest.raises(ConfigurationError, load_settings, {**BASE, "SFCHARLES_REPLICA_ID": "no spaces"}).value)
    assert "SFCHARLES_REPLICA_ID" in message


def test_inline_secret_reported_once(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[pipelines.eu]\nsalesforce_client_secret = "inline-secret-value"\n')
    environ = {key: value for key, value in BASE.items() if key != "SFCHARLES_SALESFORCE_CLIENT_SECRET"}

    message = str(pytest.raises(ConfigurationError, load_pipelines, {**environ, "SFCHARLES_CONFIG_FILE": str(config)}).value)

    assert "contains a secret" in message
    assert "needs SFCHARLES_SALESFORCE_CLIENT_SECRET" not in message
    assert "(1 problem)" in message


def test_top_level_secret_file_is_every_pipelines_default(tmp_path: Path) -> None:
    key_file = tmp_path / "shared.key"
    key_file.write_text("shared-charles-key-value\n")
    config = write_config(tmp_path, f'charles_api_key_file = "{key_file}"\n[pipelines.eu]\n[pipelines.us]\n')
    environ = {key: value for key, value in BASE.items() if key != "SFCHARLES_CHARLES_API_KEY"}

    eu, us = load_pipelines({**environ, "SFCHARLES_CONFIG_FILE": str(config)})

    assert eu.charles_api_key.get_secret_value() == "shared-charles-key-value"
    assert us.charles_api_key.get_secret_value() == "shared-charles-key-value"


def test_process_problem_reported_once(tmp_path: Path) -> None:
    config = write_config(tmp_path, "leader_heartbeat_s = 2\nleader_lease_s = 3\n[pipelines.eu]\n[pipelines.us]\n")

    message = str(pytest.raises(ConfigurationError, load_pipelines, {**BASE, "SFCHARLES_CONFIG_FILE": str(config)}).value)

    assert message.count("must be at least twice") == 1
    assert "pipeline eu:" not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://sfcharles:db-pass-value@db.internal/sfcharles",
        "postgresql+psycopg://db.internal/sfcharles?user=sfcharles&password=db-pass-value",
    ],
)
def test_state_url_password_not_in_config_file(tmp_path: Path, url: str) -> None:
    config = write_config(tmp_path, f'state_url = "{url}"\n')

    message = str(pytest.raises(ConfigurationError, load_pipelines, {**BASE, "SFCHARLES_CONFIG_FILE": str(config)}).value)

    assert "key 'state_url' contains a database password; set SFCHARLES_STATE_URL or SFCHARLES_STATE_URL_FILE" in message
    assert "db-pass-value" not in message


def test_state_url_with_unencoded_at_rejected() -> None:
    environ = {**BASE, "SFCHARLES_STATE_URL": "postgresql+psycopg://sfc:Leak@Pw9@127.0.0.1:5432/sfc"}

    message = str(pytest.raises(ConfigurationError, load_settings, environ).value)

    assert "percent-encode an '@'" in message
    assert "Pw9" not in message
