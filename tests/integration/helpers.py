"""Helpers of the integration tests: produce events, wait for the store, read a topic."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from sqlalchemy import create_engine, func, select

from controlplane.events.decode import encode_event
from controlplane.events.schema import InferenceEvent, Usage
from controlplane.store.models import DeadLetter, WindowEvent, WindowStats

START = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def make_event(index: int, app: str = "assistant", model: str = "gpt-4o-mini", seconds_apart: float = 0.5) -> InferenceEvent:
    """Build a valid event; `index` spaces event times `seconds_apart` apart from START."""
    prompt = f"Write a function number {index} that adds two numbers."
    completion = "def add(a, b):\n    return a + b\n" * (1 + index % 5)
    return InferenceEvent(
        event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{app}/{model}/{index}")),
        timestamp=START + timedelta(seconds=index * seconds_apart),
        app=app,
        model=model,
        route="/v1/chat/completions",
        prompt=prompt,
        completion=completion,
        usage=Usage(input_tokens=len(prompt) // 4, output_tokens=len(completion) // 4),
        latency_ms=300.0 + 10 * (index % 7),
        finish_reason="stop",
    )


async def _ensure_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]], partitions: int) -> None:
    await _ensure_topic(bootstrap, topic, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=value, key=key) for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]], partitions: int = 3) -> None:
    """Produce (key, value) pairs in order and wait for every acknowledgement."""
    asyncio.run(_produce(bootstrap, topic, messages, partitions))


def event_message(event: InferenceEvent) -> tuple[bytes, bytes]:
    return event.key.encode(), encode_event(event)


async def _read_all(bootstrap: str, topic: str, expected: int, timeout_s: float) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for partition_records in batch.values():
                records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    """Read a topic from the start until `expected` records arrived or the time is up."""
    return asyncio.run(_read_all(bootstrap, topic, expected, timeout_s))


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, log: Callable[[], str] = lambda: "") -> None:
    """Poll `condition` until it holds; fail with `what` and the worker log otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n--- worker log (tail) ---\n{log()[-4000:]}")


class StoreProbe:
    """Read-only counts from the test's database."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)

    def scalar(self, query):
        with self.engine.connect() as connection:
            return connection.execute(query).scalar()

    def windowed_events(self) -> int:
        return self.scalar(select(func.coalesce(func.sum(WindowStats.event_count), 0)))

    def buffered_events(self) -> int:
        return self.scalar(select(func.count()).select_from(WindowEvent))

    def dead_letters(self) -> int:
        return self.scalar(select(func.count()).select_from(DeadLetter))

    def close(self) -> None:
        self.engine.dispose()
