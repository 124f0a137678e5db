"""Each payload format through the real broker and worker into both databases, and the client's delivery."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import select

from controlplane.client import ControlPlaneClient
from controlplane.events.decode import decode_event
from controlplane.events.schema import InferenceEvent
from controlplane.store.models import DeadLetter, WindowStats
from tests.integration.helpers import StoreProbe, read_topic, wait_for
from tests.unit.test_adapters import (
    HTTP_SPAN,
    LITELLM_SUCCESS,
    OPENAI_COMPLETE,
    OPENAI_STREAMED,
    OPENINFERENCE_SPAN,
    OPENLLMETRY_SPAN,
    SEMCONV_SPAN,
    attributes,
    otlp_export,
)

pytestmark = pytest.mark.integration

FORMAT = "controlplane-format"
CANONICAL = {
    "event_id": "canonical-1",
    "timestamp": "2026-12-01T10:00:30Z",
    "app": "billing-assistant",
    "model": "gpt-4o-mini",
    "prompt": "Why was I charged twice?",
    "completion": "The second charge is a pending authorization.",
    "usage": {"input_tokens": 12, "output_tokens": 9},
}


def litellm_copy(event_id: str) -> dict:
    payload = copy.deepcopy(LITELLM_SUCCESS)
    payload["id"] = event_id
    return payload


def invalid_otlp() -> dict:
    span = copy.deepcopy(SEMCONV_SPAN)
    span["attributes"] = attributes({"gen_ai.request.model": "gpt-4o"}) + [
        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "many"}}
    ]
    return otlp_export(span)


def second_semconv_span() -> dict:
    span = copy.deepcopy(SEMCONV_SPAN)
    span["spanId"] = "eee19b7ec3c1b175"
    return span


# (payload, headers, events stored); a message that stores no event goes to the dead-letter topic.
MESSAGES = [
    (OPENAI_COMPLETE, [(FORMAT, b"openai")], 1),
    (OPENAI_STREAMED, [], 1),
    (otlp_export(HTTP_SPAN, SEMCONV_SPAN), [(FORMAT, b"otlp")], 1),
    (otlp_export(OPENLLMETRY_SPAN), [], 1),
    (litellm_copy("litellm-with-header"), [(FORMAT, b"litellm")], 1),
    (litellm_copy("litellm-without-header"), [], 1),
    (CANONICAL, [(FORMAT, b"event")], 1),
    (dict(CANONICAL, event_id="canonical-2"), [], 1),
    (invalid_otlp(), [(FORMAT, b"otlp")], 0),
    (otlp_export(second_semconv_span(), HTTP_SPAN, OPENINFERENCE_SPAN), [], 2),
    # The header wins over detection: this OpenAI pair is read as LiteLLM and rejected.
    (OPENAI_COMPLETE, [(FORMAT, b"litellm")], 0),
]
STORED = sum(count for _, _, count in MESSAGES)
DEAD = sum(1 for _, _, count in MESSAGES if count == 0)


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def _produce_with_headers(bootstrap: str, topic: str, messages: list[tuple[dict, list]]) -> None:
    await _create_topic(bootstrap, topic, partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for payload, headers in messages:
            await producer.send_and_wait(topic, value=json.dumps(payload).encode(), key=b"formats", headers=headers)
    finally:
        await producer.stop()


def test_every_format_stored_bad_otlp_dead_lettered(kafka_bootstrap, worker_env, start_worker, database_url):
    topic = worker_env["CONTROLPLANE_TOPIC_EVENTS"]
    asyncio.run(_produce_with_headers(kafka_bootstrap, topic, [(payload, headers) for payload, headers, _ in MESSAGES]))

    worker = start_worker()
    probe = StoreProbe(database_url)
    try:
        wait_for(lambda: probe.windowed_events() == STORED and probe.dead_letters() == DEAD, 180,
                 f"{STORED} windowed events and {DEAD} dead letters", worker.log)
        with probe.engine.connect() as connection:
            windows = connection.execute(select(WindowStats.app, WindowStats.model, WindowStats.event_count)).all()
            reasons = [row.reason for row in connection.execute(select(DeadLetter).order_by(DeadLetter.offset))]
        assert probe.buffered_events() == 0
    finally:
        probe.close()

    per_key: dict[tuple[str, str], int] = {}
    for app, model, count in windows:
        per_key[(app, model)] = per_key.get((app, model), 0) + count
    assert per_key == {
        ("billing-assistant", "gpt-4o-mini"): 3,
        ("geo-quiz", "gpt-4o"): 1,
        ("travel-planner", "gpt-4o"): 2,
        ("travel-planner", "gpt-4o-mini"): 1,
        ("travel-planner", "claude-3-5-sonnet-20241022"): 1,
        ("site-search", "gpt-4o-mini"): 2,
    }
    assert len(reasons) == 2
    assert reasons[0].startswith("otlp: ")
    assert "gen_ai.usage.input_tokens" in reasons[0]
    assert reasons[1].startswith("litellm: id: missing")
    letters = read_topic(kafka_bootstrap, worker_env["CONTROLPLANE_TOPIC_DLQ"], expected=2)
    by_reason = {dict(letter.headers)["reason"].decode(): json.loads(letter.value) for letter in letters}
    assert by_reason == {reasons[0]: invalid_otlp(), reasons[1]: OPENAI_COMPLETE}


def test_client_delivers_1000_events(kafka_bootstrap):
    topic = f"t{uuid.uuid4().hex[:10]}.inference.events"
    asyncio.run(_create_topic(kafka_bootstrap, topic, partitions=3))
    events = [
        InferenceEvent(
            event_id=f"client-{index}",
            timestamp="2026-12-01T10:00:00Z",
            app=("assistant", "support")[index % 2],
            model="gpt-4o-mini",
            prompt=f"Question number {index}",
            completion="An answer.",
        )
        for index in range(1000)
    ]

    client = ControlPlaneClient(kafka_bootstrap, topic=topic)
    try:
        accepted = [client.log(event) for event in events]
        delivered = client.flush(timeout=60)
    finally:
        client.close(timeout=10)

    assert all(accepted)
    assert delivered is True
    assert client.stats.sent == 1000
    assert client.stats.dropped_full == 0
    assert client.stats.dropped_error == 0
    records = read_topic(kafka_bootstrap, topic, expected=1000)
    assert len(records) == 1000
    decoded = [decode_event(record.value) for record in records]
    assert sorted(event.event_id for event in decoded) == sorted(event.event_id for event in events)
    assert {record.key for record in records} == {b"assistant|gpt-4o-mini", b"support|gpt-4o-mini"}
