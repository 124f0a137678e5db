"""Webhook bodies for a group of alerts: the plain JSON document and the Alertmanager shape.

The Alertmanager shape follows the webhook receiver payload of Prometheus Alertmanager,
version "4": receiver, status, alerts[] (status, labels, annotations, startsAt, endsAt,
generatorURL, fingerprint), groupLabels, commonLabels, commonAnnotations, externalURL,
version, groupKey and truncatedAlerts. Tools that accept Alertmanager webhooks can read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

from controlplane.store.models import Alert
from controlplane.windows import as_utc

# Alertmanager writes Go's zero time as endsAt of an alert that is still firing.
ZERO_TIME = "0001-01-01T00:00:00Z"
PLAIN_VERSION = "1"
ALERTMANAGER_VERSION = "4"


@dataclass(frozen=True)
class AlertEvent:
    """An alert as it is at send time, and the event (firing, repeat, escalated, resolved, policy) that queued it."""

    alert: Alert
    event: str


def rfc3339(moment: datetime | None) -> str | None:
    """Return `moment` in UTC as RFC 3339 with a Z suffix, or None."""
    if moment is None:
        return None
    return as_utc(moment).isoformat().replace("+00:00", "Z")


def alert_labels(alert: Alert) -> dict[str, str]:
    """Return the labels of an alert. alertname is the alert rule, or the kind for alerts opened without one."""
    return {
        "alertname": alert.rule or alert.kind,
        "app": alert.app,
        "model": alert.model,
        "kind": alert.kind,
        "subject": alert.subject,
        "severity": alert.severity,
    }


def alert_annotations(alert: Alert) -> dict[str, str]:
    """Return the annotations of an alert (all values are strings, as Alertmanager sends them)."""
    annotations = {
        "summary": alert.title,
        "description": f"{alert.occurrences} finding(s) since {rfc3339(alert.first_seen)}, last at {rfc3339(alert.last_seen)}",
        "alert_id": str(alert.id),
    }
    if alert.acknowledged_by:
        annotations["acknowledged_by"] = alert.acknowledged_by
    return annotations


def group_status(events: Sequence[AlertEvent]) -> str:
    """Return "resolved" when every alert of the group is resolved, else "firing"."""
    return "resolved" if all(item.alert.status == "resolved" for item in events) else "firing"


def alert_url(external_url: str, alert: Alert) -> str:
    """Return the dashboard address of an alert, or "" when no external URL is set."""
    return f"{external_url.rstrip('/')}/alerts?alert_id={alert.id}" if external_url else ""


def alertmanager_body(events: Sequence[AlertEvent], *, group_key: str, receiver: str, external_url: str) -> dict[str, Any]:
    """Build the Alertmanager webhook body (version 4) for the alerts of one group."""
    alerts = [_alertmanager_alert(item.alert, external_url) for item in events]
    return {
        "version": ALERTMANAGER_VERSION,
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": group_status(events),
        "receiver": receiver,
        "groupLabels": _group_labels(events),
        "commonLabels": _common([alert["labels"] for alert in alerts]),
        "commonAnnotations": _common([alert["annotations"] for alert in alerts]),
        "externalURL": external_url,
        "alerts": alerts,
    }


def _alertmanager_alert(alert: Alert, external_url: str) -> dict[str, Any]:
    resolved = alert.status == "resolved"
    return {
        "status": "resolved" if resolved else "firing",
        "labels": alert_labels(alert),
        "annotations": alert_annotations(alert),
        "startsAt": rfc3339(alert.first_seen),
        "endsAt": rfc3339(alert.resolved_at) if resolved and alert.resolved_at else ZERO_TIME,
        "generatorURL": alert_url(external_url, alert),
        "fingerprint": alert.fingerprint,
    }


def _group_labels(events: Sequence[AlertEvent]) -> dict[str, str]:
    first = events[0].alert
    return {"app": first.app, "kind": first.kind, "model": first.model}


def _common(mappings: list[dict[str, str]]) -> dict[str, str]:
    if not mappings:
        return {}
    first = mappings[0]
    return {key: value for key, value in first.items() if all(other.get(key) == value for other in mappings[1:])}


def plain_body(events: Sequence[AlertEvent], *, group_key: str, receiver: str, external_url: str) -> dict[str, Any]:
    """Build the plain JSON body for the alerts of one group, with every field of each alert."""
    return {
        "version": PLAIN_VERSION,
        "source": "controlplane",
        "receiver": receiver,
        "group_key": group_key,
        "status": group_status(events),
        "alerts": [_plain_alert(item, external_url) for item in events],
    }


def _plain_alert(item: AlertEvent, external_url: str) -> dict[str, Any]:
    alert = item.alert
    return {
        "id": alert.id,
        "event": item.event,
        "status": alert.status,
        "severity": alert.severity,
        "title": alert.title,
        "kind": alert.kind,
        "subject": alert.subject,
        "app": alert.app,
        "model": alert.model,
        "rule": alert.rule,
        "fingerprint": alert.fingerprint,
        "occurrences": alert.occurrences,
        "finding_id": alert.finding_id,
        "first_seen": rfc3339(alert.first_seen),
        "last_seen": rfc3339(alert.last_seen),
        "acknowledged_by": alert.acknowledged_by,
        "acknowledged_at": rfc3339(alert.acknowledged_at),
        "resolved_by": alert.resolved_by,
        "resolved_at": rfc3339(alert.resolved_at),
        "url": alert_url(external_url, alert),
    }


BODY_BUILDERS = {"json": plain_body, "alertmanager": alertmanager_body}
