"""Alert lifecycle: open or count an alert for a finding, acknowledge it, resolve it.

    firing --acknowledge--> acknowledged --resolve--> resolved
       +-------------------resolve------------------------^

A resolved alert is final. The next finding with the same fingerprint opens a new alert.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controlplane.alerting.silences import describe_matchers, matching_silence
from controlplane.errors import ControlPlaneError
from controlplane.policies import AlertRule, Policy, current_policy, severity_rank
from controlplane.settings import Settings, get_settings
from controlplane.store.models import Alert, Finding, Notification, utcnow
from controlplane.windows import as_utc

log = logging.getLogger(__name__)

FIRING = "firing"
ACKNOWLEDGED = "acknowledged"
RESOLVED = "resolved"
ALERT_STATUSES = (FIRING, ACKNOWLEDGED, RESOLVED)
OPEN_STATUSES = (FIRING, ACKNOWLEDGED)
TRANSITIONS = {FIRING: frozenset({ACKNOWLEDGED, RESOLVED}), ACKNOWLEDGED: frozenset({RESOLVED}), RESOLVED: frozenset()}
# Events that queue a notification. "repeat" is a new finding on an open alert, "escalated" one
# that raised its severity, "policy" a notify job started by a job rule.
NOTIFICATION_EVENTS = ("firing", "repeat", "escalated", "resolved", "policy")
_COOLDOWN_EVENTS = ("firing", "repeat")


def fingerprint(kind: str, subject: str, app: str, model: str) -> str:
    """Return the identity of an alert: the same problem on the same (app, model) is one alert."""
    return hashlib.sha256(f"{kind}\x1f{subject}\x1f{app}\x1f{model}".encode()).hexdigest()[:32]


def group_key(app: str, model: str, kind: str) -> str:
    """Return the key of the group an alert is notified in: one group per (app, model, kind).

    The format is Alertmanager's, '{}:{app="a", kind="k", model="m"}', with quotes and
    backslashes in values escaped.
    """
    labels = {"app": app, "kind": kind, "model": model}
    quoted = ", ".join(f'{name}="{_escape(value)}"' for name, value in sorted(labels.items()))
    return "{}:{" + quoted + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def open_or_update_alert(
    session: Session,
    finding: Finding,
    *,
    policy: Policy | None = None,
    settings: Settings | None = None,
    now: datetime | None = None,
) -> Alert | None:
    """Open an alert for `finding`, or count it on the open alert with the same fingerprint.

    Returns None when no alert rule of the policy matches the finding. A notification, when one
    is due, is queued in the caller's transaction and sent later by the scheduler.
    """
    settings = settings or get_settings()
    rule = (policy or current_policy(settings)).alert_rule_for(finding)
    if rule is None:
        log.info(
            "finding %s (%s/%s, %s, %d rows) on %s/%s matches no alert rule; no alert opened",
            finding.id, finding.kind, finding.subject, finding.severity, finding.sample_size, finding.app, finding.model,
        )
        return None
    now = now or utcnow()
    key = fingerprint(finding.kind, finding.subject, finding.app, finding.model)
    # The worker routes one (app, model) to one partition, so two transactions never open the
    # same fingerprint at once. FOR UPDATE orders the updates of an alert that already exists.
    alert = session.scalar(select(Alert).where(Alert.fingerprint == key, Alert.status.in_(OPEN_STATUSES)).with_for_update())
    if alert is None:
        alert = _new_alert(finding, rule, key, now)
        session.add(alert)
        event = "firing"
    else:
        event = _count_finding(alert, finding, rule, now)
    session.flush()
    if rule.notify:
        queue_notification(session, alert, event, settings, now=now)
    return alert


def _new_alert(finding: Finding, rule: AlertRule, key: str, now: datetime) -> Alert:
    alert = Alert(
        fingerprint=key, status=FIRING, severity=rule.severity or finding.severity, title=finding.summary,
        app=finding.app, model=finding.model, kind=finding.kind, subject=finding.subject,
        group_key=group_key(finding.app, finding.model, finding.kind), rule=rule.name, finding_id=finding.id,
        occurrences=1, first_seen=now, last_seen=now, details={"kind": finding.kind, "subject": finding.subject},
    )
    log.info("alert opened: %s/%s on %s/%s, %s, rule %s", finding.kind, finding.subject, finding.app, finding.model, alert.severity, rule.name)
    return alert


def _count_finding(alert: Alert, finding: Finding, rule: AlertRule, now: datetime) -> str:
    alert.occurrences += 1
    alert.last_seen = now
    alert.finding_id = finding.id
    alert.title = finding.summary
    severity = rule.severity or finding.severity
    if severity_rank(severity) > severity_rank(alert.severity):
        log.info("alert %d escalated from %s to %s", alert.id, alert.severity, severity)
        alert.severity = severity
        return "escalated"
    return "repeat"


def get_alert(session: Session, alert_id: int) -> Alert:
    """Return alert `alert_id` locked for update, or raise ControlPlaneError when it does not exist."""
    alert = session.get(Alert, alert_id, with_for_update=True)
    if alert is None:
        raise ControlPlaneError(f"alert {alert_id} not found; 'controlplane alerts list' shows the existing ones")
    return alert


def check_transition(alert: Alert, target: str) -> None:
    """Raise ControlPlaneError unless `alert` may move from its status to `target`."""
    allowed = TRANSITIONS.get(alert.status, frozenset())
    if target not in allowed:
        choices = ", ".join(sorted(allowed)) or f"none, {alert.status} is final"
        raise ControlPlaneError(f"alert {alert.id} cannot go from {alert.status} to {target} (allowed from {alert.status}: {choices})")


def acknowledge(session: Session, alert_id: int, by: str, *, now: datetime | None = None) -> Alert:
    """Mark a firing alert as acknowledged by `by`. It then sends no repeat notifications, only escalations."""
    alert = get_alert(session, alert_id)
    check_transition(alert, ACKNOWLEDGED)
    alert.status, alert.acknowledged_by, alert.acknowledged_at = ACKNOWLEDGED, by, now or utcnow()
    log.info("alert %d acknowledged by %s", alert.id, by)
    return alert


def resolve(session: Session, alert_id: int, by: str, *, settings: Settings | None = None, now: datetime | None = None) -> Alert:
    """Mark an open alert as resolved by `by` and queue a resolved notification if it had notified."""
    alert = get_alert(session, alert_id)
    check_transition(alert, RESOLVED)
    now = now or utcnow()
    alert.status, alert.resolved_by, alert.resolved_at = RESOLVED, by, now
    session.flush()
    if alert.last_notified_at is not None:
        queue_notification(session, alert, "resolved", settings or get_settings(), now=now)
    log.info("alert %d resolved by %s", alert.id, by)
    return alert


def queue_notification(
    session: Session, alert: Alert, event: str, settings: Settings, *, now: datetime | None = None, job_id: int | None = None
) -> Notification | None:
    """Queue a webhook notification of `event` for `alert` in the caller's transaction, unless it is held back.

    Nothing is queued without a webhook URL. Except for "resolved", nothing is queued while a
    silence matches the alert. An acknowledged alert sends no "repeat", and "firing" and "repeat"
    wait out the cooldown of the fingerprint. Returns the queued row, or None.
    """
    if event not in NOTIFICATION_EVENTS:
        raise ControlPlaneError(f"unknown notification event {event!r}: expected one of {', '.join(NOTIFICATION_EVENTS)}")
    if not settings.webhook_url:
        return None
    now = now or utcnow()
    reason = _held_back_reason(session, alert, event, settings, now)
    if reason is not None:
        log.info("alert %d: %s notification not queued: %s", alert.id, event, reason)
        return None
    notification = Notification(
        alert_id=alert.id, job_id=job_id, fingerprint=alert.fingerprint, group_key=alert.group_key, event=event,
        status="pending", attempts=0, next_attempt_at=now, created_at=now,
    )
    session.add(notification)
    alert.last_notified_at = now
    session.flush()
    return notification


def _held_back_reason(session: Session, alert: Alert, event: str, settings: Settings, now: datetime) -> str | None:
    if event == "resolved":
        return None
    silence = matching_silence(session, alert, now)
    if silence is not None:
        return f"silence {silence.id} ({describe_matchers(silence)}) is active until {as_utc(silence.ends_at).isoformat()}"
    if event == "repeat" and alert.status == ACKNOWLEDGED:
        return f"acknowledged by {alert.acknowledged_by}"
    if event in _COOLDOWN_EVENTS and settings.notify_cooldown_seconds > 0:
        since = now - timedelta(seconds=settings.notify_cooldown_seconds)
        recent = session.scalar(
            select(func.count(Notification.id)).where(
                Notification.fingerprint == alert.fingerprint,
                Notification.event.in_(("firing", "repeat", "escalated")),
                Notification.created_at > since,
            )
        )
        if recent:
            return f"fingerprint notified less than {settings.notify_cooldown_seconds:.0f}s ago (notify_cooldown_seconds)"
    return None
