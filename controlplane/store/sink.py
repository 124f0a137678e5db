"""The worker's SQL sink: exactly-once effect of consumed messages on the store.

Every ingest writes the batch's rows and the next offset of each partition in one transaction,
and skips messages below the stored offset, so a redelivered message (after a crash, a rebalance
or a lagging Kafka commit) is never counted twice. Closing a window moves its buffered rows into
window statistics and findings in one transaction, keyed by (app, model, window start).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Sequence

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from controlplane.alerting import open_or_update_alert
from controlplane.detectors.sequential import CusumSettings
from controlplane.detectors.text_drift import Encoder, embed_ahead, ingest_rank_cutoff
from controlplane.detectors.window_checks import (
    CheckSettings,
    FindingSpec,
    Profile,
    check_gap,
    check_safety_rate,
    check_traffic,
    check_unpriced,
    check_window,
    profile_window,
)
from controlplane.features import ScoredEvent
from controlplane.settings import Settings
from controlplane.store.drift_models import ReferenceProfile, WindowProfile, record_empty_windows, save_reference
from controlplane.store.engine import transaction
from controlplane.store.messages import alert_message, finding_message
from controlplane.store.models import (
    Alert,
    ConsumerOffset,
    DeadLetter,
    Finding,
    FlaggedInteraction,
    WindowEvent,
    WindowStats,
    utcnow,
)
from controlplane.store.upsert import insert_ignore
from controlplane.store.window_history import cost_findings, cost_settings, flagged_trend_findings
from controlplane.windows import OpenWindow, as_utc, due_windows, summarize, window_start

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rejected:
    """A message that failed decoding or validation."""

    reason: str
    size_bytes: int


@dataclass(frozen=True)
class Record:
    """One consumed message: its position and either a scored event or the rejection."""

    partition: int
    offset: int
    item: ScoredEvent | Rejected
    sequence: int = 0  # position of the event within its message (several OTLP spans share an offset)


@dataclass
class IngestResult:
    """What one ingest wrote."""

    stored: int = 0
    rejected: int = 0
    skipped_duplicates: int = 0
    flagged: int = 0


@dataclass
class ClosedWindow:
    """What closing one window wrote."""

    stats_id: int
    event_count: int
    late: bool
    findings: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)


class WindowSink:
    """Writes ingested batches and closed windows for one consumer group and topic."""

    def __init__(self, engine: Engine, settings: Settings, topic: str, encoder: Encoder | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.topic = topic
        self.group_id = settings.consumer_group
        self.checks = CheckSettings.from_settings(settings)
        self.cost_settings = cost_settings(settings)
        self.cusum_settings = CusumSettings()
        # Loaded on the first window large enough to embed, so that a worker without text drift never loads it.
        self._encoder = encoder
        # Rows of the last window closed per (app, model), or None before the first. It sizes the ingest-time embedding.
        self._last_window_rows: dict[tuple[str, str], int | None] = {}

    # ----- ingest -----

    def ingest(self, records: Sequence[Record]) -> IngestResult:
        """Store a batch and advance the stored offsets in one transaction."""
        result = IngestResult()
        if not records:
            return result
        with transaction(self.engine) as session:
            next_offsets = self._lock_offsets(session, {record.partition for record in records})
            fresh = [record for record in records if record.offset >= next_offsets[record.partition]]
            result.skipped_duplicates = len(records) - len(fresh)
            self._write_records(session, fresh, result)
            for record in fresh:
                next_offsets[record.partition] = max(next_offsets[record.partition], record.offset + 1)
            self._store_offsets(session, next_offsets)
        return result

    def _lock_offsets(self, session: Session, partitions: set[int]) -> dict[int, int]:
        insert_ignore(
            session,
            ConsumerOffset,
            [
                {"group_id": self.group_id, "topic": self.topic, "partition": partition, "next_offset": 0, "updated_at": utcnow()}
                for partition in partitions
            ],
            ["group_id", "topic", "partition"],
        )
        rows = session.execute(
            select(ConsumerOffset.partition, ConsumerOffset.next_offset)
            .where(
                ConsumerOffset.group_id == self.group_id,
                ConsumerOffset.topic == self.topic,
                ConsumerOffset.partition.in_(partitions),
            )
            .with_for_update()
        )
        return {partition: next_offset for partition, next_offset in rows}

    def _store_offsets(self, session: Session, next_offsets: dict[int, int]) -> None:
        for partition, next_offset in next_offsets.items():
            row = session.get(ConsumerOffset, (self.group_id, self.topic, partition))
            row.next_offset = next_offset
            row.updated_at = utcnow()

    def _write_records(self, session: Session, records: Sequence[Record], result: IngestResult) -> None:
        events, flagged, dead = [], [], []
        now = utcnow()
        for record in records:
            item = record.item
            if isinstance(item, Rejected):
                dead.append(
                    {"topic": self.topic, "partition": record.partition, "offset": record.offset,
                     "reason": item.reason, "size_bytes": item.size_bytes, "created_at": now}
                )
                continue
            event = item.event
            events.append(
                {
                    "topic": self.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "sequence": record.sequence,
                    "app": event.app,
                    "model": event.model,
                    "window_start": window_start(event.timestamp, self.settings.window_seconds),
                    "event_time": event.timestamp,
                    "ingested_at": now,
                    "event_id": event.event_id,
                    "features": item.features,
                }
            )
            if item.safety.flagged:
                flagged.append(
                    {
                        "event_id": event.event_id,
                        "app": event.app,
                        "model": event.model,
                        "event_time": event.timestamp,
                        "detectors": item.safety.to_json(),
                        "prompt": event.prompt_text(),
                        "completion": event.completion,
                        "created_at": now,
                    }
                )
        insert_ignore(session, WindowEvent, events, ["topic", "partition", "offset", "sequence"])
        insert_ignore(session, FlaggedInteraction, flagged, ["event_id"])
        insert_ignore(session, DeadLetter, dead, ["topic", "partition", "offset"])
        result.stored += len(events)
        result.rejected += len(dead)
        result.flagged += len(flagged)

    # ----- text-drift sample -----

    def sample_cutoff(self, app: str, model: str, seen_rows: int) -> float:
        """Return the sample rank below which an arriving event of (app, model) has its texts embedded at once.

        `seen_rows` counts the events of the event's window that this worker has taken so far.
        """
        if not self.checks.text_drift:
            return 0.0
        key = (app, model)
        if key not in self._last_window_rows:
            with self.engine.connect() as connection:
                self._last_window_rows[key] = connection.scalar(
                    select(WindowStats.event_count - WindowStats.late_event_count)
                    .where(WindowStats.app == app, WindowStats.model == model)
                    .order_by(WindowStats.window_start.desc())
                    .limit(1)
                )
        expected = self._last_window_rows[key]
        return ingest_rank_cutoff(expected, seen_rows, self.checks.text.sample_size, self.checks.text.min_texts)

    def encoder(self) -> Encoder:
        """Return the sentence encoder of text drift, loading it on first use."""
        if self._encoder is None:
            from controlplane.detectors.embeddings import load_encoder

            self._encoder = load_encoder()
        return self._encoder

    # ----- windows -----

    def open_windows(self, partitions: set[int] | None = None) -> list[OpenWindow]:
        """List windows with buffered events, for the given partitions (all when None)."""
        query = (
            select(
                WindowEvent.app,
                WindowEvent.model,
                WindowEvent.window_start,
                WindowEvent.partition,
                func.count(),
                func.max(WindowEvent.event_time),
                func.max(WindowEvent.ingested_at),
            )
            .where(WindowEvent.topic == self.topic)
            .group_by(WindowEvent.app, WindowEvent.model, WindowEvent.window_start, WindowEvent.partition)
        )
        if partitions is not None:
            query = query.where(WindowEvent.partition.in_(partitions))
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            OpenWindow(app, model, as_utc(start), partition, count, as_utc(max_event), as_utc(max_ingest))
            for app, model, start, partition, count, max_event, max_ingest in rows
        ]

    def close_due(self, partitions: set[int] | None, now: datetime | None = None) -> list[ClosedWindow]:
        """Close every window that is due by event time or by wall-clock idleness."""
        settings = self.settings
        due = due_windows(
            self.open_windows(partitions),
            settings.window_seconds,
            settings.window_grace_seconds,
            settings.window_idle_close_seconds,
            now or utcnow(),
        )
        closed = []
        for window in due:
            outcome = self.close_window(window)
            if outcome is not None:
                closed.append(outcome)
        return closed

    def close_window(self, window: OpenWindow) -> ClosedWindow | None:
        """Move one window's buffered rows into statistics and findings, in one transaction."""
        started = time.perf_counter()
        encoder = self._embed_ahead(window)
        with transaction(self.engine) as session:
            rows = self._take_rows(session, window)
            if not rows:
                return None
            existing = session.scalar(
                select(WindowStats).where(
                    WindowStats.app == window.app, WindowStats.model == window.model,
                    WindowStats.window_start == window.start,
                )
            )
            if existing is not None:
                outcome = self._merge_late(existing, rows)
            else:
                outcome = self._close_new(session, window, rows, encoder)
        log.info(
            "window closed app=%s model=%s start=%s events=%d late=%s findings=%d in %.2fs",
            window.app, window.model, window.start.isoformat(), outcome.event_count, outcome.late,
            len(outcome.findings), time.perf_counter() - started,
        )
        return outcome

    def _take_rows(self, session: Session, window: OpenWindow) -> list[dict[str, Any]]:
        # FOR UPDATE makes a second closer of the same window wait, then find the rows gone.
        condition = (
            (WindowEvent.topic == self.topic)
            & (WindowEvent.partition == window.partition)
            & (WindowEvent.app == window.app)
            & (WindowEvent.model == window.model)
            & (WindowEvent.window_start == window.start)
        )
        rows = session.execute(
            select(WindowEvent.id, WindowEvent.features).where(condition).order_by(WindowEvent.event_time).with_for_update()
        ).all()
        if rows:
            session.execute(delete(WindowEvent).where(WindowEvent.id.in_([row.id for row in rows])))
        return [row.features for row in rows]

    def _merge_late(self, stats: WindowStats, rows: list[dict[str, Any]]) -> ClosedWindow:
        # Events that arrive after their window closed still count, but the checks are not rerun.
        summary = summarize(rows)
        stats.event_count += summary["event_count"]
        stats.late_event_count += summary["event_count"]
        stats.error_count += summary["error_count"]
        stats.flagged_count += summary["flagged_count"]
        stats.pii_count += summary["pii_count"]
        stats.toxic_count += summary["toxic_count"]
        stats.unpriced_count += summary["unpriced_count"]
        stats.usage_unknown_count += summary["usage_unknown_count"]
        for column in ("input_tokens", "output_tokens", "cost_usd"):
            if summary[column] is not None:
                setattr(stats, column, (getattr(stats, column) or 0) + summary[column])
        return ClosedWindow(stats.id, summary["event_count"], late=True)

    def _close_new(
        self, session: Session, window: OpenWindow, rows: list[dict[str, Any]], encoder: Encoder | None
    ) -> ClosedWindow:
        if not self.checks.text_drift or len(rows) < self.checks.text.min_texts:
            encoder = None
        elif encoder is None:
            # The window grew past min_texts after it was listed, so its sample is embedded here.
            encoder = self.encoder()
        profile, vectors = profile_window(rows, self.checks, encoder)
        self._last_window_rows[(window.app, window.model)] = len(rows)
        reference_row = session.scalar(
            select(ReferenceProfile).where(
                ReferenceProfile.app == window.app, ReferenceProfile.model == window.model,
                ReferenceProfile.model_version == profile.model_version,
            )
        )
        findings = self._record_gap(session, window, reference_row)
        reference = None
        if reference_row is None:
            drift_status, drift_share, drift_details = self._maybe_set_reference(session, window, profile)
        else:
            reference = Profile.from_json(reference_row.profile)
            drift, drift_findings = check_window(reference, profile, vectors, self.checks)
            findings += drift_findings + check_traffic(reference_row.event_count, len(rows), self.checks)
            drift_status, drift_share = drift.status, drift.features.drift_share
            drift_details = {**drift.to_json(), "reference": _reference_json(reference_row)}
        if reference is not None:
            findings += check_safety_rate(reference, rows)
            findings += flagged_trend_findings(session, window.app, window.model, window.start, reference, rows,
                                               self.cusum_settings)
        findings += check_unpriced(rows, [window.model])
        summary = summarize(rows)
        findings += cost_findings(
            session, window.app, window.model, window.start, self.settings.window_seconds, summary, self.cost_settings
        )
        session.add(
            WindowProfile(app=window.app, model=window.model, window_start=window.start,
                          model_version=profile.model_version, event_count=len(rows), profile=profile.to_json())
        )

        end = window.start + timedelta(seconds=self.settings.window_seconds)
        stats = WindowStats(
            app=window.app, model=window.model, window_start=window.start, window_end=end,
            drift_status=drift_status, drift_share=drift_share, details={"drift": drift_details}, **summary,
        )
        session.add(stats)
        session.flush()
        outcome = ClosedWindow(stats.id, stats.event_count, late=False)
        for spec in findings:
            finding = Finding(
                kind=spec.kind, subject=spec.subject, app=spec.app or window.app, model=spec.model or window.model,
                window_start=spec.window_start or window.start, window_end=spec.window_end or end,
                severity=spec.severity, summary=spec.summary,
                sample_size=spec.sample_size, test=spec.test, score=spec.score, threshold=spec.threshold,
                details=spec.details,
            )
            session.add(finding)
            session.flush()
            alert = open_or_update_alert(session, finding)
            outcome.findings.append(finding_message(finding))
            if alert is not None:  # None when no alert rule of the policy matches the finding
                outcome.alerts.append(alert_message(alert))
        return outcome

    def _embed_ahead(self, window: OpenWindow) -> Encoder | None:
        # Embedding takes seconds, and on SQLite the closing transaction holds the database's
        # write lock, so the sample is embedded before it from a plain read. Rows that arrive in
        # between only add the texts they bring to the sample, embedded inside the transaction.
        if not self.checks.text_drift or window.event_count < self.checks.text.min_texts:
            return None
        condition = (
            (WindowEvent.topic == self.topic) & (WindowEvent.partition == window.partition)
            & (WindowEvent.app == window.app) & (WindowEvent.model == window.model)
            & (WindowEvent.window_start == window.start)
        )
        closed = (WindowStats.app == window.app) & (WindowStats.model == window.model) & (WindowStats.window_start == window.start)
        with self.engine.connect() as connection:
            if connection.scalar(select(WindowStats.id).where(closed)) is not None:
                return None  # late events merge into a closed window without checks
            rows = connection.execute(select(WindowEvent.features).where(condition)).scalars().all()
        return embed_ahead(rows, self.checks.text.sample_size, self.encoder())

    def _maybe_set_reference(
        self, session: Session, window: OpenWindow, profile: Profile
    ) -> tuple[str, float | None, dict[str, Any]]:
        # Without a reference, the first window large enough becomes it; smaller ones wait.
        if profile.event_count < self.settings.drift_min_rows:
            return "no_reference", None, {
                "reason": f"{profile.event_count} rows, reference needs {self.settings.drift_min_rows}",
                "model_version": profile.model_version,
            }
        save_reference(session, window.app, window.model, profile.model_version, window.start, profile.to_json(),
                       profile.event_count, source="first_window")
        return "reference_set", None, {
            "reference_rows": profile.event_count, "model_version": profile.model_version,
            "text_fields": sorted(profile.text),
        }

    def _record_gap(self, session: Session, window: OpenWindow, reference: ReferenceProfile | None) -> list[FindingSpec]:
        """Record the empty windows since the key's previous window, and report the gap when it is unlikely."""
        gap = record_empty_windows(session, window.app, window.model, window.start, self.settings.window_seconds,
                                   self.settings.traffic_max_gap_windows)
        if gap is None:
            return []
        expected = reference.event_count if reference is not None else None
        spec = check_gap(expected, gap.missing, gap.first_start, window.start, gap.recorded, self.checks)
        return [spec] if spec is not None else []


def _reference_json(reference: ReferenceProfile) -> dict[str, Any]:
    return {
        "id": reference.id, "model_version": reference.model_version, "source": reference.source,
        "source_window_start": as_utc(reference.source_window_start).isoformat(), "event_count": reference.event_count,
    }
