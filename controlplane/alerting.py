"""Alerts from findings, deduplicated by fingerprint."""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.store.models import Alert, Finding, utcnow

OPEN_STATUSES = ("firing", "acknowledged")


def fingerprint(kind: str, subject: str, app: str, model: str) -> str:
    """Return the identity of an alert: the same problem on the same (app, model) is one alert."""
    return hashlib.sha256(f"{kind}\x1f{subject}\x1f{app}\x1f{model}".encode()).hexdigest()[:32]


def open_or_update_alert(session: Session, finding: Finding) -> Alert:
    """Open an alert for `finding`, or count it on the open alert with the same fingerprint."""
    key = fingerprint(finding.kind, finding.subject, finding.app, finding.model)
    alert = session.scalar(
        select(Alert).where(Alert.fingerprint == key, Alert.status.in_(OPEN_STATUSES)).with_for_update()
    )
    now = utcnow()
    if alert is None:
        alert = Alert(
            fingerprint=key, status="firing", severity=finding.severity, title=finding.summary,
            app=finding.app, model=finding.model, finding_id=finding.id, occurrences=1,
            first_seen=now, last_seen=now, details={"kind": finding.kind, "subject": finding.subject},
        )
        session.add(alert)
    else:
        alert.occurrences += 1
        alert.last_seen = now
        alert.finding_id = finding.id
        if finding.severity == "critical":
            alert.severity = "critical"
    session.flush()
    return alert
