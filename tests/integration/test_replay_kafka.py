"""Replay against the real broker: counts, keys and partitions read back, topic creation, errors."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pytest

from controlplane.errors import StreamError
from controlplane.events.decode import decode_event
from controlplane.replay import FieldMapping, Segment, Source, Timeline, ensure_topics, produce_raw, replay
from tests.integration.helpers import read_topic

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
APPS = [("assistant", "demo-code-model"), ("support", "demo-chat-model"), ("search", "demo-code-model")]


def write_rows(path: Path, count: int) -> Path:
    rows = [{"instruction": f"Summarise ticket {i}.", "input": "", "output": f"Ticket {i} is about billing."} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def three_key_timeline(tmp_path: Path, rows: int, rate: float = 50.0) -> Timeline:
    """Events of three (app, model) keys mixed in equal parts, `rows` in all."""
    path = write_rows(tmp_path / "tickets.jsonl", 60)
    sources = tuple(Source(path, FieldMapping.parse(f"app={app},model={model}")) for app, model in APPS)
    return Timeline([Segment(name="mixed", sources=sources, rows=rows, rate=rate, start=START, seed=11)])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_replay_round_trip_keys_and_partitions(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    topic = f"{topic_prefix}.replay"
    created = asyncio.run(ensure_topics(kafka_bootstrap, {topic: 3}))
    timeline = three_key_timeline(tmp_path, 500)

    stats = asyncio.run(replay(timeline, kafka_bootstrap, topic, speedup="max"))
    records = read_topic(kafka_bootstrap, topic, expected=500)

    assert created == [topic]
    assert stats.produced == {"mixed": 500}
    assert len(records) == 500
    events = [decode_event(record.value) for record in records]
    assert {record.key.decode() for record in records} == {f"{app}|{model}" for app, model in APPS}
    assert all(record.key.decode() == event.key for record, event in zip(records, events))
    partitions_by_key: dict[bytes, set[int]] = defaultdict(set)
    for record in records:
        partitions_by_key[record.key].add(record.partition)
    assert all(len(partitions) == 1 for partitions in partitions_by_key.values()), partitions_by_key
    assert sorted(event.event_id for event in events) == sorted(event.event_id for event in timeline)


def test_ensure_topics_is_idempotent(kafka_bootstrap: str, topic_prefix: str) -> None:
    topics = {f"{topic_prefix}.a": 2, f"{topic_prefix}.b": 1}
    first = asyncio.run(ensure_topics(kafka_bootstrap, topics))
    second = asyncio.run(ensure_topics(kafka_bootstrap, topics))
    assert sorted(first) == sorted(topics)
    assert second == []


def test_produce_raw_keeps_bytes(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.raw"
    values = [b"not json", b"\xff\xfe\x00", b'{"prompt": "no id"}']
    asyncio.run(ensure_topics(kafka_bootstrap, {topic: 1}))
    sent = asyncio.run(produce_raw(values, kafka_bootstrap, topic, key=b"assistant|demo-code-model"))
    records = read_topic(kafka_bootstrap, topic, expected=3)
    assert sent == 3
    assert [record.value for record in records] == values
    assert {record.key for record in records} == {b"assistant|demo-code-model"}


def test_replay_paces_by_speedup(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    topic = f"{topic_prefix}.paced"
    asyncio.run(ensure_topics(kafka_bootstrap, {topic: 1}))
    # 21 events at 10 per second span 2 s of event time, so speedup 4 takes about 0.5 s.
    stats = asyncio.run(replay(three_key_timeline(tmp_path, 21, rate=10.0), kafka_bootstrap, topic, speedup=4))
    assert stats.total == 21
    assert 0.45 <= stats.elapsed_seconds < 5.0


def test_unreachable_bootstrap_raises_stream_error(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{closed_port()}"
    began = time.monotonic()
    with pytest.raises(StreamError, match=f"cannot connect to Kafka at {bootstrap}") as caught:
        asyncio.run(replay(three_key_timeline(tmp_path, 5), bootstrap, "inference.events"))
    assert time.monotonic() - began < 10.0
    assert caught.value.__cause__ is not None


def test_unreachable_bootstrap_ensure_topics(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{closed_port()}"
    with pytest.raises(StreamError, match=bootstrap):
        asyncio.run(ensure_topics(bootstrap, {"inference.events": 1}))


def test_missing_topic_raises_stream_error(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    topic = f"{topic_prefix}.never-created"
    with pytest.raises(StreamError, match=f"topic '{topic}' does not exist"):
        asyncio.run(replay(three_key_timeline(tmp_path, 5), kafka_bootstrap, topic))
