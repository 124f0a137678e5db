"""Adapters from OpenAI, OTLP JSON and LiteLLM payloads, compared field by field with the expected events."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import datetime, timezone

import pytest

from controlplane.errors import EventValidationError
from controlplane.events.decode import decode_message, detect_format, format_from_headers
from controlplane.events.schema import ChatMessage, InferenceEvent, Usage

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
T0_EPOCH = 1796119200
T0_NANOS = T0_EPOCH * 1_000_000_000


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def encoded(payload: dict) -> bytes:
    return json.dumps(payload).encode()


def assert_same_event(actual: InferenceEvent, expected: InferenceEvent) -> None:
    for name in InferenceEvent.model_fields:
        assert getattr(actual, name) == getattr(expected, name), f"field {name}"


def attribute(key: str, value) -> dict:
    """Build one OTLP JSON attribute, with intValue as a string as OTLP JSON writes it."""
    if isinstance(value, bool):
        wrapped = {"boolValue": value}
    elif isinstance(value, int):
        wrapped = {"intValue": str(value)}
    elif isinstance(value, float):
        wrapped = {"doubleValue": value}
    elif isinstance(value, list):
        wrapped = {"arrayValue": {"values": [{"stringValue": item} for item in value]}}
    elif isinstance(value, dict):
        wrapped = {"kvlistValue": {"values": [attribute(k, v) for k, v in value.items()]}}
    else:
        wrapped = {"stringValue": value}
    return {"key": key, "value": wrapped}


def attributes(values: dict) -> list[dict]:
    return [attribute(key, value) for key, value in values.items()]


# ----- OpenAI -----

OPENAI_REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are the billing assistant of Acme Cloud. Answer in two sentences."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "My March invoice shows the same charge twice."},
                {"type": "image_url", "image_url": {"url": "https://example.com/invoice-march.png"}},
            ],
        },
    ],
    "temperature": 0.2,
    "max_completion_tokens": 300,
    "user": "customer-8812",
}

OPENAI_COMPLETE = {
    "request": OPENAI_REQUEST,
    "response": {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": T0_EPOCH,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "I see two charges of $40 on March 3.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 1432,
            "completion_tokens": 61,
            "total_tokens": 1493,
            "prompt_tokens_details": {"cached_tokens": 1280, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    },
    "app": "billing-assistant",
    "route": "/api/chat",
    "latency_ms": 842.5,
    "metadata": {"tenant": "acme"},
}

OPENAI_COMPLETE_EVENT = InferenceEvent(
    event_id="chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    timestamp=T0,
    app="billing-assistant",
    route="/api/chat",
    model="gpt-4o-mini",
    model_version="gpt-4o-mini-2024-07-18",
    messages=[
        ChatMessage(role="system", content="You are the billing assistant of Acme Cloud. Answer in two sentences."),
        ChatMessage(role="user", content="My March invoice shows the same charge twice."),
    ],
    completion="I see two charges of $40 on March 3.",
    usage=Usage(input_tokens=1432, cached_input_tokens=1280, output_tokens=61, reasoning_tokens=0),
    latency_ms=842.5,
    status="ok",
    finish_reason="stop",
    user_id_hash=sha256("customer-8812"),
    metadata={
        "tenant": "acme",
        "request_params": {"temperature": 0.2, "max_completion_tokens": 300},
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
        "source_format": "openai",
    },
)


def stream_chunk(delta: dict | None, finish_reason: str | None = None, usage: dict | None = None) -> dict:
    chunk = {
        "id": "chatcmpl-C1stream",
        "object": "chat.completion.chunk",
        "created": T0_EPOCH + 300,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_50cad350e4",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


STREAM_CHUNKS = [
    stream_chunk({"role": "assistant", "content": "", "refusal": None}),
    stream_chunk({"content": "Paris"}),
    stream_chunk({"content": " is the capital of France."}),
    stream_chunk({}, finish_reason="stop"),
]

OPENAI_STREAMED = {
    "request": {
        "model": "gpt-4o",
        "stream": True,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    },
    "response": STREAM_CHUNKS,
    "app": "geo-quiz",
    "timestamp": "2026-12-01T10:05:00.250Z",
    "latency_ms": 950.0,
    "time_to_first_token_ms": 180.0,
}

OPENAI_STREAMED_EVENT = InferenceEvent(
    event_id="chatcmpl-C1stream",
    timestamp=datetime(2026, 12, 1, 10, 5, 0, 250000, tzinfo=timezone.utc),
    app="geo-quiz",
    model="gpt-4o",
    model_version="gpt-4o-2024-08-06",
    messages=[ChatMessage(role="user", content="What is the capital of France?")],
    completion="Paris is the capital of France.",
    usage=Usage(),
    latency_ms=950.0,
    time_to_first_token_ms=180.0,
    finish_reason="stop",
    metadata={"stream": True, "system_fingerprint": "fp_50cad350e4", "source_format": "openai"},
)


def test_openai_complete_with_cached_tokens():
    [event] = decode_message(encoded(OPENAI_COMPLETE), [("controlplane-format", b"openai")])
    assert_same_event(event, OPENAI_COMPLETE_EVENT)


def test_openai_stream_without_usage_is_unknown():
    [event] = decode_message(encoded(OPENAI_STREAMED))
    assert_same_event(event, OPENAI_STREAMED_EVENT)
    assert event.usage.input_tokens is None
    assert event.usage.output_tokens is None


def test_openai_stream_final_usage_chunk():
    payload = copy.deepcopy(OPENAI_STREAMED)
    payload["request"]["stream_options"] = {"include_usage": True}
    usage = {"prompt_tokens": 14, "completion_tokens": 7, "total_tokens": 21, "prompt_tokens_details": {"cached_tokens": 0}}
    payload["response"] = STREAM_CHUNKS + [stream_chunk(None, usage=usage)]
    expected = OPENAI_STREAMED_EVENT.model_copy(update={"usage": Usage(input_tokens=14, cached_input_tokens=0, output_tokens=7)})

    [event] = decode_message(encoded(payload))

    assert_same_event(event, expected)


def test_openai_tool_call_has_no_completion():
    payload = copy.deepcopy(OPENAI_COMPLETE)
    choice = payload["response"]["choices"][0]
    choice["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_7", "type": "function", "function": {"name": "lookup_invoice", "arguments": "{}"}}],
    }
    choice["finish_reason"] = "tool_calls"

    [event] = decode_message(encoded(payload))

    assert event.completion is None
    assert event.finish_reason == "tool_calls"
    assert event.metadata["tool_calls"] == ["lookup_invoice"]


def test_openai_refusal_becomes_completion():
    payload = copy.deepcopy(OPENAI_COMPLETE)
    payload["response"]["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": "I can't help with that."}

    [event] = decode_message(encoded(payload))

    assert event.completion == "I can't help with that."
    assert event.metadata["refusal"] is True


def test_openai_error_response():
    payload = {
        "request": OPENAI_REQUEST,
        "response": {"error": {"message": "Rate limit reached for gpt-4o-mini", "type": "requests", "code": "rate_limit_exceeded"}},
        "event_id": "req-42",
        "app": "billing-assistant",
        "timestamp": "2026-12-01T10:00:00Z",
        "latency_ms": 35.0,
    }
    expected = InferenceEvent(
        event_id="req-42",
        timestamp=T0,
        app="billing-assistant",
        model="gpt-4o-mini",
        messages=OPENAI_COMPLETE_EVENT.messages,
        usage=Usage(),
        latency_ms=35.0,
        status="error",
        user_id_hash=sha256("customer-8812"),
        metadata={
            "request_params": {"temperature": 0.2, "max_completion_tokens": 300},
            "error": {"type": "requests", "code": "rate_limit_exceeded", "message": "Rate limit reached for gpt-4o-mini"},
            "source_format": "openai",
        },
    )

    [event] = decode_message(encoded(payload))

    assert_same_event(event, expected)


def test_openai_id_without_response_id_is_stable():
    payload = {
        "request": OPENAI_REQUEST,
        "response": {"error": {"message": "Bad gateway", "type": "server_error"}},
        "timestamp": "2026-12-01T10:00:00Z",
    }
    other = dict(payload, timestamp="2026-12-01T10:00:01Z")

    [first] = decode_message(encoded(payload))
    [again] = decode_message(encoded(payload))
    [second] = decode_message(encoded(other))

    assert first.event_id.startswith("openai-")
    assert first.event_id == again.event_id
    assert first.event_id != second.event_id
    assert first.app == "unknown"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: p["request"].pop("messages"), "openai: request.messages: missing"),
        (lambda p: p["response"]["usage"].update(prompt_tokens=-3), "openai: response.usage.prompt_tokens: expected a count"),
        (lambda p: p["response"]["usage"].update(completion_tokens="many"), "openai: response.usage.completion_tokens"),
        (lambda p: p.update(latency=12), "openai: latency: unknown key"),
        (lambda p: p["response"].pop("created"), "openai: timestamp: missing"),
        (lambda p: p.update(response=[]), "openai: response: an empty list of chunks"),
        (lambda p: p.update(status="exploded"), "openai: request/response: the event built from it is invalid: status"),
    ],
)
def test_openai_rejections_name_the_field(change, reason):
    payload = copy.deepcopy(OPENAI_COMPLETE)
    change(payload)
    with pytest.raises(EventValidationError) as caught:
        decode_message(encoded(payload))
    assert reason in caught.value.reason


# ----- OTLP JSON -----

SEMCONV_SPAN = {
    "traceId": "5b8efff798038103d269b633813fc60c",
    "spanId": "eee19b7ec3c1b174",
    "parentSpanId": "eee19b7ec3c1b173",
    "name": "chat gpt-4o",
    "kind": 3,
    "startTimeUnixNano": str(T0_NANOS),
    "endTimeUnixNano": str(T0_NANOS + 1_250_000_000),
    "attributes": attributes(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.request.temperature": 0.7,
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.response.id": "chatcmpl-otel-1",
            "gen_ai.response.finish_reasons": ["stop"],
            "gen_ai.usage.input_tokens": 812,
            "gen_ai.usage.output_tokens": 96,
        }
    ),
    "events": [
        {"timeUnixNano": str(T0_NANOS), "name": "gen_ai.system.message",
         "attributes": attributes({"gen_ai.system": "openai", "content": "You plan trips."})},
        {"timeUnixNano": str(T0_NANOS), "name": "gen_ai.user.message",
         "attributes": attributes({"gen_ai.system": "openai", "content": "Three days in Lisbon in May?"})},
        {"timeUnixNano": str(T0_NANOS + 1_250_000_000), "name": "gen_ai.choice",
         "attributes": attributes(
             {"index": 0, "finish_reason": "stop",
              "message": {"role": "assistant", "content": "Day 1: Alfama and the castle."}}
         )},
    ],
    "status": {},
}

HTTP_SPAN = {
    "traceId": "5b8efff798038103d269b633813fc60c",
    "spanId": "eee19b7ec3c1b173",
    "name": "POST /plan",
    "kind": 2,
    "startTimeUnixNano": str(T0_NANOS - 5_000_000),
    "endTimeUnixNano": str(T0_NANOS + 1_300_000_000),
    "attributes": attributes({"http.request.method": "POST", "http.route": "/plan", "http.response.status_code": 200}),
}


def otlp_export(*spans: dict, service: str = "travel-planner") -> dict:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": attributes({"service.name": service, "deployment.environment.name": "prod"})},
                "scopeSpans": [{"scope": {"name": "opentelemetry.instrumentation.openai_v2", "version": "2.1b0"},
                                "spans": list(spans)}],
            }
        ]
    }


SEMCONV_EVENT = InferenceEvent(
    event_id="5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174",
    timestamp=T0,
    app="travel-planner",
    model="gpt-4o",
    model_version="gpt-4o-2024-08-06",
    messages=[
        ChatMessage(role="system", content="You plan trips."),
        ChatMessage(role="user", content="Three days in Lisbon in May?"),
    ],
    completion="Day 1: Alfama and the castle.",
    usage=Usage(input_tokens=812, output_tokens=96),
    latency_ms=1250.0,
    status="ok",
    finish_reason="stop",
    metadata={
        "source_format": "otlp",
        "parent_span_id": "eee19b7ec3c1b173",
        "span_name": "chat gpt-4o",
        "scope": "opentelemetry.instrumentation.openai_v2",
        "provider": "openai",
        "operation": "chat",
        "response_id": "chatcmpl-otel-1",
        "environment": "prod",
        "trace_id": "5b8efff798038103d269b633813fc60c",
        "span_id": "eee19b7ec3c1b174",
    },
)

OPENLLMETRY_SPAN = {
    "traceId": "0af7651916cd43dd8448eb211c80319c",
    "spanId": "b7ad6b7169203331",
    "name": "openai.chat",
    "startTimeUnixNano": str(T0_NANOS + 60_000_000_000),
    "endTimeUnixNano": str(T0_NANOS + 60_400_000_000),
    "attributes": attributes(
        {
            "llm.request.type": "chat",
            "gen_ai.system": "OpenAI",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "Say nothing.",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "",
            "gen_ai.completion.0.finish_reason": "stop",
            "gen_ai.usage.prompt_tokens": 9,
            "gen_ai.usage.completion_tokens": 0,
            "llm.usage.total_tokens": 9,
            "user.id": "traveller-17",
        }
    ),
}

OPENLLMETRY_EVENT = InferenceEvent(
    event_id="0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
    timestamp=datetime(2026, 12, 1, 10, 1, tzinfo=timezone.utc),
    app="travel-planner",
    model="gpt-4o-mini",
    messages=[ChatMessage(role="user", content="Say nothing.")],
    completion="",
    usage=Usage(input_tokens=9, output_tokens=0),
    latency_ms=400.0,
    status="ok",
    finish_reason="stop",
    user_id_hash=sha256("traveller-17"),
    metadata={
        "source_format": "otlp",
        "span_name": "openai.chat",
        "scope": "opentelemetry.instrumentation.openai_v2",
        "provider": "OpenAI",
        "environment": "prod",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
    },
)

OPENINFERENCE_SPAN = {
    "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
    "spanId": "00f067aa0ba902b7",
    "name": "ChatAnthropic",
    "startTimeUnixNano": T0_NANOS + 120_000_000_000,
    "endTimeUnixNano": T0_NANOS + 122_000_000_000,
    "attributes": attributes(
        {
            "openinference.span.kind": "LLM",
            "llm.provider": "anthropic",
            "llm.model_name": "claude-3-5-sonnet-20241022",
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.content": "Answer with one word.",
            "llm.input_messages.1.message.role": "user",
            "llm.input_messages.1.message.content": "Capital of Portugal?",
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.content": "Lisbon",
            "llm.token_count.prompt": 1200,
            "llm.token_count.prompt_details.cache_read": 1024,
            "llm.token_count.completion": 2,
            "session.id": "conv-88",
        }
    ),
    "status": {"code": 2, "message": "overloaded_error"},
}

OPENINFERENCE_EVENT = InferenceEvent(
    event_id="4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
    timestamp=datetime(2026, 12, 1, 10, 2, tzinfo=timezone.utc),
    app="travel-planner",
    model="claude-3-5-sonnet-20241022",
    messages=[
        ChatMessage(role="system", content="Answer with one word."),
        ChatMessage(role="user", content="Capital of Portugal?"),
    ],
    completion="Lisbon",
    usage=Usage(input_tokens=1200, cached_input_tokens=1024, output_tokens=2),
    latency_ms=2000.0,
    status="error",
    session_id_hash=sha256("conv-88"),
    metadata={
        "source_format": "otlp",
        "span_name": "ChatAnthropic",
        "scope": "opentelemetry.instrumentation.openai_v2",
        "provider": "anthropic",
        "status_message": "overloaded_error",
        "environment": "prod",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
    },
)


def test_otlp_semconv_span_with_events():
    [event] = decode_message(encoded(otlp_export(HTTP_SPAN, SEMCONV_SPAN)), {"controlplane-format": b"otlp"})
    assert_same_event(event, SEMCONV_EVENT)


def test_otlp_two_spans_vendor_spellings():
    events = decode_message(encoded(otlp_export(OPENLLMETRY_SPAN, HTTP_SPAN, OPENINFERENCE_SPAN)))
    assert len(events) == 2
    assert_same_event(events[0], OPENLLMETRY_EVENT)
    assert_same_event(events[1], OPENINFERENCE_EVENT)


def test_otlp_span_without_content_has_empty_prompt():
    span = copy.deepcopy(SEMCONV_SPAN)
    del span["events"]

    [event] = decode_message(encoded(otlp_export(span)))

    assert event.prompt == ""
    assert event.messages is None
    assert event.completion is None
    assert event.metadata["prompt_recorded"] is False
    assert event.usage == Usage(input_tokens=812, output_tokens=96)


def test_otlp_json_message_attributes():
    span = copy.deepcopy(SEMCONV_SPAN)
    del span["events"]
    span["attributes"] += attributes(
        {
            "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": "Hi there"}]}]),
            "gen_ai.output.messages": json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "Hello!"}], "finish_reason": "stop"}]
            ),
        }
    )

    [event] = decode_message(encoded(otlp_export(span)))

    assert event.messages == [ChatMessage(role="user", content="Hi there")]
    assert event.completion == "Hello!"


@pytest.mark.parametrize(
    ("export", "reason"),
    [
        (otlp_export(HTTP_SPAN), "otlp: resourceSpans: none of the 1 spans is a model call"),
        ({"resourceSpans": {"not": "a list"}}, "otlp: resourceSpans: expected a list"),
        (
            otlp_export(dict(SEMCONV_SPAN, attributes=attributes({"gen_ai.request.model": "gpt-4o"}) + [
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "many"}}])),
            "gen_ai.usage.input_tokens",
        ),
        (otlp_export(dict(SEMCONV_SPAN, startTimeUnixNano=None)), "otlp: span eee19b7ec3c1b174 startTimeUnixNano: missing"),
        (otlp_export(dict(SEMCONV_SPAN, spanId=None)), "otlp: resourceSpans[0].scopeSpans[0].spans[0].traceId/spanId"),
        (
            otlp_export(dict(SEMCONV_SPAN, attributes=attributes({"gen_ai.usage.input_tokens": 5}))),
            "otlp: span eee19b7ec3c1b174 attribute gen_ai.request.model: missing",
        ),
    ],
)
def test_otlp_rejections_name_the_field(export, reason):
    with pytest.raises(EventValidationError) as caught:
        decode_message(encoded(export))
    assert reason in caught.value.reason


# ----- LiteLLM -----

LITELLM_SUCCESS = {
    "id": "chatcmpl-5f0a3c1e-7f8e-4b7b-9d1c-2a6c5d9e8f01",
    "trace_id": "c7d1e0a2-41f3-4b8e-a1b2-3c4d5e6f7a8b",
    "call_type": "acompletion",
    "cache_hit": False,
    "stream": False,
    "status": "success",
    "response_cost": 0.00042,
    "response_cost_failure_debug_info": None,
    "saved_cache_cost": 0.0,
    "startTime": T0_EPOCH + 3600.125,
    "endTime": T0_EPOCH + 3601.625,
    "completionStartTime": T0_EPOCH + 3600.5,
    "model": "azure/gpt-4o-mini-eu",
    "model_id": "f1e2d3c4",
    "model_group": "gpt-4o-mini",
    "custom_llm_provider": "azure",
    "api_base": "https://acme-eu.openai.azure.com/",
    "metadata": {
        "user_api_key_hash": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
        "user_api_key_alias": "search-prod-key",
        "user_api_key_team_alias": "search-team",
        "spend_logs_metadata": {"app": "site-search", "route": "/search/answer"},
        "requester_ip_address": "10.0.3.7",
    },
    "request_tags": ["beta"],
    "end_user": "user-551",
    "messages": [{"role": "user", "content": "Which plans include SSO?"}],
    "response": {
        "id": "chatcmpl-5f0a3c1e-7f8e-4b7b-9d1c-2a6c5d9e8f01",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "SSO is part of the Business and Enterprise plans."}}],
        "usage": {"prompt_tokens": 230, "completion_tokens": 12, "total_tokens": 242,
                  "prompt_tokens_details": {"cached_tokens": 128}},
    },
    "model_parameters": {"temperature": 0.1},
    "hidden_params": {"model_id": "f1e2d3c4", "api_base": "https://acme-eu.openai.azure.com/"},
    "error_str": None,
    "error_information": {"error_code": "", "error_class": "", "llm_provider": "", "traceback": ""},
}

LITELLM_EVENT = InferenceEvent(
    event_id="chatcmpl-5f0a3c1e-7f8e-4b7b-9d1c-2a6c5d9e8f01",
    timestamp=datetime(2026, 12, 1, 11, 0, 0, 125000, tzinfo=timezone.utc),
    app="site-search",
    route="/search/answer",
    model="gpt-4o-mini",
    model_version="azure/gpt-4o-mini-eu",
    messages=[ChatMessage(role="user", content="Which plans include SSO?")],
    completion="SSO is part of the Business and Enterprise plans.",
    usage=Usage(cached_input_tokens=128),
    cost_usd=0.00042,
    latency_ms=1500.0,
    time_to_first_token_ms=375.0,
    status="ok",
    finish_reason="stop",
    user_id_hash=sha256("user-551"),
    metadata={
        "call_type": "acompletion",
        "custom_llm_provider": "azure",
        "api_base": "https://acme-eu.openai.azure.com/",
        "model_id": "f1e2d3c4",
        "cache_hit": False,
        "trace_id": "c7d1e0a2-41f3-4b8e-a1b2-3c4d5e6f7a8b",
        "request_tags": ["beta"],
        "source_format": "litellm",
    },
)


def test_litellm_cost_without_token_counts():
    # The payload has no prompt_tokens or completion_tokens keys: the counts stay unknown.
    [event] = decode_message(encoded(LITELLM_SUCCESS))
    assert_same_event(event, LITELLM_EVENT)
    assert event.usage.input_tokens is None
    assert event.usage.output_tokens is None


def test_litellm_failure_keeps_real_zeros():
    payload = copy.deepcopy(LITELLM_SUCCESS)
    payload.update(
        status="failure",
        response=None,
        response_cost=0.0,
        prompt_tokens=0,
        completion_tokens=0,
        total_tokens=0,
        completionStartTime=None,
        error_str="litellm.RateLimitError: AzureException - Requests to the deployment have exceeded the rate limit",
        error_information={"error_code": "429", "error_class": "RateLimitError", "llm_provider": "azure",
                           "traceback": "Traceback (most recent call last): ..."},
    )
    payload["metadata"] = {"user_api_key_team_alias": "search-team"}

    [event] = decode_message(encoded(payload), [("controlplane-format", b"litellm")])

    assert event.status == "error"
    assert event.app == "search-team"
    assert event.route is None
    assert event.completion is None
    assert event.usage == Usage(input_tokens=0, output_tokens=0)
    assert event.cost_usd == 0.0
    assert event.time_to_first_token_ms is None
    assert event.metadata["error"] == {
        "error_code": "429",
        "error_class": "RateLimitError",
        "llm_provider": "azure",
        "message": "litellm.RateLimitError: AzureException - Requests to the deployment have exceeded the rate limit",
    }


def test_litellm_cost_failure_is_unknown():
    payload = copy.deepcopy(LITELLM_SUCCESS)
    payload.update(
        response_cost=0.0,
        response_cost_failure_debug_info={"error_str": "model not mapped", "model": "azure/gpt-4o-mini-eu"},
    )

    [event] = decode_message(encoded(payload))

    assert event.cost_usd is None
    assert event.metadata["cost_failed"] is True


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": None}, "litellm: id: missing"),
        ({"startTime": "noon"}, "litellm: startTime: expected ISO 8601 time or epoch seconds"),
        ({"prompt_tokens": -1}, "litellm: prompt_tokens: expected a count"),
        ({"status": "partial"}, "litellm: status: expected one of success, failure"),
        ({"response_cost": -0.5}, "litellm: response_cost: expected 0 or more USD"),
        ({"model": None, "model_group": None}, "litellm: model: missing"),
    ],
)
def test_litellm_rejections_name_the_field(change, reason):
    payload = dict(LITELLM_SUCCESS, **change)
    with pytest.raises(EventValidationError) as caught:
        decode_message(encoded(payload))
    assert reason in caught.value.reason


# ----- format selection -----


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"event_id": "e", "timestamp": "2026-12-01T10:00:00Z", "app": "a", "model": "m", "prompt": "p"}, "event"),
        ({"event_id": "e", "timestamp": "2026-12-01T10:00:00Z", "app": "a", "request": {}, "response": {}}, "openai"),
        (otlp_export(SEMCONV_SPAN), "otlp"),
        (LITELLM_SUCCESS, "litellm"),
        ({"call_type": "completion", "startTime": 1.0}, "litellm"),
        (OPENAI_COMPLETE, "openai"),
        ({"prompt": "hi"}, "event"),
    ],
)
def test_format_detection(payload, expected):
    assert detect_format(payload) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (None, None),
        ([], None),
        ([("traceparent", b"00-abc-def-01")], None),
        ([("controlplane-format", b"otlp")], "otlp"),
        ({"controlplane-format": b"LiteLLM"}, "litellm"),
        ((("Controlplane-Format", b" openai "),), "openai"),
    ],
)
def test_format_header(headers, expected):
    assert format_from_headers(headers) == expected


def test_unknown_format_header_is_rejected():
    with pytest.raises(EventValidationError) as caught:
        decode_message(encoded(OPENAI_COMPLETE), [("controlplane-format", b"langfuse")])
    assert "header controlplane-format: unknown format 'langfuse'" in caught.value.reason


def test_header_overrides_detection():
    with pytest.raises(EventValidationError) as caught:
        decode_message(encoded(OPENAI_COMPLETE), [("controlplane-format", b"event")])
    assert "invalid event: event_id: Field required" in caught.value.reason


def test_unknown_shape_reason_says_so():
    with pytest.raises(EventValidationError) as caught:
        decode_message(encoded({"prompt": "hi"}))
    assert "no controlplane-format header and no known shape" in caught.value.reason
    assert "event_id: Field required" in caught.value.reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"latency_ms": NaN}', "NaN is not a valid JSON number"),
        (b'{"latency_ms": 1e999}', "out of range"),
        (None, "empty message"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_decode_message_rejects_invalid_json(raw, reason):
    with pytest.raises(EventValidationError) as caught:
        decode_message(raw)
    assert reason in caught.value.reason


def test_canonical_event_still_decodes():
    payload = {"event_id": "e-9", "timestamp": "2026-12-01T10:00:00Z", "app": "a", "model": "m", "prompt": "p",
               "usage": {"input_tokens": 0}}
    [event] = decode_message(encoded(payload))
    assert event.usage.input_tokens == 0
    assert event.usage.output_tokens is None
    assert event.truncated is False
