"""Settings: one typed, validated object per pipeline, built once at start-up.

Values come from environment variables with the ``SFCHARLES_`` prefix and, optionally, from
a TOML or YAML file named by ``SFCHARLES_CONFIG_FILE``; the environment wins. Every secret
may instead be read from a file named by ``<VARIABLE>_FILE`` (Docker and Kubernetes secret
mounts). Every problem is reported at once, each with the variable or key that contains it.

A config file may list several pipelines, each a table under ``pipelines``. Top-level
values are the defaults of every pipeline; a pipeline's table overrides them, and
``SFCHARLES_PIPELINES__<NAME>__<KEY>`` overrides the table. Without a ``pipelines`` table
the top-level values make one pipeline, named by ``SFCHARLES_PIPELINE``.

This module is the only place that reads the process environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
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
# Fields that may be read from a file named by <VARIABLE>_FILE: the secrets, and the state
# store URL, which contains the database password.
FILE_FIELDS = SECRET_FIELDS | {"state_url"}
# One value per process: a pipeline's table cannot set these.
PROCESS_FIELDS = frozenset({
    "state_url", "replica_id", "leader_heartbeat_s", "leader_lease_s",
    "log_level", "log_format", "log_event_key", "metrics_port", "metrics_host",
})
PIPELINES_KEY = "pipelines"
PIPELINE_ENV_PREFIX = f"{ENV_PREFIX}PIPELINES__"
_PIPELINE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Put in place of a secret that the config file contained, which is already reported as a problem.
_REJECTED_SECRET = "rejected: a secret in the config file"


def state_url_has_password(url: str) -> bool:
    """Return whether a database URL contains a password, in its user part or as a query parameter."""
    _scheme, separator, rest = url.partition("://")
    if not separator:
        return False
    authority = rest.split("/", 1)[0]
    query = rest.partition("?")[2]
    has_user_password = "@" in authority and ":" in authority.rsplit("@", 1)[0]
    return has_user_password or any(part.split("=", 1)[0] in ("password", "sslpassword") for part in query.split("&"))
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
    # Replicas on PostgreSQL: each names itself, confirms its locks every heartbeat, and
    # stops its pipelines when it has not confirmed them for a lease. A replica that takes
    # over a pipeline that was not handed back waits a lease before its first cycle.
    replica_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
    leader_heartbeat_s: float = Field(default=2.0, ge=0.1, le=60)
    leader_lease_s: float = Field(default=10.0, ge=0.5, le=600)
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

    @field_validator("state_url")
    @classmethod
    def _state_url_unambiguous(cls, value: str) -> str:
        # An unencoded "@" in the password moves the host into it, and psycopg would then look
        # up a host name made of the rest of the password. The value is not echoed: it may
        # contain that password.
        _scheme, separator, rest = value.partition("://")
        if separator and rest.split("/", 1)[0].count("@") > 1:
            raise ValueError("contains '@' more than once before the host; percent-encode an '@' in the user or password as %40")
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
    def _lease_outlasts_heartbeats(self) -> Settings:
        if self.leader_lease_s < 2 * self.leader_heartbeat_s:
            raise ValueError(
                f"{variable_name('leader_lease_s')} ({self.leader_lease_s}) must be at least twice "
                f"{variable_name('leader_heartbeat_s')} ({self.leader_heartbeat_s}), so that one late heartbeat does not stop a pipeline"
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


def load_settings(environ: Mapping[str, str] | None = None, pipeline: str | None = None) -> Settings:
    """Build the Settings of one pipeline: ``pipeline``, or the only one configured.

    Raises ConfigurationError listing every problem, one per line, and when several
    pipelines are configured but none is chosen.
    """
    pipelines = load_pipelines(environ)
    if pipeline is None:
        if len(pipelines) == 1:
            return pipelines[0]
        names = ", ".join(settings.pipeline for settings in pipelines)
        raise ConfigurationError(f"{len(pipelines)} pipelines are configured ({names}); choose one with --pipeline NAME")
    for settings in pipelines:
        if settings.pipeline == pipeline:
            return settings
    names = ", ".join(settings.pipeline for settings in pipelines)
    raise ConfigurationError(f"--pipeline {pipeline!r}: no such pipeline; the configured ones are {names}")


def load_pipelines(environ: Mapping[str, str] | None = None) -> list[Settings]:
    """Build the Settings of every configured pipeline, in the order of the config file.

    Raises ConfigurationError listing every problem, one per line.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    tables: dict[str, dict[str, Any]] = {}
    table_sources: dict[str, dict[str, str]] = {}

    config_path = env.get(CONFIG_FILE_VARIABLE)
    if config_path:
        top, tables, table_sources = _read_config_file(Path(config_path), problems)
        for field, value in top.items():
            values[field] = value
            sources[field] = f"{config_path}: key {field}"

    for field, value in _read_environment(env, problems).items():
        values[field] = value
        sources[field] = variable_name(field)

    for field, value in _read_secret_files(env, problems).items():
        values[field] = value
        sources[field] = f"{variable_name(field)}_FILE"

    _read_pipeline_environment(env, tables, table_sources, problems)

    results: list[Settings] = []
    if not tables:
        settings = _validate(values, sources, problems, prefix="")
        if settings is not None:
            results.append(settings)
    else:
        if "pipeline" in values:
            problems.append(
                f"{sources['pipeline']}: names the single pipeline, but the config file lists pipelines; "
                "remove it, or use --pipeline NAME to choose one for a command"
            )
        for name, table in tables.items():
            merged = {**values, **table, "pipeline": name}
            merged_sources = {**sources, **table_sources[name]}
            settings = _validate(merged, merged_sources, problems, prefix=f"pipeline {name}: ")
            if settings is not None:
                results.append(settings)
    if problems:
        raise ConfigurationError(_format_problems(_merge_pipeline_problems(problems, list(tables))))
    return results


