"""Reads of the dashboard, aggregated in SQL and bounded.

Series are grouped in SQL into minute, hour or day buckets, and lists come in pages of at most
MAX_PAGE_SIZE rows. Reads name their columns instead of loading whole ORM rows, so a column that
a migration adds while the dashboard runs changes none of them, and the result type of a
PostgreSQL prepared statement stays the same. Writes live in controlplane.store.actions.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Sequence

import pandas as pd
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import Engine, String, cast, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from controlplane.alerting.lifecycle import OPEN_STATUSES
from controlplane.alerting.silences import silence_matches
from controlplane.errors import StoreError
from controlplane.store.audit_models import AuditEntry
from controlplane.store.drift_models import ReferenceProfile
from controlplane.store.models import (
    Alert,
    ConsumerOffset,
    DriftReference,
    Finding,
    FlaggedInteraction,
    Silence,
    WindowStats,
    utcnow,
)
from controlplane.windows import as_utc

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 200
MAX_SERIES_ROWS = 20_000
MAX_DRIFT_WINDOWS = 2_000
MAX_EXPORT_ROWS = 10_000
LABELS = ("correct", "incorrect")
EXCERPT_CHARS = 160
KAFKA_TIMEOUT_S = 3.0

_SQLITE_BUCKETS = {"minute": "%Y-%m-%d %H:%M:00", "hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}


@dataclass(frozen=True)
class Page:
    """One page of a list: its rows and the number of rows matching the filter."""

    rows: pd.DataFrame
    total: int
    offset: int
    limit: int


@dataclass(frozen=True)
class AlertFilter:
    """Filter of the alert list; empty tuples and None match everything."""

    statuses: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    app: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class FlaggedFilter:
    """Filter of the flagged interactions; `label` is "unlabeled", a label in LABELS, or None for any."""

    app: str | None = None
    model: str | None = None
    detector: str | None = None
    label: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str = ""


@dataclass
class ConsumerLag:
    """Consumer lag per stored partition; `lag` is None where the broker did not return an end offset."""

    rows: pd.DataFrame
    error: str | None = None


# ----- shared helpers -----


def bucket_unit(since: datetime, until: datetime) -> str:
    """Choose the series bucket for a time range: minutes up to 6 h, hours up to 7 days, then days."""
    span = until - since
    if span <= timedelta(hours=6):
        return "minute"
    if span <= timedelta(days=7):
        return "hour"
    return "day"


def _bucket(engine: Engine, column: Any, unit: str) -> Any:
    dialect = engine.dialect.name
    if dialect == "sqlite":
        return func.strftime(_SQLITE_BUCKETS[unit], column)
    if dialect == "postgresql":
        return func.date_trunc(unit, column, "UTC")
    raise StoreError(f"time buckets support sqlite and postgresql, not {dialect}: set CONTROLPLANE_DATABASE_URL to one of them")


def read_frame(engine: Engine, query: Any, columns: Sequence[str]) -> pd.DataFrame:
    """Run a SELECT and return its rows as a DataFrame with `columns`; SQL errors become StoreError."""
    try:
        with engine.connect() as connection:
            rows = connection.execute(query).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"dashboard query failed: {exc}") from exc
    return pd.DataFrame([tuple(row) for row in rows], columns=list(columns))


def read_scalar(engine: Engine, query: Any) -> Any:
    """Run a SELECT and return the first column of its first row."""
    try:
        with engine.connect() as connection:
            return connection.execute(query).scalar()
    except SQLAlchemyError as exc:
        raise StoreError(f"dashboard query failed: {exc}") from exc


def utc_columns(frame: pd.DataFrame, *names: str) -> pd.DataFrame:
    """Convert the named columns to aware UTC timestamps in place (SQLite returns naive ones) and return `frame`."""
    for name in names:
        if name in frame:
            frame[name] = pd.to_datetime(frame[name], utc=True, format="mixed")
    return frame


def clamp_limit(limit: int) -> int:
    """Bound a page size to 1..MAX_PAGE_SIZE."""
    return max(1, min(int(limit), MAX_PAGE_SIZE))


# ----- traffic, cost and safety -----

_SUMS = {
    "events": WindowStats.event_count,
    "errors": WindowStats.error_count,
    "cost_usd": WindowStats.cost_usd,
    "unpriced_events": WindowStats.unpriced_count,
    "input_tokens": WindowStats.input_tokens,
    "output_tokens": WindowStats.output_tokens,
    "usage_unknown_events": WindowStats.usage_unknown_count,
    "flagged": WindowStats.flagged_count,
    "pii": WindowStats.pii_count,
    "toxic": WindowStats.toxic_count,
}


def _window_range(query: Any, since: datetime | None, until: datetime | None) -> Any:
    if since is not None:
        query = query.where(WindowStats.window_start >= since)
    if until is not None:
        query = query.where(WindowStats.window_start < until)
    return query


def app_models(engine: Engine) -> list[tuple[str, str]]:
    """List the (app, model) pairs with closed windows."""
    query = select(WindowStats.app, WindowStats.model).distinct().order_by(WindowStats.app, WindowStats.model).limit(500)
    return [tuple(row) for row in read_frame(engine, query, ["app", "model"]).itertuples(index=False)]


def traffic_by_model(engine: Engine, since: datetime | None, until: datetime | None) -> pd.DataFrame:
    """Sum events, errors, cost, tokens and safety counts per (app, model); a sum of unknowns stays unknown."""
    sums = [func.sum(column).label(name) for name, column in _SUMS.items()]
    query = _window_range(
        select(WindowStats.app, WindowStats.model, *sums, func.max(WindowStats.latency_p95_ms), func.max(WindowStats.window_end))
        .group_by(WindowStats.app, WindowStats.model)
        .order_by(WindowStats.app, WindowStats.model),
        since, until,
    )
    frame = read_frame(engine, query, ["app", "model", *_SUMS, "max_latency_p95_ms", "last_window_end"])
    frame["error_rate"] = frame["errors"] / frame["events"].where(frame["events"] > 0)
    return utc_columns(frame, "last_window_end")


def series_unit(engine: Engine, since: datetime, until: datetime) -> str:
    """Choose the series bucket from the span the stored windows cover inside [since, until), not the span asked for."""
    query = _window_range(select(func.min(WindowStats.window_start), func.max(WindowStats.window_start)), since, until)
    first, last = read_frame(engine, query, ["first", "last"]).iloc[0]
    if first is None or pd.isna(first):
        return bucket_unit(since, until)
    return bucket_unit(as_utc(first), as_utc(last))


def traffic_series(engine: Engine, since: datetime, until: datetime, unit: str | None = None) -> pd.DataFrame:
    """Sum window statistics per time bucket and (app, model), at most MAX_SERIES_ROWS rows."""
    bucket = _bucket(engine, WindowStats.window_start, unit or series_unit(engine, since, until)).label("bucket")
    sums = [func.sum(column).label(name) for name, column in _SUMS.items()]
    query = _window_range(
        select(bucket, WindowStats.app, WindowStats.model, *sums)
        .group_by(bucket, WindowStats.app, WindowStats.model)
        .order_by(bucket)
        .limit(MAX_SERIES_ROWS),
        since, until,
    )
    return utc_columns(read_frame(engine, query, ["bucket", "app", "model", *_SUMS]), "bucket")


def unpriced_models(engine: Engine, since: datetime | None, until: datetime | None) -> pd.DataFrame:
    """List the (app, model) pairs with events that no price covered, and how many."""
    query = _window_range(
        select(WindowStats.app, WindowStats.model, func.sum(WindowStats.unpriced_count), func.sum(WindowStats.event_count),
               func.max(WindowStats.window_end))
        .group_by(WindowStats.app, WindowStats.model)
        .having(func.sum(WindowStats.unpriced_count) > 0)
        .order_by(func.sum(WindowStats.unpriced_count).desc())
        .limit(MAX_PAGE_SIZE),
        since, until,
    )
    return utc_columns(read_frame(engine, query, ["app", "model", "unpriced_events", "events", "last_window_end"]), "last_window_end")


def open_alert_counts(engine: Engine) -> pd.DataFrame:
    """Count open alerts per status and severity."""
    query = (
        select(Alert.status, Alert.severity, func.count())
        .where(Alert.status.in_(OPEN_STATUSES))
        .group_by(Alert.status, Alert.severity)
    )
    return read_frame(engine, query, ["status", "severity", "alerts"])


def recent_findings(engine: Engine, kind: str | None = None, limit: int = 20) -> pd.DataFrame:
    """List the newest findings, optionally of one kind (drift, safety, cost, ...)."""
    query = select(
        Finding.id, Finding.kind, Finding.subject, Finding.app, Finding.model, Finding.window_start,
        Finding.severity, Finding.summary, Finding.score, Finding.threshold,
    ).order_by(Finding.window_start.desc(), Finding.id.desc()).limit(clamp_limit(limit))
    if kind:
        query = query.where(Finding.kind == kind)
    columns = ["id", "kind", "subject", "app", "model", "window_start", "severity", "summary", "score", "threshold"]
    return utc_columns(read_frame(engine, query, columns), "window_start")


# ----- consumer lag -----


def stored_offsets(engine: Engine) -> pd.DataFrame:
    """List the next offset the workers will process, per consumer group, topic and partition."""
    query = select(
        ConsumerOffset.group_id, ConsumerOffset.topic, ConsumerOffset.partition, ConsumerOffset.next_offset, ConsumerOffset.updated_at
    ).order_by(ConsumerOffset.group_id, ConsumerOffset.topic, ConsumerOffset.partition).limit(1000)
    return utc_columns(read_frame(engine, query, ["group_id", "topic", "partition", "next_offset", "updated_at"]), "updated_at")


def consumer_lag(engine: Engine, bootstrap: str, timeout_s: float = KAFKA_TIMEOUT_S) -> ConsumerLag:
    """Compute lag as the broker's end offset minus the stored next offset, or leave it unknown when Kafka fails."""
    offsets = stored_offsets(engine)
    offsets["end_offset"] = pd.Series([None] * len(offsets), dtype="object")
    offsets["lag"] = pd.Series([None] * len(offsets), dtype="object")
    if offsets.empty:
        return ConsumerLag(offsets)
    try:
        ends = asyncio.run(asyncio.wait_for(_end_offsets(bootstrap, offsets), timeout_s))
    except Exception as exc:  # noqa: BLE001 - any Kafka or timeout failure means "lag unknown", shown to the user
        log.warning("consumer lag unknown: Kafka at %s did not return end offsets: %r", bootstrap, exc)
        return ConsumerLag(offsets, error=f"Kafka at {bootstrap} did not return end offsets: {exc!r}")
    for index, row in offsets.iterrows():
        end = ends.get((row["topic"], int(row["partition"])))
        if end is not None:
            offsets.at[index, "end_offset"] = end
            offsets.at[index, "lag"] = max(0, end - int(row["next_offset"]))
    return ConsumerLag(offsets)


