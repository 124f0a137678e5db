"""Dashboard pages rendered with Streamlit's AppTest against a migrated SQLite store seeded here."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
import streamlit as st
from sqlalchemy import create_engine, func, select, text
from streamlit.testing.v1 import AppTest

from controlplane.auth import hash_password
from controlplane.settings import get_settings
from controlplane.store.audit_models import AuditEntry
from controlplane.store.engine import transaction
from controlplane.store.migrate import upgrade
from controlplane.store.models import (
    Alert,
    ConsumerOffset,
    DriftReference,
    Finding,
    FlaggedInteraction,
    Job,
    Silence,
    WindowStats,
)
from controlplane.store.registry_models import DatasetVersion, EvaluationReport, ModelVersion, Promotion

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")
TIMEOUT = 60
FEATURES = ("prompt_chars", "completion_chars", "latency_ms")
EMAIL = "jane.doe@example.com"


def _drift_details(drifted: bool) -> dict:
    columns = [
        {"column": name, "status": "drifted" if drifted and name != "latency_ms" else "ok", "test": "K-S p_value",
         "score": 1e-9 if drifted and name != "latency_ms" else 0.4, "threshold": 0.05, "n_reference": 300, "n_current": 120}
        for name in FEATURES
    ]
    share = 2 / 3 if drifted else 0.0
    return {"drift": {"status": "drifted" if drifted else "ok", "drift_share": share, "columns": columns}}


def seed_store(url: str, now: datetime, windows: int = 30) -> dict[str, int]:
    """Write windows of two models (one unpriced), findings, alerts, flagged interactions and offsets; return ids."""
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=windows)
    engine = create_engine(url)
    with transaction(engine) as session:
        session.add(DriftReference(app="assistant", model="gpt-4o-mini", source_window_start=start, row_count=300,
                                   rows=[], created_at=start))
        for index in range(windows):
            window_start = start + timedelta(minutes=index)
            drifted = index >= windows - 5
            session.add(WindowStats(
                app="assistant", model="gpt-4o-mini", window_start=window_start, window_end=window_start + timedelta(minutes=1),
                event_count=120, error_count=6, input_tokens=12_000, output_tokens=24_000, usage_unknown_count=0,
                cost_usd=0.25, unpriced_count=0, latency_p50_ms=300.0, latency_p95_ms=900.0, flagged_count=12,
                pii_count=6, toxic_count=3, drift_status="drifted" if drifted else "ok",
                drift_share=2 / 3 if drifted else 0.0, details=_drift_details(drifted),
            ))
            session.add(WindowStats(
                app="assistant", model="local-llama", window_start=window_start, window_end=window_start + timedelta(minutes=1),
                event_count=40, error_count=0, input_tokens=None, output_tokens=None, usage_unknown_count=40,
                cost_usd=None, unpriced_count=40, latency_p50_ms=None, latency_p95_ms=None, flagged_count=0,
                pii_count=0, toxic_count=0, drift_status="no_reference", drift_share=None,
                details={"drift": {"reason": "10 rows, reference needs 50"}},
            ))
        finding = Finding(kind="drift", subject="features", app="assistant", model="gpt-4o-mini",
                          window_start=start, window_end=start + timedelta(minutes=1), severity="warning",
                          summary="2 of 3 features drifted", sample_size=120, test="share of drifted columns",
                          score=2 / 3, threshold=0.5, details={})
        session.add(finding)
        session.flush()
        alerts = [
            Alert(fingerprint="a" * 32, status="firing", severity="warning", title="2 of 3 features drifted",
                  app="assistant", model="gpt-4o-mini", finding_id=finding.id, occurrences=5, first_seen=now, last_seen=now,
                  kind="drift", subject="features", details={"kind": "drift", "subject": "features"}),
            Alert(fingerprint="b" * 32, status="firing", severity="critical", title="flagged rate tripled",
                  app="assistant", model="gpt-4o-mini", occurrences=2, first_seen=now, last_seen=now - timedelta(minutes=1),
                  kind="safety", subject="flagged_rate", details={"kind": "safety", "subject": "flagged_rate"}),
            Alert(fingerprint="c" * 32, status="resolved", severity="info", title="unpriced model local-llama",
                  app="assistant", model="local-llama", occurrences=1, first_seen=now, last_seen=now - timedelta(minutes=2),
                  kind="cost", subject="unpriced", details={"kind": "cost", "subject": "unpriced"}),
        ]
        session.add_all(alerts)
        prompt = f"Please email {EMAIL} the report."
        flagged = [
            FlaggedInteraction(event_id="event-pii", app="assistant", model="gpt-4o-mini", event_time=now - timedelta(minutes=3),
                               detectors=[{"detector": "pii", "field": "prompt", "start": 13, "end": 13 + len(EMAIL),
                                           "label": "EMAIL_ADDRESS", "score": 1.0}],
                               prompt=prompt, completion="Sent."),
            FlaggedInteraction(event_id="event-toxic", app="assistant", model="gpt-4o-mini", event_time=now - timedelta(minutes=2),
                               detectors=[{"detector": "toxicity", "field": "completion", "start": 0, "end": 18,
                                           "label": "offensive", "score": 0.9}],
                               prompt="Review my code", completion="This code is awful"),
        ]
        session.add_all(flagged)
        session.add(ConsumerOffset(group_id="controlplane-worker", topic="inference.events", partition=0, next_offset=500))
        session.flush()
        ids = {"alert_firing": alerts[0].id, "alert_critical": alerts[1].id, "alert_resolved": alerts[2].id,
               "flagged_pii": flagged[0].id, "flagged_toxic": flagged[1].id}
    engine.dispose()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    ids["windows_today"] = sum(1 for index in range(windows) if start + timedelta(minutes=index) >= midnight)
    return ids


def seed_loop(url: str, adapters_dir: Path) -> dict[str, int]:
    """Write a failed job, a dataset version, a promoted adapter v1, a candidate v2 with a passed report, and v1's promotion."""
    engine = create_engine(url)
    now = datetime.now(timezone.utc)
    with transaction(engine) as session:
        job = Job(kind="fine_tune", status="failed", params={"dataset_version_id": 1}, result={},
                  error="Traceback (most recent call last):\nRuntimeError: CUDA is not available", attempts=1, max_attempts=3)
        session.add(job)
        session.flush()
        dataset = DatasetVersion(name="assistant", version=1, since=now - timedelta(days=1), until=now, selected_count=10,
                                 train_count=8, eval_count=2, preference_count=0, manifest={}, path=str(adapters_dir),
                                 content_hash="0" * 64)
        session.add(dataset)
        session.flush()
        versions = []
        for version, status in ((1, "promoted"), (2, "candidate")):
            folder = adapters_dir / f"v{version}"
            folder.mkdir(parents=True, exist_ok=True)
            versions.append(ModelVersion(name="assistant-lora", version=version, base_model_path=str(adapters_dir / "base"),
                                         adapter_path=str(folder), dataset_version_id=dataset.id, status=status,
                                         package_version="0.1.0", config={"r": 8}))
        session.add_all(versions)
        session.flush()
        metrics = {"candidate": {"eval": {"perplexity": 9.5}}, "baseline": {"eval": {"perplexity": 12.0}}}
        report = EvaluationReport(model_version_id=versions[1].id, baseline_model_version_id=versions[0].id,
                                  dataset_version_id=dataset.id, metrics=metrics, thresholds={"min_eval_perplexity_improvement": 0.05},
                                  passed=True, reasons=["passed: eval-split perplexity improved by 20.83%"], created_at=now)
        old_report = EvaluationReport(model_version_id=versions[0].id, baseline_model_version_id=None,
                                      dataset_version_id=dataset.id, metrics={"candidate": {"eval": {"perplexity": 12.0}}},
                                      thresholds={}, passed=True, reasons=["passed: first adapter"],
                                      created_at=now - timedelta(days=1))
        session.add_all([report, old_report])
        session.flush()
        session.add(Promotion(model_version_id=versions[0].id, previous_model_version_id=None, action="promote",
                              actor="setup", reason="first", evaluation_report_id=old_report.id))
        session.flush()
        ids = {"job": job.id, "v1": versions[0].id, "v2": versions[1].id, "report_v2": report.id, "report_v1": old_report.id}
    engine.dispose()
    return ids