def _merge_pipeline_problems(problems: list[str], pipelines: list[str]) -> list[str]:
    """Report once, without the pipeline's name, a problem that every pipeline has: a process setting or a shared default."""
    if len(pipelines) < 2:
        return problems
    prefixes = [f"pipeline {name}: " for name in pipelines]
    counts: dict[str, int] = {}
    for problem in problems:
        for prefix in prefixes:
            if problem.startswith(prefix):
                rest = problem[len(prefix):]
                counts[rest] = counts.get(rest, 0) + 1
    merged: list[str] = []
    for problem in problems:
        prefix = next((prefix for prefix in prefixes if problem.startswith(prefix)), None)
        rest = None if prefix is None else problem[len(prefix):]
        if rest is not None and counts.get(rest) == len(pipelines):
            if rest not in merged:
                merged.append(rest)
            continue
        merged.append(problem)
    return merged


def _validate(values: dict[str, Any], sources: dict[str, str], problems: list[str], *, prefix: str) -> Settings | None:
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems.extend(prefix + problem for problem in _describe_errors(exc, sources))
        return None


def _env_name(pipeline: str) -> str:
    return pipeline.upper().replace("-", "_")


def _read_pipeline_environment(
    env: Mapping[str, str], tables: dict[str, dict[str, Any]], table_sources: dict[str, dict[str, str]], problems: list[str]
) -> None:
    """Apply SFCHARLES_PIPELINES__<NAME>__<KEY> variables to the pipelines of the config file."""
    by_env_name: dict[str, str] = {}
    for name in tables:
        other = by_env_name.setdefault(_env_name(name), name)
        if other != name:
            problems.append(
                f"pipelines {other!r} and {name!r} share the variable prefix {PIPELINE_ENV_PREFIX}{_env_name(name)}__; rename one"
            )
    known = set(Settings.model_fields)
    for variable, value in env.items():
        if not variable.startswith(PIPELINE_ENV_PREFIX):
            continue
        env_name, _, key = variable[len(PIPELINE_ENV_PREFIX):].partition("__")
        name = by_env_name.get(env_name)
        if name is None:
            listed = ", ".join(tables) or "none"
            problems.append(
                f"{variable}: no pipeline of the config file matches {env_name!r} (pipelines: {listed}); "
                "declare the pipeline under [pipelines.<name>] in the config file"
            )
            continue
        field = key.lower()
        secret_file = field.endswith("_file") and field[: -len("_file")] in FILE_FIELDS
        target = field[: -len("_file")] if secret_file else field
        if target not in known:
            problems.append(f"{variable}: unknown key {key!r}; check its spelling against the configuration table in README.md")
            continue
        if target in PROCESS_FIELDS or target == "pipeline":
            problems.append(f"{variable}: {variable_name(target)} is one value for the whole process; set it without the pipeline prefix")
            continue
        if value == "":
            continue
        if secret_file:
            content = _read_file_value(variable, value, problems)
            if content is None:
                continue
            value = content
        tables[name][target] = value
        table_sources[name][target] = variable


