"""Alerts on a migrated SQLite file: dedup, lifecycle, silences, cooldown, outbox and webhook bodies."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import func, select

from controlplane.alerting import (
    acknowledge,
    create_silence,
    expire_silence,
    fingerprint,
    group_key,
    open_or_update_alert,
    resolve,
    send_due_notifications,
    silence_matches,
)
from controlplane.alerting.outbox import backoff_seconds, receiver_host
from controlplane.alerting.payloads import ZERO_TIME, AlertEvent, alertmanager_body, plain_body
from controlplane.errors import ControlPlaneError
from controlplane.policies import Policy
from controlplane.settings import Settings
from controlplane.store.engine import make_engine, transaction
from controlplane.store.migrate import upgrade
from controlplane.store.models import Alert, Finding, Notification, NotificationAttempt, Silence, utcnow
from controlplane.windows import as_utc

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
POLICY = Policy.model_validate(
    {
        "version": 1,
        "alert_rules": [
            {"name": "safety-rate", "match": {"kind": "safety"}, "min_severity": "warning"},
            {"name": "drift", "match": {"kind": "drift"}, "min_sample_size": 30},
            {"name": "quiet-cost", "match": {"kind": "cost"}, "notify": False},
        ],
    }
)


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'alerts.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(engine) -> Settings:
    return Settings(
        database_url=str(engine.url), webhook_url="http://127.0.0.1:9/hook", notify_cooldown_seconds=600,
        notify_backoff_seconds=1, notify_max_attempts=3, webhook_receiver="ops",
    )


_window = iter(range(10_000))


def add_finding(session, kind="safety", subject="flagged_rate", app="assistant", model="m1", severity="warning", sample_size=100) -> Finding:
    start = T0 + timedelta(minutes=next(_window))
    finding = Finding(
        kind=kind, subject=subject, app=app, model=model, window_start=start, window_end=start + timedelta(minutes=1),
        severity=severity, summary=f"{kind} {subject} on {app}", sample_size=sample_size, test=None, score=None,
        threshold=None, details={},
    )
    session.add(finding)
    session.flush()
    return finding


def alert_for(engine, settings, now=T0, **finding_fields) -> Alert | None:
    with transaction(engine) as session:
        return open_or_update_alert(session, add_finding(session, **finding_fields), policy=POLICY, settings=settings, now=now)


def notification_events(engine) -> list[tuple[int, str]]:
    with transaction(engine) as session:
        return [(row.alert_id, row.event) for row in session.scalars(select(Notification).order_by(Notification.id))]


def count(engine, model) -> int:
    with transaction(engine) as session:
        return session.scalar(select(func.count()).select_from(model))


# ----- fingerprint and group key -----


@pytest.mark.parametrize(
    "other",
    [("drift", "flagged_rate", "assistant", "m1"), ("safety", "pii", "assistant", "m1"),
     ("safety", "flagged_rate", "search", "m1"), ("safety", "flagged_rate", "assistant", "m2")],
)
def test_fingerprint_differs_per_label(other):
    base = ("safety", "flagged_rate", "assistant", "m1")
    assert fingerprint(*base) == fingerprint(*base)
    assert fingerprint(*base) != fingerprint(*other)
    assert len(fingerprint(*base)) == 32


@pytest.mark.parametrize(
    ("app", "model", "kind", "expected"),
    [
        ("assistant", "m1", "safety", '{}:{app="assistant", kind="safety", model="m1"}'),
        ('a"b', "m\\1", "drift", '{}:{app="a\\"b", kind="drift", model="m\\\\1"}'),
    ],
)
def test_group_key_format(app, model, kind, expected):
    assert group_key(app, model, kind) == expected


# ----- opening, dedup and notifications -----


def test_new_finding_opens_alert(engine, settings):
    alert = alert_for(engine, settings)
    assert alert.status == "firing"
    assert (alert.kind, alert.subject, alert.rule) == ("safety", "flagged_rate", "safety-rate")
    assert alert.group_key == '{}:{app="assistant", kind="safety", model="m1"}'
    assert alert.fingerprint == fingerprint("safety", "flagged_rate", "assistant", "m1")
    assert alert.occurrences == 1
    assert notification_events(engine) == [(alert.id, "firing")]


def test_same_fingerprint_counts_on_open_alert(engine, settings):
    first = alert_for(engine, settings)
    second = alert_for(engine, settings, now=T0 + timedelta(minutes=1))
    assert second.id == first.id
    assert second.occurrences == 2
    assert second.finding_id != first.finding_id
    assert count(engine, Alert) == 1


def test_other_subject_opens_second_alert(engine, settings):
    first = alert_for(engine, settings)
    second = alert_for(engine, settings, subject="pii_rate")
    assert second.id != first.id
    assert second.group_key == first.group_key


def test_finding_after_resolution_opens_new_alert(engine, settings):
    first = alert_for(engine, settings)
    with transaction(engine) as session:
        resolve(session, first.id, "alice", settings=settings)
    second = alert_for(engine, settings, now=T0 + timedelta(hours=2))
    assert second.id != first.id
    assert second.status == "firing"


def test_finding_without_rule_opens_nothing(engine, settings):
    assert alert_for(engine, settings, kind="drift", subject="features", sample_size=10) is None
    assert count(engine, Alert) == 0


def test_rule_without_notify_queues_nothing(engine, settings):
    alert = alert_for(engine, settings, kind="cost", subject="unknown_cost", severity="info")
    assert alert is not None
    assert notification_events(engine) == []


def test_no_webhook_queues_nothing(engine, settings):
    alert_for(engine, settings.model_copy(update={"webhook_url": None}))
    assert notification_events(engine) == []


@pytest.mark.parametrize(
    ("seconds_later", "expected_events"),
    [(60, ["firing"]), (599, ["firing"]), (601, ["firing", "repeat"])],
)
def test_cooldown_holds_back_repeats(engine, settings, seconds_later, expected_events):
    alert_for(engine, settings)
    alert_for(engine, settings, now=T0 + timedelta(seconds=seconds_later))
    assert [event for _, event in notification_events(engine)] == expected_events


def test_cooldown_spans_alerts_of_one_fingerprint(engine, settings):
    first = alert_for(engine, settings)
    with transaction(engine) as session:
        resolve(session, first.id, "alice", settings=settings, now=T0 + timedelta(seconds=10))
    alert_for(engine, settings, now=T0 + timedelta(seconds=20))
    assert [event for _, event in notification_events(engine)] == ["firing", "resolved"]


def test_escalation_bypasses_cooldown(engine, settings):
    alert_for(engine, settings)
    alert = alert_for(engine, settings, severity="critical", now=T0 + timedelta(seconds=30))
    assert alert.severity == "critical"
    assert [event for _, event in notification_events(engine)] == ["firing", "escalated"]


def test_acknowledged_alert_sends_no_repeat(engine, settings):
    alert = alert_for(engine, settings)
    with transaction(engine) as session:
        acknowledge(session, alert.id, "bob")
    alert_for(engine, settings, now=T0 + timedelta(hours=2))
    alert_for(engine, settings, severity="critical", now=T0 + timedelta(hours=3))
    assert [event for _, event in notification_events(engine)] == ["firing", "escalated"]


def test_active_silence_holds_back_notification(engine, settings):
    with transaction(engine) as session:
        create_silence(session, created_by="alice", duration=timedelta(hours=1), app="assistant", starts_at=T0)
    alert = alert_for(engine, settings, now=T0 + timedelta(minutes=5))
    assert alert.status == "firing"
    assert notification_events(engine) == []


def test_silence_expires_on_its_own(engine, settings):
    with transaction(engine) as session:
        create_silence(session, created_by="alice", duration=timedelta(hours=1), app="assistant", starts_at=T0)
    alert = alert_for(engine, settings, now=T0 + timedelta(hours=1, seconds=1))
    assert notification_events(engine) == [(alert.id, "firing")]


# ----- lifecycle -----


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (["ack"], "acknowledged"),
        (["resolve"], "resolved"),
        (["ack", "resolve"], "resolved"),
        (["ack", "ack"], "cannot go from acknowledged to acknowledged"),
        (["resolve", "ack"], "cannot go from resolved to acknowledged"),
        (["resolve", "resolve"], "cannot go from resolved to resolved"),
    ],
)
def test_lifecycle_transitions(engine, settings, steps, expected):
    alert = alert_for(engine, settings)
    actions = {"ack": lambda s: acknowledge(s, alert.id, "bob"), "resolve": lambda s: resolve(s, alert.id, "bob", settings=settings)}
    try:
        for step in steps:
            with transaction(engine) as session:
                status = actions[step](session).status
    except ControlPlaneError as error:
        assert expected in str(error)
        return
    assert status == expected


def test_acknowledge_and_resolve_record_who_and_when(engine, settings):
    alert = alert_for(engine, settings)
    with transaction(engine) as session:
        acknowledge(session, alert.id, "bob", now=T0 + timedelta(minutes=1))
        done = resolve(session, alert.id, "carol", settings=settings, now=T0 + timedelta(minutes=2))
    assert (done.acknowledged_by, done.resolved_by) == ("bob", "carol")
    assert as_utc(done.acknowledged_at) == T0 + timedelta(minutes=1)
    assert as_utc(done.resolved_at) == T0 + timedelta(minutes=2)
    assert [event for _, event in notification_events(engine)] == ["firing", "resolved"]


def test_resolve_without_prior_notification_queues_nothing(engine, settings):
    alert = alert_for(engine, settings, kind="cost", subject="unknown_cost", severity="info")
    with transaction(engine) as session:
        resolve(session, alert.id, "carol", settings=settings)
    assert notification_events(engine) == []


def test_missing_alert_is_reported(engine):
    with pytest.raises(ControlPlaneError, match="alert 404 not found"):
        with transaction(engine) as session:
            acknowledge(session, 404, "bob")


# ----- silences -----


@pytest.mark.parametrize(
    ("matchers", "labels", "expected"),
    [
        ({"app": "assistant"}, {}, True),
        ({"app": "search"}, {}, False),
        ({"app": "assist*"}, {}, True),
        ({"app": "Assistant"}, {}, False),
        ({"kind": "safety", "model": "m1"}, {}, True),
        ({"kind": "safety", "model": "m2"}, {}, False),
        ({"subject": "flagged_?ate"}, {}, True),
        ({"model": "gpt-4o*"}, {"model": "gpt-4o-mini"}, True),
    ],
)
def test_silence_matching(matchers, labels, expected):
    alert = Alert(kind="safety", subject="flagged_rate", app="assistant", model="m1")
    for name, value in labels.items():
        setattr(alert, name, value)
    silence = Silence(**matchers)
    assert silence_matches(silence, alert) is expected


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"duration": timedelta(hours=1)}, "at least one matcher"),
        ({"duration": timedelta(0), "app": "assistant"}, "longer than zero"),
        ({"duration": timedelta(hours=1), "app": "assistant", "created_by": ""}, "creator"),
    ],
)
def test_invalid_silence_is_rejected(engine, fields, message):
    fields = {"created_by": "alice", **fields}
    with pytest.raises(ControlPlaneError, match=message):
        with transaction(engine) as session:
            create_silence(session, **fields)


def test_expire_silence_ends_it_now(engine):
    with transaction(engine) as session:
        silence_id = create_silence(session, created_by="alice", duration=timedelta(hours=1), kind="drift").id
    with transaction(engine) as session:
        silence = expire_silence(session, silence_id, "bob")
        assert silence.expired_by == "bob"
        assert silence.ends_at <= utcnow()
    with pytest.raises(ControlPlaneError, match="already ended"):
        with transaction(engine) as session:
            expire_silence(session, silence_id, "bob")


# ----- webhook bodies -----


def sample_alert(**fields) -> Alert:
    values = dict(
        id=5, fingerprint="f" * 32, status="firing", severity="critical", title="12 of 40 events flagged",
        app="assistant", model="m1", kind="safety", subject="flagged_rate", rule="safety-rate", finding_id=9,
        occurrences=3, first_seen=T0, last_seen=T0 + timedelta(minutes=5), acknowledged_by=None,
        acknowledged_at=None, resolved_by=None, resolved_at=None,
        group_key='{}:{app="assistant", kind="safety", model="m1"}',
    )
    values.update(fields)
    return Alert(**values)


def test_alertmanager_body_fields():
    alert = sample_alert()
    body = alertmanager_body([AlertEvent(alert, "firing")], group_key=alert.group_key, receiver="ops", external_url="http://dash:8501")
    assert set(body) == {
        "version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels", "commonLabels",
        "commonAnnotations", "externalURL", "alerts",
    }
    assert body["version"] == "4"
    assert body["groupKey"] == '{}:{app="assistant", kind="safety", model="m1"}'
    assert body["truncatedAlerts"] == 0
    assert body["status"] == "firing"
    assert body["receiver"] == "ops"
    assert body["groupLabels"] == {"app": "assistant", "kind": "safety", "model": "m1"}
    assert body["externalURL"] == "http://dash:8501"
    [item] = body["alerts"]
    assert set(item) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
    assert item["status"] == "firing"
    assert item["labels"] == {
        "alertname": "safety-rate", "app": "assistant", "model": "m1", "kind": "safety",
        "subject": "flagged_rate", "severity": "critical",
    }
    assert item["annotations"]["summary"] == "12 of 40 events flagged"
    assert item["annotations"]["alert_id"] == "5"
    assert all(isinstance(value, str) for value in item["annotations"].values())
    assert item["startsAt"] == "2026-12-01T10:00:00Z"
    assert item["endsAt"] == ZERO_TIME
    assert item["generatorURL"] == "http://dash:8501/alerts?alert_id=5"
    assert item["fingerprint"] == "f" * 32
    assert body["commonLabels"] == item["labels"]
    json.dumps(body)


def test_alertmanager_body_of_resolved_alert():
    alert = sample_alert(status="resolved", resolved_by="carol", resolved_at=T0 + timedelta(hours=1))
    body = alertmanager_body([AlertEvent(alert, "resolved")], group_key=alert.group_key, receiver="ops", external_url="")
    assert body["status"] == "resolved"
    assert body["alerts"][0]["endsAt"] == "2026-12-01T11:00:00Z"
    assert body["alerts"][0]["generatorURL"] == ""


def test_alertmanager_common_labels_are_shared_ones():
    first = sample_alert()
    second = sample_alert(id=6, subject="pii_rate", severity="warning", fingerprint="e" * 32)
    body = alertmanager_body(
        [AlertEvent(first, "firing"), AlertEvent(second, "firing")], group_key=first.group_key, receiver="ops", external_url=""
    )
    assert body["commonLabels"] == {"alertname": "safety-rate", "app": "assistant", "model": "m1", "kind": "safety"}
    assert len(body["alerts"]) == 2


def test_group_status_firing_until_all_resolved():
    resolved = sample_alert(status="resolved", resolved_at=T0)
    firing = sample_alert(id=6)
    events = [AlertEvent(resolved, "resolved"), AlertEvent(firing, "repeat")]
    assert plain_body(events, group_key="g", receiver="ops", external_url="")["status"] == "firing"


def test_plain_body_fields():
    alert = sample_alert(status="acknowledged", acknowledged_by="bob", acknowledged_at=T0 + timedelta(minutes=1))
    body = plain_body([AlertEvent(alert, "escalated")], group_key=alert.group_key, receiver="ops", external_url="")
    assert (body["version"], body["source"], body["receiver"], body["status"]) == ("1", "controlplane", "ops", "firing")
    assert body["group_key"] == alert.group_key
    [item] = body["alerts"]
    assert item["event"] == "escalated"
    assert item["status"] == "acknowledged"
    assert item["acknowledged_by"] == "bob"
    assert item["acknowledged_at"] == "2026-12-01T10:01:00Z"
    assert (item["id"], item["finding_id"], item["occurrences"]) == (5, 9, 3)
    assert (item["kind"], item["subject"], item["app"], item["model"]) == ("safety", "flagged_rate", "assistant", "m1")
    assert item["resolved_at"] is None


# ----- delivery -----


@pytest.mark.parametrize(("attempts", "expected"), [(1, 30.0), (2, 60.0), (3, 100.0), (6, 100.0)])
def test_backoff_doubles_up_to_maximum(attempts, expected):
    settings = Settings(notify_backoff_seconds=30, notify_backoff_max_seconds=100)
    assert backoff_seconds(attempts, settings) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://hooks.example.com/services/T000/SECRET", "https://hooks.example.com"),
        ("http://user:token@127.0.0.1:8080/hook?key=abc", "http://127.0.0.1:8080"),
    ],
)
def test_receiver_host_drops_path_and_credentials(url, expected):
    assert receiver_host(url) == expected


class Receiver:
    """An httpx MockTransport handler that answers with the given status codes in order."""

    def __init__(self, *codes: int) -> None:
        self.codes = list(codes)
        self.bodies: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        return httpx.Response(self.codes.pop(0) if len(self.codes) > 1 else self.codes[0], text="nope")


def later(seconds: float = 5) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


def test_failed_delivery_is_retried(engine, settings):
    alert_for(engine, settings, now=utcnow())
    receiver = Receiver(503, 200)
    first = send_due_notifications(engine, settings, transport=httpx.MockTransport(receiver))
    second = send_due_notifications(engine, settings, now=later(), transport=httpx.MockTransport(receiver))
    assert (first.requests, first.retrying, first.sent) == (1, 1, 0)
    assert (second.requests, second.sent) == (1, 1)
    with transaction(engine) as session:
        notification = session.scalars(select(Notification)).one()
        attempts = session.scalars(select(NotificationAttempt).order_by(NotificationAttempt.id)).all()
        assert (notification.status, notification.attempts, notification.last_status_code) == ("sent", 2, 200)
        assert [(a.attempt, a.status_code, a.succeeded) for a in attempts] == [(1, 503, False), (2, 200, True)]
        assert attempts[0].error == "HTTP 503: nope"
        assert attempts[0].receiver_host == "http://127.0.0.1:9"


def test_retry_waits_for_backoff(engine, settings):
    alert_for(engine, settings, now=utcnow())
    receiver = Receiver(503)
    send_due_notifications(engine, settings, transport=httpx.MockTransport(receiver))
    again = send_due_notifications(engine, settings, transport=httpx.MockTransport(receiver))
    assert again.requests == 0


def test_delivery_gives_up_after_max_attempts(engine, settings):
    alert_for(engine, settings, now=utcnow())
    receiver = Receiver(500)
    for attempt in range(settings.notify_max_attempts):
        send_due_notifications(engine, settings, now=later(60 * (attempt + 1)), transport=httpx.MockTransport(receiver))
    with transaction(engine) as session:
        notification = session.scalars(select(Notification)).one()
        assert (notification.status, notification.attempts) == ("failed", 3)
    assert len(receiver.bodies) == 3


def test_silence_after_queueing_suppresses_send(engine, settings):
    alert_for(engine, settings, now=utcnow())
    with transaction(engine) as session:
        create_silence(session, created_by="alice", duration=timedelta(hours=1), kind="safety")
    receiver = Receiver(200)
    summary = send_due_notifications(engine, settings, transport=httpx.MockTransport(receiver))
    assert (summary.suppressed, summary.requests) == (1, 0)
    with transaction(engine) as session:
        assert session.scalars(select(Notification)).one().status == "suppressed"


def test_alerts_of_one_group_share_a_request(engine, settings):
    now = utcnow()
    first = alert_for(engine, settings, now=now)
    second = alert_for(engine, settings, now=now, subject="pii_rate")
    alert_for(engine, settings, now=now, model="m2")
    receiver = Receiver(200)
    summary = send_due_notifications(engine, settings.model_copy(update={"webhook_format": "alertmanager"}), transport=httpx.MockTransport(receiver))
    assert (summary.requests, summary.sent) == (2, 3)
    grouped = next(body for body in receiver.bodies if len(body["alerts"]) == 2)
    assert grouped["groupKey"] == first.group_key
    assert {item["fingerprint"] for item in grouped["alerts"]} == {first.fingerprint, second.fingerprint}
