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
        UniqueConstraint("topic", "partition", "offset"),
        Index("ix_window_events_window", "app", "model", "window_start"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(200))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
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
    """A finding that needs a person or a job, deduplicated by fingerprint."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(20), default="firing")
    severity: Mapped[str] = mapped_column(String(20))
    title: Mapped[str] = mapped_column(Text)
    app: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    finding_id: Mapped[int | None] = mapped_column(ForeignKey("findings.id"))
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


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
    """A curation or fine-tuning run (pending, running, succeeded, failed, cancelled)."""

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


# Tables of the improvement loop live in their own module; importing it registers them on Base.
from controlplane.store import registry_models  # noqa: E402,F401
