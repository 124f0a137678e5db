"""Adapters from payloads that gateways and tracers already produce to InferenceEvent.

Each adapter module exposes `to_events(payload) -> list[InferenceEvent]` and raises
`AdapterError`, whose reason starts with the format name and the field that was wrong, e.g.
``otlp: span 5b8aa5a2d2c872e8 attribute gen_ai.usage.input_tokens: expected a count, got 'many'``.
This module contains the helpers they share: counts, times, chat content and identifiers.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from datetime import datetime, timezone
from typing import Any, Callable

from pydantic import ValidationError

from controlplane.errors import EventValidationError
from controlplane.events.schema import InferenceEvent

FORMATS = ("event", "openai", "otlp", "litellm")
ADAPTER_MODULES = {"openai": "openai", "otlp": "otel", "litellm": "litellm"}
# An event needs an app; a payload that names none is grouped under this one.
UNKNOWN_APP = "unknown"
MAX_PROBLEM_CHARS = 300


class AdapterError(EventValidationError):
    """A payload of a known format cannot become an event; the reason names the format and the field."""

    def __init__(self, source_format: str, field: str, problem: str) -> None:
        super().__init__(f"{source_format}: {field}: {problem[:MAX_PROBLEM_CHARS]}")
        self.source_format = source_format
        self.field = field


def adapt(source_format: str, payload: dict[str, Any]) -> list[InferenceEvent]:
    """Convert one decoded payload of `source_format` (openai, otlp or litellm) to events."""
    module_name = ADAPTER_MODULES.get(source_format)
    if module_name is None:
        raise AdapterError(source_format, "format", f"no adapter; adapters exist for {', '.join(ADAPTER_MODULES)}")
    module = importlib.import_module(f"{__name__}.{module_name}")
    to_events: Callable[[dict[str, Any]], list[InferenceEvent]] = module.to_events
    return to_events(payload)


def build_event(source_format: str, where: str, fields: dict[str, Any]) -> InferenceEvent:
    """Validate the fields an adapter collected; a failure names the format and the payload item."""
    try:
        return InferenceEvent.model_validate(fields)
    except ValidationError as exc:
        raise AdapterError(source_format, where, "the event built from it is invalid: " + describe_errors(exc)) from exc


def describe_errors(exc: ValidationError) -> str:
    """Summarize a pydantic ValidationError as `field: message` pairs."""
    parts = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(item) for item in error["loc"]) or "event"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


def as_object(value: Any, source_format: str, field: str, required: bool = False) -> dict[str, Any] | None:
    """Return `value` when it is a JSON object, None when absent and optional, else raise AdapterError."""
    if value is None and not required:
        return None
    if not isinstance(value, dict):
        raise AdapterError(source_format, field, f"expected an object, got {_kind(value)}")
    return value


def as_text(value: Any, source_format: str, field: str) -> str | None:
    """Return `value` when it is a string (None when absent), else raise AdapterError."""
    if value is None or isinstance(value, str):
        return value
    raise AdapterError(source_format, field, f"expected a string, got {_kind(value)}")


def token_count(value: Any, source_format: str, field: str) -> int | None:
    """Read a token count: None stays None and 0 stays 0; OTLP's string integers are accepted."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise AdapterError(source_format, field, f"expected a count, got {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise AdapterError(source_format, field, f"expected a count (an integer of 0 or more), got {value!r}")
    return value


def number(value: Any, source_format: str, field: str) -> float | None:
    """Read a finite number (None stays None), or raise AdapterError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AdapterError(source_format, field, f"expected a number, got {value!r}")
    return float(value)


def timestamp(value: Any, source_format: str, field: str) -> datetime:
    """Read a time given as ISO 8601 text or as epoch seconds; a time without zone is UTC."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise AdapterError(source_format, field, f"expected ISO 8601 time or epoch seconds, got {value!r}") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    seconds = number(value, source_format, field)
    if seconds is None:
        raise AdapterError(source_format, field, "missing; the event time is required")
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError) as exc:
        raise AdapterError(source_format, field, f"epoch seconds {value!r} are out of range") from exc


def content_text(content: Any, source_format: str, field: str) -> str | None:
    """Return the text of an OpenAI message content: a string, or the text parts of a list joined by newlines."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise AdapterError(source_format, field, f"expected a string or a list of content parts, got {_kind(content)}")
    texts = []
    for index, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif not isinstance(part, dict):
            raise AdapterError(source_format, f"{field}[{index}]", f"expected a content part object, got {_kind(part)}")
    # Image, audio and file parts carry no text; they are left out of the prompt.
    return "\n".join(texts)


def chat_messages(messages: Any, source_format: str, field: str) -> list[dict[str, str]]:
    """Convert OpenAI chat messages to the event's {role, content} form."""
    if not isinstance(messages, list):
        raise AdapterError(source_format, field, f"expected a list of messages, got {_kind(messages)}")
    converted = []
    for index, message in enumerate(messages):
        where = f"{field}[{index}]"
        message = as_object(message, source_format, where, required=True)
        role = as_text(message.get("role"), source_format, f"{where}.role") or "user"
        text = content_text(message.get("content"), source_format, f"{where}.content")
        converted.append({"role": role, "content": text or ""})
    return converted


def hash_identifier(value: Any) -> str | None:
    """Return the SHA-256 hex digest of a user or session id, so that the raw id is never stored."""
    if value is None or value == "":
        return None
    return hashlib.sha256(str(value).encode("utf-8", "surrogatepass")).hexdigest()


def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """Return `values` without the keys whose value is None."""
    return {key: value for key, value in values.items() if value is not None}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)
