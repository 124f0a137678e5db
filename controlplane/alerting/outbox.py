"""Delivery of queued notifications to the webhook, with retries and exponential backoff.

The scheduler runs this, never the worker: rows queued in a worker transaction are sent later.
A run claims the due rows (pending, next_attempt_at reached), groups them by group key and
POSTs one body per group. Every HTTP attempt is stored in notification_attempts.

Delivery is at least once. A process that dies between the POST and recording its outcome
sends the group again once the claim expires, so a receiver may see a body twice.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine, select

from controlplane import __version__ as package_version
from controlplane.alerting.lifecycle import queue_notification
from controlplane.alerting.payloads import BODY_BUILDERS, AlertEvent
from controlplane.alerting.silences import matching_silence
from controlplane.errors import ControlPlaneError
from controlplane.jobs import JobContext
from controlplane.settings import Settings
from controlplane.store.engine import transaction
from controlplane.store.models import Alert, Notification, NotificationAttempt, utcnow

log = logging.getLogger(__name__)

CLAIM_BATCH = 100


@dataclass
class SendSummary:
    """Counts of one run of the sender."""

    requests: int = 0
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    suppressed: int = 0

    def to_json(self) -> dict[str, int]:
        """Return the counts as a dict (scheduled_runs.details)."""
        return dict(self.__dict__)


@dataclass
class _Group:
    group_key: str
    body: dict[str, Any]
    rows: list[tuple[int, int]] = field(default_factory=list)  # (notification id, attempt number) pairs
    alert_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Delivery:
    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def succeeded(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


def send_due_notifications(
    engine: Engine, settings: Settings, *, now: datetime | None = None, transport: httpx.BaseTransport | None = None
) -> SendSummary:
    """Send every due notification, one request per alert group, and record each attempt.

    `transport` replaces httpx's network transport, e.g. with httpx.MockTransport in tests.
    """
    summary = SendSummary()
    if not settings.webhook_url:
        return summary
    groups = _claim(engine, settings, now or utcnow(), summary)
    if not groups:
        return summary
    headers = {"User-Agent": f"controlplane/{package_version}"}
    with httpx.Client(timeout=settings.webhook_timeout_seconds, headers=headers, transport=transport) as client:
        for group in groups:
            delivery = _post(client, settings.webhook_url, group.body)
            summary.requests += 1
            _record(engine, settings, group, delivery, summary)
    return summary


def _claim(engine: Engine, settings: Settings, now: datetime, summary: SendSummary) -> list[_Group]:
    with transaction(engine) as session:
        query = (
            select(Notification)
            .where(Notification.status == "pending", Notification.next_attempt_at <= now)
            .order_by(Notification.id)
            .limit(CLAIM_BATCH)
            .with_for_update(skip_locked=True)
        )
        rows = list(session.scalars(query))
        if not rows:
            return []
        alerts = {alert.id: alert for alert in session.scalars(select(Alert).where(Alert.id.in_({row.alert_id for row in rows})))}
        grouped: dict[str, list[tuple[Notification, Alert]]] = defaultdict(list)
        for row in rows:
            alert = alerts[row.alert_id]
            silence = matching_silence(session, alert, now) if row.event != "resolved" else None
            if silence is not None:
                row.status, row.last_error = "suppressed", f"silence {silence.id} was active at send time"
                summary.suppressed += 1
                continue
            grouped[row.group_key].append((row, alert))
        # A claimed row is not due again until every group of this run had its full timeout.
        claim_until = now + timedelta(seconds=settings.webhook_timeout_seconds * (len(grouped) + 1) + 60)
        return [_build_group(key, members, settings, claim_until) for key, members in grouped.items()]


def _build_group(key: str, members: list[tuple[Notification, Alert]], settings: Settings, claim_until: datetime) -> _Group:
    latest: dict[int, AlertEvent] = {}
    for row, alert in members:
        row.attempts += 1
        row.next_attempt_at = claim_until
        latest[alert.id] = AlertEvent(alert, row.event)
    events = list(latest.values())
    build = BODY_BUILDERS[settings.webhook_format]
    body = build(events, group_key=key, receiver=settings.webhook_receiver, external_url=settings.external_url)
    return _Group(key, body, [(row.id, row.attempts) for row, _ in members], list(latest))


def _post(client: httpx.Client, url: str, body: dict[str, Any]) -> _Delivery:
    started = time.perf_counter()
    try:
        response = client.post(url, json=body)
    except httpx.HTTPError as exc:
        return _Delivery(None, f"{type(exc).__name__}: {exc}", (time.perf_counter() - started) * 1000)
    elapsed = (time.perf_counter() - started) * 1000
    if 200 <= response.status_code < 300:
        return _Delivery(response.status_code, None, elapsed)
    return _Delivery(response.status_code, f"HTTP {response.status_code}: {response.text[:200]}", elapsed)


def _record(engine: Engine, settings: Settings, group: _Group, delivery: _Delivery, summary: SendSummary) -> None:
    now = utcnow()
    host = receiver_host(settings.webhook_url or "")
    with transaction(engine) as session:
        for notification_id, attempt in group.rows:
            row = session.get(Notification, notification_id, with_for_update=True)
            session.add(
                NotificationAttempt(
                    notification_id=notification_id, attempt=attempt, body_format=settings.webhook_format,
                    receiver_host=host, started_at=now, duration_ms=delivery.duration_ms,
                    status_code=delivery.status_code, error=delivery.error, succeeded=delivery.succeeded,
                )
            )
            row.last_status_code, row.last_error = delivery.status_code, delivery.error
            _advance(row, settings, delivery, now, summary)
    _log_delivery(group, host, delivery, settings)


def _advance(row: Notification, settings: Settings, delivery: _Delivery, now: datetime, summary: SendSummary) -> None:
    if delivery.succeeded:
        row.status, row.sent_at = "sent", now
        summary.sent += 1
    elif row.attempts >= settings.notify_max_attempts:
        row.status = "failed"
        summary.failed += 1
    else:
        row.next_attempt_at = now + timedelta(seconds=backoff_seconds(row.attempts, settings))
        summary.retrying += 1


def backoff_seconds(attempts: int, settings: Settings) -> float:
    """Return the delay in seconds after the `attempts`-th failed attempt: notify_backoff_seconds, doubled per failure and capped."""
    return min(settings.notify_backoff_seconds * 2 ** (attempts - 1), settings.notify_backoff_max_seconds)


def _log_delivery(group: _Group, host: str, delivery: _Delivery, settings: Settings) -> None:
    attempt = max(attempt for _, attempt in group.rows)
    if delivery.succeeded:
        log.info(
            "notification sent to %s: group %s, alerts %s, %s body, HTTP %d in %.0f ms (attempt %d)",
            host, group.group_key, group.alert_ids, settings.webhook_format, delivery.status_code, delivery.duration_ms, attempt,
        )
    elif attempt >= settings.notify_max_attempts:
        log.error("notification to %s failed for good after %d attempts: group %s: %s", host, attempt, group.group_key, delivery.error)
    else:
        log.warning(
            "notification to %s failed (attempt %d of %d), retrying in %.0fs: group %s: %s", host, attempt,
            settings.notify_max_attempts, backoff_seconds(attempt, settings), group.group_key, delivery.error,
        )


def receiver_host(url: str) -> str:
    """Return the scheme, host and port of a URL, without the path and query, which may carry a token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def run_notify_job(context: JobContext) -> dict[str, Any]:
    """Job function of the built-in "notify" kind: queue a "policy" notification for the job's alert."""
    if not context.settings.webhook_url:
        raise ControlPlaneError("a notify job needs a webhook: set CONTROLPLANE_WEBHOOK_URL for the scheduler")
    with transaction(context.engine) as session:
        alert = session.get(Alert, context.alert_id) if context.alert_id is not None else None
        if alert is None:
            raise ControlPlaneError(f"notify job {context.job_id} has no alert (alert_id {context.alert_id})")
        notification = queue_notification(session, alert, "policy", context.settings, job_id=context.job_id)
        return {"notification_id": notification.id if notification else None, "queued": notification is not None}
