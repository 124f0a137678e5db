"""OpenTelemetry OTLP JSON traces to InferenceEvent: one event per span of a model call.

The payload is an ExportTraceServiceRequest in the OTLP JSON encoding: ``resourceSpans[]``
contain ``scopeSpans[]``, which contain ``spans[]``. Attribute values are AnyValue objects, and
``intValue`` and the ``*UnixNano`` times are decimal strings there.

A span is a model call when it carries a model name or a token count under the names in
`MODEL_KEYS`, `INPUT_TOKEN_KEYS` and `OUTPUT_TOKEN_KEYS`. These cover the OpenTelemetry gen_ai
semantic conventions, OpenLLMetry (``gen_ai.prompt.N.*``, ``llm.usage.*``) and OpenInference
(``llm.model_name``, ``llm.token_count.*``). Other spans, including gen_ai tool and agent spans
without a model, are skipped. The first name found in each list wins.

Most instrumentations record no prompt text unless content capture is switched on. Such a span
still becomes an event, with an empty prompt and ``metadata["prompt_recorded"] = False``.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from controlplane.events.adapters import (
    UNKNOWN_APP,
    AdapterError,
    as_object,
    as_text,
    build_event,
    drop_none,
    hash_identifier,
    token_count,
)
from controlplane.events.schema import InferenceEvent

log = logging.getLogger(__name__)

FORMAT = "otlp"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
REQUEST_MODEL_KEYS = ("gen_ai.request.model", "llm.request.model", "llm.model_name")
RESPONSE_MODEL_KEYS = ("gen_ai.response.model", "llm.response.model")
MODEL_KEYS = REQUEST_MODEL_KEYS + RESPONSE_MODEL_KEYS
INPUT_TOKEN_KEYS = (
    "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt", "llm.usage.prompt_tokens",
)
OUTPUT_TOKEN_KEYS = (
    "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion",
    "llm.usage.completion_tokens",
)
CACHED_TOKEN_KEYS = (
    "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens", "gen_ai.usage.input_tokens.cached",
    "llm.token_count.prompt_details.cache_read",
)
CACHE_WRITE_TOKEN_KEYS = (
    "gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write",
)
REASONING_TOKEN_KEYS = (
    "gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.output_tokens.reasoning", "gen_ai.usage.reasoning_tokens",
    "llm.token_count.completion_details.reasoning",
)
USER_KEYS = ("user.id", "enduser.id")
SESSION_KEYS = ("session.id", "gen_ai.conversation.id")
MESSAGE_EVENTS = {
    "gen_ai.system.message": "system", "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant", "gen_ai.tool.message": "tool",
}
# OTLP status codes: 2 is STATUS_CODE_ERROR; JSON encoders write the number or the name.
ERROR_STATUS = (2, "2", "STATUS_CODE_ERROR")
NANOS_PER_MS = 1_000_000


def to_events(payload: dict[str, Any]) -> list[InferenceEvent]:
    """Convert an OTLP JSON trace export to one event per model-call span."""
    resource_spans = payload.get("resourceSpans")
    if not isinstance(resource_spans, list):
        raise AdapterError(FORMAT, "resourceSpans", "expected a list of resource spans")
    events, seen = [], 0
    for r_index, resource_span in enumerate(resource_spans):
        where = f"resourceSpans[{r_index}]"
        resource_span = as_object(resource_span, FORMAT, where, required=True)
        resource = as_object(resource_span.get("resource"), FORMAT, f"{where}.resource") or {}
        resource_attributes = attributes(resource.get("attributes"), f"{where}.resource.attributes")
        for s_index, scope_span in enumerate(resource_span.get("scopeSpans") or []):
            scope_where = f"{where}.scopeSpans[{s_index}]"
            scope_span = as_object(scope_span, FORMAT, scope_where, required=True)
            scope = as_object(scope_span.get("scope"), FORMAT, f"{scope_where}.scope") or {}
            for p_index, span in enumerate(scope_span.get("spans") or []):
                seen += 1
                span_where = f"{scope_where}.spans[{p_index}]"
                span = as_object(span, FORMAT, span_where, required=True)
                span_attributes = attributes(span.get("attributes"), f"{span_where}.attributes")
                if not is_model_call(span_attributes):
                    continue
                events.append(_span_event(span, span_attributes, resource_attributes, scope.get("name"), span_where))
    if not events:
        problem = f"none of the {seen} spans is a model call (no gen_ai.* or llm.* model or token count)"
        raise AdapterError(FORMAT, "resourceSpans", problem)
    log.debug("otlp export with %d spans gave %d events", seen, len(events))
    return events


def is_model_call(span_attributes: dict[str, Any]) -> bool:
    """Tell whether a span's attributes name a model or a token count."""
    keys = MODEL_KEYS + INPUT_TOKEN_KEYS + OUTPUT_TOKEN_KEYS
    return any(span_attributes.get(key) is not None for key in keys)


