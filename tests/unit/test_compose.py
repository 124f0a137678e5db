"""Check docker-compose.yml and the Dockerfile against the CLI and the settings they configure.

No Docker engine runs in CI, so these tests catch what would otherwise fail only at
`docker compose up`: a `controlplane` sub-command or option the CLI does not have, and a
`CONTROLPLANE_*` variable that Settings would ignore (it is declared with extra="ignore").
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from pydantic import TypeAdapter

from controlplane.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
ENV_PREFIX = "CONTROLPLANE_"


def dockerfile_instructions(path: Path) -> dict[str, str]:
    """Return the last value of each instruction of a Dockerfile, as Docker applies the last one."""
    instructions: dict[str, str] = {}
    logical_line = ""
    for raw_line in path.read_text().splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical_line += line[:-1] + " "
            continue
        logical_line += line
        keyword, _, value = logical_line.partition(" ")
        instructions[keyword.upper()] = value.strip()
        logical_line = ""
    return instructions


def split_command(value: str | list[str] | None) -> list[str]:
    """Split a Dockerfile or compose command, in exec (JSON list) or shell form, into argv."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(part) for part in value]
    if value.startswith("["):
        return json.loads(value)
    return shlex.split(value)


DOCKERFILE = dockerfile_instructions(ROOT / "Dockerfile")
IMAGE_ENTRYPOINT = split_command(DOCKERFILE.get("ENTRYPOINT"))
IMAGE_CMD = split_command(DOCKERFILE.get("CMD"))


def builds_dockerfile(service: dict) -> bool:
    build = service.get("build")
    context = build.get("context") if isinstance(build, dict) else build
    return context in (".", "./")


def service_argv(service: dict) -> list[str]:
    """Return the argv a service's container runs, with the Dockerfile's defaults where it builds it."""
    if "entrypoint" in service:
        # Docker drops the image's CMD when a service sets its own entrypoint.
        return split_command(service["entrypoint"]) + split_command(service.get("command"))
    if not builds_dockerfile(service):
        return split_command(service.get("command"))
    if "command" in service:
        return IMAGE_ENTRYPOINT + split_command(service["command"])
    return IMAGE_ENTRYPOINT + IMAGE_CMD


def service_environment(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.partition("=")[::2] for item in environment)
    return {key: str(value) for key, value in environment.items()}


def controlplane_invocations() -> list[tuple[str, list[str]]]:
    """Return (where, arguments after `controlplane`) for the Dockerfile and every compose service."""
    found = []
    image_argv = IMAGE_ENTRYPOINT + IMAGE_CMD
    if image_argv[:1] == ["controlplane"]:
        found.append(("Dockerfile", image_argv[1:]))
    for name, service in SERVICES.items():
        argv = service_argv(service)
        if argv[:1] == ["controlplane"]:
            found.append((f"service {name}", argv[1:]))
    return found


INVOCATIONS = controlplane_invocations()


@pytest.fixture(scope="module")
def cli() -> Any:
    """The group command behind the `controlplane` console script.

    Typer 0.29 builds it from its own copy of click (typer._click), so it is no click.Group and the
    code below goes by the `commands` attribute that every group has.
    """
    try:
        from controlplane.cli import app
    except ModuleNotFoundError as error:
        # Only the absence of the CLI module itself skips; a broken import inside it fails.
        if error.name != "controlplane.cli":
            raise
        pytest.skip("controlplane.cli does not exist yet")
    return typer.main.get_command(app)


def parse_invocation(group: Any, args: list[str]) -> list[str]:
    """Resolve `args` to a command of `group` and parse its options; return the command path."""
    command = group
    path: list[str] = []
    while hasattr(command, "commands"):
        assert args, f"`controlplane {' '.join(path)}` needs a sub-command, one of {sorted(command.commands)}"
        name, args = args[0], args[1:]
        assert name in command.commands, (
            f"`controlplane {' '.join(path + [name])}`: no such sub-command; "
            f"the CLI has {sorted(command.commands)}"
        )
        path.append(name)
        command = command.commands[name]
    # Raises a UsageError on an unknown option or a missing argument.
    command.make_context(" ".join(["controlplane", *path]), list(args))
    return path