async def _end_offsets(bootstrap: str, offsets: pd.DataFrame) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=int(KAFKA_TIMEOUT_S * 1000))
    try:
        await consumer.start()
        partitions = [TopicPartition(topic, int(partition)) for topic, partition in zip(offsets["topic"], offsets["partition"])]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {(partition.topic, partition.partition): offset for partition, offset in ends.items()}


# ----- drift -----


def drift_windows(engine: Engine, app: str, model: str, since: datetime | None, until: datetime | None) -> pd.DataFrame:
    """List the newest MAX_DRIFT_WINDOWS windows of one (app, model) with their drift details, oldest first."""
    query = _window_range(
        select(WindowStats.id, WindowStats.window_start, WindowStats.event_count, WindowStats.drift_status,
               WindowStats.drift_share, WindowStats.details)
        .where(WindowStats.app == app, WindowStats.model == model)
        .order_by(WindowStats.window_start.desc())
        .limit(MAX_DRIFT_WINDOWS),
        since, until,
    )
    frame = read_frame(engine, query, ["id", "window_start", "events", "drift_status", "drift_share", "details"])
    return utc_columns(frame, "window_start").iloc[::-1].reset_index(drop=True)


def feature_scores(windows: pd.DataFrame) -> pd.DataFrame:
    """Flatten `details["drift"]["columns"]` of each window into one row per (window, feature)."""
    records = []
    for window_start, details in zip(windows.get("window_start", []), windows.get("details", [])):
        for column in ((details or {}).get("drift") or {}).get("columns") or []:
            records.append({
                "window_start": window_start, "feature": column.get("column"), "status": column.get("status"),
                "test": column.get("test"), "score": column.get("score"), "threshold": column.get("threshold"),
                "n_reference": column.get("n_reference"), "n_current": column.get("n_current"),
            })
    columns = ["window_start", "feature", "status", "test", "score", "threshold", "n_reference", "n_current"]
    return pd.DataFrame.from_records(records, columns=columns)


