"""A producer for applications: log inference events to Kafka without slowing the request path.

`ControlPlaneClient.log` validates and serializes the event in the caller's thread, puts it in a
bounded buffer and returns at once. A background thread runs an asyncio loop with an aiokafka
producer, which batches events for `linger_ms` and sends them to the topic, keyed by app and
model like every other producer of ``inference.events``.

Buffering and drop policy:

- The buffer contains at most `max_buffer_events` events, counting those queued and those handed to
  the Kafka producer but not yet acknowledged. When it is full, `log` drops the new event, counts
  it in `ClientStats.dropped_full` and returns False. Events already buffered are kept.
- While Kafka is unreachable (at start or later), the client keeps retrying with backoff of up to
  `MAX_BACKOFF_S`, and events keep filling the buffer up to the bound. A send that fails with a
  retriable error (connection, timeout, leader change) goes back to the front of the buffer, so
  order is not kept across such a failure.
- A send that fails for good (a message too large, a denied topic) is dropped and counted in
  `dropped_error`. An event that is not a valid InferenceEvent, or cannot be encoded, is counted
  in `failed_serialization`. Each kind of failure is logged once, at WARNING, to keep logs quiet.
  A lone surrogate in a text is not a failure: it is replaced with U+FFFD and flagged in
  ``metadata["invalid_unicode"]``, as the worker does.
- `close` waits up to its timeout for the buffer to drain. Events still unsent then are counted in
  `dropped_error`, and so is any event logged after `close`.

Delivery is at least once. A batch that reached the broker but whose acknowledgement was lost is
sent again, so the topic can then contain the same event twice.

`log`, `alog`, `flush`, `stats` and `close` never raise into the caller; `__init__` raises
ConfigurationError for an invalid argument.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from controlplane.errors import ConfigurationError
from controlplane.events.adapters import describe_errors
from controlplane.events.decode import encode_event
from controlplane.events.guards import guard_event
from controlplane.events.schema import InferenceEvent
from controlplane.settings import TOPIC_EVENTS

log = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
SEND_CHUNK_EVENTS = 500
IDLE_CHECK_S = 1.0
CANCEL_GRACE_S = 2.0
MAX_WARNING_KINDS = 100


@dataclass(frozen=True)
class ClientStats:
    """Counters of a client since it was created; `buffered` is the number of events not yet acknowledged."""

    sent: int
    dropped_full: int
    dropped_error: int
    failed_serialization: int
    buffered: int


@dataclass(frozen=True)
class _Message:
    key: bytes
    value: bytes


class ControlPlaneClient:
    """Sends inference events to Kafka from sync or async code through a bounded, non-blocking buffer."""

    def __init__(
        self,
        bootstrap: str,
        topic: str = TOPIC_EVENTS,
        max_buffer_events: int = 10_000,
        *,
        linger_ms: int = 20,
        acks: str | int = "all",
        request_timeout_ms: int = 30_000,
        client_id: str = "controlplane-client",
        producer_options: Mapping[str, Any] | None = None,
    ) -> None:
        if max_buffer_events < 1:
            raise ConfigurationError(f"max_buffer_events must be at least 1, not {max_buffer_events}")
        if not bootstrap:
            raise ConfigurationError("bootstrap is empty; pass host:port of a Kafka broker, e.g. localhost:9092")
        self.topic = topic
        self.max_buffer_events = max_buffer_events
        self._producer_options = {
            "bootstrap_servers": bootstrap.removeprefix("kafka://"),
            "client_id": client_id,
            "acks": acks,
            "linger_ms": linger_ms,
            "request_timeout_ms": request_timeout_ms,
            **(producer_options or {}),
        }
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._queue: deque[_Message] = deque()
        self._pending = 0
        self._counts: Counter[str] = Counter()
        self._warned: set[str] = set()
        self._closing = False
        self._idle = False
        self._retry_pause = False
        self._backoff = INITIAL_BACKOFF_S
        self._loop = asyncio.new_event_loop()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._thread = threading.Thread(target=self._run_loop, name="controlplane-client", daemon=True)
        self._thread.start()

    # ----- caller side -----

    def log(self, event: InferenceEvent | dict[str, Any]) -> bool:
        """Buffer one event for sending without blocking; return False when it was dropped."""
        try:
            message = _serialize(event)
        except Exception as exc:  # noqa: BLE001 - the caller's request must never fail because of logging
            self._count_failure("failed_serialization", _failure_kind(exc), exc)
            return False
        return self._enqueue(message)

    async def alog(self, event: InferenceEvent | dict[str, Any]) -> bool:
        """Buffer one event from async code; like `log`, it never waits for Kafka."""
        return self.log(event)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait up to `timeout` seconds for every buffered event to be acknowledged or dropped; True if none is left."""
        deadline = time.monotonic() + timeout
        with self._drained:
            while self._pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._drained.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Send what is buffered for up to `timeout` seconds, then stop; events left unsent count as dropped_error."""
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._wake_threadsafe()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive() and self._task is not None:
            self._call_threadsafe(self._task.cancel)
            self._thread.join(CANCEL_GRACE_S)
        with self._drained:
            unsent = self._pending
            self._counts["dropped_error"] += unsent
            self._pending = 0
            self._queue.clear()
            self._drained.notify_all()
        if unsent:
            log.warning(
                "client closed with %d events unsent to topic %s; they count as dropped_error", unsent, self.topic
            )

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the counters."""
        with self._lock:
            return ClientStats(
                sent=self._counts["sent"],
                dropped_full=self._counts["dropped_full"],
                dropped_error=self._counts["dropped_error"],
                failed_serialization=self._counts["failed_serialization"],
                buffered=self._pending,
            )

    def __enter__(self) -> "ControlPlaneClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _enqueue(self, message: _Message) -> bool:
        wake = False
        with self._lock:
            if self._closing:
                self._counts["dropped_error"] += 1
                reason = "dropped_error"
            elif self._pending >= self.max_buffer_events:
                self._counts["dropped_full"] += 1
                reason = "dropped_full"
            else:
                self._queue.append(message)
                self._pending += 1
                wake, self._idle = self._idle, False
                reason = None
        if reason == "dropped_full":
            self._warn_once("full", "buffer full (%d events); dropping new events until Kafka catches up",
                            self.max_buffer_events)
        elif reason is not None:
            self._warn_once("closed", "log() called after close(); the event was dropped")
        elif wake:
            self._wake_threadsafe()
        return reason is None

    def _count_failure(self, counter: str, kind: str, exc: BaseException) -> None:
        with self._drained:
            self._counts[counter] += 1
        detail = describe_errors(exc) if isinstance(exc, ValidationError) else str(exc)
        self._warn_once(
            f"{counter}:{kind}", "event not sent, %s: %.300s; further failures of this kind only count in stats.%s",
            kind, detail, counter,
        )

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        with self._lock:
            if kind in self._warned or len(self._warned) >= MAX_WARNING_KINDS:
                return
            self._warned.add(kind)
        log.warning(message, *args)

    def _wake_threadsafe(self) -> None:
        self._call_threadsafe(self._wakeup.set)

    def _call_threadsafe(self, callback: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:
            # The loop already closed: the sender is gone and close() counts what is left.
            pass

    # ----- sender thread -----

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._task = self._loop.create_task(self._send_forever())
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            log.debug("client sender cancelled at close")
        except Exception:  # noqa: BLE001 - a sender bug must not kill the thread silently
            log.exception("client sender failed; events are no longer sent to topic %s", self.topic)
        finally:
            self._loop.close()

    async def _send_forever(self) -> None:
        producer = await self._start_producer()
        if producer is None:
            return
        try:
            while (messages := await self._take()) is not None:
                await self._send(producer, messages)
        finally:
            await _stop_quietly(producer)

    async def _start_producer(self) -> AIOKafkaProducer | None:
        backoff = INITIAL_BACKOFF_S
        while not self._closing:
            producer = AIOKafkaProducer(**self._producer_options)
            try:
                await producer.start()
            except KafkaError as exc:
                self._warn_once("connect", "Kafka at %s is unreachable (%s); buffering up to %d events and retrying",
                                self._producer_options["bootstrap_servers"], exc, self.max_buffer_events)
                await _stop_quietly(producer)
                await self._pause(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            log.info(
                "client connected to Kafka at %s, topic %s", self._producer_options["bootstrap_servers"], self.topic
            )
            return producer
        return None

    async def _take(self) -> list[_Message] | None:
        if self._retry_pause:
            self._retry_pause = False
            await self._pause(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
        while True:
            self._wakeup.clear()
            with self._lock:
                if self._queue:
                    count = min(len(self._queue), SEND_CHUNK_EVENTS)
                    return [self._queue.popleft() for _ in range(count)]
                if self._closing:
                    return None
                self._idle = True
            await self._pause(IDLE_CHECK_S)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _send(self, producer: AIOKafkaProducer, messages: list[_Message]) -> None:
        for index, message in enumerate(messages):
            try:
                future = await producer.send(self.topic, value=message.value, key=message.key)
            except Exception as exc:  # noqa: BLE001 - classified below; the sender must keep running
                if _retriable(exc):
                    self._requeue(messages[index:], exc)
                    return
                self._drop(exc)
                continue
            future.add_done_callback(partial(self._delivered, message))

    def _delivered(self, message: _Message, future: asyncio.Future) -> None:
        exc = None if future.cancelled() else future.exception()
        if future.cancelled():
            self._drop(KafkaError("send cancelled while the client closed"))
        elif exc is None:
            with self._drained:
                self._counts["sent"] += 1
                self._pending -= 1
                self._drained.notify_all()
            self._backoff = INITIAL_BACKOFF_S
        elif _retriable(exc):
            self._requeue([message], exc)
        else:
            self._drop(exc)

    def _requeue(self, messages: list[_Message], exc: BaseException) -> None:
        with self._lock:
            self._queue.extendleft(reversed(messages))
        self._retry_pause = True
        self._wakeup.set()
        self._warn_once(f"retry:{type(exc).__name__}", "sending to topic %s failed (%s); retrying with backoff",
                        self.topic, exc)

    def _drop(self, exc: BaseException) -> None:
        with self._drained:
            self._counts["dropped_error"] += 1
            self._pending -= 1
            self._drained.notify_all()
        self._warn_once(f"drop:{type(exc).__name__}", "dropped an event that Kafka rejected for good: %s", exc)


def _serialize(event: InferenceEvent | dict[str, Any]) -> _Message:
    if isinstance(event, dict):
        event = InferenceEvent.model_validate(event)
    elif not isinstance(event, InferenceEvent):
        raise TypeError(f"expected an InferenceEvent or a dict, got {type(event).__name__}")
    try:
        value = encode_event(event)
    except PydanticSerializationError:
        # A lone surrogate cannot be encoded as UTF-8. The worker's guard would replace it with
        # U+FFFD and flag the field, so do the same here instead of losing the event.
        event = guard_event(event, max_text_chars=sys.maxsize)
        value = encode_event(event)
    return _Message(key=event.key.encode("utf-8"), value=value)


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), CANCEL_GRACE_S)
    except (KafkaError, asyncio.TimeoutError, OSError) as exc:
        log.warning("stopping the Kafka producer failed: %s", exc)


def _failure_kind(exc: BaseException) -> str:
    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        return f"invalid event at {'.'.join(str(part) for part in first['loc']) or 'event'}"
    return type(exc).__name__


def _retriable(exc: BaseException) -> bool:
    # aiokafka marks KafkaTimeoutError as not retriable, but here it means the broker or the
    # topic's metadata was out of reach for request_timeout_ms, which is usually temporary.
    if isinstance(exc, (KafkaTimeoutError, KafkaConnectionError, asyncio.TimeoutError)):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))