@pytest.mark.parametrize(
    ("where", "args"),
    INVOCATIONS,
    ids=[where for where, _ in INVOCATIONS],
)
def test_controlplane_command_exists(cli: Any, where: str, args: list[str]) -> None:
    path = parse_invocation(cli, args)

    assert path, f"{where} runs `controlplane` without a sub-command"


@pytest.mark.parametrize(
    ("where", "expected_args"),
    [
        ("Dockerfile", ["worker"]),
        ("service migrate", ["db", "upgrade"]),
        ("service worker", ["worker"]),
    ],
)
def test_expected_commands_present(where: str, expected_args: list[str]) -> None:
    invocations = dict(INVOCATIONS)

    assert where in invocations, f"{where} does not run `controlplane`"
    assert invocations[where] == expected_args


SETTINGS_CASES = [
    (name, key, value)
    for name, service in SERVICES.items()
    for key, value in service_environment(service).items()
    if key.startswith(ENV_PREFIX)
]


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    SETTINGS_CASES,
    ids=[f"{service}-{variable}" for service, variable, _ in SETTINGS_CASES],
)
def test_controlplane_variable_is_setting(
    monkeypatch: pytest.MonkeyPatch, service: str, variable: str, value: str
) -> None:
    field = variable.removeprefix(ENV_PREFIX).lower()

    assert field in Settings.model_fields, (
        f"service {service} sets {variable}, which no field of Settings reads; "
        f"fields are {sorted(Settings.model_fields)}"
    )
    # Read it the way the container does; an invalid value raises ValidationError here.
    monkeypatch.setenv(variable, value)
    expected = TypeAdapter(Settings.model_fields[field].annotation).validate_python(value)
    assert getattr(Settings(), field) == expected


@pytest.mark.parametrize(
    ("service", "variable", "expected"),
    [
        ("migrate", "CONTROLPLANE_DATABASE_URL", "postgresql+psycopg://controlplane:controlplane@postgres:5432/controlplane"),
        ("worker", "CONTROLPLANE_DATABASE_URL", "postgresql+psycopg://controlplane:controlplane@postgres:5432/controlplane"),
        ("worker", "CONTROLPLANE_KAFKA_BOOTSTRAP", "kafka:19092"),
    ],
)
def test_services_point_at_compose_stores(service: str, variable: str, expected: str) -> None:
    assert service_environment(SERVICES[service]).get(variable) == expected


def test_postgres_credentials_match_url() -> None:
    postgres = service_environment(SERVICES["postgres"])
    url = service_environment(SERVICES["worker"])["CONTROLPLANE_DATABASE_URL"]

    expected = (
        f"postgresql+psycopg://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    assert url == expected


def test_kafka_internal_listener_matches_bootstrap() -> None:
    kafka = service_environment(SERVICES["kafka"])
    bootstrap = service_environment(SERVICES["worker"])["CONTROLPLANE_KAFKA_BOOTSTRAP"]

    assert f"PLAINTEXT://{bootstrap}" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")


def test_worker_is_scalable() -> None:
    worker = SERVICES["worker"]

    # A fixed container name or host port makes `docker compose up --scale worker=3` fail.
    assert "container_name" not in worker
    assert "ports" not in worker


@pytest.mark.parametrize(
    ("service", "dependency", "condition"),
    [
        ("migrate", "postgres", "service_healthy"),
        ("worker", "kafka", "service_healthy"),
        ("worker", "postgres", "service_healthy"),
        ("worker", "migrate", "service_completed_successfully"),
    ],
)
def test_start_order(service: str, dependency: str, condition: str) -> None:
    depends_on = SERVICES[service]["depends_on"]

    assert depends_on[dependency]["condition"] == condition
    if condition == "service_healthy":
        assert "healthcheck" in SERVICES[dependency], f"{dependency} has no healthcheck to wait for"


@pytest.mark.parametrize(("service", "image"), [("kafka", "apache/kafka:3.9."), ("postgres", "postgres:16")])
def test_service_image_versions(service: str, image: str) -> None:
    assert SERVICES[service]["image"].startswith(image)
