"""Reads of the improvement loop for the dashboard: jobs, adapters, evaluation reports and promotions.

Like controlplane.store.queries, every read names its columns and is bounded.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import aliased

from controlplane.store.models import Job
from controlplane.store.queries import MAX_PAGE_SIZE, Page, clamp_limit, read_frame, read_scalar, utc_columns
from controlplane.store.registry_models import EvaluationReport, ModelVersion, Promotion

ERROR_EXCERPT_CHARS = 200

_JOB_LIST_COLUMNS = {
    "id": Job.id, "kind": Job.kind, "status": Job.status, "alert_id": Job.alert_id, "parent_job_id": Job.parent_job_id,
    "policy": Job.policy, "created_by": Job.created_by, "attempts": Job.attempts, "max_attempts": Job.max_attempts,
    "created_at": Job.created_at, "started_at": Job.started_at, "finished_at": Job.finished_at,
    "error": func.substr(Job.error, 1, ERROR_EXCERPT_CHARS),
}
_JOB_DETAIL_COLUMNS = {
    **{name: column for name, column in _JOB_LIST_COLUMNS.items() if name != "error"},
    "error": Job.error, "params": Job.params, "result": Job.result, "lease_owner": Job.lease_owner,
    "heartbeat_at": Job.heartbeat_at, "approved_by": Job.approved_by, "cancelled_by": Job.cancelled_by,
}
_TIMES = ("created_at", "started_at", "finished_at", "heartbeat_at")


def list_jobs(engine: Engine, statuses: Sequence[str] = (), kind: str | None = None, offset: int = 0, limit: int = 25) -> Page:
    """Return one page of jobs, newest first, with the first characters of each error."""
    conditions = []
    if statuses:
        conditions.append(Job.status.in_(list(statuses)))
    if kind:
        conditions.append(Job.kind == kind)
    limit = clamp_limit(limit)
    query = select(*_JOB_LIST_COLUMNS.values()).where(*conditions).order_by(Job.created_at.desc(), Job.id.desc())
    rows = utc_columns(read_frame(engine, query.offset(offset).limit(limit), list(_JOB_LIST_COLUMNS)), *_TIMES)
    total = read_scalar(engine, select(func.count()).select_from(Job).where(*conditions))
    return Page(rows, int(total or 0), offset, limit)


def job_kinds(engine: Engine) -> list[str]:
    """List the job kinds present in the store."""
    return sorted(read_frame(engine, select(Job.kind).distinct().limit(100), ["kind"])["kind"])


def job_detail(engine: Engine, job_id: int) -> dict[str, Any] | None:
    """Load one job with its parameters, result and full error text (the job's log)."""
    frame = read_frame(engine, select(*_JOB_DETAIL_COLUMNS.values()).where(Job.id == job_id), list(_JOB_DETAIL_COLUMNS))
    return None if frame.empty else utc_columns(frame, *_TIMES).iloc[0].to_dict()


def list_model_versions(engine: Engine, limit: int = MAX_PAGE_SIZE) -> pd.DataFrame:
    """List adapters, newest first, with their status in the promotion lifecycle."""
    columns = {
        "id": ModelVersion.id, "name": ModelVersion.name, "version": ModelVersion.version, "status": ModelVersion.status,
        "created_at": ModelVersion.created_at, "dataset_version_id": ModelVersion.dataset_version_id,
        "job_id": ModelVersion.job_id, "adapter_path": ModelVersion.adapter_path,
    }
    query = select(*columns.values()).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc()).limit(clamp_limit(limit))
    return utc_columns(read_frame(engine, query, list(columns)), "created_at")


def list_evaluation_reports(engine: Engine, limit: int = MAX_PAGE_SIZE) -> pd.DataFrame:
    """List evaluation reports, newest first, with the adapter each one judged."""
    columns = {
        "id": EvaluationReport.id, "model_version_id": EvaluationReport.model_version_id, "name": ModelVersion.name,
        "version": ModelVersion.version, "baseline_model_version_id": EvaluationReport.baseline_model_version_id,
        "dataset_version_id": EvaluationReport.dataset_version_id, "passed": EvaluationReport.passed,
        "created_at": EvaluationReport.created_at, "metrics": EvaluationReport.metrics,
        "thresholds": EvaluationReport.thresholds, "reasons": EvaluationReport.reasons,
    }
    query = (
        select(*columns.values()).join(ModelVersion, ModelVersion.id == EvaluationReport.model_version_id)
        .order_by(EvaluationReport.created_at.desc(), EvaluationReport.id.desc()).limit(clamp_limit(limit))
    )
    return utc_columns(read_frame(engine, query, list(columns)), "created_at")


def list_promotions(engine: Engine, limit: int = 50) -> pd.DataFrame:
    """List promotions and rollbacks, newest first."""
    previous = aliased(ModelVersion)
    columns = {
        "id": Promotion.id, "action": Promotion.action, "name": ModelVersion.name, "version": ModelVersion.version,
        "previous_version": previous.version, "actor": Promotion.actor, "reason": Promotion.reason,
        "evaluation_report_id": Promotion.evaluation_report_id, "created_at": Promotion.created_at,
    }
    query = (
        select(*columns.values()).join(ModelVersion, ModelVersion.id == Promotion.model_version_id)
        .outerjoin(previous, previous.id == Promotion.previous_model_version_id)
        .order_by(Promotion.created_at.desc(), Promotion.id.desc()).limit(clamp_limit(limit))
    )
    frame = utc_columns(read_frame(engine, query, list(columns)), "created_at")
    # A promotion that replaced the base model has no previous version; Int64 keeps the others integers.
    frame["previous_version"] = frame["previous_version"].astype("Int64")
    return frame


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested report metrics into dotted keys, e.g. {"candidate.eval.perplexity": 12.3}."""
    flat: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def compare_reports(reports: pd.DataFrame) -> pd.DataFrame:
    """Put reports side by side: one row per metric, one column per report."""
    columns = {}
    for report in reports.itertuples():
        label = f"report {report.id}: {report.name} v{report.version}"
        columns[label] = {"passed": bool(report.passed), **flatten_metrics(report.metrics)}
    return pd.DataFrame(columns)