def attributes(items: Any, where: str) -> dict[str, Any]:
    """Convert an OTLP attribute list to a plain dict of key to value."""
    if items is None:
        return {}
    if not isinstance(items, list):
        raise AdapterError(FORMAT, where, "expected a list of {key, value} attributes")
    converted = {}
    for index, item in enumerate(items):
        item = as_object(item, FORMAT, f"{where}[{index}]", required=True)
        key = as_text(item.get("key"), FORMAT, f"{where}[{index}].key")
        if key:
            converted[key] = any_value(item.get("value"), f"{where}[{index}] ({key})")
    return converted


def any_value(value: Any, where: str) -> Any:
    """Convert one OTLP AnyValue object to a Python value; intValue strings become int."""
    if value is None:
        return None
    value = as_object(value, FORMAT, where, required=True)
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return _integer(value["intValue"], where)
    if "doubleValue" in value:
        return value["doubleValue"]
    if "boolValue" in value:
        return value["boolValue"]
    if "arrayValue" in value:
        items = (value["arrayValue"] or {}).get("values") or []
        return [any_value(item, f"{where}[{index}]") for index, item in enumerate(items)]
    if "kvlistValue" in value:
        return attributes((value["kvlistValue"] or {}).get("values") or [], where)
    return value.get("bytesValue")


def _integer(raw: Any, where: str) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    try:
        return int(raw)
    except (TypeError, ValueError) as exc:
        raise AdapterError(FORMAT, where, f"intValue {raw!r} is not an integer") from exc


