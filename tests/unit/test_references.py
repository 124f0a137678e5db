"""References on a real SQLite file: one per model version, window profiles, promotion, gaps and traffic drops."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from controlplane.cli import app as cli_app
from controlplane.detectors.safety import SafetyResult, Span
from controlplane.errors import ConfigurationError
from controlplane.events.schema import InferenceEvent, Usage
from controlplane.features import ScoredEvent, feature_row
from controlplane.settings import Settings, get_settings
from controlplane.store.drift_models import ReferenceProfile, WindowProfile, promote_window
from controlplane.store.engine import make_engine
from controlplane.store.migrate import upgrade
from controlplane.store.models import DriftReference, Finding, WindowStats
from controlplane.store.sink import Record, WindowSink
from controlplane.windows import as_utc

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
LATER = datetime.now(timezone.utc) + timedelta(hours=1)
CLEAN = SafetyResult(spans=(), toxicity=0.0, pii_count=0)
FLAGGED = SafetyResult(spans=(Span("pii", "prompt", 0, 5, "EMAIL_ADDRESS", 1.0),), toxicity=0.0, pii_count=1)
WORDS = {"code": ["function", "loop", "array", "parser"], "story": ["dragon", "castle", "sailor", "wizard"]}


class TopicEncoder:
    """Embeds a text near the direction of its first word, with noise fixed by the text, like a sentence encoder."""

    def encode(self, texts):
        rows = []
        for text in texts:
            center = np.random.default_rng(_seed(text.split()[0])).normal(size=384)
            noise = np.random.default_rng(_seed(text)).normal(size=384)
            vector = center + 1.5 * noise
            rows.append(vector / np.linalg.norm(vector))
        return np.array(rows, dtype=np.float32)


def _seed(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


class Traffic:
    """Events of one app and model with stationary features; `story_share` of them on another topic."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.offset = 0

    def window(self, minute: int, count: int, version: str | None = "v1", story_share: float = 0.0,
               usage: bool = True, safety: SafetyResult = CLEAN) -> list[Record]:
        records = []
        for position in range(count):
            kind = "story" if position < story_share * count else "code"
            words = self.rng.choice(WORDS[kind], size=int(self.rng.integers(5, 40)))
            prompt = f"{words[0]} " + " ".join(words)
            event = InferenceEvent(
                event_id=f"event-{self.offset}", timestamp=T0 + timedelta(seconds=minute * 60 + position * 50 / count),
                app="assistant", model="gpt-4o-mini", model_version=version, route="/chat", finish_reason="stop",
                prompt=prompt, completion=f"{words[-1]} answer " * int(self.rng.integers(2, 20)),
                usage=Usage(input_tokens=len(prompt) // 4, output_tokens=30) if usage else Usage(),
                latency_ms=float(self.rng.lognormal(6, 0.3)),
            )
            records.append(Record(0, self.offset, ScoredEvent(event, feature_row(event, 0.001, safety), safety)))
            self.offset += 1
        return records


@pytest.fixture
def database_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'references.db'}"
    upgrade(url)
    return url


def make_sink(database_url: str, **overrides) -> WindowSink:
    settings = Settings(database_url=database_url, window_seconds=60, window_grace_seconds=5,
                        window_idle_close_seconds=30, **overrides)
    return WindowSink(make_engine(database_url), settings, "events", TopicEncoder())


def close(sink: WindowSink, *windows: list[Record]) -> None:
    sink.ingest([record for window in windows for record in window])
    sink.close_due({0}, now=LATER)


def rows(sink: WindowSink, model, *order):
    with Session(sink.engine) as session:
        found = session.scalars(select(model).order_by(*order)).all()
        session.expunge_all()
    return found


def minute(moment: datetime) -> int:
    return round((as_utc(moment) - T0).total_seconds() / 60)


def test_first_window_per_version_is_reference(database_url):
    sink, traffic = make_sink(database_url), Traffic()

    close(sink, traffic.window(0, 100), traffic.window(1, 100), traffic.window(2, 100, version="v2"))
    references = rows(sink, ReferenceProfile, ReferenceProfile.model_version)
    windows = rows(sink, WindowStats, WindowStats.window_start)
    summary = rows(sink, DriftReference)

    assert [(r.model_version, r.source, r.event_count, minute(r.source_window_start)) for r in references] == [
        ("v1", "first_window", 100, 0), ("v2", "first_window", 100, 2)]
    assert sorted(references[0].profile["text"]) == ["completion", "prompt"]
    assert [w.drift_status for w in windows] == ["reference_set", "ok", "reference_set"]
    assert windows[1].details["drift"]["reference"]["model_version"] == "v1"
    assert [(s.row_count, minute(s.source_window_start), s.rows) for s in summary] == [(100, 2, [])]


