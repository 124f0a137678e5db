"""Text drift end to end: public data replayed through Kafka into a worker, findings read from the store.

Windows hold 100 events and the worker embeds 100 texts per field (the default is 150), so that
the test stays within a few minutes on two cores. The default is checked through the sink in
tests/unit/test_text_drift.py.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from controlplane.replay import Timeline
from controlplane.scenario import ScenarioSource, shift_scenario
from controlplane.store.models import Finding, WindowStats
from tests.integration.helpers import StoreProbe, event_message, produce, wait_for

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 30, 14, 0, tzinfo=timezone.utc)
WINDOW_S = 60.0
EVENTS_PER_WINDOW = 100
BASELINE_WINDOWS = 2  # the reference, then one stationary window
SHIFT_WINDOWS = 2


def scenario(datasets_dir: Path, folder: Path) -> Timeline:
    """Code-assistant traffic, then the same traffic with 20% role-play requests mixed in."""
    lines = (datasets_dir / "codealpaca.jsonl").read_text(encoding="utf-8").splitlines()
    pool = folder / "codealpaca_pool.jsonl"
    pool.write_text("\n".join(random.Random(5).sample(lines, 1000)) + "\n", encoding="utf-8")
    segments = shift_scenario(
        baseline=[ScenarioSource(pool)],
        shift=[ScenarioSource(pool, weight=0.8), ScenarioSource(datasets_dir / "gpteacher_roleplay.jsonl", weight=0.2)],
        windows_baseline=BASELINE_WINDOWS, windows_shift=SHIFT_WINDOWS, events_per_window=EVENTS_PER_WINDOW,
        window_seconds=WINDOW_S, start=START,
    )
    return Timeline(segments, now=START)


def window_index(moment: datetime) -> int:
    return round((moment.replace(tzinfo=timezone.utc) - START).total_seconds() / WINDOW_S)


def test_topic_shift_through_kafka_raises_text_drift(
    kafka_bootstrap, database_url, worker_env, start_worker, datasets_dir, tmp_path
):
    worker_env.update({"CONTROLPLANE_TEXT_SAMPLE_SIZE": "100", "CONTROLPLANE_TEXT_MIN_TEXTS": "50"})
    events = list(scenario(datasets_dir, tmp_path))
    produce(kafka_bootstrap, worker_env["CONTROLPLANE_TOPIC_EVENTS"], [event_message(event) for event in events])
    worker = start_worker()
    probe = StoreProbe(database_url)
    try:
        wait_for(lambda: probe.windowed_events() == len(events) and probe.buffered_events() == 0,
                 timeout_s=540, what=f"{len(events)} events in closed windows", log=worker.log)
    finally:
        probe.close()
    engine = create_engine(database_url)
    with Session(engine) as session:
        windows = session.scalars(select(WindowStats).order_by(WindowStats.window_start)).all()
        findings = session.scalars(select(Finding).where(Finding.kind.in_(["drift", "traffic"]))).all()
        statuses = [window.drift_status for window in windows]
        found = sorted((window_index(f.window_start), f.kind, f.subject) for f in findings)
        text = [f for f in findings if f.subject == "text"]
        text_sample_sizes = {f.sample_size for f in text}
    engine.dispose()

    assert len(events) == (BASELINE_WINDOWS + SHIFT_WINDOWS) * EVENTS_PER_WINDOW
    assert statuses[:2] == ["reference_set", "ok"]
    assert [item for item in found if item[0] < BASELINE_WINDOWS] == []
    assert (BASELINE_WINDOWS, "drift", "text") in found or (BASELINE_WINDOWS + 1, "drift", "text") in found
    assert text_sample_sizes == {100}