def _span_event(
    span: dict[str, Any], attrs: dict[str, Any], resource: dict[str, Any], scope: str | None, where: str
) -> InferenceEvent:
    trace_id, span_id = _span_ids(span, where)
    where = f"span {span_id}"
    start_ns = _nanos(span.get("startTimeUnixNano"), f"{where} startTimeUnixNano", required=True)
    end_ns = _nanos(span.get("endTimeUnixNano"), f"{where} endTimeUnixNano")
    model, model_version = _models(attrs, where)

    prompt = _prompt(attrs, span.get("events"), where)
    completion, choice_reason = _completion(attrs, span.get("events"), where)
    status = as_object(span.get("status"), FORMAT, f"{where} status") or {}
    metadata = _metadata(span, attrs, resource, scope, status)
    metadata.update(trace_id=trace_id, span_id=span_id)
    if not (prompt.get("messages") or prompt.get("prompt")):
        metadata["prompt_recorded"] = False

    fields = {
        "event_id": f"{trace_id}-{span_id}",
        "timestamp": EPOCH + timedelta(microseconds=start_ns // 1000),
        "app": resource.get("service.name") or UNKNOWN_APP,
        "model": model,
        "model_version": model_version,
        **prompt,
        "completion": completion,
        "usage": _usage(attrs, where),
        "latency_ms": (end_ns - start_ns) / NANOS_PER_MS if end_ns else None,
        "status": "error" if status.get("code") in ERROR_STATUS else "ok",
        "finish_reason": _finish_reason(attrs, where) or choice_reason,
        "user_id_hash": hash_identifier(_first_value(attrs, USER_KEYS)),
        "session_id_hash": hash_identifier(_first_value(attrs, SESSION_KEYS)),
        "metadata": metadata,
    }
    return build_event(FORMAT, where, drop_none(fields))


def _span_ids(span: dict[str, Any], where: str) -> tuple[str, str]:
    trace_id = as_text(span.get("traceId"), FORMAT, f"{where}.traceId")
    span_id = as_text(span.get("spanId"), FORMAT, f"{where}.spanId")
    if not trace_id or not span_id:
        raise AdapterError(FORMAT, f"{where}.traceId/spanId", "missing, and the event id is built from both")
    return trace_id, span_id


def _models(attrs: dict[str, Any], where: str) -> tuple[str, str | None]:
    request_model = _first_text(attrs, REQUEST_MODEL_KEYS, where)
    response_model = _first_text(attrs, RESPONSE_MODEL_KEYS, where)
    model = request_model or response_model
    if not model:
        raise AdapterError(
            FORMAT, f"{where} attribute gen_ai.request.model", "missing, although the span has token counts"
        )
    return model, response_model if response_model and response_model != model else None


def _nanos(raw: Any, where: str, required: bool = False) -> int | None:
    value = token_count(raw, FORMAT, where)
    if not value:
        if required:
            raise AdapterError(FORMAT, where, "missing, and the span start time is the event time")
        return None
    return value


def _first_value(attrs: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if attrs.get(key) is not None:
            return attrs[key]
    return None


def _first_text(attrs: dict[str, Any], keys: tuple[str, ...], where: str) -> str | None:
    for key in keys:
        if attrs.get(key) is not None:
            return as_text(attrs[key], FORMAT, f"{where} attribute {key}")
    return None


def _first_count(attrs: dict[str, Any], keys: tuple[str, ...], where: str) -> int | None:
    for key in keys:
        if attrs.get(key) is not None:
            return token_count(attrs[key], FORMAT, f"{where} attribute {key}")
    return None


def _usage(attrs: dict[str, Any], where: str) -> dict[str, int]:
    # NOTE: some Anthropic instrumentations report input tokens without cache reads. The price
    # table then finds cached > input and leaves the cost unknown instead of guessing.
    return drop_none(
        {
            "input_tokens": _first_count(attrs, INPUT_TOKEN_KEYS, where),
            "cached_input_tokens": _first_count(attrs, CACHED_TOKEN_KEYS, where),
            "cache_write_tokens": _first_count(attrs, CACHE_WRITE_TOKEN_KEYS, where),
            "output_tokens": _first_count(attrs, OUTPUT_TOKEN_KEYS, where),
            "reasoning_tokens": _first_count(attrs, REASONING_TOKEN_KEYS, where),
        }
    )


def _finish_reason(attrs: dict[str, Any], where: str) -> str | None:
    reasons = attrs.get("gen_ai.response.finish_reasons")
    if isinstance(reasons, list):
        reasons = reasons[0] if reasons else None
    return as_text(reasons, FORMAT, f"{where} attribute gen_ai.response.finish_reasons")


def _prompt(attrs: dict[str, Any], events: Any, where: str) -> dict[str, Any]:
    messages = (
        _indexed_messages(attrs, "gen_ai.prompt", "content", "role")
        or _indexed_messages(attrs, "llm.input_messages", "message.content", "message.role")
        or _json_messages(attrs.get("gen_ai.input.messages"))
        or _event_messages(events, where)
    )
    if messages:
        return {"messages": messages}
    text = attrs.get("gen_ai.prompt") or _event_attribute(events, "gen_ai.content.prompt", "gen_ai.prompt")
    text = text or attrs.get("input.value")
    return {"prompt": text if isinstance(text, str) else ""}


def _completion(attrs: dict[str, Any], events: Any, where: str) -> tuple[str | None, str | None]:
    for prefix, content, reason in (
        ("gen_ai.completion.0", "content", "finish_reason"),
        ("llm.output_messages.0", "message.content", None),
    ):
        if isinstance(attrs.get(f"{prefix}.{content}"), str):
            return attrs[f"{prefix}.{content}"], (attrs.get(f"{prefix}.{reason}") if reason else None)
    output = _json_messages(attrs.get("gen_ai.output.messages"), keep_reason=True)
    if output:
        return output[0]["content"], output[0].get("finish_reason")
    choice = _choice_event(events)
    if choice is not None:
        return choice
    text = attrs.get("gen_ai.completion") or _event_attribute(events, "gen_ai.content.completion", "gen_ai.completion")
    text = text or attrs.get("output.value")
    return (text if isinstance(text, str) else None), None


def _indexed_messages(attrs: dict[str, Any], prefix: str, content_key: str, role_key: str) -> list[dict[str, str]]:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indexes = sorted({int(match.group(1)) for key in attrs if (match := pattern.match(key))})
    messages = []
    for index in indexes:
        content = attrs.get(f"{prefix}.{index}.{content_key}")
        role = attrs.get(f"{prefix}.{index}.{role_key}")
        if content is None and role is None:
            continue
        messages.append({"role": role if isinstance(role, str) else "user", "content": _as_string(content)})
    return messages


def _json_messages(raw: Any, keep_reason: bool = False) -> list[dict[str, Any]]:
    # The newest conventions put a JSON list of {role, parts: [{type, content}]} in one attribute.
    parsed = _loads(raw) if isinstance(raw, str) else raw
    if not isinstance(parsed, list):
        return []
    messages = []
    for item in parsed:
        if not isinstance(item, dict):
            continue
        parts = item.get("parts")
        if isinstance(parts, list):
            texts = [part.get("content") for part in parts if isinstance(part, dict) and part.get("type") == "text"]
            text = "\n".join(_as_string(content) for content in texts)
        else:
            text = _as_string(item.get("content"))
        message = {"role": item.get("role") if isinstance(item.get("role"), str) else "user", "content": text}
        if keep_reason and isinstance(item.get("finish_reason"), str):
            message["finish_reason"] = item["finish_reason"]
        messages.append(message)
    return messages


def _event_messages(events: Any, where: str) -> list[dict[str, str]]:
    messages = []
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict) or event.get("name") not in MESSAGE_EVENTS:
            continue
        values = attributes(event.get("attributes"), f"{where} event {event['name']}")
        body = _loads(values["gen_ai.event.content"]) if "gen_ai.event.content" in values else values
        content = body.get("content") if isinstance(body, dict) else body
        messages.append({"role": MESSAGE_EVENTS[event["name"]], "content": _as_string(content)})
    return messages


def _choice_event(events: Any) -> tuple[str | None, str | None] | None:
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict) or event.get("name") != "gen_ai.choice":
            continue
        values = attributes(event.get("attributes"), "event gen_ai.choice")
        body = _loads(values["gen_ai.event.content"]) if "gen_ai.event.content" in values else values
        if not isinstance(body, dict) or body.get("index", 0) not in (0, "0"):
            continue
        message = _loads(body["message"]) if isinstance(body.get("message"), str) else body.get("message")
        content = message.get("content") if isinstance(message, dict) else body.get("content")
        reason = body.get("finish_reason")
        return (_as_string(content) if content is not None else None), (reason if isinstance(reason, str) else None)
    return None


