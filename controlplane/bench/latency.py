"""Alert latency: seconds from the last produced event of a window to the alert it raises.

Events of an unpriced model are produced at a steady rate, stamped with the time they are sent,
for one whole window that is not measured, `windows` measured windows, and one more that only
moves the event-time watermark past the last measured one. The first window of each app is left
out because it has no window before it: the worker sizes the text-drift sample that it embeds
while events arrive from the previous window, so a first window embeds its whole sample at close. Every window of an unpriced model gives a `cost/unknown_cost` finding,
and the packaged policy's alert rule `unknown-cost` counts it on the alert of its (app, model).
The finding and the alert update are written in the transaction that closes the window, so the
finding's `created_at` is the time the alert was raised, a few milliseconds before the commit.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select

from controlplane.bench import stream, traffic
from controlplane.events.decode import encode_event
from controlplane.replay import ensure_topics
from controlplane.store.engine import make_engine
from controlplane.store.models import Alert, ConsumerOffset, Finding
from controlplane.windows import as_utc, window_start

log = logging.getLogger(__name__)

MODEL = "bench-unpriced"
WARMUP_APP = "warmup"
READY_TIMEOUT_S = 300.0


async def _steady(
    bootstrap: str, topic: str, pairs, rate: float, apps: tuple[str, ...], until: float, window_s: float
) -> dict[tuple[str, datetime], float]:
    """Produce `rate` events per second until the wall clock reaches `until`; return each window's last send time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
    await producer.start()
    last_sent: dict[tuple[str, datetime], float] = {}
    sent = 0
    began = time.time()
    try:
        while time.time() < until:
            due = int((time.time() - began) * rate)
            # Rotated so that the app of an event follows its count overall, not its place in this burst.
            rotated = apps[sent % len(apps):] + apps[: sent % len(apps)]
            for event in traffic.events(pairs, due - sent, traffic.now_utc(), rate=1e9, model=MODEL, seed=sent, apps=rotated):
                await producer.send(topic, value=encode_event(event), key=event.key.encode())
                last_sent[(event.app, window_start(event.timestamp, window_s))] = time.time()
            sent = max(sent, due)
            await asyncio.sleep(0.02)
        await producer.flush()
    finally:
        await producer.stop()
    return last_sent


def _wait_until_ready(bootstrap: str, topic: str, pairs, url: str, worker: subprocess.Popen) -> None:
    # One event of its own app: once its offset is stored, the worker has joined the group and
    # loaded its detectors, so the measured windows do not pay for start-up.
    event = next(traffic.events(pairs, 1, traffic.now_utc(), rate=1.0, model=MODEL, apps=(WARMUP_APP,)))

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1)
        await producer.start()
        try:
            await producer.send_and_wait(topic, value=encode_event(event), key=event.key.encode())
        finally:
            await producer.stop()

    asyncio.run(send())
    engine = make_engine(url)
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while True:
            if worker.poll() is not None:
                raise RuntimeError(f"the latency worker exited with {worker.returncode} before it was ready")
            with engine.connect() as connection:
                if connection.scalar(select(func.coalesce(func.sum(ConsumerOffset.next_offset), 0))):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the latency worker stored nothing in {READY_TIMEOUT_S:.0f}s")
            time.sleep(0.5)
    finally:
        engine.dispose()


def _raised_alerts(url: str) -> tuple[dict[tuple[str, datetime], datetime], dict[str, int]]:
    engine = make_engine(url)
    with engine.connect() as connection:
        findings = connection.execute(
            select(Finding.app, Finding.window_start, Finding.created_at).where(
                Finding.kind == "cost", Finding.subject == "unknown_cost", Finding.model == MODEL
            )
        ).all()
        occurrences = dict(connection.execute(select(Alert.app, Alert.occurrences).where(Alert.model == MODEL)).all())
    engine.dispose()
    return {(app, as_utc(start)): as_utc(created) for app, start, created in findings}, occurrences


def measure(
    bootstrap: str,
    pairs,
    partitions: int,
    window_s: float = 30.0,
    windows: int = 4,
    rate: float = 100.0,
    apps: tuple[str, ...] = traffic.APPS,
    grace_s: float = 1.0,
    text_drift: bool = True,
    wait_s: float = 600.0,
) -> dict[str, Any]:
    """Produce `windows` measured windows at `rate` events per second and return the alert latencies.

    After production, it waits up to `wait_s` seconds for the alerts of the measured windows.
    """
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}.events"
    asyncio.run(ensure_topics(bootstrap, {topic: partitions}))
    directory = stream.temp_dir()
    url = stream.fresh_sqlite(directory)
    env = stream.worker_env(
        bootstrap, url, prefix, window_seconds=str(window_s), window_grace_seconds=str(grace_s),
        window_idle_close_seconds="5", batch_timeout_seconds="0.2", safety_embeddings="false",
        text_drift="true" if text_drift else "false",
    )
    with (directory / "worker.log").open("wb") as log_file:
        worker = subprocess.Popen([sys.executable, "-m", "controlplane", "worker", "--loglevel", "info"],
                                  env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_until_ready(bootstrap, topic, pairs, url, worker)
        # Start on a window boundary, so that every measured window is produced whole.
        first = (time.time() // window_s + 1) * window_s
        time.sleep(first - time.time())
        last_sent = asyncio.run(_steady(bootstrap, topic, pairs, rate, apps, first + (windows + 2) * window_s, window_s))
        measured = {
            key: sent for key, sent in last_sent.items() if first + window_s <= key[1].timestamp() < first + (windows + 1) * window_s
        }
        raised = _wait_for_alerts(url, set(measured), timeout_s=wait_s)
        gave_up = time.time()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    raised_at, occurrences = _raised_alerts(url)
    # A window still without its alert when the wait ended counts with the time waited so far,
    # so that the quantiles are lower bounds instead of leaving the slowest windows out.
    done = {key: raised_at[key].timestamp() if key in raised_at else gave_up for key in measured}
    samples = sorted(done[key] - sent for key, sent in measured.items())
    from_end = sorted(done[key] - (key[1].timestamp() + window_s) for key in measured)
    return {
        "window_s": window_s,
        "grace_s": grace_s,
        "rate_eps": rate,
        "apps": len(apps),
        "text_drift": text_drift,
        "windows_measured": len(measured),
        "windows_alerted": raised,
        "windows_censored": len(measured) - raised,
        "alert_occurrences": sum(occurrences.get(app, 0) for app in apps),
        "p50_s": _quantile(samples, 0.50),
        "p99_s": _quantile(samples, 0.99),
        "max_s": round(samples[-1], 2) if samples else None,
        "from_window_end_p99_s": _quantile(from_end, 0.99),
        "worker_log": str(directory / "worker.log"),
    }


def _wait_for_alerts(url: str, keys: set[tuple[str, datetime]], timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        raised_at, _ = _raised_alerts(url)
        found = len(keys & set(raised_at))
        if found == len(keys) or time.monotonic() > deadline:
            if found < len(keys):
                log.warning("only %d of %d measured windows raised an alert within %.0fs", found, len(keys), timeout_s)
            return found
        time.sleep(1.0)


def _quantile(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    if len(samples) == 1:
        return round(samples[0], 2)
    # statistics.quantiles with n=100 gives the 1st to 99th percentiles, inclusive of the sample range.
    return round(statistics.quantiles(samples, n=100, method="inclusive")[round(q * 100) - 1], 2)
