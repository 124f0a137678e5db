"""SQL tables of drift (references as precomputed statistics, statistics of each closed window) and their writers.

Both store the JSON form of `controlplane.detectors.window_checks.Profile`: per feature a
sorted sample or counts and missing counts, per text field the mean embedding, covariance
traces and int8 prototypes. Measured sizes: about 2.5 kB for a window of 50 events and 35 kB
for 1000 events or more, plus about 37 kB when prompts and completions are embedded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from controlplane.errors import ConfigurationError
from controlplane.store.models import Base, DriftReference, WindowStats, utcnow
from controlplane.windows import as_utc, summarize

log = logging.getLogger(__name__)


class ReferenceProfile(Base):
    """The reference that windows of one (app, model, model version) are compared with."""

    __tablename__ = "reference_profiles"
    __table_args__ = (UniqueConstraint("app", "model", "model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    # "" when the events carry no model version, because a unique key treats NULLs as distinct.
    model_version: Mapped[str] = mapped_column(String(200), default="")
    source: Mapped[str] = mapped_column(String(20))  # "first_window" or "promoted"
    source_window_start: Mapped[datetime]
    event_count: Mapped[int] = mapped_column(Integer)  # events of the source window, the typical count per window
    profile: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))  # who promoted it, None when the worker set it


class WindowProfile(Base):
    """Statistics of one closed window, kept so that `controlplane reference promote` can make it the reference."""

    __tablename__ = "window_profiles"
    __table_args__ = (UniqueConstraint("app", "model", "window_start"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    window_start: Mapped[datetime] = mapped_column(index=True)
    model_version: Mapped[str] = mapped_column(String(200), default="")  # the most frequent version in the window
    event_count: Mapped[int] = mapped_column(Integer)
    profile: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def save_reference(
    session: Session, app: str, model: str, model_version: str, window_start: datetime, profile: dict[str, Any],
    event_count: int, source: str, created_by: str | None = None,
) -> ReferenceProfile:
    """Make a window's profile the reference of (app, model, model_version), replacing the one in use."""
    reference = session.scalar(
        select(ReferenceProfile).where(
            ReferenceProfile.app == app, ReferenceProfile.model == model, ReferenceProfile.model_version == model_version
        )
    )
    if reference is None:
        reference = ReferenceProfile(app=app, model=model, model_version=model_version)
        session.add(reference)
    reference.source, reference.source_window_start, reference.event_count = source, window_start, event_count
    reference.profile, reference.created_at, reference.created_by = profile, utcnow(), created_by
    # drift_references keeps one summary row per (app, model) for the readers of that table, such
    # as the dashboard's drift page. Its raw rows are no longer kept.
    summary = session.scalar(select(DriftReference).where(DriftReference.app == app, DriftReference.model == model))
    if summary is None:
        summary = DriftReference(app=app, model=model)
        session.add(summary)
    summary.source_window_start, summary.row_count, summary.rows, summary.created_at = window_start, event_count, [], utcnow()
    session.flush()
    log.info("drift reference set app=%s model=%s version=%r source=%s from window %s events=%d",
             app, model, model_version, source, window_start.isoformat(), event_count)
    return reference


def promote_window(
    session: Session, app: str, model: str, window_start: datetime, model_version: str | None, created_by: str, min_events: int
) -> ReferenceProfile:
    """Make the stored profile of a closed window the reference, for `model_version` or the window's most frequent one."""
    window = session.scalar(
        select(WindowProfile).where(
            WindowProfile.app == app, WindowProfile.model == model, WindowProfile.window_start == window_start
        )
    )
    if window is None:
        raise ConfigurationError(
            f"no stored profile of a window of {app}/{model} starting {window_start.isoformat()}: "
            "list closed windows with 'controlplane reference show --windows 20'"
        )
    if window.event_count < min_events:
        raise ConfigurationError(
            f"the window of {app}/{model} starting {window_start.isoformat()} has {window.event_count} events, "
            f"and a reference needs at least {min_events} (CONTROLPLANE_DRIFT_MIN_ROWS): choose a busier window"
        )
    version = window.model_version if model_version is None else model_version
    return save_reference(
        session, app, model, version, window_start, window.profile, window.event_count, "promoted", created_by
    )


@dataclass(frozen=True)
class Gap:
    """Empty windows between a key's previous window and the one closing."""

    missing: int
    recorded: int
    """The newest `recorded` of them got a no_data row."""
    first_start: datetime


def record_empty_windows(
    session: Session, app: str, model: str, start: datetime, window_seconds: float, max_rows: int
) -> Gap | None:
    """Add a no_data window_stats row for each window without events before `start`, at most the newest `max_rows`."""
    previous = session.scalar(
        select(func.max(WindowStats.window_start)).where(
            WindowStats.app == app, WindowStats.model == model, WindowStats.window_start < start
        )
    )
    if previous is None:
        return None
    length = timedelta(seconds=window_seconds)
    missing = round((start - as_utc(previous)) / length) - 1
    if missing <= 0:
        return None
    recorded = min(missing, max_rows)
    empty = summarize([])
    for index in range(recorded, 0, -1):
        window_start = start - index * length
        session.add(WindowStats(
            app=app, model=model, window_start=window_start, window_end=window_start + length,
            drift_status="no_data", drift_share=None,
            details={"drift": {"status": "no_data", "reason": "no events in this window"}}, **empty,
        ))
    first_start = as_utc(previous) + length
    log.info("no events app=%s model=%s in %d windows from %s, the newest %d recorded as no_data",
             app, model, missing, first_start.isoformat(), recorded)
    return Gap(missing, recorded, first_start)
