"""Stream measurements: the plain-consumer ceiling, and a worker process's throughput and memory."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer
from sqlalchemy import func, select

from controlplane.store.engine import make_engine
from controlplane.store.migrate import upgrade
from controlplane.store.models import ConsumerOffset

log = logging.getLogger(__name__)


async def _consume_all(bootstrap: str, topic: str, expected: int) -> float:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
        enable_auto_commit=False, max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    seen = 0
    began = None
    try:
        while seen < expected:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if began is None and batch:
                began = time.perf_counter()
            seen += sum(len(records) for records in batch.values())
    finally:
        await consumer.stop()
    return seen / (time.perf_counter() - began)


def ceiling_eps(bootstrap: str, topic: str, expected: int) -> float:
    """Events per second a plain aiokafka consumer reads from the topic (no decoding, no work)."""
    return asyncio.run(_consume_all(bootstrap, topic, expected))


@dataclass
class WorkerRun:
    """A measured worker process."""

    events: int
    seconds: float
    eps: float
    rss_peak_mb: float
    rss_final_mb: float
    # (seconds since the worker started, events stored, RSS in MiB), one sample per second.
    rss_samples: list[tuple[float, int, float]] = field(default_factory=list)
    first_stored_s: float = 0.0


def worker_env(bootstrap: str, database_url: str, prefix: str, **overrides: str) -> dict[str, str]:
    """Environment of a benchmark worker with its own topics, group and database."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONTROLPLANE_")}
    env.update(
        {
            "CONTROLPLANE_KAFKA_BOOTSTRAP": bootstrap,
            "CONTROLPLANE_DATABASE_URL": database_url,
            "CONTROLPLANE_CONSUMER_GROUP": f"{prefix}-group",
            "CONTROLPLANE_TOPIC_EVENTS": f"{prefix}.events",
            "CONTROLPLANE_TOPIC_DLQ": f"{prefix}.dlq",
            "CONTROLPLANE_TOPIC_FINDINGS": f"{prefix}.findings",
            "CONTROLPLANE_TOPIC_ALERTS": f"{prefix}.alerts",
        }
    )
    env.update({f"CONTROLPLANE_{key.upper()}": value for key, value in overrides.items()})
    return env


def fresh_sqlite(directory: Path) -> str:
    url = f"sqlite:///{directory / 'bench.db'}"
    upgrade(url)
    return url


def run_worker(env: dict[str, str], expected: int, log_path: Path, timeout_s: float) -> WorkerRun:
    """Start a worker, wait until it stored offsets for `expected` events, and sample its RSS every second."""
    engine = make_engine(env["CONTROLPLANE_DATABASE_URL"])
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "controlplane", "worker", "--loglevel", "warning"],
                                   env=env, stdout=log_file, stderr=subprocess.STDOUT)
    ps = psutil.Process(process.pid)
    samples: list[tuple[float, int, float]] = []
    started = time.perf_counter()
    began = first_at = None
    first_stored_s = 0.0
    stored = 0
    deadline = time.monotonic() + timeout_s
    try:
        while stored < expected:
            if process.poll() is not None:
                raise RuntimeError(f"the benchmark worker exited with {process.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker stored {stored} of {expected} events in {timeout_s:.0f}s; see {log_path}")
            time.sleep(1.0)
            with engine.connect() as connection:
                stored = connection.scalar(select(func.coalesce(func.sum(ConsumerOffset.next_offset), 0)))
            elapsed = time.perf_counter() - started
            samples.append((round(elapsed, 1), stored, ps.memory_info().rss / 2**20))
            if stored and first_at is None:
                first_at, began, first_stored_s = stored, time.perf_counter(), elapsed
        seconds = time.perf_counter() - began
    finally:
        process.terminate()
        process.wait(timeout=60)
        engine.dispose()
    measured = expected - (first_at or 0)
    return WorkerRun(
        events=expected, seconds=seconds, eps=measured / seconds if seconds else 0.0,
        rss_peak_mb=max(rss for _, _, rss in samples), rss_final_mb=samples[-1][2], rss_samples=samples,
        first_stored_s=first_stored_s,
    )


def temp_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="controlplane-bench-"))
