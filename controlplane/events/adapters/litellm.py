"""LiteLLM's standard logging payload (StandardLoggingPayload) to InferenceEvent.

LiteLLM hands this payload to custom loggers as ``kwargs["standard_logging_object"]``. Times
(`startTime`, `endTime`, `completionStartTime`) are epoch seconds. `messages` and `response`
are in the OpenAI chat format. A token count the payload leaves out stays unknown, and so does
`response_cost` when LiteLLM reports that its cost calculation failed.

The app comes from the request metadata: an `app` key in ``metadata.spend_logs_metadata`` or
``metadata.requester_metadata``, else the virtual key's team alias, else the key alias. `route`
and `prompt_version` are read from the same two dicts.
"""

from __future__ import annotations

import json
from datetime import datetime
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

FORMAT = "litellm"
STATUSES = {"success": "ok", "failure": "error"}
# Payload fields copied to metadata as they are.
KEPT_FIELDS = ("call_type", "custom_llm_provider", "api_base", "model_id", "cache_hit", "trace_id", "request_tags")
# Fields of error_information kept in metadata; the traceback is left out for its size.
ERROR_FIELDS = ("error_code", "error_class", "llm_provider")
MAX_ERROR_CHARS = 500


def to_events(payload: dict[str, Any]) -> list[InferenceEvent]:
    """Convert one StandardLoggingPayload to one event."""
    event_id = as_text(payload.get("id"), FORMAT, "id")
    if not event_id:
        raise AdapterError(FORMAT, "id", "missing; LiteLLM sets it on every payload")
    started = timestamp(payload.get("startTime"), FORMAT, "startTime")
    response = payload.get("response")
    tags = _request_tags(payload)
    fields = {
        "event_id": event_id,
        "timestamp": started,
        "app": tags.get("app") or tags.get("team_alias") or tags.get("key_alias") or UNKNOWN_APP,
        "route": tags.get("route"),
        "prompt_version": tags.get("prompt_version"),
        **_model(payload),
        **_prompt(payload.get("messages")),
        "completion": _completion(response),
        "usage": _usage(payload, response),
        "cost_usd": _cost(payload),
        "latency_ms": _elapsed_ms(started, payload.get("endTime"), "endTime"),
        "time_to_first_token_ms": _elapsed_ms(started, payload.get("completionStartTime"), "completionStartTime"),
        "status": _status(payload.get("status")),
        "finish_reason": _finish_reason(response),
        "user_id_hash": hash_identifier(payload.get("end_user")),
        "metadata": _metadata(payload),
    }
    if not fields.get("messages") and not fields.get("prompt"):
        fields["metadata"]["prompt_recorded"] = False
    return [build_event(FORMAT, f"payload {event_id}", drop_none(fields))]


def _request_tags(payload: dict[str, Any]) -> dict[str, Any]:
    metadata = as_object(payload.get("metadata"), FORMAT, "metadata") or {}
    tags: dict[str, Any] = {}
    # spend_logs_metadata is what the caller set on purpose, so it wins over requester_metadata.
    for name in ("requester_metadata", "spend_logs_metadata"):
        values = as_object(metadata.get(name), FORMAT, f"metadata.{name}") or {}
        tags.update({key: values[key] for key in ("app", "route", "prompt_version") if values.get(key) is not None})
    tags["team_alias"] = metadata.get("user_api_key_team_alias")
    tags["key_alias"] = metadata.get("user_api_key_alias")
    return tags


def _model(payload: dict[str, Any]) -> dict[str, Any]:
    # model_group is the name callers use on the proxy; model is the deployment it routed to.
    group = as_text(payload.get("model_group"), FORMAT, "model_group")
    model = as_text(payload.get("model"), FORMAT, "model")
    if not (group or model):
        raise AdapterError(FORMAT, "model", "missing, and model_group is missing too")
    if group:
        return {"model": group, "model_version": model if model and model != group else None}
    return {"model": model}


