"""Helpers of the integration tests: produce events, wait for the store, read a topic."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from sqlalchemy import create_engine, func, select

from controlplane.events.decode import encode_event
from controlplane.events.schema import InferenceEvent, Usage
from controlplane.store.models import ConsumerOffset, DeadLetter, FlaggedInteraction, WindowEvent, WindowStats

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


# A message to produce: (key, value) or (key, value, headers).
Message = tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


async def _send_all(producer: AIOKafkaProducer, topic: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
    futures = []
    for message in messages:
        key, value = message[0], message[1]
        headers = message[2] if len(message) > 2 else None
        futures.append(await producer.send(topic, value=value, key=key, headers=headers))
    return [(metadata.partition, metadata.offset) for metadata in await asyncio.gather(*futures)]


async def _produce(bootstrap: str, topic: str, messages: Sequence[Message], partitions: int) -> list[tuple[int, int]]:
    await _ensure_topic(bootstrap, topic, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        return await _send_all(producer, topic, messages)
    finally:
        await producer.stop()


def produce(bootstrap: str, topic: str, messages: Sequence[Message], partitions: int = 3) -> list[tuple[int, int]]:
    """Produce messages in order, wait for every acknowledgement and return each one's (partition, offset)."""
    return asyncio.run(_produce(bootstrap, topic, messages, partitions))


def event_message(event: InferenceEvent) -> tuple[bytes, bytes]:
    return event.key.encode(), encode_event(event)


class PacedProducer(threading.Thread):
    """Produces messages from a thread at a steady rate until finished, so that the stream flows while a test acts."""

    def __init__(self, bootstrap: str, topic: str, messages: Sequence[Message], per_second: float, partitions: int = 3) -> None:
        super().__init__(name="paced-producer", daemon=True)
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.messages = list(messages)
        self.per_second = per_second
        self.positions: list[tuple[int, int]] = []
        self.error: BaseException | None = None
        self._finish = threading.Event()

    def run(self) -> None:
        try:
            asyncio.run(self._produce_paced())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread by finish()
            self.error = exc

    async def _produce_paced(self) -> None:
        await _ensure_topic(self.bootstrap, self.topic, self.partitions)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=20)
        await producer.start()
        chunk = max(1, int(self.per_second / 10))
        started = time.monotonic()
        try:
            for first in range(0, len(self.messages), chunk):
                if self._finish.is_set():
                    break
                self.positions += await _send_all(producer, self.topic, self.messages[first:first + chunk])
                due = started + (first + chunk) / self.per_second
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        finally:
            await producer.stop()

    def sending(self) -> bool:
        """Tell whether messages are still being sent: neither finished nor out of messages."""
        return self.is_alive() and not self._finish.is_set()

    def finish(self, timeout_s: float = 60.0) -> int:
        """Stop after the chunk in flight and return how many messages, from the first on, were acknowledged."""
        self._finish.set()
        self.join(timeout_s)
        if self.is_alive():
            raise AssertionError(f"the paced producer did not stop within {timeout_s:.0f}s")
        if self.error is not None:
            raise self.error
        return len(self.positions)


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


async def _read_to_end(bootstrap: str, topic: str, timeout_s: float) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        # The subscription gets its partitions with the first metadata response.
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for the partitions of {topic}")
            await asyncio.sleep(0.2)
        end = await consumer.end_offsets(list(consumer.assignment()))
        while [tp for tp, offset in end.items() if await consumer.position(tp) < offset]:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f}s reading {topic} up to its end offsets {end}")
            batch = await consumer.getmany(timeout_ms=500)
            for partition_records in batch.values():
                records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


def read_topic_to_end(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list:
    """Read every record of a topic, from the start up to the end offsets it has when reading begins."""
    return asyncio.run(_read_to_end(bootstrap, topic, timeout_s))


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
        # The pre-ping replaces connections that a database restart closed.
        self.engine = create_engine(url, pool_pre_ping=True)

    def scalar(self, query):
        with self.engine.connect() as connection:
            return connection.execute(query).scalar()

    def windowed_events(self) -> int:
        return self.scalar(select(func.coalesce(func.sum(WindowStats.event_count), 0)))

    def buffered_events(self) -> int:
        return self.scalar(select(func.count()).select_from(WindowEvent))

    def dead_letters(self) -> int:
        return self.scalar(select(func.count()).select_from(DeadLetter))

    def late_events(self) -> int:
        """Count events merged into a window after it had closed."""
        return self.scalar(select(func.coalesce(func.sum(WindowStats.late_event_count), 0)))

    def stored_events(self) -> int:
        """Count events in window statistics and in open windows together."""
        return self.windowed_events() + self.buffered_events()

    def window_totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        """Map (app, model) to its sums of event_count and flagged_count over window statistics."""
        query = select(
            WindowStats.app, WindowStats.model, func.sum(WindowStats.event_count), func.sum(WindowStats.flagged_count)
        ).group_by(WindowStats.app, WindowStats.model)
        with self.engine.connect() as connection:
            return {(app, model): (int(events), int(flagged)) for app, model, events, flagged in connection.execute(query)}

    def window_event_counts(self) -> dict[tuple[str, str], list[int]]:
        """Map (app, model) to the event_count of each of its windows, in window order."""
        query = select(WindowStats.app, WindowStats.model, WindowStats.event_count).order_by(WindowStats.window_start)
        counts: dict[tuple[str, str], list[int]] = {}
        with self.engine.connect() as connection:
            for app, model, count in connection.execute(query):
                counts.setdefault((app, model), []).append(count)
        return counts

    def flagged_event_ids(self) -> list[str]:
        with self.engine.connect() as connection:
            return list(connection.execute(select(FlaggedInteraction.event_id)).scalars())

    def stored_offsets(self) -> dict[int, int]:
        """Map each partition to the next offset that the worker's store expects."""
        query = select(ConsumerOffset.partition, ConsumerOffset.next_offset)
        with self.engine.connect() as connection:
            return dict(connection.execute(query).all())

    def dead_letter_reasons(self) -> dict[tuple[int, int], str]:
        """Map the (partition, offset) of each dead letter to its reason."""
        query = select(DeadLetter.partition, DeadLetter.offset, DeadLetter.reason)
        with self.engine.connect() as connection:
            return {(partition, offset): reason for partition, offset, reason in connection.execute(query)}

    def close(self) -> None:
        self.engine.dispose()
