"""Messages that the worker publishes about what it stored: findings and alerts."""

from __future__ import annotations

from typing import Any

from controlplane.store.models import Alert, Finding


def finding_message(finding: Finding) -> dict[str, Any]:
    """Return the controlplane.findings topic message of a stored finding."""
    return {
        "id": finding.id, "kind": finding.kind, "subject": finding.subject, "app": finding.app,
        "model": finding.model, "window_start": finding.window_start.isoformat(), "severity": finding.severity,
        "summary": finding.summary, "score": finding.score, "threshold": finding.threshold,
    }


def alert_message(alert: Alert) -> dict[str, Any]:
    """Return the controlplane.alerts topic message of an opened or updated alert."""
    return {
        "id": alert.id, "fingerprint": alert.fingerprint, "status": alert.status, "severity": alert.severity,
        "title": alert.title, "app": alert.app, "model": alert.model, "occurrences": alert.occurrences,
        "finding_id": alert.finding_id,
    }
