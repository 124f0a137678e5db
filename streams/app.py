"""The Faust app: topics, the ingest agent and the window-closing timer.

Thin on purpose: every decision is made in controlplane.pipeline. This module moves messages
between Kafka and that pipeline. It runs the blocking work in one worker thread, so that the
event loop keeps sending heartbeats to the broker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

import faust
from sqlalchemy.exc import OperationalError

from controlplane.pipeline import DeadLetterMessage, Pipeline, RawMessage
from controlplane.settings import Settings
from controlplane.store.engine import make_engine

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BACKOFF_S = 30.0
# Passed to the sink as the current time, it makes no window look idle, so only event time closes one.
EVENT_TIME_ONLY = datetime(1970, 1, 1, tzinfo=timezone.utc)


class IdleClock:
    """Times since which this worker has been able to consume and store each of its partitions.

    A window closes by wall-clock idleness when its (app, model) sent nothing for the idle period.
    Nothing stored is evidence of that only while this worker could consume and store. After a
    start, a new assignment or a database failure, the events may still wait in Kafka. So a
    partition's windows close by event time alone until the worker has been able to store that
    partition for the idle period.
    """

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.assigned_at: dict[int, float] = {}
        self.storing_since: float | None = None  # None until the pipeline is ready, and while the database is away

    def mark_storing(self) -> None:
        if self.storing_since is None:
            self.storing_since = time.monotonic()

    def mark_blocked(self) -> None:
        self.storing_since = None

    def split(self, partitions: set[int]) -> tuple[set[int], set[int]]:
        """Split the assigned partitions into those whose windows may close by idleness and the others."""
        now = time.monotonic()
        self.assigned_at = {partition: self.assigned_at.get(partition, now) for partition in partitions}
        if self.storing_since is None:
            return set(), set(partitions)
        settled = {
            partition for partition, assigned in self.assigned_at.items()
            if now - max(assigned, self.storing_since) >= self.idle_s
        }
        return settled, partitions - settled


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app with its agent and timer for `settings`."""
    app = faust.App(
        settings.consumer_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
    )
    events = app.topic(settings.topic_events, value_type=bytes, key_type=bytes)
    dlq = app.topic(settings.topic_dlq, value_type=bytes, key_type=bytes)
    findings_topic = app.topic(settings.topic_findings, value_type=bytes, key_type=bytes)
    alerts_topic = app.topic(settings.topic_alerts, value_type=bytes, key_type=bytes)

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
    state: dict[str, Pipeline] = {}
    # The agent and the timer both request the pipeline at start, and without the lock each would build one.
    pipeline_lock = asyncio.Lock()
    idle_clock = IdleClock(settings.window_idle_close_seconds)
    close_failures = {"count": 0}

    async def run(function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)

    async def pipeline() -> Pipeline:
        async with pipeline_lock:
            if "pipeline" not in state:
                state["pipeline"] = await run(Pipeline, make_engine(settings.database_url), settings, settings.topic_events)
                idle_clock.mark_storing()
        return state["pipeline"]

    @app.agent(events)
    async def ingest(stream: faust.Stream) -> None:
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_timeout_seconds):
            messages = [
                RawMessage(
                    event.message.partition, event.message.offset, event.message.value, event.message.key,
                    tuple(event.message.headers or ()),
                )
                for event in batch
            ]
            worker = await pipeline()
            records, dead = await _with_backoff(lambda: run(worker.prepare, messages), "prepare a batch", idle_clock)
            await _send_dead_letters(dlq, settings.topic_events, dead)
            result = await _with_backoff(lambda: run(worker.store, records), "store a batch", idle_clock)
            if result.rejected or result.skipped_duplicates:
                log.info(
                    "batch stored=%d rejected=%d duplicates=%d flagged=%d",
                    result.stored, result.rejected, result.skipped_duplicates, result.flagged,
                )

    @app.timer(interval=1.0)
    async def close_windows() -> None:
        partitions = {tp.partition for tp in app.consumer.assignment() if tp.topic == settings.topic_events}
        settled, settling = idle_clock.split(partitions)  # also when empty, to drop revoked partitions from the clock
        if not partitions:
            return
        worker = await pipeline()
        try:
            closed = await run(worker.close_due, settled) if settled else []
            if settling:
                closed += await run(worker.close_due, settling, EVENT_TIME_ONLY)
        except OperationalError as exc:
            idle_clock.mark_blocked()
            close_failures["count"] += 1
            # One line for the first failure and then one a minute, not one a second through an outage.
            if close_failures["count"] == 1 or close_failures["count"] % 60 == 0:
                log.warning("closing windows failed %d times in a row, retrying every 1s: %s", close_failures["count"], exc.orig)
            return
        if close_failures["count"]:
            log.info("closing windows works again after %d failed attempts", close_failures["count"])
            close_failures["count"] = 0
        for window in closed:
            for finding in window.findings:
                await findings_topic.send(key=finding["app"].encode(), value=json.dumps(finding).encode())
            for alert in window.alerts:
                await alerts_topic.send(key=alert["fingerprint"].encode(), value=json.dumps(alert).encode())

    return app


async def _send_dead_letters(dlq: faust.TopicT, source_topic: str, dead: list[DeadLetterMessage]) -> None:
    futures = []
    for letter in dead:
        # The original headers (the declared format among them) come first, so that a dead letter
        # can be fixed and sent back as it was.
        headers = list(letter.message.headers) + [
            ("reason", letter.reason.encode("utf-8")),
            ("source-topic", source_topic.encode()),
            ("source-partition", str(letter.message.partition).encode()),
            ("source-offset", str(letter.message.offset).encode()),
        ]
        futures.append(await dlq.send(key=letter.message.key, value=letter.message.value or b"", headers=headers))
    if futures:
        await asyncio.gather(*futures)
        log.warning("sent %d rejected messages to %s", len(futures), dlq.get_topic_name())


async def _with_backoff(step: Callable[[], Any], what: str, idle_clock: IdleClock) -> Any:
    # The database may be away for a while (restart, failover): wait and retry the same batch,
    # never skip it, so that nothing is lost.
    delay = 0.5
    while True:
        try:
            result = await step()
        except OperationalError as exc:
            idle_clock.mark_blocked()
            log.warning("database unavailable, failed to %s; retrying in %.1fs: %s", what, delay, exc.orig)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
            continue
        idle_clock.mark_storing()
        return result