def test_window_without_version_uses_empty_version(database_url):
    sink, traffic = make_sink(database_url), Traffic()

    close(sink, traffic.window(0, 60, version=None))

    assert [r.model_version for r in rows(sink, ReferenceProfile)] == [""]


def test_small_first_window_waits(database_url):
    sink, traffic = make_sink(database_url), Traffic()

    close(sink, traffic.window(0, 20), traffic.window(1, 80))
    windows = rows(sink, WindowStats, WindowStats.window_start)

    assert [w.drift_status for w in windows] == ["no_reference", "reference_set"]
    assert windows[0].details["drift"]["reason"] == "20 rows, reference needs 50"
    assert minute(rows(sink, ReferenceProfile)[0].source_window_start) == 1


def test_every_closed_window_keeps_a_profile(database_url):
    sink, traffic = make_sink(database_url), Traffic()

    close(sink, traffic.window(0, 100), traffic.window(1, 40), traffic.window(2, 100))
    profiles = rows(sink, WindowProfile, WindowProfile.window_start)

    assert [(minute(p.window_start), p.event_count, p.model_version) for p in profiles] == [(0, 100, "v1"), (1, 40, "v1"), (2, 100, "v1")]
    # A window below text_min_texts is not embedded.
    assert [sorted(p.profile["text"]) for p in profiles] == [["completion", "prompt"], [], ["completion", "prompt"]]
    assert profiles[0].profile["columns"]["prompt_language"]["counts"] == {"en": 100}


def test_promoted_window_replaces_the_reference(database_url):
    sink, traffic = make_sink(database_url), Traffic()
    close(sink, traffic.window(0, 100), traffic.window(1, 100, story_share=0.5))

    with Session(sink.engine) as session, session.begin():
        promote_window(session, "assistant", "gpt-4o-mini", T0 + timedelta(minutes=1), None, "alice", 50)
    close(sink, traffic.window(2, 100, story_share=0.5))
    reference = rows(sink, ReferenceProfile)[0]
    latest = rows(sink, WindowStats, WindowStats.window_start)[-1]

    assert (reference.source, reference.created_by, minute(reference.source_window_start)) == ("promoted", "alice", 1)
    assert latest.details["drift"]["reference"]["source"] == "promoted"
    assert latest.details["drift"]["text"]["status"] == "ok"
    assert rows(sink, DriftReference)[0].row_count == 100


@pytest.mark.parametrize(
    ("window_minute", "min_events", "message"),
    [(7, 50, "no stored profile"), (1, 50, "has 20 events, and a reference needs at least 50")],
)
def test_promotion_of_unusable_window_raises(database_url, window_minute, min_events, message):
    sink, traffic = make_sink(database_url), Traffic()
    close(sink, traffic.window(0, 100), traffic.window(1, 20))

    with Session(sink.engine) as session, pytest.raises(ConfigurationError, match=message):
        promote_window(session, "assistant", "gpt-4o-mini", T0 + timedelta(minutes=window_minute), None, "bob", min_events)


def test_gap_records_empty_windows_and_a_traffic_drop(database_url):
    sink, traffic = make_sink(database_url), Traffic()

    close(sink, traffic.window(0, 100), traffic.window(5, 100))
    windows = rows(sink, WindowStats, WindowStats.window_start)
    finding = [f for f in rows(sink, Finding, Finding.id) if f.kind == "traffic"]

    assert [(minute(w.window_start), w.event_count, w.drift_status) for w in windows] == [
        (0, 100, "reference_set"), (1, 0, "no_data"), (2, 0, "no_data"), (3, 0, "no_data"), (4, 0, "no_data"), (5, 100, "ok")]
    assert [w.cost_usd for w in windows[1:5]] == [None] * 4
    assert len(finding) == 1
    assert (finding[0].subject, finding[0].severity, finding[0].sample_size) == ("traffic_drop", "critical", 0)
    assert (minute(finding[0].window_start), minute(finding[0].window_end)) == (1, 5)
    assert finding[0].score == pytest.approx(math.exp(-400))
    assert finding[0].threshold == 0.001
    assert finding[0].details == {"missing_windows": 4, "recorded_windows": 4, "reference_event_count": 100}


def test_long_gap_keeps_newest_empty_windows(database_url):
    sink, traffic = make_sink(database_url, traffic_max_gap_windows=2), Traffic()

    close(sink, traffic.window(0, 100), traffic.window(5, 100))
    windows = rows(sink, WindowStats, WindowStats.window_start)
    finding = [f for f in rows(sink, Finding, Finding.id) if f.kind == "traffic"][0]

    assert [minute(w.window_start) for w in windows] == [0, 3, 4, 5]
    assert (finding.details["missing_windows"], finding.details["recorded_windows"]) == (4, 2)


