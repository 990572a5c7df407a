"""Shared fixtures: real emulators on 127.0.0.1, settings pointing at them, captured logs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import stamina

from connector.app import App
from connector.emulators.charles import CharlesEmulator
from connector.emulators.salesforce import SalesforceEmulator
from connector.logs import configure_logging
from connector.settings import Settings, load_settings
from tests.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures, registered by import)

CHARLES_KEY = "test-charles-key-7f3a9c"
CLIENT_SECRET = "test-client-secret-5d2e8b"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    """Retries still happen, as many as configured, but without sleeping."""
    with stamina.set_testing(True, attempts=1000, cap=True):
        yield


@pytest.fixture
def salesforce() -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator(client_secret=CLIENT_SECRET) as emulator:
        yield emulator


@pytest.fixture
def charles() -> Iterator[CharlesEmulator]:
    with CharlesEmulator(api_key=CHARLES_KEY) as emulator:
        yield emulator


@pytest.fixture
def env(salesforce: SalesforceEmulator, charles: CharlesEmulator, tmp_path: Path) -> dict[str, str]:
    """SFCHARLES_* variables for a connector talking to the two emulators."""
    return {
        "SFCHARLES_SALESFORCE_LOGIN_URL": salesforce.url,
        "SFCHARLES_SALESFORCE_CLIENT_ID": salesforce.client_id,
        "SFCHARLES_SALESFORCE_CLIENT_SECRET": CLIENT_SECRET,
        "SFCHARLES_SALESFORCE_CA_FILE": str(salesforce.ca_file),
        "SFCHARLES_CHARLES_BASE_URL": charles.url,
        "SFCHARLES_CHARLES_API_KEY": CHARLES_KEY,
        "SFCHARLES_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "SFCHARLES_DEFAULT_REGION": "US",
        "SFCHARLES_CHARLES_TIMEOUT_S": "5",
    }


@pytest.fixture
def make_app(env: dict[str, str]) -> Iterator[Callable[..., App]]:
    """Build an App from ``env`` plus overrides; every app built is closed afterwards."""
    apps: list[App] = []

    def build(**overrides: str) -> App:
        settings = load_settings({**env, **{f"SFCHARLES_{k.upper()}": v for k, v in overrides.items()}})
        app = App.build(settings)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.close()


class LogCapture:
    """JSON log lines written during a test, parsed."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    configure_logging("DEBUG", "json", stream=capture.stream)
    yield capture
    configure_logging("WARNING", "json", stream=sys.stderr)


def settings_from(env: dict[str, str], **overrides: str) -> Settings:
    return load_settings({**env, **{f"SFCHARLES_{k.upper()}": v for k, v in overrides.items()}})


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the connector's CLI in a subprocess with only ``env`` as SFCHARLES_* settings."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("SFCHARLES_")}
    return subprocess.run(
        [sys.executable, "-m", "connector", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]
