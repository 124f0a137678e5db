"""Decoding of canonical events, with the reason of each rejection."""

from __future__ import annotations

import json

import pytest

from controlplane.errors import EventValidationError
from controlplane.events import decode_event, encode_event

VALID = {
    "event_id": "e-1",
    "timestamp": "2026-12-01T10:00:00Z",
    "app": "assistant",
    "model": "gpt-4o-mini",
    "prompt": "hello",
    "completion": "hi",
    "usage": {"input_tokens": 3, "output_tokens": 0},
}


def _with(**changes):
    payload = dict(VALID)
    for key, value in changes.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty message"),
        (b"{not json", "value is not JSON"),
        (b"\xc3\x28", "value is not UTF-8"),
        (b"[1, 2]", "value is JSON list, expected an object"),
        (_with(event_id=None), "event_id: Field required"),
        (_with(prompt=None), "an event needs a prompt"),
        (_with(usage={"input_tokens": -1}), "usage.input_tokens: Input should be greater than or equal to 0"),
        (_with(usage={"input_tokens": "many"}), "usage.input_tokens: Input should be a valid integer"),
        (_with(timestamp="yesterday"), "timestamp:"),
        (_with(status="exploded"), "status:"),
        (_with(surprise=1), "surprise: Extra inputs are not permitted"),
    ],
)
def test_rejections_name_the_reason(raw, reason):
    with pytest.raises(EventValidationError) as caught:
        decode_event(raw)
    assert reason in caught.value.reason


def test_unknown_usage_stays_none_and_zero_stays_zero():
    event = decode_event(_with())
    assert event.usage.input_tokens == 3
    assert event.usage.output_tokens == 0
    assert event.usage.cached_input_tokens is None
    assert event.cost_usd is None
    assert event.latency_ms is None


def test_round_trip_and_key():
    event = decode_event(_with(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}], prompt=None))
    again = decode_event(encode_event(event))
    assert again == event
    assert event.key == "assistant|gpt-4o-mini"
    assert event.prompt_text() == "be brief\nq"
    assert event.user_prompt_text() == "q"
    assert event.timestamp.tzinfo is not None


GUARD_CASES = [
    # (case, raw message value)
    ("plain event", _with()),
    ("text over the limit", _with(completion="x" * 300)),
    ("message over the limit", _with(prompt=None, messages=[{"role": "user", "content": "y" * 300}])),
    ("negative latency", _with(latency_ms=-5.0)),
    ("first token after the last", _with(latency_ms=10.0, time_to_first_token_ms=20.0)),
    ("lone surrogate escape", _with(prompt="a\ud800b")),
    ("surrogate pair escape", _with(prompt="a\U0001f600b")),
    ("escaped backslash before u", _with(prompt="path C:\\ud80 here")),
    ("surrogate in metadata key", _with(metadata={"k\udfff": 1})),
]


@pytest.mark.parametrize(("case", "raw"), GUARD_CASES, ids=[case for case, _ in GUARD_CASES])
def test_decode_message_equals_guarded_event(case, raw):
    from controlplane.events.decode import decode_message
    from controlplane.events.guards import guard_event

    decoded = decode_message(raw, max_text_chars=256)

    assert decoded == [guard_event(decode_event(raw), 256)]
