"""The producer client against an unreachable broker: bounded buffer, drop counters, no exceptions."""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import datetime, timezone

import pytest

from controlplane.client import ControlPlaneClient
from controlplane.errors import ConfigurationError
from controlplane.events.schema import InferenceEvent

SHORT_S = 0.3


def event_fields(index: int) -> dict:
    return {
        "event_id": f"e-{index}",
        "timestamp": "2026-12-01T10:00:00Z",
        "app": "assistant",
        "model": "gpt-4o-mini",
        "prompt": f"question {index}",
    }


@pytest.fixture
def closed_port() -> int:
    """A 127.0.0.1 port that nothing listens on: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def client(closed_port):
    client = ControlPlaneClient(f"127.0.0.1:{closed_port}", topic="unit.inference.events", max_buffer_events=5)
    yield client
    client.close(timeout=SHORT_S)


def test_full_buffer_drops_newest(client):
    accepted = [client.log(event_fields(index)) for index in range(8)]

    assert accepted == [True] * 5 + [False] * 3
    stats = client.stats
    assert stats.dropped_full == 3
    assert stats.buffered == 5
    assert stats.sent == 0


def test_flush_without_broker_returns_false(client):
    client.log(event_fields(1))
    assert client.flush(timeout=SHORT_S) is False
    assert client.stats.buffered == 1


def test_close_counts_unsent_as_dropped(client):
    for index in range(3):
        client.log(event_fields(index))

    client.close(timeout=SHORT_S)

    stats = client.stats
    assert stats.dropped_error == 3
    assert stats.buffered == 0
    assert client.log(event_fields(9)) is False
    assert client.stats.dropped_error == 4


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt": "no id, no time, no app"},
        {**event_fields(1), "usage": {"input_tokens": -1}},
        "a string is not an event",
        None,
    ],
)
def test_invalid_event_is_counted_not_raised(client, bad):
    assert client.log(bad) is False
    assert client.stats.failed_serialization == 1
    assert client.stats.buffered == 0


def test_failures_logged_once_per_kind(client, caplog):
    caplog.set_level(logging.WARNING, logger="controlplane.client")
    for _ in range(5):
        client.log({"prompt": "missing fields"})
    for index in range(10):
        client.log(event_fields(index))

    messages = [record.getMessage() for record in caplog.records if record.name == "controlplane.client"]
    assert client.stats.failed_serialization == 5
    assert client.stats.dropped_full == 5
    assert sum("event not sent" in message for message in messages) == 1
    assert sum("buffer full" in message for message in messages) == 1


def test_lone_surrogate_is_repaired_not_dropped(client):
    event = InferenceEvent(**{**event_fields(1), "prompt": "broken \ud800 text"})
    assert client.log(event) is True
    assert client.stats.failed_serialization == 0
    assert client.stats.buffered == 1


def test_alog_buffers_like_log(client):
    event = InferenceEvent(**{**event_fields(1), "timestamp": datetime(2026, 12, 1, tzinfo=timezone.utc)})

    async def send_two() -> list[bool]:
        return [await client.alog(event), await client.alog({"prompt": "bad"})]

    assert asyncio.run(send_two()) == [True, False]
    assert client.stats.buffered == 1
    assert client.stats.failed_serialization == 1


@pytest.mark.parametrize(("bootstrap", "size"), [("127.0.0.1:9", 0), ("", 10)])
def test_invalid_arguments_rejected(bootstrap, size):
    with pytest.raises(ConfigurationError):
        ControlPlaneClient(bootstrap, max_buffer_events=size)
