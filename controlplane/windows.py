"""Tumbling windows over event time: assignment, closing rule and per-window statistics (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def as_utc(value: datetime) -> datetime:
    """Return `value` as an aware UTC datetime (SQLite hands back naive ones)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def window_start(timestamp: datetime, length_s: float) -> datetime:
    """Return the start of the tumbling window of `length_s` seconds that contains `timestamp`."""
    seconds = (as_utc(timestamp) - EPOCH).total_seconds()
    return EPOCH + timedelta(seconds=math.floor(seconds / length_s) * length_s)


@dataclass(frozen=True)
class OpenWindow:
    """A window with buffered events, as the store reports it."""

    app: str
    model: str
    start: datetime
    partition: int
    event_count: int
    max_event_time: datetime
    last_ingested_at: datetime


def due_windows(
    windows: Sequence[OpenWindow], length_s: float, grace_s: float, idle_s: float, now: datetime
) -> list[OpenWindow]:
    """Select the windows to close now.

    A window closes when the newest event time of its (app, model) has passed its end plus the
    grace period, or when its (app, model) has received nothing for `idle_s` seconds of wall clock.
    """
    watermark: dict[tuple[str, str], datetime] = {}
    last_ingest: dict[tuple[str, str], datetime] = {}
    for window in windows:
        key = (window.app, window.model)
        watermark[key] = max(watermark.get(key, window.max_event_time), as_utc(window.max_event_time))
        last_ingest[key] = max(last_ingest.get(key, window.last_ingested_at), as_utc(window.last_ingested_at))

    due = []
    for window in windows:
        key = (window.app, window.model)
        end = as_utc(window.start) + timedelta(seconds=length_s)
        if watermark[key] >= end + timedelta(seconds=grace_s) or last_ingest[key] <= now - timedelta(seconds=idle_s):
            due.append(window)
    return sorted(due, key=lambda window: (window.start, window.app, window.model))


def _known(rows: Iterable[dict[str, Any]], field: str) -> list[float]:
    return [row[field] for row in rows if row.get(field) is not None]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _sum_or_none(values: list[float]) -> float | None:
    return sum(values) if values else None


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-event feature rows into window statistics; unknown inputs never count as zero."""
    latencies = [value for value in _known(rows, "latency_ms") if value >= 0]
    input_tokens = _known(rows, "input_tokens")
    output_tokens = _known(rows, "output_tokens")
    return {
        "event_count": len(rows),
        "error_count": sum(1 for row in rows if row.get("status") != "ok"),
        "input_tokens": int(sum(input_tokens)) if input_tokens else None,
        "output_tokens": int(sum(output_tokens)) if output_tokens else None,
        "usage_unknown_count": sum(1 for row in rows if row.get("input_tokens") is None or row.get("output_tokens") is None),
        "cost_usd": _sum_or_none(_known(rows, "cost_usd")),
        "unpriced_count": sum(1 for row in rows if row.get("cost_usd") is None),
        "latency_p50_ms": _percentile(latencies, 0.5),
        "latency_p95_ms": _percentile(latencies, 0.95),
        "flagged_count": sum(1 for row in rows if row.get("flagged")),
        "pii_count": sum(1 for row in rows if row.get("pii_count")),
        "toxic_count": sum(1 for row in rows if row.get("toxic")),
    }
