"""Fixtures for tests against the real broker and databases.

`make test` starts Kafka and PostgreSQL and exports their addresses. Where one is missing, a test
is skipped on a developer's machine and fails in CI (CI=true).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from controlplane.store.migrate import upgrade

IN_CI = os.environ.get("CI") == "true"
KAFKA = os.environ.get("CONTROLPLANE_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
POSTGRES = os.environ.get("CONTROLPLANE_TEST_POSTGRES_URL")


def missing_service(message: str) -> None:
    """Fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing service is a failure)")
    pytest.skip(message)


def kafka_answers(bootstrap: str) -> bool:
    """Send an ApiVersions request to the first bootstrap server and check the reply."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    body = struct.pack(">hhih", 18, 0, 1, 0)
    try:
        with socket.create_connection((host, int(port)), timeout=3) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            reply = sock.recv(10)
    except OSError:
        return False
    return len(reply) >= 10 and struct.unpack(">h", reply[8:10])[0] == 0


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap address of the test broker."""
    if not kafka_answers(KAFKA):
        missing_service(f"no Kafka broker answers at {KAFKA}; start one with scripts/kafka.sh start or run make test")
    return KAFKA


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """URL of the test PostgreSQL server's maintenance database."""
    if not POSTGRES:
        missing_service("CONTROLPLANE_TEST_POSTGRES_URL is not set; run make test, which starts PostgreSQL")
    engine = create_engine(POSTGRES)
    try:
        with engine.connect() as connection:
            connection.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means the service is missing
        missing_service(f"PostgreSQL at {make_url(POSTGRES).render_as_string(hide_password=True)} does not answer: {exc}")
    finally:
        engine.dispose()
    return POSTGRES


def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """Create an empty database for one test and drop it afterwards."""
    name = f"cp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'controlplane.db'}"
        upgrade(url)
        yield url
        return
    admin_url = request.getfixturevalue("postgres_admin_url")
    for url in fresh_postgres_database(admin_url):
        upgrade(url)
        yield url


@pytest.fixture
def topic_prefix() -> str:
    """A unique prefix so that each test has its own topics and consumer group."""
    return f"t{uuid.uuid4().hex[:10]}"


class WorkerProcess:
    """A `controlplane worker` subprocess with its own log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "worker", "--loglevel", "info"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        return self

    def kill(self) -> None:
        """SIGKILL: the worker gets no chance to flush or commit anything."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def worker_environment(kafka_bootstrap: str, database_url: str, topic_prefix: str) -> dict[str, str]:
    """Build the environment of a worker with the given broker, database and topics, and short windows."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONTROLPLANE_")}
    env.update(
        {
            "CONTROLPLANE_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CONTROLPLANE_DATABASE_URL": database_url,
            "CONTROLPLANE_CONSUMER_GROUP": f"{topic_prefix}-group",
            "CONTROLPLANE_TOPIC_EVENTS": f"{topic_prefix}.inference.events",
            "CONTROLPLANE_TOPIC_DLQ": f"{topic_prefix}.inference.events.dlq",
            "CONTROLPLANE_TOPIC_FINDINGS": f"{topic_prefix}.controlplane.findings",
            "CONTROLPLANE_TOPIC_ALERTS": f"{topic_prefix}.controlplane.alerts",
            "CONTROLPLANE_TOPIC_PARTITIONS": "3",
            "CONTROLPLANE_WINDOW_SECONDS": "60",
            "CONTROLPLANE_WINDOW_GRACE_SECONDS": "5",
            "CONTROLPLANE_WINDOW_IDLE_CLOSE_SECONDS": "3",
            "CONTROLPLANE_DRIFT_MIN_ROWS": "30",
        }
    )
    return env


@pytest.fixture
def worker_env(kafka_bootstrap: str, database_url: str, topic_prefix: str) -> dict[str, str]:
    """Environment of a worker with this test's broker, database and topics, and short windows."""
    return worker_environment(kafka_bootstrap, database_url, topic_prefix)


@pytest.fixture
def launch_worker(tmp_path: Path) -> Iterator:
    """Start worker processes with a given environment, and stop them all at the end."""
    workers: list[WorkerProcess] = []

    def start(env: dict[str, str], name: str = "worker") -> WorkerProcess:
        worker = WorkerProcess(dict(env), tmp_path / f"{name}.log").start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def start_worker(worker_env: dict[str, str], launch_worker: Callable[..., WorkerProcess]) -> Callable[..., WorkerProcess]:
    """Start worker processes with this test's environment, which launch_worker stops at the end."""

    def start(name: str = "worker") -> WorkerProcess:
        return launch_worker(worker_env, name)

    return start


SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


class ServiceCommandError(RuntimeError):
    """A start or stop script of a private service exited with an error."""


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """Return a free TCP port on 127.0.0.1 whose successor is free too (Kafka puts its controller there)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 65535 and _port_is_free(port + 1):
            return port
    raise RuntimeError("found no two adjacent free TCP ports on 127.0.0.1 in 100 tries")


class PrivateService:
    """A Kafka broker or PostgreSQL server of one test, run by its script in scripts/ on its own port and directory."""

    def __init__(self, script: str, port_variable: str, home_variable: str, port: int, home: Path) -> None:
        self.script = SCRIPTS / script
        self.port = port
        self.home = home
        self.env = {**os.environ, port_variable: str(port), home_variable: str(home)}

    def run(self, command: str, *args: str, timeout_s: float = 180) -> str:
        """Run the script with `command` and return its standard output, or raise ServiceCommandError if it fails."""
        result = subprocess.run(
            [str(self.script), command, *args], env=self.env, capture_output=True, text=True, timeout=timeout_s
        )
        if result.returncode != 0:
            raise ServiceCommandError(
                f"{self.script.name} {command} failed with exit code {result.returncode} "
                f"(port {self.port}, directory {self.home}):\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    def start(self) -> None:
        self.run("start")

    def stop(self) -> None:
        self.run("stop")


def run_private_service(service: PrivateService) -> Iterator[PrivateService]:
    """Start `service`, yield it and stop it at the end, also when the test failed or stopped it itself."""
    try:
        try:
            service.start()
        except (ServiceCommandError, subprocess.TimeoutExpired) as exc:
            missing_service(f"could not start a private service for a fault test: {exc}")
        yield service
    finally:
        service.stop()


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[PrivateService]:
    """A Kafka broker of this test alone, which the test may stop and start again (KRaft, data kept)."""
    service = PrivateService("kafka.sh", "KAFKA_PORT", "KAFKA_HOME_DIR", free_port_pair(), tmp_path / "kafka")
    yield from run_private_service(service)


@pytest.fixture
def private_postgres() -> Iterator[PrivateService]:
    """A PostgreSQL server of this test alone, which the test may stop and start again. Its directory is deleted at the end."""
    # Not under tmp_path: when the tests run as root the server runs as the user postgres, which
    # cannot enter pytest's private temporary directory.
    home = Path(tempfile.mkdtemp(prefix="cp-faults-pg-"))
    service = PrivateService("postgres.sh", "POSTGRES_PORT", "POSTGRES_HOME_DIR", free_port_pair(), home)
    try:
        yield from run_private_service(service)
    finally:
        shutil.rmtree(home, ignore_errors=True)
