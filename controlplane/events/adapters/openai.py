"""OpenAI chat-completions request and response pair to InferenceEvent.

The payload is an envelope ``{"request": {...}, "response": ...}`` with optional keys from
`ENVELOPE_KEYS`. `request` is the body sent to ``/v1/chat/completions``. `response` is the
ChatCompletion object, or for a streamed call the list of ``chat.completion.chunk`` objects in
the order they arrived. A stream reports usage only in a final chunk when the request set
``stream_options.include_usage``. Without that chunk the token counts stay unknown (None).

Only the first choice (index 0) becomes the completion. `model` is the requested model, and
`model_version` is the model the response names when it differs (e.g. a dated snapshot).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from controlplane.events.adapters import (
    UNKNOWN_APP,
    AdapterError,
    as_object,
    as_text,
    build_event,
    chat_messages,
    content_text,
    drop_none,
    hash_identifier,
    number,
    timestamp,
    token_count,
)
from controlplane.events.schema import InferenceEvent

FORMAT = "openai"
ENVELOPE_KEYS = frozenset(
    {
        "request", "response", "event_id", "timestamp", "app", "route", "prompt_version", "latency_ms",
        "time_to_first_token_ms", "status", "feedback", "user_id_hash", "session_id_hash", "metadata",
    }
)
# Sampling settings kept in metadata: they explain length cut-offs and changes in output.
REQUEST_PARAMS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "seed", "reasoning_effort")
MAX_ERROR_MESSAGE_CHARS = 500


@dataclass
class _Outcome:
    """Event fields taken from a complete or a streamed response."""

    response_id: str | None = None
    created: Any = None
    model: str | None = None
    completion: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    status: str = "ok"
    facts: dict[str, Any] = field(default_factory=dict)


def to_events(payload: dict[str, Any]) -> list[InferenceEvent]:
    """Convert one OpenAI request and response envelope to one event."""
    unknown = sorted(set(payload) - ENVELOPE_KEYS)
    if unknown:
        raise AdapterError(FORMAT, unknown[0], f"unknown key; the envelope accepts {', '.join(sorted(ENVELOPE_KEYS))}")
    request = as_object(payload.get("request"), FORMAT, "request", required=True)
    response = payload.get("response")
    if isinstance(response, list):
        outcome = _streamed(response)
    else:
        outcome = _complete(as_object(response, FORMAT, "response", required=True))
    return [build_event(FORMAT, "request/response", _event_fields(payload, request, outcome))]


def _event_fields(payload: dict[str, Any], request: dict[str, Any], outcome: _Outcome) -> dict[str, Any]:
    model = as_text(request.get("model"), FORMAT, "request.model") or outcome.model
    if not model:
        raise AdapterError(FORMAT, "request.model", "missing, and the response names no model either")
    if "messages" not in request:
        raise AdapterError(FORMAT, "request.messages", "missing; only chat-completions requests are supported")
    user = request.get("safety_identifier") or request.get("user")
    return drop_none(
        {
            "event_id": payload.get("event_id") or outcome.response_id or _content_id(payload),
            "timestamp": _event_time(payload, outcome),
            "app": payload.get("app") or UNKNOWN_APP,
            "route": payload.get("route"),
            "model": model,
            "model_version": outcome.model if outcome.model and outcome.model != model else None,
            "prompt_version": payload.get("prompt_version"),
            "messages": chat_messages(request["messages"], FORMAT, "request.messages"),
            "completion": outcome.completion,
            "usage": outcome.usage,
            "latency_ms": number(payload.get("latency_ms"), FORMAT, "latency_ms"),
            "time_to_first_token_ms": number(payload.get("time_to_first_token_ms"), FORMAT, "time_to_first_token_ms"),
            "status": payload.get("status") or outcome.status,
            "finish_reason": outcome.finish_reason,
            "feedback": payload.get("feedback"),
            "user_id_hash": payload.get("user_id_hash") or hash_identifier(user),
            "session_id_hash": payload.get("session_id_hash"),
            "metadata": _metadata(payload, request, outcome),
        }
    )


def _event_time(payload: dict[str, Any], outcome: _Outcome) -> Any:
    if payload.get("timestamp") is not None:
        return timestamp(payload["timestamp"], FORMAT, "timestamp")
    if outcome.created is not None:
        return timestamp(outcome.created, FORMAT, "response.created")
    problem = "missing; set 'timestamp' in the envelope or keep 'created' in the response"
    raise AdapterError(FORMAT, "timestamp", problem)


def _content_id(payload: dict[str, Any]) -> str:
    # Without a response id (an error body), the same payload sent twice gets the same id.
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8", "surrogatepass"))
    return f"openai-{digest.hexdigest()[:32]}"


def _metadata(payload: dict[str, Any], request: dict[str, Any], outcome: _Outcome) -> dict[str, Any]:
    metadata = dict(as_object(payload.get("metadata"), FORMAT, "metadata") or {})
    params = {name: request[name] for name in REQUEST_PARAMS if request.get(name) is not None}
    if params:
        metadata["request_params"] = params
    metadata.update(outcome.facts)
    metadata["source_format"] = FORMAT
    return metadata


def _complete(response: dict[str, Any]) -> _Outcome:
    error = response.get("error")
    if error is not None and not response.get("choices"):
        return _error_outcome(response, error)
    outcome = _Outcome(
        response_id=as_text(response.get("id"), FORMAT, "response.id"),
        created=response.get("created"),
        model=as_text(response.get("model"), FORMAT, "response.model"),
        usage=_usage(response.get("usage"), "response.usage"),
    )
    _add_response_facts(outcome, response)
    choice = _first_choice(response.get("choices"), "response.choices")
    if choice is None:
        return outcome
    message = as_object(choice.get("message"), FORMAT, "response.choices[0].message") or {}
    text = content_text(message.get("content"), FORMAT, "response.choices[0].message.content")
    refusal = as_text(message.get("refusal"), FORMAT, "response.choices[0].message.refusal")
    _set_completion(outcome, text, refusal, _tool_names(message.get("tool_calls")))
    outcome.finish_reason = as_text(choice.get("finish_reason"), FORMAT, "response.choices[0].finish_reason")
    return outcome


def _streamed(chunks: list[Any]) -> _Outcome:
    if not chunks:
        raise AdapterError(FORMAT, "response", "an empty list of chunks; a streamed response needs at least one")
    outcome = _Outcome(facts={"stream": True})
    pieces: list[str] = []
    refusals: list[str] = []
    tools: list[str] = []
    for index, chunk in enumerate(chunks):
        where = f"response[{index}]"
        chunk = as_object(chunk, FORMAT, where, required=True)
        outcome.response_id = outcome.response_id or as_text(chunk.get("id"), FORMAT, f"{where}.id")
        outcome.created = outcome.created if outcome.created is not None else chunk.get("created")
        outcome.model = outcome.model or as_text(chunk.get("model"), FORMAT, f"{where}.model")
        if chunk.get("usage") is not None:
            outcome.usage = _usage(chunk["usage"], f"{where}.usage")
        _add_response_facts(outcome, chunk)
        choice = _first_choice(chunk.get("choices"), f"{where}.choices")
        if choice is None:
            continue
        delta = as_object(choice.get("delta"), FORMAT, f"{where}.choices[0].delta") or {}
        if delta.get("content") is not None:
            pieces.append(content_text(delta["content"], FORMAT, f"{where}.choices[0].delta.content") or "")
        if delta.get("refusal") is not None:
            refusals.append(as_text(delta["refusal"], FORMAT, f"{where}.choices[0].delta.refusal") or "")
        tools += _tool_names(delta.get("tool_calls"))
        if choice.get("finish_reason") is not None:
            outcome.finish_reason = as_text(choice["finish_reason"], FORMAT, f"{where}.choices[0].finish_reason")
    text = "".join(pieces) if pieces else None
    _set_completion(outcome, text, "".join(refusals) if refusals else None, tools)
    return outcome


def _first_choice(choices: Any, where: str) -> dict[str, Any] | None:
    if choices is None:
        return None
    if not isinstance(choices, list):
        raise AdapterError(FORMAT, where, "expected a list of choices")
    for choice in choices:
        choice = as_object(choice, FORMAT, where, required=True)
        if choice.get("index", 0) == 0:
            return choice
    return None


def _set_completion(outcome: _Outcome, text: str | None, refusal: str | None, tools: list[str]) -> None:
    if refusal:
        # The user saw the refusal text in place of a completion.
        outcome.completion = refusal
        outcome.facts["refusal"] = True
    elif text or not tools:
        outcome.completion = text
    if tools:
        outcome.facts["tool_calls"] = tools


def _tool_names(tool_calls: Any) -> list[str]:
    if not isinstance(tool_calls, list):
        return []
    names = []
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


def _add_response_facts(outcome: _Outcome, response: dict[str, Any]) -> None:
    for name in ("system_fingerprint", "service_tier"):
        if isinstance(response.get(name), str):
            outcome.facts[name] = response[name]


def _usage(usage: Any, where: str) -> dict[str, int]:
    usage = as_object(usage, FORMAT, where)
    if usage is None:
        return {}
    prompt_details = as_object(usage.get("prompt_tokens_details"), FORMAT, f"{where}.prompt_tokens_details") or {}
    output_details = (
        as_object(usage.get("completion_tokens_details"), FORMAT, f"{where}.completion_tokens_details") or {}
    )
    return drop_none(
        {
            # OpenAI's prompt_tokens already include the cached ones, as Usage.input_tokens does.
            "input_tokens": token_count(usage.get("prompt_tokens"), FORMAT, f"{where}.prompt_tokens"),
            "cached_input_tokens": token_count(
                prompt_details.get("cached_tokens"), FORMAT, f"{where}.prompt_tokens_details.cached_tokens"
            ),
            "output_tokens": token_count(usage.get("completion_tokens"), FORMAT, f"{where}.completion_tokens"),
            "reasoning_tokens": token_count(
                output_details.get("reasoning_tokens"), FORMAT, f"{where}.completion_tokens_details.reasoning_tokens"
            ),
        }
    )


def _error_outcome(response: dict[str, Any], error: Any) -> _Outcome:
    error = as_object(error, FORMAT, "response.error", required=True)
    message = as_text(error.get("message"), FORMAT, "response.error.message")
    details = drop_none(
        {
            "type": error.get("type"),
            "code": error.get("code"),
            "message": message[:MAX_ERROR_MESSAGE_CHARS] if message else None,
        }
    )
    return _Outcome(
        response_id=as_text(response.get("id"), FORMAT, "response.id"),
        created=response.get("created"),
        status="error",
        facts={"error": details},
    )
