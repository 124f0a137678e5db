"""Silences: time ranges in which matching alerts send no notification and start no job.

A silence matches an alert when every matcher it sets (kind, subject, app, model) matches the
alert's label as a shell-style pattern (fnmatch, case-sensitive). It is active from starts_at
until ends_at and needs no clean-up: once ends_at passes it simply stops matching.
"""

from __future__ import annotations

import fnmatch
import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.errors import ControlPlaneError
from controlplane.store.models import Alert, Silence, utcnow
from controlplane.windows import as_utc

log = logging.getLogger(__name__)

MATCHER_FIELDS = ("kind", "subject", "app", "model")


def create_silence(
    session: Session,
    *,
    created_by: str,
    duration: timedelta,
    comment: str = "",
    kind: str | None = None,
    subject: str | None = None,
    app: str | None = None,
    model: str | None = None,
    starts_at: datetime | None = None,
) -> Silence:
    """Insert a silence that lasts `duration` from `starts_at` (now when None) and return it."""
    matchers = {"kind": kind, "subject": subject, "app": app, "model": model}
    if not any(matchers.values()):
        raise ControlPlaneError("a silence needs at least one matcher (kind, subject, app or model); without one it would silence every alert")
    if duration <= timedelta(0):
        raise ControlPlaneError(f"a silence must last longer than zero, got {duration}")
    if not created_by:
        raise ControlPlaneError("a silence needs its creator (created_by)")
    start = starts_at or utcnow()
    silence = Silence(
        **matchers, starts_at=start, ends_at=start + duration, created_by=created_by, comment=comment, created_at=utcnow()
    )
    session.add(silence)
    session.flush()
    log.info(
        "silence %d created by %s until %s: %s (%s)",
        silence.id, created_by, silence.ends_at.isoformat(), describe_matchers(silence), comment or "no comment",
    )
    return silence


def expire_silence(session: Session, silence_id: int, by: str, *, now: datetime | None = None) -> Silence:
    """End a silence now and record who ended it."""
    silence = session.get(Silence, silence_id, with_for_update=True)
    if silence is None:
        raise ControlPlaneError(f"silence {silence_id} not found; 'controlplane alerts silences' lists them")
    now = now or utcnow()
    if as_utc(silence.ends_at) <= now:
        raise ControlPlaneError(f"silence {silence_id} already ended at {as_utc(silence.ends_at).isoformat()}")
    silence.ends_at, silence.expired_by = now, by
    log.info("silence %d ended early by %s", silence.id, by)
    return silence


def is_active(silence: Silence, now: datetime) -> bool:
    """Return whether `silence` is in force at `now`."""
    return as_utc(silence.starts_at) <= now < as_utc(silence.ends_at)


def silence_matches(silence: Silence, alert: Alert) -> bool:
    """Return whether every matcher of `silence` matches the alert's label."""
    for name in MATCHER_FIELDS:
        pattern = getattr(silence, name)
        if pattern and not fnmatch.fnmatchcase(getattr(alert, name) or "", pattern):
            return False
    return True


def active_silences(session: Session, now: datetime | None = None) -> list[Silence]:
    """Return the silences in force at `now`, the one ending last first."""
    now = now or utcnow()
    query = select(Silence).where(Silence.starts_at <= now, Silence.ends_at > now).order_by(Silence.ends_at.desc())
    return list(session.scalars(query))


def matching_silence(session: Session, alert: Alert, now: datetime | None = None) -> Silence | None:
    """Return an active silence that matches `alert`, the one ending last, or None."""
    return next((silence for silence in active_silences(session, now) if silence_matches(silence, alert)), None)


def describe_matchers(silence: Silence) -> str:
    """Return the matchers as text, e.g. 'kind=safety app=assistant'."""
    return " ".join(f"{name}={getattr(silence, name)}" for name in MATCHER_FIELDS if getattr(silence, name))
