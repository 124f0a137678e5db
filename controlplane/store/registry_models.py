"""SQL tables of the improvement loop: dataset versions, adapters, evaluation reports, promotions.

Each row points at the one before it, so that a promotion can be traced back through its
evaluation report, adapter, dataset version and jobs to the alert that started the loop.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from controlplane.store.models import Base, utcnow

MODEL_STATUSES = ("candidate", "promoted", "rejected", "retired")
PROMOTION_ACTIONS = ("promote", "rollback")

# At most one promoted adapter per name, enforced by the database even when two promotions race.
_ONE_PROMOTED_WHERE = text("status = 'promoted'")


class DatasetVersion(Base):
    """A curated training and evaluation set written to disk (JSONL, Parquet and a manifest)."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    source_alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id"))
    source_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    since: Mapped[datetime]
    until: Mapped[datetime]
    selected_count: Mapped[int] = mapped_column(Integer)  # flagged interactions that matched the filters
    train_count: Mapped[int] = mapped_column(Integer)
    eval_count: Mapped[int] = mapped_column(Integer)
    preference_count: Mapped[int] = mapped_column(Integer)
    manifest: Mapped[dict[str, Any]]
    path: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))  # SHA-256 over the data files, see curation


class ModelVersion(Base):
    """A LoRA adapter trained on a dataset version, with its place in the promotion lifecycle."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        Index(
            "uq_model_versions_promoted_name",
            "name",
            unique=True,
            sqlite_where=_ONE_PROMOTED_WHERE,
            postgresql_where=_ONE_PROMOTED_WHERE,
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    base_model_path: Mapped[str] = mapped_column(Text)
    adapter_path: Mapped[str] = mapped_column(Text)
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    status: Mapped[str] = mapped_column(String(20), default="candidate", index=True)  # one of MODEL_STATUSES
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    package_version: Mapped[str] = mapped_column(String(40))
    config: Mapped[dict[str, Any]]  # LoRA and training hyperparameters
    training_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)


class EvaluationReport(Base):
    """The evaluation gate's verdict on an adapter against the model in use at the time."""

    __tablename__ = "evaluation_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    # None when the baseline was the base model without any adapter.
    baseline_model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    metrics: Mapped[dict[str, Any]]
    thresholds: Mapped[dict[str, Any]]
    passed: Mapped[bool] = mapped_column(Boolean)
    reasons: Mapped[list[Any]]  # one sentence per gate rule, failed or passed
    path: Mapped[str | None] = mapped_column(Text)  # the report JSON file
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Promotion(Base):
    """A change of the promoted adapter of one name: a promotion or a rollback."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    # The adapter that was promoted before this change; None when the base model was in use.
    previous_model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    action: Mapped[str] = mapped_column(String(20))  # one of PROMOTION_ACTIONS
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    evaluation_report_id: Mapped[int | None] = mapped_column(ForeignKey("evaluation_reports.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