def _event_attribute(events: Any, name: str, key: str) -> Any:
    for event in events if isinstance(events, list) else []:
        if isinstance(event, dict) and event.get("name") == name:
            return attributes(event.get("attributes"), f"event {name}").get(key)
    return None


def _metadata(
    span: dict[str, Any], attrs: dict[str, Any], resource: dict[str, Any], scope: str | None, status: dict[str, Any]
) -> dict[str, Any]:
    return drop_none(
        {
            "source_format": FORMAT,
            "parent_span_id": span.get("parentSpanId") or None,
            "span_name": span.get("name"),
            "scope": scope,
            "provider": attrs.get("gen_ai.provider.name") or attrs.get("gen_ai.system") or attrs.get("llm.provider"),
            "operation": attrs.get("gen_ai.operation.name"),
            "response_id": attrs.get("gen_ai.response.id"),
            "error_type": attrs.get("error.type"),
            "status_message": status.get("message") or None,
            "environment": resource.get("deployment.environment.name") or resource.get("deployment.environment"),
        }
    )


def _loads(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _as_string(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        # A content list of parts ({type, text}) as chat APIs write it.
        texts = []
        for part in value:
            is_text_part = isinstance(part, dict) and isinstance(part.get("text"), str)
            texts.append(part["text"] if is_text_part else _as_string(part))
        return "\n".join(texts)
    return json.dumps(value, default=str)