def drift_reference(engine: Engine, app: str, model: str) -> dict[str, Any] | None:
    """Describe the drift reference of one (app, model): its source window, size and creation time."""
    query = select(
        DriftReference.source_window_start, DriftReference.row_count, DriftReference.created_at
    ).where(DriftReference.app == app, DriftReference.model == model)
    frame = utc_columns(read_frame(engine, query, ["source_window_start", "row_count", "created_at"]), "source_window_start", "created_at")
    return None if frame.empty else frame.iloc[0].to_dict()


def reference_profiles(engine: Engine, app: str, model: str) -> pd.DataFrame:
    """List the references of one (app, model), one per model version, the newest first."""
    columns = ["model_version", "source", "source_window_start", "event_count", "created_at", "created_by"]
    query = (
        select(*(getattr(ReferenceProfile, name) for name in columns))
        .where(ReferenceProfile.app == app, ReferenceProfile.model == model)
        .order_by(ReferenceProfile.created_at.desc())
    )
    return utc_columns(read_frame(engine, query, columns), "source_window_start", "created_at")


# ----- alerts -----

_ALERT_COLUMNS = {
    "id": Alert.id, "status": Alert.status, "severity": Alert.severity, "title": Alert.title, "kind": Alert.kind,
    "subject": Alert.subject, "app": Alert.app, "model": Alert.model, "occurrences": Alert.occurrences,
    "first_seen": Alert.first_seen, "last_seen": Alert.last_seen, "acknowledged_by": Alert.acknowledged_by,
    "resolved_by": Alert.resolved_by,
}
_SILENCE_COLUMNS = {
    "id": Silence.id, "kind": Silence.kind, "subject": Silence.subject, "app": Silence.app, "model": Silence.model,
    "starts_at": Silence.starts_at, "ends_at": Silence.ends_at, "created_by": Silence.created_by, "comment": Silence.comment,
}


