"""Dashboard page times on a PostgreSQL store seeded with the rows of N events.

The rows are what the worker would have stored for N events: one-minute windows of 100 events
for four models, 5% of events flagged, a finding every 200 events, 200 alerts. Each page is
rendered with Streamlit's AppTest, the slowest of three renders counted.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from controlplane.settings import get_settings
from controlplane.store.migrate import upgrade
from controlplane.store.models import Alert, Finding, FlaggedInteraction, WindowStats

log = logging.getLogger(__name__)

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")
PAGES = ("pages/overview.py", "pages/drift.py", "pages/cost.py", "pages/safety.py", "pages/alerts.py",
         "pages/flagged.py", "pages/jobs_models.py")
MODELS = ("gpt-4o-mini", "gpt-4o", "claude-3-5-haiku", "unpriced-model")
EVENTS_PER_WINDOW = 100


def _windows(count: int, now: datetime) -> list[dict]:
    rows = []
    for index in range(count):
        model = MODELS[index % len(MODELS)]
        start = now - timedelta(minutes=count // len(MODELS) - index // len(MODELS))
        drifted = index % 50 == 0
        columns = [{"column": name, "status": "drifted" if drifted else "ok", "test": "K-S p_value",
                    "score": 0.001 if drifted else 0.4, "threshold": 0.05, "n_reference": 300, "n_current": 100}
                   for name in ("prompt_chars", "completion_chars", "latency_ms")]
        rows.append({
            "app": "assistant", "model": model, "window_start": start, "window_end": start + timedelta(minutes=1),
            "closed_at": start + timedelta(minutes=1), "event_count": EVENTS_PER_WINDOW, "late_event_count": 0,
            "error_count": 1, "input_tokens": 40_000, "output_tokens": 20_000, "usage_unknown_count": 0,
            "cost_usd": None if model == "unpriced-model" else 0.05, "unpriced_count": 100 if model == "unpriced-model" else 0,
            "latency_p50_ms": 400.0, "latency_p95_ms": 900.0, "flagged_count": 5, "pii_count": 2, "toxic_count": 3,
            "drift_status": "drifted" if drifted else "ok", "drift_share": 0.67 if drifted else 0.0,
            "details": {"drift": {"status": "drifted" if drifted else "ok", "columns": columns}},
        })
    return rows


def seed(url: str, events: int) -> None:
    """Write the rows of `events` events into the store at `url`."""
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    engine = create_engine(url)
    windows = _windows(events // EVENTS_PER_WINDOW, now)
    flagged = [
        {"event_id": f"e{index}", "app": "assistant", "model": MODELS[index % len(MODELS)],
         "event_time": now - timedelta(seconds=index), "prompt": f"Please email me at person{index}@example.org",
         "completion": "Sure, noted.", "created_at": now - timedelta(seconds=index),
         "detectors": [{"detector": "pii", "field": "prompt", "start": 19, "end": 40, "label": "EMAIL_ADDRESS", "score": 1.0}]}
        for index in range(events // 20)
    ]
    findings = [
        {"kind": "drift", "subject": f"features-{index}", "app": "assistant", "model": MODELS[index % len(MODELS)],
         "window_start": now - timedelta(minutes=index), "window_end": now - timedelta(minutes=index - 1),
         "severity": "warning", "summary": "3 of 7 features drifted", "sample_size": 100, "test": "share",
         "score": 0.43, "threshold": 0.5, "details": {}, "created_at": now - timedelta(minutes=index)}
        for index in range(events // 200)
    ]
    with engine.begin() as connection:
        for table, rows in ((WindowStats, windows), (FlaggedInteraction, flagged), (Finding, findings)):
            for begin in range(0, len(rows), 5000):
                connection.execute(insert(table), rows[begin:begin + 5000])
        connection.execute(insert(Alert), [
            {"fingerprint": f"{index:032x}", "status": "firing" if index % 3 else "resolved", "severity": "warning",
             "title": f"alert {index}", "app": "assistant", "model": MODELS[index % len(MODELS)],
             "kind": "drift", "subject": f"features-{index}", "occurrences": 1, "first_seen": now, "last_seen": now,
             "details": {}}
            for index in range(200)
        ])
    engine.dispose()


def page_times(url: str) -> dict[str, float]:
    """Render every page three times with AppTest against `url`; return the slowest render per page."""
    from streamlit.testing.v1 import AppTest

    os.environ["CONTROLPLANE_DATABASE_URL"] = url
    os.environ["CONTROLPLANE_KAFKA_BOOTSTRAP"] = "127.0.0.1:1"  # lag lookups fail at once, as without a broker
    get_settings.cache_clear()
    app = AppTest.from_file(APP, default_timeout=120)
    app.run()
    times = {}
    for page in PAGES:
        slowest = 0.0
        for _ in range(3):
            began = time.perf_counter()
            app.switch_page(page).run()
            slowest = max(slowest, time.perf_counter() - began)
            if app.exception:
                raise RuntimeError(f"{page} failed: {[item.value for item in app.exception]}")
        times[page.removeprefix("pages/").removesuffix(".py")] = round(slowest, 3)
    return times


def dashboard_timings(sizes: tuple[int, ...] = (100_000, 1_000_000)) -> dict[str, dict[str, float]]:
    """Slowest page and every page's time per store size, on PostgreSQL (CONTROLPLANE_BENCH_POSTGRES_URL)."""
    admin_url = os.environ.get("CONTROLPLANE_BENCH_POSTGRES_URL")
    if not admin_url:
        raise RuntimeError("CONTROLPLANE_BENCH_POSTGRES_URL is not set; make bench sets it to the PostgreSQL it starts")
    results = {}
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    for events in sizes:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        try:
            upgrade(url)
            seed(url, events)
            times = page_times(url)
            results[str(events)] = {"slowest": max(times.values()), **times}
            log.info("dashboard on %d events: %s", events, times)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
    return results
