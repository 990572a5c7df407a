"""Settings: one typed, validated object built once at start-up.

Values come from environment variables with the ``SFCHARLES_`` prefix and, optionally, from
a TOML or YAML file named by ``SFCHARLES_CONFIG_FILE``; the environment wins. Every secret
may instead be read from a file named by ``<VARIABLE>_FILE`` (Docker and Kubernetes secret
mounts). Every problem is reported at once, each with the variable or key that contains it.

This module is the only place that reads the process environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import phonenumbers
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from connector.errors import ConfigurationError

ENV_PREFIX = "SFCHARLES_"
CONFIG_FILE_VARIABLE = f"{ENV_PREFIX}CONFIG_FILE"
SECRET_FIELDS = frozenset({"salesforce_client_secret", "salesforce_private_key", "charles_api_key"})
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")

# Hints appended to "missing" errors: what the value is and what to set it to.
_MISSING_HINTS = {
    "salesforce_login_url": (
        "set it to the org's OAuth host, e.g. https://login.salesforce.com, "
        "https://test.salesforce.com or https://<my-domain>.my.salesforce.com"
    ),
    "salesforce_client_id": "set it to the consumer key of the connected app",
    "charles_base_url": "set it to the Charles tenant's base URL, e.g. https://<tenant>.hello-charles.com",
    "charles_api_key": f"set it, or {ENV_PREFIX}CHARLES_API_KEY_FILE to a file that contains it",
}


class Settings(BaseModel):
    """The connector's configuration. Secrets are SecretStr so that no repr shows them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Salesforce
    salesforce_login_url: str
    salesforce_auth: Literal["jwt", "client_credentials"] | None = None
    salesforce_client_id: str
    salesforce_client_secret: SecretStr | None = None
    salesforce_username: str | None = None
    salesforce_private_key: SecretStr | None = None
    salesforce_api_version: str = Field(default="62.0", pattern=r"^\d{2,3}\.0$")
    salesforce_ca_file: Path | None = None
    salesforce_timeout_s: float = Field(default=60.0, gt=0, le=600)
    salesforce_page_size: int = Field(default=2000, ge=200, le=2000)
    sync_lag_s: float = Field(default=0.0, ge=0, le=3600)
    lookback_s: float = Field(default=600.0, ge=0, le=7 * 86400)
    # A backfill of more records than this reads through a Bulk API 2.0 query job; 0 never does.
    bulk_threshold: int = Field(default=100_000, ge=0)

    # Charles
    charles_base_url: str
    charles_api_key: SecretStr
    charles_max_in_flight: int = Field(default=8, ge=1, le=256)
    charles_max_rps: float | None = Field(default=None, gt=0, le=10000)
    charles_timeout_s: float = Field(default=30.0, gt=0, le=600)
    charles_max_attempts: int = Field(default=5, ge=1, le=20)
    charles_retry_total_s: float = Field(default=60.0, gt=0, le=3600)
    charles_ca_file: Path | None = None

    # Mapping
    field_map: Path | None = None
    default_region: str | None = None
    tags_field: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)?$")

    # Outcomes
    delete_policy: Literal["mark", "skip"] = "mark"
    duplicate_key_policy: Literal["first_owner", "reassign"] = "first_owner"
    dead_letter_max_attempts: int = Field(default=5, ge=1, le=100)

    # Salesforce API quota: above the slow share of the daily limit the daemon polls less
    # often, above the pause share it stops cycling, and it resumes below the resume share.
    api_usage_slow_share: float = Field(default=0.8, gt=0, le=1)
    api_usage_pause_share: float = Field(default=0.95, gt=0, le=1)
    api_usage_resume_share: float = Field(default=0.9, gt=0, le=1)
    api_limit_wait_s: float = Field(default=900.0, ge=1, le=86400)

    # Cycle bounds
    cycle_timeout_s: float = Field(default=3600.0, ge=1, le=7 * 86400)
    shutdown_grace_s: float = Field(default=20.0, ge=0, le=3600)

    # Daemon and state
    state_url: str = "sqlite:///sfcharles-state.db"
    pipeline: str = Field(default="contacts", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    poll_interval_s: float = Field(default=60.0, ge=1, le=86400)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_event_key: Literal["event", "message"] = "event"

    # Metrics and health endpoint, off unless a port is set
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("salesforce_login_url")
    @classmethod
    def _login_url_is_https(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{value!r} is not an https:// URL; Salesforce only serves OAuth over HTTPS")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"{value!r} has a path; give only the scheme and host, e.g. https://login.salesforce.com")
        return value.rstrip("/")

    @field_validator("charles_base_url")
    @classmethod
    def _charles_url_is_http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL, e.g. https://<tenant>.hello-charles.com")
        return value.rstrip("/")

    @field_validator("salesforce_client_secret", "salesforce_private_key", "charles_api_key")
    @classmethod
    def _secret_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty; give the secret itself, or a *_FILE path to a file that contains it")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_upper_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str | None) -> str | None:
        if value is None:
            return None
        region = value.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 region that phonenumbers knows, e.g. US or DE")
        return region

    @field_validator("metrics_host")
    @classmethod
    def _listen_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOSTNAME.fullmatch(value):
                raise ValueError(
                    f"{value!r} is not an IP address or host name; use 127.0.0.1 for this host only, "
                    "or 0.0.0.0 inside a container"
                ) from None
        return value

    @field_validator("salesforce_ca_file", "charles_ca_file", "field_map")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {str(value)!r} does not exist or is not a regular file")
        return value

    @model_validator(mode="after")
    def _usage_shares_ordered(self) -> Settings:
        if not self.api_usage_resume_share < self.api_usage_pause_share:
            raise ValueError(
                f"{variable_name('api_usage_resume_share')} ({self.api_usage_resume_share}) must be below "
                f"{variable_name('api_usage_pause_share')} ({self.api_usage_pause_share})"
            )
        if not self.api_usage_slow_share <= self.api_usage_pause_share:
            raise ValueError(
                f"{variable_name('api_usage_slow_share')} ({self.api_usage_slow_share}) must not exceed "
                f"{variable_name('api_usage_pause_share')} ({self.api_usage_pause_share})"
            )
        return self

    @model_validator(mode="after")
    def _auth_is_complete(self) -> Settings:
        auth = self.resolved_auth()
        if auth == "jwt":
            missing = [name for name in ("salesforce_username", "salesforce_private_key") if getattr(self, name) is None]
        else:
            missing = [name for name in ("salesforce_client_secret",) if getattr(self, name) is None]
        if missing:
            names = ", ".join(variable_name(name) for name in missing)
            raise ValueError(f"Salesforce auth {auth!r} needs {names}")
        return self

    def resolved_auth(self) -> Literal["jwt", "client_credentials"]:
        """Return the OAuth flow: as set, else JWT when a private key is given, else client credentials."""
        if self.salesforce_auth is not None:
            return self.salesforce_auth
        return "jwt" if self.salesforce_private_key is not None else "client_credentials"


def variable_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment and the optional config file.

    Raises ConfigurationError listing every problem, one per line.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    config_path = env.get(CONFIG_FILE_VARIABLE)
    if config_path:
        for field, value in _read_config_file(Path(config_path), problems).items():
            values[field] = value
            sources[field] = f"{config_path}: key {field}"

    for field, value in _read_environment(env, problems).items():
        values[field] = value
        sources[field] = variable_name(field)

    for field, value in _read_secret_files(env, problems).items():
        values[field] = value
        sources[field] = f"{variable_name(field)}_FILE"

    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        problems.extend(_describe_errors(exc, sources))
    if problems:
        raise ConfigurationError(_format_problems(problems))
    return settings


def _read_environment(env: Mapping[str, str], problems: list[str]) -> dict[str, str]:
    known = set(Settings.model_fields)
    values: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_VARIABLE:
            continue
        field = name[len(ENV_PREFIX):].lower()
        if field.endswith("_file") and field[: -len("_file")] in SECRET_FIELDS:
            continue
        if field not in known:
            problems.append(f"{name}: unknown variable; check its spelling against the configuration table in README.md")
            continue
        if value == "":
            continue  # An empty variable means "not set", as in most container tooling.
        values[field] = value
    return values


def _read_secret_files(env: Mapping[str, str], problems: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for field in sorted(SECRET_FIELDS):
        file_variable = f"{variable_name(field)}_FILE"
        path = env.get(file_variable)
        if not path:
            continue
        if env.get(variable_name(field)):
            problems.append(f"{file_variable}: set together with {variable_name(field)}; set only one of them")
            continue
        try:
            content = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(f"{file_variable}: cannot read {path!r} ({exc.strerror}); mount the secret file or fix the path")
            continue
        # Secret files usually end with a newline that is not part of the secret.
        values[field] = content.rstrip("\r\n")
    return values


def _read_config_file(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"{CONFIG_FILE_VARIABLE}: cannot read {str(path)!r} ({exc.strerror})")
        return {}
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            problems.append(f"{CONFIG_FILE_VARIABLE}: {str(path)!r} must end in .toml, .yaml or .yml")
            return {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        problems.append(f"{path}: not valid {path.suffix[1:].upper()}: {exc}")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: the top level must be a table of settings")
        return {}

    flat: dict[str, Any] = {}
    known = set(Settings.model_fields)
    for key, value in data.items():
        # A section such as [charles] contains keys that are prefixed with its name.
        if isinstance(value, dict):
            for inner_key, inner_value in value.items():
                field = f"{key}_{inner_key}".lower()
                _add_file_value(flat, known, field, inner_value, f"{key}.{inner_key}", path, problems)
        else:
            _add_file_value(flat, known, key.lower(), value, key, path, problems)
    return flat


def _add_file_value(
    flat: dict[str, Any], known: set[str], field: str, value: Any, key: str, path: Path, problems: list[str]
) -> None:
    if field not in known:
        problems.append(f"{path}: unknown key {key!r}; check its spelling against the configuration table in README.md")
    elif field in SECRET_FIELDS:
        problems.append(
            f"{path}: key {key!r} holds a secret; set {variable_name(field)} or {variable_name(field)}_FILE instead"
        )
    else:
        flat[field] = value


def _describe_errors(exc: ValidationError, sources: dict[str, str]) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        where = sources.get(field, variable_name(field)) if field else "settings"
        if error["type"] == "missing":
            hint = _MISSING_HINTS.get(field, "set it")
            problems.append(f"{where}: missing; {hint}")
            continue
        message = re.sub(r"^Value error, ", "", error["msg"])
        if field in SECRET_FIELDS and error["type"] != "value_error":
            message = "invalid value"  # Pydantic messages may quote the input; a secret must not be echoed.
        problems.append(f"{where}: {message}")
    return problems


def _format_problems(problems: list[str]) -> str:
    lines = "\n".join(f"  - {problem}" for problem in problems)
    return f"invalid configuration ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n{lines}"