def _read_environment(env: Mapping[str, str], problems: list[str]) -> dict[str, str]:
    known = set(Settings.model_fields)
    values: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_VARIABLE:
            continue
        if name.startswith(PIPELINE_ENV_PREFIX):
            continue  # applied to its pipeline by _read_pipeline_environment
        field = name[len(ENV_PREFIX):].lower()
        if field.endswith("_file") and field[: -len("_file")] in FILE_FIELDS:
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
    for field in sorted(FILE_FIELDS):
        file_variable = f"{variable_name(field)}_FILE"
        path = env.get(file_variable)
        if not path:
            continue
        if env.get(variable_name(field)):
            problems.append(f"{file_variable}: set together with {variable_name(field)}; set only one of them")
            continue
        content = _read_file_value(file_variable, path, problems)
        if content is not None:
            values[field] = content
    return values


def _read_file_value(where: str, path: str, problems: list[str]) -> str | None:
    try:
        content = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"{where}: cannot read {path!r} ({exc.strerror}); mount the secret file or fix the path")
        return None
    # Secret files usually end with a newline that is not part of the secret.
    return content.rstrip("\r\n")


def _read_config_file(
    path: Path, problems: list[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """Return the file's top-level values, its pipeline tables, and where each table value came from."""
    empty: tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, dict[str, str]]] = ({}, {}, {})
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"{CONFIG_FILE_VARIABLE}: cannot read {str(path)!r} ({exc.strerror})")
        return empty
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            problems.append(f"{CONFIG_FILE_VARIABLE}: {str(path)!r} must end in .toml, .yaml or .yml")
            return empty
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        problems.append(f"{path}: not valid {path.suffix[1:].upper()}: {exc}")
        return empty
    if not isinstance(data, dict):
        problems.append(f"{path}: the top level must be a table of settings")
        return empty

    declared = data.pop(PIPELINES_KEY, None)
    top = _flatten_table(data, "", path, problems, in_pipeline=False)
    tables: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, str]] = {}
    if declared is None:
        return top, tables, sources
    if not isinstance(declared, dict) or not declared:
        problems.append(f"{path}: key {PIPELINES_KEY!r} must be a table with one table per pipeline, e.g. [pipelines.eu-contacts]")
        return top, tables, sources
    for name, table in declared.items():
        where = f"{PIPELINES_KEY}.{name}"
        if not isinstance(name, str) or not _PIPELINE_NAME.match(name):
            problems.append(
                f"{path}: pipeline name {name!r} is not valid; use up to 63 lowercase letters, digits, '-' or '_', "
                "starting with a letter or digit"
            )
            continue
        if not isinstance(table, dict):
            problems.append(f"{path}: key {where!r} must be a table of that pipeline's settings")
            continue
        values = _flatten_table(table, f"{where}.", path, problems, in_pipeline=True)
        tables[name] = values
        sources[name] = {field: f"{path}: key {where}.{field}" for field in values}
    return top, tables, sources


def _flatten_table(data: dict[str, Any], prefix: str, path: Path, problems: list[str], *, in_pipeline: bool) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        # A section such as [charles] contains keys that are prefixed with its name.
        if isinstance(value, dict):
            for inner_key, inner_value in value.items():
                field = f"{key}_{inner_key}".lower()
                _add_file_value(flat, field, inner_value, f"{prefix}{key}.{inner_key}", path, problems, in_pipeline=in_pipeline)
        else:
            _add_file_value(flat, str(key).lower(), value, f"{prefix}{key}", path, problems, in_pipeline=in_pipeline)
    return flat


def _add_file_value(
    flat: dict[str, Any], field: str, value: Any, key: str, path: Path, problems: list[str], *, in_pipeline: bool
) -> None:
    known = set(Settings.model_fields)
    if field.endswith("_file") and field[: -len("_file")] in SECRET_FIELDS:
        # The secret is read from the file that this key names; the path is no secret.
        content = _read_file_value(f"{path}: key {key}", str(value), problems)
        if content is not None:
            flat[field[: -len("_file")]] = content
    elif field not in known:
        problems.append(f"{path}: unknown key {key!r}; check its spelling against the configuration table in README.md")
    elif field in SECRET_FIELDS:
        hint = f"{key}_file naming a file that contains it" if in_pipeline else f"{key}_file, {variable_name(field)} or {variable_name(field)}_FILE"
        problems.append(f"{path}: key {key!r} contains a secret; set {hint} instead")
        # A stand-in keeps the pipeline from also being reported as missing the secret.
        flat[field] = _REJECTED_SECRET
    elif field == "state_url" and isinstance(value, str) and state_url_has_password(value):
        problems.append(
            f"{path}: key {key!r} contains a database password; set {variable_name(field)} or {variable_name(field)}_FILE instead"
        )
    elif in_pipeline and (field in PROCESS_FIELDS or field == "pipeline"):
        what = "the table's name is the pipeline's name" if field == "pipeline" else "it is one value for the whole process"
        problems.append(f"{path}: key {key!r} cannot be set per pipeline: {what}; set it at the top level")
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