# ----- fixtures -----


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated, empty SQLite store that the dashboard reads through CONTROLPLANE_DATABASE_URL."""
    url = f"sqlite:///{tmp_path / 'dashboard.db'}"
    upgrade(url)
    for name in ("DASHBOARD_PASSWORD_HASH", "DASHBOARD_VIEWER_PASSWORD_HASH", "DASHBOARD_ADDRESS", "BUDGET_USD_PER_DAY"):
        monkeypatch.delenv(f"CONTROLPLANE_{name}", raising=False)
    monkeypatch.setenv("CONTROLPLANE_DATABASE_URL", url)
    # Nothing listens on port 1, so the lag lookup fails at once and the page must show "unknown".
    monkeypatch.setenv("CONTROLPLANE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    get_settings.cache_clear()
    yield url
    st.cache_resource.clear()
    st.cache_data.clear()
    get_settings.cache_clear()


@pytest.fixture
def seeded(store_url: str) -> dict[str, int]:
    """Ids of the rows seed_store wrote."""
    return seed_store(store_url, datetime.now(timezone.utc))


def render(page: str | None = None, at: AppTest | None = None) -> AppTest:
    """Run the dashboard's entry point, then switch to `page` (e.g. "pages/alerts.py") and run it."""
    if at is None:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, [item.value for item in at.exception]
    return at


