"""Bytes on the wire to an InferenceEvent, with a reason for every rejection."""

from __future__ import annotations

import json

from pydantic import ValidationError

from controlplane.errors import EventValidationError
from controlplane.events.schema import InferenceEvent

MAX_REASON_CHARS = 1000


def decode_event(raw: bytes | None) -> InferenceEvent:
    """Decode one Kafka message value; raise EventValidationError with a reason when it is not an event."""
    if raw is None:
        raise EventValidationError("empty message: the value is null")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventValidationError(f"value is not UTF-8: {exc}") from exc
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EventValidationError(f"value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(payload, dict):
        raise EventValidationError(f"value is JSON {type(payload).__name__}, expected an object")
    try:
        return InferenceEvent.model_validate(payload)
    except ValidationError as exc:
        raise EventValidationError(_describe(exc)) from exc


def encode_event(event: InferenceEvent) -> bytes:
    """Encode an event as the JSON the worker decodes."""
    return event.model_dump_json(exclude_none=True).encode("utf-8")


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(item) for item in error["loc"]) or "event"
        parts.append(f"{location}: {error['msg']}")
    reason = "invalid event: " + "; ".join(parts)
    return reason[:MAX_REASON_CHARS]
