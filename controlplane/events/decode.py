"""Bytes on the wire to InferenceEvents, with a reason for every rejection.

`decode_event` reads one canonical event. `decode_message` reads any supported format: the
``controlplane-format`` header names it (`FORMATS`), or without the header the shape of the
payload decides it (see `detect_format`). It returns a list because one OTLP export carries many
spans, and every event it returns has been through `controlplane.events.guards.guard_event`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from controlplane.errors import EventValidationError
from controlplane.events.adapters import FORMATS, adapt
from controlplane.events.guards import (
    DEFAULT_MAX_TEXT_CHARS,
    duration_problems,
    guard_event,
)
from controlplane.events.schema import InferenceEvent

MAX_REASON_CHARS = 1000
# The only way JSON text in UTF-8 can carry a surrogate code point: a \uD800 to \uDFFF escape.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
FORMAT_HEADER = "controlplane-format"
CANONICAL_KEYS = frozenset({"event_id", "timestamp", "app"})

Headers = Mapping[str, bytes] | Sequence[tuple[str, bytes]] | None


def decode_event(raw: bytes | None) -> InferenceEvent:
    """Decode one Kafka message value; raise EventValidationError with a reason when it is not an event."""
    return _validate_event(_load_object(raw, strict_numbers=False))


def decode_message(
    value: bytes | None, headers: Headers = None, *, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
) -> list[InferenceEvent]:
    """Decode one Kafka message of any supported format into guarded events; raise EventValidationError if none."""
    declared = format_from_headers(headers)
    payload = _load_object(value, strict_numbers=True)
    source_format = declared or detect_format(payload)
    if source_format == "event":
        events = [_validate_event(payload, guessed=declared is None and not CANONICAL_KEYS <= payload.keys())]
    else:
        events = adapt(source_format, payload)
    if not events:
        raise EventValidationError(f"{source_format}: the message contains no event")
    if _SURROGATE_ESCAPE.search(value) is None:
        # A JSON text without such an escape decodes to no lone surrogate, so an event whose texts
        # fit and whose durations are plausible is one that guard_event would return unchanged.
        # Skipping its copy of the event saves about a third of the decoding time, 19 of 48
        # microseconds of CPU per benchmark event on the 2-core development machine.
        return [event if _needs_no_guard(event, max_text_chars) else guard_event(event, max_text_chars) for event in events]
    return [guard_event(event, max_text_chars) for event in events]


def format_from_headers(headers: Headers) -> str | None:
    """Return the format named by the controlplane-format header, or None without the header."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, raw in pairs:
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        if name.lower() != FORMAT_HEADER:
            continue
        value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        source_format = value.strip().lower()
        if source_format not in FORMATS:
            raise EventValidationError(
                f"header {FORMAT_HEADER}: unknown format {value[:50]!r}; expected one of {', '.join(FORMATS)}"
            )
        return source_format
    return None


def detect_format(payload: dict[str, Any]) -> str:
    """Tell the format of a payload sent without the header; a payload of no known shape is read as an event."""
    # The keys tested here are extra keys to a canonical event, which rejects extra keys, so a
    # payload that has them cannot be a valid canonical event.
    if "resourceSpans" in payload:
        return "otlp"
    if "call_type" in payload and ("response_cost" in payload or "startTime" in payload):
        return "litellm"
    if "request" in payload and "response" in payload:
        return "openai"
    return "event"


def encode_event(event: InferenceEvent) -> bytes:
    """Encode an event as the JSON the worker decodes."""
    return event.model_dump_json(exclude_none=True).encode("utf-8")


def _load_object(raw: bytes | None, strict_numbers: bool) -> dict[str, Any]:
    if raw is None:
        raise EventValidationError("empty message: the value is null")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventValidationError(f"value is not UTF-8: {exc}") from exc
    options = {"parse_constant": _reject_constant, "parse_float": _finite_float} if strict_numbers else {}
    try:
        payload = json.loads(text, **options)
    except json.JSONDecodeError as exc:
        raise EventValidationError(f"value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(payload, dict):
        raise EventValidationError(f"value is JSON {type(payload).__name__}, expected an object")
    return payload


def _needs_no_guard(event: InferenceEvent, max_text_chars: int) -> bool:
    texts = [event.prompt, event.completion] + [message.content for message in event.messages or []]
    if any(text is not None and len(text) > max_text_chars for text in texts):
        return False
    return not duration_problems(event.latency_ms, event.time_to_first_token_ms)


def _reject_constant(name: str) -> float:
    # NaN and Infinity are not JSON (RFC 8259), and PostgreSQL's json type rejects them later.
    raise EventValidationError(f"value is not JSON: {name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise EventValidationError(f"value is not JSON: the number {text[:30]} is out of range")
    return value


def _validate_event(payload: dict[str, Any], guessed: bool = False) -> InferenceEvent:
    try:
        return InferenceEvent.model_validate(payload)
    except ValidationError as exc:
        reason = _describe(exc)
        if guessed:
            reason = (
                f"no {FORMAT_HEADER} header and no known shape, so the value was read as a canonical event: {reason}"
            )
        raise EventValidationError(reason[:MAX_REASON_CHARS]) from exc


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(item) for item in error["loc"]) or "event"
        parts.append(f"{location}: {error['msg']}")
    reason = "invalid event: " + "; ".join(parts)
    return reason[:MAX_REASON_CHARS]