def scalar(url: str, query):
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(query).scalar()
    finally:
        engine.dispose()


def audit_actions(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(AuditEntry.action).order_by(AuditEntry.id)).scalars())
    finally:
        engine.dispose()


def texts(at: AppTest) -> str:
    """All info, warning, caption, markdown and error texts of a run, joined."""
    parts = [item.value for kind in ("info", "warning", "caption", "markdown", "error", "success") for item in getattr(at, kind)]
    return "\n".join(str(part) for part in parts)


# ----- empty store -----

EMPTY_STATES = [
    (None, "No closed windows in this time range"),
    ("pages/drift.py", "No closed windows yet"),
    ("pages/cost.py", "No closed windows in this time range"),
    ("pages/safety.py", "No closed windows in this time range"),
    ("pages/alerts.py", "No alerts"),
    ("pages/flagged.py", "No flagged interaction matches"),
    ("pages/jobs_models.py", "No jobs yet"),
]


@pytest.mark.parametrize(("page", "message"), EMPTY_STATES)
def test_page_empty_store(store_url: str, page: str | None, message: str) -> None:
    at = render(page)
    assert message in texts(at)


def test_overview_empty_store_lag(store_url: str) -> None:
    at = render()
    assert "No stored consumer offsets yet" in texts(at)
    assert at.metric[0].value == "0"


# ----- monitoring pages -----


def test_overview_headline(store_url: str, seeded: dict[str, int]) -> None:
    at = render()
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Events"] == "4,800"
    assert metrics["Error rate"] == "3.75%"
    assert metrics["Open alerts"] == "2"
    assert metrics["Spend today (UTC)"] == f"${0.25 * seeded['windows_today']:,.2f}"


def test_overview_lag_unknown(store_url: str, seeded: dict[str, int]) -> None:
    at = render()
    assert "Lag unknown" in texts(at)
    lag = [frame.value for frame in at.dataframe if "next_offset" in frame.value.columns][0]
    assert lag["lag"].tolist() == ["unknown"]
    assert lag["next_offset"].tolist() == [500]