def test_gap_without_reference_is_recorded_without_finding(database_url):
    sink, traffic = make_sink(database_url), Traffic()

    close(sink, traffic.window(0, 10), traffic.window(3, 10))

    assert [w.drift_status for w in rows(sink, WindowStats, WindowStats.window_start)] == [
        "no_reference", "no_data", "no_data", "no_reference"]
    assert [f.kind for f in rows(sink, Finding, Finding.id)] == []


@pytest.mark.parametrize(("count", "dropped"), [(90, False), (30, False), (5, True), (1, True)])
def test_low_event_count_is_a_traffic_drop(database_url, count, dropped):
    sink, traffic = make_sink(database_url), Traffic()

    close(sink, traffic.window(0, 100), traffic.window(1, count))
    finding = [f for f in rows(sink, Finding, Finding.id) if f.kind == "traffic"]

    assert bool(finding) is dropped
    if dropped:
        assert (finding[0].severity, finding[0].sample_size, finding[0].test) == ("warning", count, "Poisson lower tail")
        assert finding[0].score < 0.001


def test_usage_gone_missing_raises_missing_values_finding(database_url):
    sink, traffic = make_sink(database_url), Traffic()

    close(sink, traffic.window(0, 100), traffic.window(1, 100, usage=False))
    findings = {f.subject: f for f in rows(sink, Finding, Finding.id) if f.kind == "drift"}
    latest = rows(sink, WindowStats, WindowStats.window_start)[-1]

    assert sorted(findings) == ["missing_values"]
    assert findings["missing_values"].summary == (
        "share of missing values changed: input_tokens 0% to 100%, output_tokens 0% to 100%")
    assert findings["missing_values"].sample_size == 100
    assert findings["missing_values"].score < findings["missing_values"].threshold
    assert latest.drift_status == "drifted"
    assert latest.details["drift"]["features_status"] == "ok"


def test_new_topic_raises_text_finding_apart_from_features(database_url):
    sink, traffic = make_sink(database_url), Traffic()

    close(sink, traffic.window(0, 200), traffic.window(1, 200), traffic.window(2, 200, story_share=0.2))
    findings = [(minute(f.window_start), f.kind, f.subject) for f in rows(sink, Finding, Finding.id) if f.kind != "cost"]
    text = [f for f in rows(sink, Finding, Finding.id) if f.subject == "text"][0]

    assert findings == [(2, "drift", "text")]
    assert text.sample_size == 150
    assert text.threshold == 0.001 / 4
    assert text.details["fields"][0]["novel_share_current"] >= 0.2
    assert text.summary.startswith("text drifted: prompts: ")


def test_flagged_rate_compares_with_reference_counts(database_url):
    sink, traffic = make_sink(database_url), Traffic()

    close(sink, traffic.window(0, 100), traffic.window(1, 20, safety=FLAGGED))
    safety = [f for f in rows(sink, Finding, Finding.id) if f.kind == "safety"]

    # 20 of 20 flagged is a jump for the per-window test and, in one window, an alarm of the CUSUM too.
    assert [(f.subject, f.sample_size, f.details["reference_rate"]) for f in safety] == [
        ("flagged_rate", 20, 1 / 102), ("flagged_rate_trend", 20, 1 / 102)
    ]


def test_cli_shows_and_promotes_references(database_url, monkeypatch):
    sink, traffic = make_sink(database_url), Traffic()
    close(sink, traffic.window(0, 100), traffic.window(1, 100))
    monkeypatch.setenv("CONTROLPLANE_DATABASE_URL", database_url)
    monkeypatch.setenv("CONTROLPLANE_WINDOW_SECONDS", "60")
    get_settings.cache_clear()
    runner = CliRunner()

    promoted = runner.invoke(cli_app, ["reference", "promote", "--app", "assistant", "--model", "gpt-4o-mini",
                                       "--window-start", "2026-12-01T10:01:30Z", "--by", "carol"])
    shown = runner.invoke(cli_app, ["reference", "show", "--windows", "2"])
    get_settings.cache_clear()

    assert promoted.exit_code == 0, promoted.output
    assert "is now the window starting 2026-12-01 10:01:00 UTC (100 events, text fields: completion, prompt)" in promoted.output
    assert shown.exit_code == 0, shown.output
    assert "assistant/gpt-4o-mini version v1: window 2026-12-01 10:01:00 UTC, 100 events, text completion, prompt, promoted" in shown.output
    assert "by carol" in shown.output
    assert "2026-12-01 10:00:00 UTC  assistant/gpt-4o-mini version v1  100 events" in shown.output
