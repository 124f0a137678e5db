"""Writes of the dashboard: alerts, review labels, exports, jobs, promotions and logins, each audited.

Every function takes the acting `User`, raises PermissionDenied for a viewer where operators
alone may act, and records who did what in the audit log in the same transaction as the change.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from controlplane import jobs
from controlplane.alerting.lifecycle import acknowledge, get_alert, resolve
from controlplane.alerting.silences import create_silence, expire_silence
from controlplane.auth import PermissionDenied, User
from controlplane.finetune import registry
from controlplane.store.audit_models import AuditEntry
from controlplane.store.engine import transaction
from controlplane.store.models import FlaggedInteraction, utcnow
from controlplane.store.queries import FLAGGED_FULL_COLUMNS, LABELS, MAX_EXPORT_ROWS

log = logging.getLogger(__name__)


def _require_operator(user: User, action: str) -> None:
    if not user.can_act:
        raise PermissionDenied(f"{user.name} has the {user.role} role and cannot {action}: log in as an operator")


def _audit(session: Session, user: User, action: str, target_kind: str | None, target_ids: Sequence[Any], details: dict[str, Any]) -> None:
    ids = ",".join(str(value) for value in target_ids) or None
    session.add(
        AuditEntry(actor=user.name, role=user.role, action=action, target_kind=target_kind, target_id=ids, details=details)
    )


def label_flagged(engine: Engine, ids: Sequence[int], label: str, correction: str | None, user: User) -> int:
    """Set the review label, and the correction when one is written, of flagged interactions; return the rows changed."""
    _require_operator(user, "label interactions")
    if label not in LABELS:
        raise ValueError(f"invalid label {label!r}: use one of {', '.join(LABELS)}")
    correction = (correction or "").strip() or None
    if correction is not None and label != "incorrect":
        raise ValueError("a correction means the completion was incorrect: label it 'incorrect' or clear the correction")
    with transaction(engine) as session:
        found = list(session.scalars(select(FlaggedInteraction.id).where(FlaggedInteraction.id.in_([int(i) for i in ids]))))
        if found:
            session.execute(
                update(FlaggedInteraction).where(FlaggedInteraction.id.in_(found)).values(label=label, correction=correction)
            )
        # The correction text may contain personal data, so the audit entry records only whether there was one.
        _audit(session, user, "flagged.label", "flagged_interactions", found, {"label": label, "correction": correction is not None})
    log.info("labelled %d flagged interactions as %s by %s", len(found), label, user.name)
    return len(found)


# ----- alerts -----


def acknowledge_alert(engine: Engine, alert_id: int, user: User) -> None:
    """Acknowledge a firing alert; raise ControlPlaneError when its status does not allow it."""
    _require_operator(user, "acknowledge alerts")
    with transaction(engine) as session:
        acknowledge(session, alert_id, user.name)
        _audit(session, user, "alert.acknowledge", "alerts", [alert_id], {})


def resolve_alert(engine: Engine, alert_id: int, user: User) -> None:
    """Resolve an open alert; raise ControlPlaneError when it is already resolved."""
    _require_operator(user, "resolve alerts")
    with transaction(engine) as session:
        resolve(session, alert_id, user.name)
        _audit(session, user, "alert.resolve", "alerts", [alert_id], {})


def silence_alert(engine: Engine, alert_id: int, duration: timedelta, user: User, comment: str = "") -> int:
    """Silence alerts like this one (same kind, subject, app and model) for `duration`; return the silence id."""
    _require_operator(user, "silence alerts")
    with transaction(engine) as session:
        alert = get_alert(session, alert_id)
        # Alerts opened before the kind and subject columns existed carry them in details only.
        kind = alert.kind or (alert.details or {}).get("kind") or None
        subject = alert.subject or (alert.details or {}).get("subject") or None
        silence = create_silence(session, created_by=user.name, duration=duration, comment=comment,
                                 kind=kind, subject=subject, app=alert.app, model=alert.model)
        _audit(session, user, "alert.silence", "alerts", [alert_id],
               {"silence_id": silence.id, "ends_at": silence.ends_at.isoformat(), "comment": comment})
        return silence.id


def end_silence(engine: Engine, silence_id: int, user: User) -> None:
    """End a silence now."""
    _require_operator(user, "end silences")
    with transaction(engine) as session:
        expire_silence(session, silence_id, user.name)
        _audit(session, user, "silence.expire", "silences", [silence_id], {})


@dataclass(frozen=True)
class ExportFile:
    """An export ready for download: file name, content and what it contains."""

    name: str
    data: bytes
    rows: int
    scrubbed: bool
    pii_replaced: dict[str, int]


def export_flagged_ids(engine: Engine, ids: Sequence[int], fmt: str, user: User, scrub: bool = True,
                       pii_detector: Any | None = None) -> ExportFile:
    """Export the chosen flagged interactions in a `controlplane export` format, PII scrubbed unless `scrub` is False."""
    from controlplane import export

    if fmt not in export.FORMATS:
        raise ValueError(f"invalid export format {fmt!r}: choose one of {', '.join(export.FORMATS)}")
    if not scrub:
        _require_operator(user, "export personal data unscrubbed")
    requested = [int(value) for value in ids][:MAX_EXPORT_ROWS]
    query = (
        select(*FLAGGED_FULL_COLUMNS.values()).where(FlaggedInteraction.id.in_(requested))
        .order_by(FlaggedInteraction.event_time, FlaggedInteraction.id)
    )
    with engine.connect() as connection:
        # NOTE: _export_row and _write_export are private to controlplane.export, which exports by time range only.
        # Calling them keeps the dashboard's files identical to the CLI's until that module offers an export by ids.
        rows = [export._export_row(row) for row in connection.execute(query)]
    scrubber = export.Scrubber(pii_detector) if scrub else None
    if scrubber is not None:
        for row in rows:
            for name in ("prompt", "completion", "correction"):
                row[name] = scrubber.scrub(row[name])
    name = export.safe_filename(f"flagged_{len(rows)}-rows_{export.time_stamp(utcnow())}", fmt)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        export._write_export(path, rows, fmt)
        data = path.read_bytes()
    replaced = dict(scrubber.replaced) if scrubber else {}
    with transaction(engine) as session:
        _audit(session, user, "flagged.export", "flagged_interactions", requested[:1000],
               {"format": fmt, "rows": len(rows), "pii_scrubbed": scrub, "pii_replaced": replaced})
    return ExportFile(name, data, len(rows), scrub, replaced)


def record_login(engine: Engine, user: User) -> None:
    """Record a successful login."""
    with transaction(engine) as session:
        _audit(session, user, "login", None, [], {})


# ----- jobs and the model registry -----


def promote_model(engine: Engine, model_version_id: int, user: User, reason: str = "") -> int:
    """Promote an adapter whose latest evaluation report passed; return the promotion id."""
    _require_operator(user, "promote adapters")
    with transaction(engine) as session:
        promotion = registry.promote(session, model_version_id, user.name, reason)
        _audit(session, user, "model.promote", "model_versions", [model_version_id], {"promotion_id": promotion.id, "reason": reason})
        return promotion.id


def rollback_model(engine: Engine, name: str, user: User, reason: str = "") -> int:
    """Restore the adapter of `name` promoted before the current one; return the promotion id."""
    _require_operator(user, "roll back adapters")
    with transaction(engine) as session:
        promotion = registry.rollback(session, user.name, name=name, reason=reason)
        _audit(session, user, "model.rollback", "model_versions", [promotion.model_version_id],
               {"promotion_id": promotion.id, "name": name, "reason": reason})
        return promotion.id


def change_job(engine: Engine, job_id: int, change: str, user: User) -> None:
    """Approve, cancel or retry a job; raise ControlPlaneError when its status does not allow it."""
    functions = {"approve": jobs.approve_job, "cancel": jobs.cancel_job, "retry": jobs.retry_job}
    if change not in functions:
        raise ValueError(f"invalid job change {change!r}: use one of {', '.join(functions)}")
    _require_operator(user, f"{change} jobs")
    with transaction(engine) as session:
        functions[change](session, job_id, user.name)
        _audit(session, user, f"job.{change}", "jobs", [job_id], {})
