"""Tumbling-window assignment, closing rule and statistics."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from controlplane.windows import OpenWindow, due_windows, summarize, window_start

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("timestamp", "length", "expected"),
    [
        (T0, 60, T0),
        (T0 + timedelta(seconds=59.999), 60, T0),
        (T0 + timedelta(seconds=60), 60, T0 + timedelta(seconds=60)),
        (T0 + timedelta(seconds=299), 300, T0 + timedelta(seconds=0)),
        (datetime(2026, 12, 1, 10, 0, 30), 60, T0),  # naive means UTC
        (datetime(2026, 12, 1, 11, 0, 30, tzinfo=timezone(timedelta(hours=1))), 60, T0),
    ],
)
def test_window_start(timestamp, length, expected):
    assert window_start(timestamp, length) == expected


def _open(start_offset_s: float, max_event_offset_s: float, ingested_offset_s: float, app: str = "a") -> OpenWindow:
    return OpenWindow(
        app=app, model="m", start=T0 + timedelta(seconds=start_offset_s), partition=0, event_count=1,
        max_event_time=T0 + timedelta(seconds=max_event_offset_s),
        last_ingested_at=T0 + timedelta(seconds=ingested_offset_s),
    )


@pytest.mark.parametrize(
    ("windows", "now_offset_s", "expected_starts"),
    [
        # The newest event (70 s) is not past end (60) + grace (10): nothing closes.
        ([_open(0, 50, 100), _open(60, 69.9, 100)], 101, []),
        # The newest event reached end + grace: the first window closes, the second stays open.
        ([_open(0, 50, 100), _open(60, 70, 100)], 101, [0]),
        # Nothing arrived for 30 s of wall clock: every window of the key closes.
        ([_open(0, 50, 100), _open(60, 65, 100)], 130, [0, 60]),
        # Another key's events do not move this key's watermark: only b's window closes.
        ([_open(0, 50, 100, app="a"), _open(60, 200, 100, app="b")], 101, [60]),
    ],
)
def test_due_windows(windows, now_offset_s, expected_starts):
    due = due_windows(windows, length_s=60, grace_s=10, idle_s=30, now=T0 + timedelta(seconds=now_offset_s))
    assert [(window.start - T0).total_seconds() for window in due] == expected_starts


def test_summarize_keeps_unknown_usage_unknown():
    rows = [
        {"status": "ok", "input_tokens": None, "output_tokens": None, "cost_usd": None, "latency_ms": 100.0},
        {"status": "ok", "input_tokens": None, "output_tokens": None, "cost_usd": None, "latency_ms": None},
    ]
    summary = summarize(rows)
    assert summary["input_tokens"] is None
    assert summary["output_tokens"] is None
    assert summary["cost_usd"] is None
    assert summary["usage_unknown_count"] == 2
    assert summary["unpriced_count"] == 2
    assert summary["latency_p50_ms"] == 100.0


def test_summarize_counts_and_percentiles():
    rows = [
        {"status": "ok", "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.5, "latency_ms": float(ms),
         "flagged": ms == 100, "pii_count": 1 if ms == 100 else 0, "toxic": False}
        for ms in (100, 200, 300, 400, 500)
    ] + [{"status": "error", "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "latency_ms": -5.0}]
    summary = summarize(rows)
    assert summary["event_count"] == 6
    assert summary["error_count"] == 1
    assert summary["input_tokens"] == 50  # a real 0 adds 0
    assert summary["output_tokens"] == 25
    assert summary["cost_usd"] == pytest.approx(2.5)
    assert summary["unpriced_count"] == 0
    assert summary["latency_p50_ms"] == 300.0  # the negative duration is left out
    assert summary["latency_p95_ms"] == pytest.approx(480.0)
    assert summary["flagged_count"] == 1
    assert summary["pii_count"] == 1
