"""Guards on decoded events: truncation with a hash, invalid Unicode, impossible durations."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import pytest

from controlplane.events.decode import decode_event, decode_message, encode_event
from controlplane.events.guards import duration_problems, guard_event, repair_unicode, truncate_text
from controlplane.events.schema import ChatMessage, InferenceEvent, Usage

LIMIT = 1_000


def make_event(**changes) -> InferenceEvent:
    fields = {
        "event_id": "e-1",
        "timestamp": datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc),
        "app": "assistant",
        "model": "gpt-4o-mini",
        "prompt": "Summarize the report.",
        "completion": "The report says revenue grew.",
        "usage": Usage(input_tokens=9000, cached_input_tokens=0, output_tokens=12),
        "cost_usd": 0.0021,
        "latency_ms": 950.0,
        "time_to_first_token_ms": 210.0,
    }
    fields.update(changes)
    return InferenceEvent(**fields)


def test_plain_event_is_unchanged():
    event = make_event()
    assert guard_event(event, LIMIT) is event


def test_truncation_keeps_counts_and_records_hash():
    long_prompt = "Summarize: " + "quarterly numbers " * 400
    event = make_event(prompt=long_prompt)

    guarded = guard_event(event, LIMIT)

    assert guarded.prompt == long_prompt[:LIMIT]
    assert guarded.truncated is True
    assert guarded.metadata["truncated_texts"] == {
        "prompt": {"sha256": hashlib.sha256(long_prompt.encode()).hexdigest(), "chars": len(long_prompt)}
    }
    assert guarded.usage == event.usage
    assert guarded.cost_usd == 0.0021
    assert guarded.latency_ms == 950.0
    assert guarded.completion == event.completion


def test_truncation_of_messages_and_completion():
    long_message = "é" * (LIMIT + 5)
    long_completion = "x" * (LIMIT * 3)
    event = make_event(
        prompt=None,
        messages=[ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content=long_message)],
        completion=long_completion,
    )

    guarded = guard_event(event, LIMIT)

    assert guarded.messages[0].content == "Be brief."
    assert guarded.messages[1].content == "é" * LIMIT
    assert len(guarded.completion) == LIMIT
    assert guarded.metadata["truncated_texts"] == {
        "messages.1.content": {"sha256": hashlib.sha256(long_message.encode()).hexdigest(), "chars": LIMIT + 5},
        "completion": {"sha256": hashlib.sha256(long_completion.encode()).hexdigest(), "chars": LIMIT * 3},
    }


def test_text_at_limit_is_kept():
    text = "y" * LIMIT
    assert truncate_text(text, LIMIT) == (text, None)


def test_lone_surrogate_from_json_is_replaced():
    raw = (
        b'{"event_id": "e-2", "timestamp": "2026-12-01T10:00:00Z", "app": "assistant", "model": "m",'
        b' "prompt": "broken \\ud800 text", "completion": "ok \\udfff", "metadata": {"note": "\\ud83d"}}'
    )

    [event] = decode_message(raw)

    assert event.prompt == "broken \ufffd text"
    assert event.completion == "ok \ufffd"
    assert event.metadata["note"] == "\ufffd"
    assert event.metadata["invalid_unicode"] == ["completion", "metadata.note", "prompt"]
    assert decode_event(encode_event(event)).prompt == "broken \ufffd text"


def test_valid_surrogate_pair_is_kept():
    [event] = decode_message(
        b'{"event_id": "e-3", "timestamp": "2026-12-01T10:00:00Z", "app": "a", "model": "m", "prompt": "\\ud83d\\ude00"}'
    )
    assert event.prompt == "\U0001F600"
    assert "invalid_unicode" not in event.metadata


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("a\ud800b", "a\ufffdb"),
        ("\udc00", "\ufffd"),
        ("\ud83d\ude00", "\U0001F600"),
        ("\ude00\ud83d", "\ufffd\ufffd"),
    ],
)
def test_repair_unicode(text, expected):
    assert repair_unicode(text) == expected


@pytest.mark.parametrize(
    ("latency", "ttft", "expected"),
    [
        (950.0, 210.0, {}),
        (None, None, {}),
        (-5.0, None, {"latency_ms": "negative: -5.0"}),
        (950.0, -1.0, {"time_to_first_token_ms": "negative: -1.0"}),
        (400.0, 900.0, {"time_to_first_token_ms": "greater than latency_ms: 900.0 > 400.0"}),
        (90_000_000.0, None, {"latency_ms": "longer than one day: 90000000.0"}),
        (-5.0, 10.0, {"latency_ms": "negative: -5.0"}),
        (float("nan"), None, {"latency_ms": "not a finite number: nan"}),
    ],
)
def test_duration_problems(latency, ttft, expected):
    assert duration_problems(latency, ttft) == expected


def test_negative_latency_flagged_and_kept():
    guarded = guard_event(make_event(latency_ms=-12.0), LIMIT)
    assert guarded.latency_ms == -12.0
    assert guarded.metadata["invalid_durations"] == {"latency_ms": "negative: -12.0"}
    assert guarded.truncated is False


def test_decode_message_applies_limit():
    payload = {"event_id": "e-4", "timestamp": "2026-12-01T10:00:00Z", "app": "a", "model": "m", "prompt": "z" * 3000}
    [event] = decode_message(json.dumps(payload).encode(), max_text_chars=LIMIT)
    assert len(event.prompt) == LIMIT
    assert event.truncated is True
    assert event.metadata["truncated_texts"]["prompt"]["chars"] == 3000
