"""The SQL sink on a real SQLite file: stored offsets, window closing, late events, references."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controlplane.detectors.safety import SafetyResult, Span
from controlplane.events.schema import InferenceEvent, Usage
from controlplane.features import ScoredEvent, feature_row
from controlplane.settings import Settings
from controlplane.store.engine import make_engine
from controlplane.store.migrate import upgrade
from controlplane.store.models import (
    Alert,
    DeadLetter,
    DriftReference,
    Finding,
    FlaggedInteraction,
    WindowEvent,
    WindowStats,
)
from controlplane.store.sink import Record, Rejected, WindowSink

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
# Wall clock an hour from now: every buffered key has been idle long enough to close.
LATER = datetime.now(timezone.utc) + timedelta(hours=1)
CLEAN = SafetyResult(spans=(), toxicity=0.01, pii_count=0)
FLAGGED = SafetyResult(
    spans=(Span("pii", "prompt", 9, 26, "EMAIL_ADDRESS", 1.0),), toxicity=0.01, pii_count=1
)


def scored(index: int, seconds: float, safety: SafetyResult = CLEAN, cost: float | None = 0.001) -> ScoredEvent:
    event = InferenceEvent(
        event_id=f"e{index}", timestamp=T0 + timedelta(seconds=seconds), app="assistant", model="gpt-4o-mini",
        prompt="write to alice@example.org" if safety.flagged else f"question {index % 10}", completion="x" * (10 + index % 7),
        usage=Usage(input_tokens=5, output_tokens=3), latency_ms=100.0 + index % 9, finish_reason="stop",
        route="/chat",
    )
    return ScoredEvent(event, feature_row(event, cost, safety), safety)


@pytest.fixture
def sink(tmp_path) -> WindowSink:
    url = f"sqlite:///{tmp_path / 'sink.db'}"
    upgrade(url)
    settings = Settings(database_url=url, window_seconds=60, window_grace_seconds=5, window_idle_close_seconds=30,
                        drift_min_rows=20)
    return WindowSink(make_engine(url), settings, topic="events")


def count(sink: WindowSink, model) -> int:
    with Session(sink.engine) as session:
        return session.scalar(select(func.count()).select_from(model))


def test_redelivered_records_are_skipped(sink):
    records = [Record(0, offset, scored(offset, offset)) for offset in range(10)]
    first = sink.ingest(records)
    again = sink.ingest(records[5:] + [Record(0, 10, scored(10, 10))])
    assert (first.stored, first.skipped_duplicates) == (10, 0)
    assert (again.stored, again.skipped_duplicates) == (1, 5)
    assert count(sink, WindowEvent) == 11


def test_rejected_and_flagged_records_are_stored(sink):
    records = [
        Record(1, 0, scored(0, 0, FLAGGED)),
        Record(1, 1, Rejected("value is not JSON: Expecting value", 8)),
        Record(1, 2, scored(2, 1)),
    ]
    result = sink.ingest(records)
    assert (result.stored, result.rejected, result.flagged) == (2, 1, 1)
    with Session(sink.engine) as session:
        letter = session.scalars(select(DeadLetter)).one()
        flagged = session.scalars(select(FlaggedInteraction)).one()
    assert (letter.partition, letter.offset, letter.reason) == (1, 1, "value is not JSON: Expecting value")
    assert flagged.event_id == "e0"
    assert flagged.detectors == [
        {"detector": "pii", "field": "prompt", "start": 9, "end": 26, "label": "EMAIL_ADDRESS", "score": 1.0}
    ]


def test_first_window_becomes_reference_then_windows_are_compared(sink):
    # 40 events in each of three minutes, then one at 184 s: past end + grace of the second minute
    # (120 + 5 s), not of the third (180 + 5 s).
    sink.ingest([Record(0, i, scored(i, i * 1.5)) for i in range(120)])
    sink.ingest([Record(0, 120, scored(120, 184))])
    closed = sink.close_due(partitions={0}, now=T0 + timedelta(seconds=190))
    assert [window.event_count for window in closed] == [40, 40]
    with Session(sink.engine) as session:
        stats = session.scalars(select(WindowStats).order_by(WindowStats.window_start)).all()
        reference = session.scalars(select(DriftReference)).one()
    assert [s.drift_status for s in stats] == ["reference_set", "ok"]
    assert reference.row_count == 40
    assert stats[1].cost_usd == pytest.approx(0.04)
    assert stats[1].input_tokens == 200
    assert count(sink, WindowEvent) == 41


def test_late_events_merge_into_closed_window(sink):
    sink.ingest([Record(0, i, scored(i, i)) for i in range(30)])
    sink.close_due(partitions={0}, now=LATER)
    sink.ingest([Record(0, 30, scored(30, 10)), Record(0, 31, scored(31, 20))])
    closed = sink.close_due(partitions={0}, now=LATER + timedelta(hours=1))
    with Session(sink.engine) as session:
        stats = session.scalars(select(WindowStats)).one()
    assert [window.late for window in closed] == [True]
    assert (stats.event_count, stats.late_event_count) == (32, 2)


def test_unpriced_events_give_a_cost_finding_and_alert(sink):
    sink.ingest([Record(0, i, scored(i, i, cost=None if i % 2 else 0.01)) for i in range(30)])
    sink.close_due(partitions={0}, now=LATER)
    with Session(sink.engine) as session:
        stats = session.scalars(select(WindowStats)).one()
        finding = session.scalars(select(Finding)).one()
        alert = session.scalars(select(Alert)).one()
    assert stats.unpriced_count == 15
    assert stats.cost_usd == pytest.approx(0.15)
    assert (finding.kind, finding.subject, finding.score) == ("cost", "unknown_cost", 15.0)
    assert (alert.status, alert.finding_id, alert.occurrences) == ("firing", finding.id, 1)


def test_windows_of_other_partitions_stay_open(sink):
    sink.ingest([Record(0, i, scored(i, i)) for i in range(5)] + [Record(1, 0, scored(99, 2))])
    closed = sink.close_due(partitions={1}, now=LATER)
    assert [window.event_count for window in closed] == [1]
    assert count(sink, WindowEvent) == 5


def test_spend_spike_and_budget_burn_become_findings(tmp_path):
    url = f"sqlite:///{tmp_path / 'cost.db'}"
    upgrade(url)
    # A budget of $0.72 a day is $0.03 an hour and $0.18 for six hours.
    settings = Settings(database_url=url, window_seconds=60, window_grace_seconds=5, drift_min_rows=20,
                        budget_usd_per_day=0.72)
    sink = WindowSink(make_engine(url), settings, topic="events")
    records = []
    for minute in range(11):
        cost = 0.01 if minute == 10 else 0.001  # 30 events a minute: $0.03 a window, then $0.30
        for i in range(30):
            records.append(Record(0, len(records), scored(len(records), minute * 60 + i * 2, cost=cost)))
    sink.ingest(records)
    sink.ingest([Record(0, len(records), scored(len(records), 11 * 60 + 10))])
    closed = sink.close_due(partitions={0}, now=T0 + timedelta(minutes=12))
    assert len(closed) == 11
    with Session(sink.engine) as session:
        findings = session.scalars(select(Finding).where(Finding.kind == "cost").order_by(Finding.id)).all()
    spikes = [f for f in findings if f.subject == "spend_anomaly"]
    assert [(f.window_start.minute, f.sample_size, f.details["baseline"]) for f in spikes] == [(10, 10, "recent")]
    assert spikes[0].details["value"] == pytest.approx(0.3)
    assert spikes[0].details["median"] == pytest.approx(0.03)
    burns = [f for f in findings if f.subject == "budget_burn"]
    # Only the spike's window passes both rates: $0.60 spent by its end is 20 times the hour's
    # share and 3.3 times the six hours' share; $0.30 by the window before is 1.7 times the latter.
    assert [(f.window_start.minute, f.app, f.model) for f in burns] == [(10, "*", "*")]
    assert burns[0].details["short_rate"] == pytest.approx(20.0)
    assert burns[0].details["long_rate"] == pytest.approx(0.6 / 0.18)


def test_flagged_share_rise_trend_finding(sink):
    # A clean reference window, then windows with 4 of 40 flagged: never rare enough in one
    # window for the binomial test, but the CUSUM gains about 1.9 a window and alarms in the fifth.
    records = []
    for minute in range(7):
        for i in range(40):
            safety = FLAGGED if minute > 0 and i < 4 else CLEAN
            records.append(Record(0, len(records), scored(len(records), minute * 60 + i, safety)))
    sink.ingest(records)
    sink.ingest([Record(0, len(records), scored(len(records), 7 * 60 + 10))])
    sink.close_due(partitions={0}, now=T0 + timedelta(minutes=8))
    with Session(sink.engine) as session:
        findings = session.scalars(select(Finding).where(Finding.kind == "safety")).all()
    assert [(f.subject, f.window_start.minute, f.details["windows"]) for f in findings] == [("flagged_rate_trend", 5, 5)]
    assert findings[0].details["flagged"] == 20
