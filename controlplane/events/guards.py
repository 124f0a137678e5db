"""Repairs and flags applied to every decoded event before it is scored and stored.

- Invalid Unicode: a lone surrogate (JSON ``"\\ud800"`` decodes to one) cannot be encoded as
  UTF-8, so the SQL store would reject the whole batch. Every string of the event, metadata
  included, gets U+FFFD in its place, and ``metadata["invalid_unicode"]`` lists the repaired fields.
- Oversized text: the prompt, each chat message and the completion are cut to `max_text_chars`
  characters. ``metadata["truncated_texts"]`` maps each cut field to the SHA-256 of its full
  text (UTF-8) and its full length, and `InferenceEvent.truncated` is set. Token counts, cost
  and latency are kept as reported.
- Impossible durations: a negative latency or time to first token, a time to first token above
  the latency, or a duration over one day is kept as reported and named in
  ``metadata["invalid_durations"]`` with the reason.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from controlplane.events.schema import InferenceEvent

DEFAULT_MAX_TEXT_CHARS = 32_000
MAX_DURATION_MS = 24 * 60 * 60 * 1000.0
REPLACEMENT_CHARACTER = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def guard_event(event: InferenceEvent, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> InferenceEvent:
    """Repair invalid Unicode, truncate oversized texts and flag impossible durations of one event."""
    data = event.model_dump()
    repaired: list[str] = []
    data = _repair_strings(data, "", repaired)
    truncated = _truncate_texts(data, max_text_chars)
    durations = duration_problems(event.latency_ms, event.time_to_first_token_ms)
    if not (repaired or truncated or durations):
        return event
    metadata = data["metadata"]
    if repaired:
        metadata["invalid_unicode"] = sorted(set(metadata.get("invalid_unicode") or []) | set(repaired))
    if truncated:
        metadata["truncated_texts"] = {**(metadata.get("truncated_texts") or {}), **truncated}
        data["truncated"] = True
    if durations:
        metadata["invalid_durations"] = durations
    return InferenceEvent.model_validate(data)


def repair_unicode(text: str) -> str:
    """Return `text` with each lone surrogate replaced by U+FFFD; a surrogate pair becomes its character."""
    if not _SURROGATE.search(text):
        return text
    # UTF-16 round trip: "surrogatepass" lets pairs through, and decoding joins each valid pair
    # while "replace" turns what is left alone into U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def truncate_text(text: str, max_chars: int) -> tuple[str, dict[str, Any] | None]:
    """Cut `text` to `max_chars` characters; return the kept text and the hash and length of the full one."""
    if len(text) <= max_chars:
        return text, None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return text[:max_chars], {"sha256": digest, "chars": len(text)}


def duration_problems(latency_ms: float | None, time_to_first_token_ms: float | None) -> dict[str, str]:
    """Name each duration that cannot be real, with the reason; an empty dict when all are plausible."""
    problems = {}
    for name, value in (("latency_ms", latency_ms), ("time_to_first_token_ms", time_to_first_token_ms)):
        if value is None:
            continue
        if not math.isfinite(value):
            problems[name] = f"not a finite number: {value}"
        elif value < 0:
            problems[name] = f"negative: {value}"
        elif value > MAX_DURATION_MS:
            problems[name] = f"longer than one day: {value}"
    if (
        latency_ms is not None
        and time_to_first_token_ms is not None
        and "time_to_first_token_ms" not in problems
        and time_to_first_token_ms > latency_ms >= 0
    ):
        problems["time_to_first_token_ms"] = f"greater than latency_ms: {time_to_first_token_ms} > {latency_ms}"
    return problems


def _repair_strings(value: Any, path: str, repaired: list[str]) -> Any:
    if isinstance(value, str):
        fixed = repair_unicode(value)
        if fixed is not value:
            repaired.append(path or "value")
        return fixed
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            clean_key = repair_unicode(key) if isinstance(key, str) else key
            child = f"{path}.{clean_key}" if path else str(clean_key)
            if clean_key is not key:
                repaired.append(child)
            result[clean_key] = _repair_strings(item, child, repaired)
        return result
    if isinstance(value, list):
        return [_repair_strings(item, f"{path}.{index}", repaired) for index, item in enumerate(value)]
    return value


def _truncate_texts(data: dict[str, Any], max_chars: int) -> dict[str, dict[str, Any]]:
    truncated = {}
    for name in ("prompt", "completion"):
        if isinstance(data.get(name), str):
            data[name], full = truncate_text(data[name], max_chars)
            if full:
                truncated[name] = full
    for index, message in enumerate(data.get("messages") or []):
        message["content"], full = truncate_text(message["content"], max_chars)
        if full:
            truncated[f"messages.{index}.content"] = full
    return truncated
