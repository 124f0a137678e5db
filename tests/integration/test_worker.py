"""The worker against a real broker and real databases: dead letters, exact counts after SIGKILL."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from controlplane.store.models import DeadLetter, WindowStats
from tests.integration.helpers import StoreProbe, event_message, make_event, produce, read_topic, wait_for

pytestmark = pytest.mark.integration

MALFORMED = [
    (b"not json at all", "value is not JSON"),
    (json.dumps({"prompt": "hi"}).encode(), "event_id: Field required"),
    (
        json.dumps(
            {"event_id": "x1", "timestamp": "2026-11-30T12:00:00Z", "app": "assistant", "model": "gpt-4o-mini",
             "prompt": "hi", "usage": {"input_tokens": "many"}}
        ).encode(),
        "usage.input_tokens",
    ),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
]


def test_malformed_messages_go_to_dead_letter_topic(kafka_bootstrap, worker_env, start_worker, database_url):
    topic = worker_env["CONTROLPLANE_TOPIC_EVENTS"]
    dlq = worker_env["CONTROLPLANE_TOPIC_DLQ"]
    valid_before = [event_message(make_event(i)) for i in range(100)]
    valid_after = [event_message(make_event(i)) for i in range(100, 200)]
    bad = [(b"assistant|gpt-4o-mini", raw) for raw, _ in MALFORMED]
    produce(kafka_bootstrap, topic, valid_before + bad + valid_after)

    worker = start_worker()
    probe = StoreProbe(database_url)
    try:
        wait_for(lambda: probe.windowed_events() == 200 and probe.dead_letters() == len(MALFORMED), 180,
                 "200 windowed events and 4 dead letters", worker.log)
        with probe.engine.connect() as connection:
            reasons = [row.reason for row in connection.execute(select(DeadLetter).order_by(DeadLetter.offset))]
        assert probe.buffered_events() == 0
    finally:
        probe.close()

    for (_, expected), reason in zip(MALFORMED, reasons, strict=True):
        assert expected in reason
    letters = read_topic(kafka_bootstrap, dlq, expected=len(MALFORMED))
    assert sorted(record.value for record in letters) == sorted(raw for raw, _ in MALFORMED)
    for record in letters:
        headers = dict(record.headers)
        assert headers["reason"]
        assert headers["source-topic"].decode() == topic


def test_sigkill_mid_stream_counts_every_event_once(kafka_bootstrap, worker_env, start_worker, database_url):
    topic = worker_env["CONTROLPLANE_TOPIC_EVENTS"]
    total = 3000
    messages = []
    for i in range(total // 3):
        for app in ("assistant", "support", "search"):
            messages.append(event_message(make_event(i, app=app, seconds_apart=0.2)))
    produce(kafka_bootstrap, topic, messages)

    probe = StoreProbe(database_url)
    try:
        first = start_worker("first")
        wait_for(lambda: probe.windowed_events() + probe.buffered_events() >= total // 4, 180,
                 "a quarter of the events stored", first.log)
        first.kill()
        stored_at_kill = probe.windowed_events() + probe.buffered_events()
        assert stored_at_kill < total, "the worker finished before it was killed; the test proves nothing"

        second = start_worker("second")
        wait_for(lambda: probe.windowed_events() == total and probe.buffered_events() == 0, 240,
                 f"{total} events in window statistics", second.log)
        with probe.engine.connect() as connection:
            windows = connection.execute(select(WindowStats.app, WindowStats.window_start, WindowStats.event_count)).all()
    finally:
        probe.close()

    # 1,000 events per app, 0.2 s apart, fill 3 full 60 s windows (300 each) and one of 100.
    per_app: dict[str, list[int]] = {}
    for app, _, count in windows:
        per_app.setdefault(app, []).append(count)
    assert {app: sorted(counts) for app, counts in per_app.items()} == {
        app: [100, 300, 300, 300] for app in ("assistant", "search", "support")
    }