def list_alerts(engine: Engine, flt: AlertFilter, offset: int = 0, limit: int = 50) -> Page:
    """Return one page of alerts matching `flt`, most recently seen first, with the end of any silence covering each."""
    conditions = []
    if flt.statuses:
        conditions.append(Alert.status.in_(flt.statuses))
    if flt.severities:
        conditions.append(Alert.severity.in_(flt.severities))
    if flt.app:
        conditions.append(Alert.app == flt.app)
    if flt.model:
        conditions.append(Alert.model == flt.model)
    limit = clamp_limit(limit)
    query = select(*_ALERT_COLUMNS.values()).where(*conditions).order_by(Alert.last_seen.desc(), Alert.id.desc())
    rows = utc_columns(read_frame(engine, query.offset(offset).limit(limit), list(_ALERT_COLUMNS)), "first_seen", "last_seen")
    silences = active_silences(engine)
    rows["silenced_until"] = [_silence_end(silences, alert) for alert in rows.itertuples()]
    total = read_scalar(engine, select(func.count()).select_from(Alert).where(*conditions))
    return Page(rows, int(total or 0), offset, limit)


def active_silences(engine: Engine) -> pd.DataFrame:
    """List the silences in force now, the one ending last first (at most MAX_PAGE_SIZE)."""
    now = utcnow()
    query = (
        select(*_SILENCE_COLUMNS.values()).where(Silence.starts_at <= now, Silence.ends_at > now)
        .order_by(Silence.ends_at.desc()).limit(MAX_PAGE_SIZE)
    )
    return utc_columns(read_frame(engine, query, list(_SILENCE_COLUMNS)), "starts_at", "ends_at")


def _silence_end(silences: pd.DataFrame, alert: Any) -> datetime | None:
    ends = [silence.ends_at for silence in silences.itertuples() if silence_matches(silence, alert)]
    return max(ends) if ends else None


# ----- flagged interactions -----

_FLAGGED_LIST_COLUMNS = {
    "id": FlaggedInteraction.id, "event_time": FlaggedInteraction.event_time, "app": FlaggedInteraction.app,
    "model": FlaggedInteraction.model, "detectors": FlaggedInteraction.detectors, "label": FlaggedInteraction.label,
    "has_correction": FlaggedInteraction.correction.is_not(None),
    "prompt_excerpt": func.substr(FlaggedInteraction.prompt, 1, EXCERPT_CHARS),
}
FLAGGED_FULL_COLUMNS = {
    "id": FlaggedInteraction.id, "event_id": FlaggedInteraction.event_id, "event_time": FlaggedInteraction.event_time,
    "app": FlaggedInteraction.app, "model": FlaggedInteraction.model, "detectors": FlaggedInteraction.detectors,
    "prompt": FlaggedInteraction.prompt, "completion": FlaggedInteraction.completion,
    "label": FlaggedInteraction.label, "correction": FlaggedInteraction.correction,
}


