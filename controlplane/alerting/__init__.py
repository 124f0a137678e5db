"""Alerts: fingerprint deduplication, lifecycle, silences and webhook notifications.

The worker calls `open_or_update_alert` when it stores a finding; the alert rules of the policy
decide whether the finding opens an alert. Notifications are queued in the same transaction
(an outbox) and the scheduler sends them with `send_due_notifications`. People act on alerts
with `acknowledge`, `resolve`, `create_silence` and `expire_silence`, from the CLI or the dashboard.
"""

from controlplane.alerting.lifecycle import (
    ACKNOWLEDGED,
    ALERT_STATUSES,
    FIRING,
    OPEN_STATUSES,
    RESOLVED,
    acknowledge,
    fingerprint,
    get_alert,
    group_key,
    open_or_update_alert,
    queue_notification,
    resolve,
)
from controlplane.alerting.outbox import SendSummary, send_due_notifications
from controlplane.alerting.silences import (
    active_silences,
    create_silence,
    describe_matchers,
    expire_silence,
    matching_silence,
    silence_matches,
)

__all__ = [
    "ACKNOWLEDGED",
    "ALERT_STATUSES",
    "FIRING",
    "OPEN_STATUSES",
    "RESOLVED",
    "SendSummary",
    "acknowledge",
    "active_silences",
    "create_silence",
    "describe_matchers",
    "expire_silence",
    "fingerprint",
    "get_alert",
    "group_key",
    "matching_silence",
    "open_or_update_alert",
    "queue_notification",
    "resolve",
    "send_due_notifications",
    "silence_matches",
]
