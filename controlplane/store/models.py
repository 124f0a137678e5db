"""SQL tables of the control plane (SQLAlchemy 2 declarative models).

Natural keys carry unique constraints so that a redelivered message or a restarted worker
can never write a row twice. Nullable numeric columns mean "unknown", never zero.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Alembic needs stable constraint names, and SQLite batch migrations need names to drop constraints.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class ConsumerOffset(Base):
    """Next offset to process per partition, committed in the same transaction as the results."""

    __tablename__ = "consumer_offsets"

    group_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    topic: Mapped[str] = mapped_column(String(200), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WindowEvent(Base):
    """Per-event features of a window that has not closed yet (the worker's durable buffer)."""

    __tablename__ = "window_events"
    __table_args__ = (
        UniqueConstraint("topic", "partition", "offset", "sequence"),
        Index("ix_window_events_window", "app", "model", "window_start"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(200))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    # Position of the event within its message: one OTLP export can carry several spans.
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    app: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    window_start: Mapped[datetime]
    event_time: Mapped[datetime]
    ingested_at: Mapped[datetime] = mapped_column(default=utcnow)
    event_id: Mapped[str] = mapped_column(String(200))
    features: Mapped[dict[str, Any]]


class WindowStats(Base):
    """Statistics of one closed tumbling window of one (app, model)."""

    __tablename__ = "window_stats"
    __table_args__ = (UniqueConstraint("app", "model", "window_start"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    window_start: Mapped[datetime] = mapped_column(index=True)
    window_end: Mapped[datetime]
    closed_at: Mapped[datetime] = mapped_column(default=utcnow)
    event_count: Mapped[int] = mapped_column(Integer)
    late_event_count: Mapped[int] = mapped_column(Integer, default=0)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    usage_unknown_count: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    unpriced_count: Mapped[int] = mapped_column(Integer, default=0)
    latency_p50_ms: Mapped[float | None] = mapped_column(Float)
    latency_p95_ms: Mapped[float | None] = mapped_column(Float)
    flagged_count: Mapped[int] = mapped_column(Integer, default=0)
    pii_count: Mapped[int] = mapped_column(Integer, default=0)
    toxic_count: Mapped[int] = mapped_column(Integer, default=0)
    drift_status: Mapped[str] = mapped_column(String(40))
    drift_share: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class DriftReference(Base):
    """Feature rows a window is compared with, per (app, model)."""

    __tablename__ = "drift_references"
    __table_args__ = (UniqueConstraint("app", "model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    source_window_start: Mapped[datetime | None]
    row_count: Mapped[int] = mapped_column(Integer)
    rows: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Finding(Base):
    """Something a detector found in a window: drift, a cost anomaly, a safety-rate change."""

    __tablename__ = "findings"
    __table_args__ = (UniqueConstraint("kind", "app", "model", "window_start", "subject"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(40), index=True)
    subject: Mapped[str] = mapped_column(String(200), default="")
    app: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    severity: Mapped[str] = mapped_column(String(20))
    summary: Mapped[str] = mapped_column(Text)
    sample_size: Mapped[int] = mapped_column(Integer)
    test: Mapped[str | None] = mapped_column(String(100))
    score: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Alert(Base):
    """A finding that needs a person or a job, deduplicated by fingerprint.

    Lifecycle: firing, then optionally acknowledged, then resolved; a finding with the same
    fingerprint after resolution opens a new alert row.
    """

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(20), default="firing", index=True)
    severity: Mapped[str] = mapped_column(String(20))
    title: Mapped[str] = mapped_column(Text)
    app: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    finding_id: Mapped[int | None] = mapped_column(ForeignKey("findings.id"))
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    kind: Mapped[str] = mapped_column(String(40), default="", server_default="")
    subject: Mapped[str] = mapped_column(String(200), default="", server_default="")
    # Alerts of one (app, model, kind) share a group key and go out in one webhook message.
    group_key: Mapped[str] = mapped_column(String(500), default="", server_default="", index=True)
    rule: Mapped[str | None] = mapped_column(String(100))  # name of the alert rule that opened it
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    acknowledged_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(200))
    resolved_at: Mapped[datetime | None]
    last_notified_at: Mapped[datetime | None]


class FlaggedInteraction(Base):
    """An event that at least one safety detector fired on, kept for review and curation."""

    __tablename__ = "flagged_interactions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    app: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    event_time: Mapped[datetime] = mapped_column(index=True)
    detectors: Mapped[list[Any]]
    prompt: Mapped[str] = mapped_column(Text)
    completion: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(40))
    correction: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeadLetter(Base):
    """A message the worker could not decode; the raw bytes also go to inference.events.dlq."""

    __tablename__ = "dead_letters"
    __table_args__ = (UniqueConstraint("topic", "partition", "offset"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(200))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """A curation, fine-tuning or notification run, with the state machine of controlplane.jobs.

    Statuses: awaiting_approval, pending, running, succeeded, failed, cancelled. A running job
    holds a lease (lease_owner, lease_expires_at) that its process renews. Once the lease
    expires, another runner may claim the job again.
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id"))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    parent_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    policy: Mapped[str | None] = mapped_column(String(100), index=True)  # job rule that created it
    created_by: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    approved_by: Mapped[str | None] = mapped_column(String(200))
    approved_at: Mapped[datetime | None]
    cancelled_by: Mapped[str | None] = mapped_column(String(200))


class Silence(Base):
    """A time range in which alerts matching every non-empty matcher send no notification and start no job.

    Matchers are shell-style patterns (fnmatch, case-sensitive). An empty matcher matches anything.
    """

    __tablename__ = "silences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str | None] = mapped_column(String(40))
    subject: Mapped[str | None] = mapped_column(String(200))
    app: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime] = mapped_column(index=True)
    created_by: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expired_by: Mapped[str | None] = mapped_column(String(200))


class Notification(Base):
    """Outbox row: one alert event (firing, repeat, escalated, resolved) to send to the webhook.

    The worker writes it in the transaction that changes the alert, and the scheduler sends it
    later, so a slow or failing webhook never keeps a worker transaction open.
    """

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    group_key: Mapped[str] = mapped_column(String(500))
    event: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]


class NotificationAttempt(Base):
    """One HTTP delivery attempt of a notification, kept for the trail and for debugging receivers."""

    __tablename__ = "notification_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    body_format: Mapped[str] = mapped_column(String(20))
    receiver_host: Mapped[str] = mapped_column(String(300))  # scheme and host only: a URL may carry a token
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    succeeded: Mapped[bool] = mapped_column(Boolean)


class SchedulerLease(Base):
    """The lease that makes one `controlplane scheduler` process the active one."""

    __tablename__ = "scheduler_lease"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[datetime] = mapped_column(default=utcnow)
    renewed_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class ScheduledRun(Base):
    """One slot of a periodic task. The unique key makes a second scheduler that fires the same slot skip it.

    Statuses: running, succeeded, failed, skipped, interrupted (its process died), coalesced
    (the slot passed without a run and the next run did its work), misfired (APScheduler
    reported it later than the grace period).
    """

    __tablename__ = "scheduled_runs"
    __table_args__ = (UniqueConstraint("name", "scheduled_for"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    scheduled_for: Mapped[datetime] = mapped_column(index=True)
    status: Mapped[str] = mapped_column(String(20))
    owner: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


# Tables of the improvement loop live in their own module; importing it registers them on Base.
from controlplane.store import registry_models  # noqa: E402,F401
from controlplane.store import audit_models, drift_models  # noqa: E402,F401