def _flagged_conditions(flt: FlaggedFilter) -> list[Any]:
    conditions = []
    for column, value in ((FlaggedInteraction.app, flt.app), (FlaggedInteraction.model, flt.model)):
        if value:
            conditions.append(column == value)
    if flt.detector:
        # NOTE: this matches the JSON text that the sink writes, with json.dumps's ": " separator.
        # A row written by a serializer that leaves out the space after the colon would not match.
        conditions.append(cast(FlaggedInteraction.detectors, String).like(f'%"detector": "{flt.detector}"%'))
    if flt.label == "unlabeled":
        conditions.append(FlaggedInteraction.label.is_(None))
    elif flt.label:
        conditions.append(FlaggedInteraction.label == flt.label)
    if flt.since is not None:
        conditions.append(FlaggedInteraction.event_time >= flt.since)
    if flt.until is not None:
        conditions.append(FlaggedInteraction.event_time < flt.until)
    if flt.text:
        # The text is matched literally: % and _ typed by the user are not wildcards.
        literal = flt.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{literal}%"
        conditions.append(or_(FlaggedInteraction.prompt.ilike(pattern, escape="\\"),
                              FlaggedInteraction.completion.ilike(pattern, escape="\\")))
    return conditions


def list_flagged(engine: Engine, flt: FlaggedFilter, offset: int = 0, limit: int = 25) -> Page:
    """Return one page of flagged interactions matching `flt`, newest first, with prompt excerpts."""
    conditions = _flagged_conditions(flt)
    limit = clamp_limit(limit)
    query = (
        select(*_FLAGGED_LIST_COLUMNS.values()).where(*conditions)
        .order_by(FlaggedInteraction.event_time.desc(), FlaggedInteraction.id.desc())
        .offset(offset).limit(limit)
    )
    rows = utc_columns(read_frame(engine, query, list(_FLAGGED_LIST_COLUMNS)), "event_time")
    total = read_scalar(engine, select(func.count()).select_from(FlaggedInteraction).where(*conditions))
    return Page(rows, int(total or 0), offset, limit)


def flagged_ids(engine: Engine, flt: FlaggedFilter, limit: int = MAX_EXPORT_ROWS) -> list[int]:
    """List the ids of up to `limit` flagged interactions matching `flt`, newest first."""
    query = (
        select(FlaggedInteraction.id).where(*_flagged_conditions(flt))
        .order_by(FlaggedInteraction.event_time.desc(), FlaggedInteraction.id.desc())
        .limit(min(limit, MAX_EXPORT_ROWS))
    )
    return [int(value) for value in read_frame(engine, query, ["id"])["id"]]


def get_flagged(engine: Engine, ids: Sequence[int]) -> list[dict[str, Any]]:
    """Load full flagged interactions by id (at most MAX_EXPORT_ROWS), in the order of `ids`."""
    requested = [int(value) for value in ids][:MAX_EXPORT_ROWS]
    if not requested:
        return []
    query = select(*FLAGGED_FULL_COLUMNS.values()).where(FlaggedInteraction.id.in_(requested))
    frame = read_frame(engine, query, list(FLAGGED_FULL_COLUMNS))
    by_id = {int(row["id"]): row for row in frame.to_dict("records")}
    for row in by_id.values():
        row["event_time"] = as_utc(row["event_time"])
    return [by_id[value] for value in requested if value in by_id]


# ----- audit -----


def list_audit(engine: Engine, offset: int = 0, limit: int = 50) -> Page:
    """Return one page of the audit log, newest first."""
    columns = {
        "created_at": AuditEntry.created_at, "actor": AuditEntry.actor, "role": AuditEntry.role, "action": AuditEntry.action,
        "target_kind": AuditEntry.target_kind, "target_id": AuditEntry.target_id, "details": AuditEntry.details,
    }
    limit = clamp_limit(limit)
    query = select(*columns.values()).order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc()).offset(offset).limit(limit)
    rows = utc_columns(read_frame(engine, query, list(columns)), "created_at")
    return Page(rows, int(read_scalar(engine, select(func.count()).select_from(AuditEntry)) or 0), offset, limit)