def _prompt(messages: Any) -> dict[str, Any]:
    if isinstance(messages, list):
        return {"messages": chat_messages(messages, FORMAT, "messages")}
    if isinstance(messages, str):
        return {"prompt": messages}
    if messages is None:
        return {"prompt": ""}
    return {"prompt": json.dumps(messages, default=str)}


def _completion(response: Any) -> str | None:
    if response is None or isinstance(response, str):
        return response
    response = as_object(response, FORMAT, "response", required=True)
    choice = _first_choice(response)
    if choice is None:
        return None
    if "text" in choice:
        return as_text(choice["text"], FORMAT, "response.choices[0].text")
    message = as_object(choice.get("message"), FORMAT, "response.choices[0].message") or {}
    return content_text(message.get("content"), FORMAT, "response.choices[0].message.content")


def _finish_reason(response: Any) -> str | None:
    choice = _first_choice(response) if isinstance(response, dict) else None
    if choice is None:
        return None
    return as_text(choice.get("finish_reason"), FORMAT, "response.choices[0].finish_reason")


def _first_choice(response: dict[str, Any]) -> dict[str, Any] | None:
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    return as_object(choices[0], FORMAT, "response.choices[0]", required=True)


def _usage(payload: dict[str, Any], response: Any) -> dict[str, int]:
    usage = as_object(response.get("usage"), FORMAT, "response.usage") if isinstance(response, dict) else None
    usage = usage or {}
    prompt_details = as_object(usage.get("prompt_tokens_details"), FORMAT, "response.usage.prompt_tokens_details") or {}
    output_details = (
        as_object(usage.get("completion_tokens_details"), FORMAT, "response.usage.completion_tokens_details") or {}
    )
    return drop_none(
        {
            "input_tokens": token_count(payload.get("prompt_tokens"), FORMAT, "prompt_tokens"),
            "cached_input_tokens": token_count(
                prompt_details.get("cached_tokens"), FORMAT, "response.usage.prompt_tokens_details.cached_tokens"
            ),
            "output_tokens": token_count(payload.get("completion_tokens"), FORMAT, "completion_tokens"),
            "reasoning_tokens": token_count(
                output_details.get("reasoning_tokens"), FORMAT,
                "response.usage.completion_tokens_details.reasoning_tokens",
            ),
        }
    )


def _cost(payload: dict[str, Any]) -> float | None:
    cost = number(payload.get("response_cost"), FORMAT, "response_cost")
    if cost is not None and cost < 0:
        raise AdapterError(FORMAT, "response_cost", f"expected 0 or more USD, got {cost!r}")
    # LiteLLM fills response_cost_failure_debug_info when it could not price the call, and then
    # reports a cost of 0 or none: the cost is unknown, not free.
    if payload.get("response_cost_failure_debug_info"):
        return None
    return cost


def _elapsed_ms(started: datetime, raw_end: Any, field: str) -> float | None:
    if raw_end is None:
        return None
    return (timestamp(raw_end, FORMAT, field) - started).total_seconds() * 1000


def _status(raw: Any) -> str:
    if raw is None:
        return "ok"
    if raw not in STATUSES:
        raise AdapterError(FORMAT, "status", f"expected one of {', '.join(STATUSES)}, got {raw!r}")
    return STATUSES[raw]


def _metadata(payload: dict[str, Any]) -> dict[str, Any]:
    metadata = {name: payload[name] for name in KEPT_FIELDS if payload.get(name) not in (None, "", [])}
    information = as_object(payload.get("error_information"), FORMAT, "error_information") or {}
    error = {name: information[name] for name in ERROR_FIELDS if information.get(name) not in (None, "")}
    if payload.get("error_str"):
        error["message"] = str(payload["error_str"])[:MAX_ERROR_CHARS]
    if error:
        metadata["error"] = error
    if payload.get("response_cost_failure_debug_info"):
        metadata["cost_failed"] = True
    metadata["source_format"] = FORMAT
    return metadata