def test_overview_budget(store_url: str, seeded: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLPLANE_BUDGET_USD_PER_DAY", "100")
    get_settings.cache_clear()
    at = render()
    spend = 0.25 * seeded["windows_today"]
    assert {metric.label: metric.value for metric in at.metric}["Spend today (UTC)"] == f"${spend:,.2f} of $100.00"
    assert f"{spend / 100:.0%} of budget, {40 * seeded['windows_today']:,} events unpriced" in texts(at)


def test_cost_unknown_stays_unknown(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/cost.py")
    table = [frame.value for frame in at.dataframe if "spend (priced events)" in frame.value.columns][0]
    spend = dict(zip(table["model"], table["spend (priced events)"]))
    assert spend == {"gpt-4o-mini": "$7.50", "local-llama": "unknown"}
    unpriced = [frame.value for frame in at.dataframe if "unpriced_events" in frame.value.columns][0]
    assert unpriced["model"].tolist() == ["local-llama"]
    assert unpriced["unpriced_events"].tolist() == [1200]


def test_drift_page_details(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/drift.py")
    assert "Reference in use: 300 rows" in texts(at)
    newest = at.dataframe[-1].value
    assert newest["column"].tolist() == list(FEATURES)
    assert newest["status"].tolist() == ["drifted", "drifted", "ok"]
    assert "Status **drifted**" in texts(at)


def test_drift_page_window_without_columns(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/drift.py")
    at.selectbox(key="drift_pair").select("assistant / local-llama").run()
    assert not at.exception
    assert "10 rows, reference needs 50" in texts(at)
    assert "No drift reference yet" in texts(at)


def test_safety_rates_and_highlight(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/safety.py")
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics == {"any detector": "7.50%", "personal data (pii)": "3.75%", "toxicity": "1.88%"}
    html = texts(at)
    assert f'<mark title="pii: EMAIL_ADDRESS (1.00)" style="background:#fff2a8">{EMAIL}</mark>' in html
    assert '<mark title="toxicity: offensive (0.90)" style="background:#ffd6d6">This code is awful</mark>' in html


def test_safety_detector_filter(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/safety.py")
    at.selectbox(key="safety_detector").select("toxicity").run()
    titles = [expander.label for expander in at.expander]
    assert len(titles) == 1
    assert "toxicity:offensive" in titles[0]


# ----- alerts -----


def test_alerts_acknowledge(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/alerts.py")
    at.selectbox(key="alerts_id").select(seeded["alert_firing"]).run()
    at.button(key="alerts_ack").click().run()
    assert not at.exception
    status = scalar(store_url, select(Alert.status).where(Alert.id == seeded["alert_firing"]))
    assert status == "acknowledged"
    assert scalar(store_url, select(Alert.acknowledged_by).where(Alert.id == seeded["alert_firing"])).startswith("local:")
    assert audit_actions(store_url) == ["alert.acknowledge"]
    assert f"Alert {seeded['alert_firing']} acknowledged." in texts(at)


def test_alerts_acknowledge_twice_shows_error(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/alerts.py")
    at.selectbox(key="alerts_id").select(seeded["alert_firing"]).run()
    at.button(key="alerts_ack").click().run()
    at.selectbox(key="alerts_id").select(seeded["alert_firing"]).run()
    at.button(key="alerts_ack").click().run()
    assert "cannot go from acknowledged to acknowledged" in texts(at)
    assert audit_actions(store_url) == ["alert.acknowledge"]


def test_alerts_silence(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/alerts.py")
    at.selectbox(key="alerts_id").select(seeded["alert_critical"]).run()
    at.selectbox(key="alerts_silence_hours").select(4)
    at.text_input(key="alerts_silence_comment").input("deploy in progress")
    [button for button in at.button if button.label == "Silence"][0].click().run()
    assert not at.exception
    ends_at = scalar(store_url, select(Silence.ends_at))
    remaining = ends_at.replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)
    assert timedelta(hours=3, minutes=59) < remaining <= timedelta(hours=4)
    assert scalar(store_url, select(Silence.kind)) == "safety"
    assert scalar(store_url, select(Silence.comment)) == "deploy in progress"
    table = at.dataframe[0].value
    silenced = dict(zip(table["id"], table["silenced_until"]))
    assert pd.notna(silenced[seeded["alert_critical"]])
    assert pd.isna(silenced[seeded["alert_firing"]])
    assert audit_actions(store_url) == ["alert.silence"]


def test_alerts_end_silence(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/alerts.py")
    [button for button in at.button if button.label == "Silence"][0].click().run()
    at.button(key="alerts_silence_end").click().run()
    assert not at.exception
    assert scalar(store_url, select(Silence.expired_by)).startswith("local:")
    assert audit_actions(store_url) == ["alert.silence", "silence.expire"]


def test_alerts_resolve(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/alerts.py")
    at.selectbox(key="alerts_id").select(seeded["alert_critical"]).run()
    at.button(key="alerts_resolve").click().run()
    assert scalar(store_url, select(Alert.status).where(Alert.id == seeded["alert_critical"])) == "resolved"
    listed_ids = at.dataframe[0].value["id"].tolist()
    assert seeded["alert_critical"] not in listed_ids


def test_alerts_status_filter(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/alerts.py")
    at.multiselect(key="alerts_status").set_value(["resolved"]).run()
    assert at.dataframe[0].value["id"].tolist() == [seeded["alert_resolved"]]


# ----- flagged interactions -----


def test_flagged_label_with_correction(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/flagged.py")
    at.selectbox(key="flagged_review_id").select(seeded["flagged_toxic"]).run()
    at.radio[0].set_value("incorrect")
    at.text_area[0].input("The code has a bug on line 3.")
    [button for button in at.button if button.label == "Save label"][0].click().run()
    assert not at.exception
    where = FlaggedInteraction.id == seeded["flagged_toxic"]
    assert scalar(store_url, select(FlaggedInteraction.label).where(where)) == "incorrect"
    assert scalar(store_url, select(FlaggedInteraction.correction).where(where)) == "The code has a bug on line 3."
    assert audit_actions(store_url) == ["flagged.label"]


def test_flagged_correction_needs_incorrect(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/flagged.py")
    at.radio[0].set_value("correct")
    at.text_area[0].input("Something else")
    [button for button in at.button if button.label == "Save label"][0].click().run()
    assert "a correction means the completion was incorrect" in texts(at)
    assert scalar(store_url, select(func.count()).where(FlaggedInteraction.label.is_not(None))) == 0


def test_flagged_label_filter(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/flagged.py")
    at.selectbox(key="flagged_detector").select("pii").run()
    assert at.dataframe[0].value["id"].tolist() == [seeded["flagged_pii"]]
    at.selectbox(key="flagged_detector").select("any")
    at.selectbox(key="flagged_label").select("correct").run()
    assert "No flagged interaction matches" in texts(at)


TEXT_SEARCH_CASES = [("e.d", ["event-pii"]), ("e_d", []), ("JANE", ["event-pii"]), ("50%", []), ("awful", ["event-toxic"])]


@pytest.mark.parametrize(("search", "event_ids"), TEXT_SEARCH_CASES)
def test_flagged_text_search_literal(store_url: str, seeded: dict[str, int], search: str, event_ids: list[str]) -> None:
    from controlplane.store.queries import FlaggedFilter, list_flagged

    engine = create_engine(store_url)
    rows = list_flagged(engine, FlaggedFilter(text=search)).rows
    engine.dispose()
    expected = [seeded["flagged_pii" if event == "event-pii" else "flagged_toxic"] for event in event_ids]
    assert rows["id"].tolist() == expected


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_flagged_export_scrubbed(store_url: str, seeded: dict[str, int], fmt: str) -> None:
    at = render("pages/flagged.py")
    at.multiselect(key="flagged_export_ids").set_value([seeded["flagged_pii"]])
    at.selectbox(key="flagged_export_format").select(fmt)
    at.button(key="flagged_export_prepare").click().run()
    assert not at.exception
    exported = at.session_state["flagged_export_file"]
    assert exported.rows == 1
    assert exported.name.endswith(f".{fmt}")
    assert at.download_button[0].label == f"Download {exported.name}"
    if fmt == "jsonl":
        record = json.loads(exported.data.decode("utf-8"))
        prompt = record["messages"][0]["content"]
        assert record["metadata"]["event_id"] == "event-pii"
    elif fmt == "csv":
        prompt = pd.read_csv(io.BytesIO(exported.data), encoding="utf-8-sig")["prompt"][0]
    else:
        prompt = pd.read_parquet(io.BytesIO(exported.data))["prompt"][0]
    assert prompt == "Please email <EMAIL_ADDRESS> the report."
    assert audit_actions(store_url) == ["flagged.export"]


def test_flagged_export_all_matching(store_url: str, seeded: dict[str, int]) -> None:
    at = render("pages/flagged.py")
    at.radio(key="flagged_export_scope").set_value("all 2 rows matching the filters")
    at.checkbox(key="flagged_export_scrub").uncheck()
    at.button(key="flagged_export_prepare").click().run()
    exported = at.session_state["flagged_export_file"]
    lines = [json.loads(line) for line in exported.data.decode("utf-8").splitlines()]
    assert [line["metadata"]["event_id"] for line in lines] == ["event-pii", "event-toxic"]
    assert EMAIL in lines[0]["messages"][0]["content"]
    assert "NOT scrubbed" in texts(at)


# ----- login and roles -----


@pytest.fixture
def passwords(store_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Operator and viewer passwords, with their hashes in the settings."""
    values = {"operator": "correct horse", "viewer": "battery staple"}
    monkeypatch.setenv("CONTROLPLANE_DASHBOARD_PASSWORD_HASH", hash_password(values["operator"]))
    monkeypatch.setenv("CONTROLPLANE_DASHBOARD_VIEWER_PASSWORD_HASH", hash_password(values["viewer"]))
    get_settings.cache_clear()
    return values


def log_in(name: str, password: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    at.button[0].click().run()
    assert not at.exception, [item.value for item in at.exception]
    return at


def test_login_form_blocks_pages(passwords: dict[str, str], seeded: dict[str, int]) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert [title.value for title in at.title] == ["Control plane"]
    assert not at.metric
    assert [field.label for field in at.text_input] == ["Your name", "Password"]


def test_login_wrong_password(store_url: str, passwords: dict[str, str], seeded: dict[str, int]) -> None:
    at = log_in("mallory", "guess")
    assert "Login failed" in texts(at)
    assert not at.metric
    assert audit_actions(store_url) == []


@pytest.mark.parametrize(("role", "can_act"), [("operator", True), ("viewer", False)])
def test_login_roles(passwords: dict[str, str], seeded: dict[str, int], role: str, can_act: bool) -> None:
    at = log_in("ada", passwords[role])
    assert [title.value for title in at.title] == ["Overview"]
    assert f"Signed in as **ada** ({role})" in [caption.value for caption in at.sidebar.caption]
    render("pages/alerts.py", at)
    assert at.button(key="alerts_ack").disabled is not can_act
    assert at.button(key="alerts_resolve").disabled is not can_act
    entries = audit_actions(get_settings().database_url)
    assert entries == ["login"]


def test_viewer_action_rejected(passwords: dict[str, str], seeded: dict[str, int]) -> None:
    from controlplane.auth import PermissionDenied, User
    from controlplane.store import actions

    engine = create_engine(get_settings().database_url)
    with pytest.raises(PermissionDenied, match="viewer role"):
        actions.acknowledge_alert(engine, seeded["alert_firing"], User("vic", "viewer"))
    with pytest.raises(PermissionDenied, match="unscrubbed"):
        actions.export_flagged_ids(engine, [seeded["flagged_pii"]], "jsonl", User("vic", "viewer"), scrub=False)
    engine.dispose()
    assert scalar(get_settings().database_url, select(Alert.status).where(Alert.id == seeded["alert_firing"])) == "firing"


def test_operator_actions_record_name(passwords: dict[str, str], seeded: dict[str, int]) -> None:
    at = log_in("ada", passwords["operator"])
    render("pages/alerts.py", at)
    at.selectbox(key="alerts_id").select(seeded["alert_firing"]).run()
    at.button(key="alerts_ack").click().run()
    url = get_settings().database_url
    assert scalar(url, select(Alert.acknowledged_by).where(Alert.id == seeded["alert_firing"])) == "ada"
    assert scalar(url, select(AuditEntry.actor).where(AuditEntry.action == "alert.acknowledge")) == "ada"
    assert scalar(url, select(AuditEntry.role).where(AuditEntry.action == "alert.acknowledge")) == "operator"


def test_beyond_localhost_needs_hash(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLPLANE_DASHBOARD_ADDRESS", "0.0.0.0")
    get_settings.cache_clear()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert "no password hash is set" in texts(at)
    assert not at.title


# ----- jobs and models -----


@pytest.fixture
def loop_ids(store_url: str, tmp_path: Path) -> dict[str, int]:
    """Ids of the rows seed_loop wrote."""
    return seed_loop(store_url, tmp_path / "adapters")


def test_jobs_page_shows_error_log(store_url: str, loop_ids: dict[str, int]) -> None:
    at = render("pages/jobs_models.py")
    assert at.dataframe[0].value["status"].tolist() == ["failed"]
    assert "RuntimeError: CUDA is not available" in at.code[0].value
    assert at.button(key="jobs_retry").label == f"Retry job #{loop_ids['job']}"


def test_jobs_page_retry(store_url: str, loop_ids: dict[str, int]) -> None:
    at = render("pages/jobs_models.py")
    at.button(key="jobs_retry").click().run()
    assert scalar(store_url, select(Job.status).where(Job.id == loop_ids["job"])) == "pending"
    assert audit_actions(store_url) == ["job.retry"]


def test_reports_side_by_side(store_url: str, loop_ids: dict[str, int]) -> None:
    at = render("pages/jobs_models.py")
    comparison = at.dataframe[1].value
    v2, v1 = f"report {loop_ids['report_v2']}: assistant-lora v2", f"report {loop_ids['report_v1']}: assistant-lora v1"
    assert list(comparison.columns) == [v2, v1]
    assert comparison.loc["passed", v2] == "True"
    assert comparison.loc["candidate.eval.perplexity", v2] == "9.5"
    assert comparison.loc["candidate.eval.perplexity", v1] == "12"
    assert comparison.loc["baseline.eval.perplexity", v2] == "12"
    assert comparison.loc["baseline.eval.perplexity", v1] == "—"


def test_promote_needs_confirmation(store_url: str, loop_ids: dict[str, int]) -> None:
    at = render("pages/jobs_models.py")
    at.text_input(key="models_promote_reason").input("beats v1")
    at.button(key="models_promote").click().run()
    assert scalar(store_url, select(ModelVersion.status).where(ModelVersion.id == loop_ids["v2"])) == "candidate"
    assert "replaces the adapter now in use" in texts(at)
    at.button(key="models_promote_confirm").click().run()
    assert not at.exception
    assert scalar(store_url, select(ModelVersion.status).where(ModelVersion.id == loop_ids["v2"])) == "promoted"
    assert scalar(store_url, select(ModelVersion.status).where(ModelVersion.id == loop_ids["v1"])) == "retired"
    assert scalar(store_url, select(Promotion.reason).where(Promotion.model_version_id == loop_ids["v2"])) == "beats v1"
    assert audit_actions(store_url) == ["model.promote"]


def test_promote_cancel(store_url: str, loop_ids: dict[str, int]) -> None:
    at = render("pages/jobs_models.py")
    at.button(key="models_promote").click().run()
    at.button(key="models_promote_cancel").click().run()
    assert "replaces the adapter now in use" not in texts(at)
    assert scalar(store_url, select(ModelVersion.status).where(ModelVersion.id == loop_ids["v2"])) == "candidate"


def test_rollback_after_promotion(store_url: str, loop_ids: dict[str, int]) -> None:
    at = render("pages/jobs_models.py")
    at.button(key="models_promote").click().run()
    at.button(key="models_promote_confirm").click().run()
    at.button(key="models_rollback").click().run()
    assert "Roll back assistant-lora?" in texts(at)
    at.button(key="models_rollback_confirm").click().run()
    assert not at.exception
    assert scalar(store_url, select(ModelVersion.status).where(ModelVersion.id == loop_ids["v1"])) == "promoted"
    assert scalar(store_url, select(ModelVersion.status).where(ModelVersion.id == loop_ids["v2"])) == "rejected"
    assert audit_actions(store_url) == ["model.promote", "model.rollback"]


# ----- schema changes while the dashboard runs -----

EXTRA_REVISION = '''"""throwaway revision of a test: add columns while the dashboard runs"""
from alembic import op
import sqlalchemy as sa

revision = "test_extra"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # recreate="always" makes SQLite rebuild the table under a new name, the hardest case for open connections.
    with op.batch_alter_table("alerts", recreate="always") as batch_op:
        batch_op.add_column(sa.Column("runbook_url", sa.Text(), nullable=True))
    op.add_column("window_stats", sa.Column("region", sa.String(40), nullable=True))
    op.add_column("flagged_interactions", sa.Column("reviewer_note", sa.Text(), nullable=True))


def downgrade() -> None:
    pass
'''


def upgrade_with_extra_revision(url: str, tmp_path: Path) -> None:
    """Apply a throwaway revision after the project's head, from a copy of the migrations folder."""
    import shutil

    import migrations
    from alembic import command
    from alembic.script import ScriptDirectory

    from controlplane.store.migrate import alembic_config

    folder = tmp_path / "migrations"
    shutil.copytree(Path(migrations.__file__).parent, folder, ignore=shutil.ignore_patterns("__pycache__"))
    config = alembic_config(url)
    head = ScriptDirectory.from_config(config).get_current_head()
    (folder / "versions" / "9999_test_extra.py").write_text(EXTRA_REVISION.replace("{head}", head))
    config.set_main_option("script_location", str(folder))
    command.upgrade(config, "test_extra")


def test_cached_engine_survives_added_column(store_url: str, seeded: dict[str, int], tmp_path: Path) -> None:
    from sqlalchemy import event

    from dashboards.pages import common

    checked_out: list[int] = []
    at = render("pages/alerts.py")
    engine = common.engine()
    event.listen(engine, "checkout", lambda dbapi_connection, record, proxy: checked_out.append(id(dbapi_connection)))
    render("pages/flagged.py", at)
    before = set(checked_out)
    assert before, "the page did not use the cached engine"

    upgrade_with_extra_revision(store_url, tmp_path)
    checked_out.clear()
    for page in ("pages/alerts.py", "pages/flagged.py", "pages/overview.py", "pages/cost.py", "pages/drift.py"):
        render(page, at)
    assert common.engine() is engine
    assert before & set(checked_out), "no connection opened before the migration was reused after it"

    render("pages/alerts.py", at)
    assert seeded["alert_firing"] in at.dataframe[0].value["id"].tolist()
    at.selectbox(key="alerts_id").select(seeded["alert_firing"]).run()
    at.button(key="alerts_ack").click().run()
    assert not at.exception
    assert scalar(store_url, select(Alert.status).where(Alert.id == seeded["alert_firing"])) == "acknowledged"
    assert scalar(store_url, text("select count(runbook_url) from alerts")) == 0


# ----- pure helpers -----

HIGHLIGHT_CASES = [
    ("a@b.co hi", [{"field": "prompt", "start": 0, "end": 6, "detector": "pii", "label": "EMAIL_ADDRESS", "score": 1.0}],
     "prompt", '<mark title="pii: EMAIL_ADDRESS (1.00)" style="background:#fff2a8">a@b.co</mark> hi'),
    ("<b>x</b>", [{"field": "prompt", "start": 3, "end": 4, "detector": "pii", "label": "X", "score": 0.5}],
     "prompt", '&lt;b&gt;<mark title="pii: X (0.50)" style="background:#fff2a8">x</mark>&lt;/b&gt;'),
    ("same text", [{"field": "completion", "start": 0, "end": 4, "detector": "pii", "label": "X", "score": 0.5}],
     "prompt", "same text"),
    ("abcdef", [{"field": "prompt", "start": 0, "end": 4, "detector": "pii", "label": "A", "score": 1.0},
                {"field": "prompt", "start": 2, "end": 6, "detector": "toxicity", "label": "offensive", "score": 0.7}],
     "prompt", '<mark title="pii: A (1.00)" style="background:#fff2a8">abcd</mark>'
               '<mark title="toxicity: offensive (0.70)" style="background:#ffd6d6">ef</mark>'),
    ("short", [{"field": "prompt", "start": 2, "end": 99, "detector": "pii", "label": "X", "score": 1.0}],
     "prompt", 'sh<mark title="pii: X (1.00)" style="background:#fff2a8">ort</mark>'),
]


@pytest.mark.parametrize(("text_", "spans", "field", "expected"), HIGHLIGHT_CASES)
def test_highlight_spans(text_: str, spans: list[dict], field: str, expected: str) -> None:
    from dashboards.pages.common import highlight

    html = highlight(text_, spans, field)
    assert html == f'<div style="white-space:pre-wrap;font-family:monospace">{expected}</div>'


USD_CASES = [(None, "unknown"), (float("nan"), "unknown"), (0.0, "$0.0000"), (0.01234, "$0.0123"), (1234.5, "$1,234.50")]


@pytest.mark.parametrize(("value", "expected"), USD_CASES)
def test_usd_format(value, expected: str) -> None:
    from dashboards.pages.common import usd

    assert usd(value) == expected


BUCKET_CASES = [(timedelta(hours=1), "minute"), (timedelta(hours=6), "minute"), (timedelta(hours=7), "hour"),
                (timedelta(days=7), "hour"), (timedelta(days=30), "day")]


@pytest.mark.parametrize(("span", "unit"), BUCKET_CASES)
def test_bucket_unit(span: timedelta, unit: str) -> None:
    from controlplane.store.queries import bucket_unit

    now = datetime.now(timezone.utc)
    assert bucket_unit(now - span, now) == unit


def test_traffic_series_hour_buckets(store_url: str, seeded: dict[str, int]) -> None:
    from controlplane.store.queries import traffic_series

    engine = create_engine(store_url)
    now = datetime.now(timezone.utc)
    series = traffic_series(engine, now - timedelta(hours=2), now, unit="hour")
    engine.dispose()
    by_model = series.groupby("model")["events"].sum().to_dict()
    assert by_model == {"gpt-4o-mini": 3600, "local-llama": 1200}
    assert (series["bucket"].dt.minute == 0).all()
    assert series.loc[series["model"] == "local-llama", "cost_usd"].isna().all()


# ----- password hashes -----


def test_password_hash_roundtrip() -> None:
    from controlplane.auth import verify_password

    encoded = hash_password("s3cret pass")
    assert encoded.startswith("scrypt$16384$8$1$")
    assert verify_password("s3cret pass", encoded)
    assert not verify_password("s3cret pasS", encoded)
    assert hash_password("s3cret pass") != encoded


INVALID_HASHES = ["", "plain", "scrypt$1$2$3$salt", "bcrypt$16384$8$1$AAAA$AAAA", "scrypt$x$8$1$AAAA$AAAA", "scrypt$16384$8$1$!!$AAAA"]


@pytest.mark.parametrize("encoded", INVALID_HASHES)
def test_invalid_hash_rejected(encoded: str) -> None:
    from controlplane.auth import verify_password
    from controlplane.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="controlplane hash-password"):
        verify_password("x", encoded)


LOOPBACK_CASES = [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
                  ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("dashboard.example.com", False)]


@pytest.mark.parametrize(("address", "loopback"), LOOPBACK_CASES)
def test_is_loopback(address: str, loopback: bool) -> None:
    from controlplane.auth import is_loopback

    assert is_loopback(address) is loopback
