"""The adapter registry: which adapter of a name is promoted, and how to change or undo that.

An adapter moves candidate -> promoted only through `promote`, which requires a passed
evaluation report made against the model promoted at that moment. The adapter it replaces
becomes retired. `rollback` restores the adapter promoted before the current one and marks
the current one rejected. Every change writes a Promotion row.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controlplane.errors import ControlPlaneError
from controlplane.export import session_scope
from controlplane.store.models import Job
from controlplane.store.registry_models import DatasetVersion, EvaluationReport, ModelVersion, Promotion

logger = logging.getLogger(__name__)

PROMOTABLE_STATUSES = ("candidate", "retired")


def current_model(session: Session, name: str) -> ModelVersion | None:
    """Return the promoted adapter of `name`, or None when the base model is in use."""
    return session.scalars(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.status == "promoted")).one_or_none()


def promote(session_or_engine: Session | Engine, model_version_id: int, actor: str, reason: str = "",
            evaluation_report_id: int | None = None) -> Promotion:
    """Promote an adapter whose evaluation report passed (its latest one, or the one given)."""
    try:
        with session_scope(session_or_engine) as session:
            candidate = _model_version(session, model_version_id)
            if candidate.status not in PROMOTABLE_STATUSES:
                raise ControlPlaneError(
                    f"model version {candidate.id} ({candidate.name} v{candidate.version}) is {candidate.status}: "
                    f"only {' or '.join(PROMOTABLE_STATUSES)} adapters can be promoted"
                )
            report = _passed_report(session, candidate, evaluation_report_id)
            previous = current_model(session, candidate.name)
            _check_baseline(candidate, report, previous)
            if previous is not None:
                previous.status = "retired"
                # The partial unique index allows one promoted row per name, so the old one must change first.
                session.flush()
            candidate.status = "promoted"
            promotion = Promotion(
                model_version_id=candidate.id, previous_model_version_id=previous.id if previous else None,
                action="promote", actor=actor, reason=reason, evaluation_report_id=report.id,
            )
            session.add(promotion)
            session.flush()
    except IntegrityError as error:
        raise ControlPlaneError(f"another promotion of model version {model_version_id}'s name ran at the same time: try again") from error
    logger.info(
        "promoted %s v%d (model version %d) by %s on report %d, replacing %s",
        candidate.name, candidate.version, candidate.id, actor, report.id,
        f"model version {previous.id}" if previous else "the base model",
    )
    return promotion


def rollback(session_or_engine: Session | Engine, actor: str, name: str | None = None, reason: str = "") -> Promotion:
    """Restore the adapter promoted before the current one of `name` (optional when only one name has one)."""
    with session_scope(session_or_engine) as session:
        current = _current_for_rollback(session, name)
        last_promotion = session.scalars(
            select(Promotion).where(Promotion.model_version_id == current.id, Promotion.action == "promote")
            .order_by(Promotion.created_at.desc(), Promotion.id.desc()).limit(1)
        ).first()
        if last_promotion is None or last_promotion.previous_model_version_id is None:
            raise ControlPlaneError(
                f"{current.name} v{current.version} (model version {current.id}) replaced the base model, so there is "
                "no earlier adapter to roll back to"
            )
        restored = _model_version(session, last_promotion.previous_model_version_id)
        if not Path(restored.adapter_path).is_dir():
            raise ControlPlaneError(f"the adapter of model version {restored.id} is missing at {restored.adapter_path}: restore the folder first")
        current.status = "rejected"
        session.flush()
        restored.status = "promoted"
        promotion = Promotion(
            model_version_id=restored.id, previous_model_version_id=current.id, action="rollback", actor=actor,
            reason=reason, evaluation_report_id=last_promotion.evaluation_report_id,
        )
        session.add(promotion)
        session.flush()
    logger.info("rolled back %s from v%d to v%d (model version %d) by %s", current.name, current.version,
                restored.version, restored.id, actor)
    return promotion


def lineage(session: Session, promotion_id: int) -> dict[str, Any]:
    """Return the ids behind a promotion: report, adapter, dataset version, jobs and alert."""
    promotion = session.get(Promotion, promotion_id)
    if promotion is None:
        raise ControlPlaneError(f"promotion {promotion_id} not found")
    model = session.get(ModelVersion, promotion.model_version_id)
    dataset = session.get(DatasetVersion, model.dataset_version_id)
    alert_id = dataset.source_alert_id
    if alert_id is None and model.job_id is not None:
        alert_id = session.get(Job, model.job_id).alert_id
    return {
        "promotion_id": promotion.id,
        "action": promotion.action,
        "evaluation_report_id": promotion.evaluation_report_id,
        "model_version_id": model.id,
        "dataset_version_id": dataset.id,
        "fine_tune_job_id": model.job_id,
        "curation_job_id": dataset.source_job_id,
        "alert_id": alert_id,
    }


def _model_version(session: Session, model_version_id: int) -> ModelVersion:
    model = session.get(ModelVersion, model_version_id)
    if model is None:
        raise ControlPlaneError(f"model version {model_version_id} not found: list them with 'controlplane models list'")
    return model


def _passed_report(session: Session, model: ModelVersion, report_id: int | None) -> EvaluationReport:
    query = select(EvaluationReport).where(EvaluationReport.model_version_id == model.id)
    if report_id is not None:
        query = query.where(EvaluationReport.id == report_id)
    report = session.scalars(query.order_by(EvaluationReport.created_at.desc(), EvaluationReport.id.desc()).limit(1)).first()
    if report is None:
        missing = f"report {report_id}" if report_id is not None else "an evaluation report"
        raise ControlPlaneError(f"model version {model.id} has no {missing}: run the evaluation gate before promoting it")
    if not report.passed:
        failed = "; ".join(reason for reason in report.reasons if reason.startswith("failed")) or "see the report"
        raise ControlPlaneError(f"model version {model.id} failed the evaluation gate (report {report.id}): {failed}")
    return report


def _check_baseline(model: ModelVersion, report: EvaluationReport, current: ModelVersion | None) -> None:
    # A report only shows that the adapter beats the model it was compared with, which may no longer be in use.
    current_id = current.id if current else None
    if report.baseline_model_version_id != current_id:
        compared = f"model version {report.baseline_model_version_id}" if report.baseline_model_version_id else "the base model"
        in_use = f"model version {current_id}" if current_id else "the base model"
        raise ControlPlaneError(
            f"report {report.id} compared model version {model.id} with {compared}, but {in_use} is in use now: evaluate it again"
        )


def _current_for_rollback(session: Session, name: str | None) -> ModelVersion:
    query = select(ModelVersion).where(ModelVersion.status == "promoted")
    if name is not None:
        query = query.where(ModelVersion.name == name)
    promoted = list(session.scalars(query))
    if not promoted:
        raise ControlPlaneError(f"no promoted adapter{f' named {name!r}' if name else ''}: nothing to roll back")
    if len(promoted) > 1:
        names = ", ".join(sorted(model.name for model in promoted))
        raise ControlPlaneError(f"several names have a promoted adapter ({names}): choose one with --name")
    return promoted[0]
