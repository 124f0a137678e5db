"""SQL table of the audit log: one row per action a person took through the dashboard."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from controlplane.store.models import Base, utcnow


class AuditEntry(Base):
    """An action (alert acknowledged, interaction labelled, export, promotion, login) and who took it."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))  # the name typed at login, or "local:<os user>" without login
    role: Mapped[str] = mapped_column(String(20))  # "operator" or "viewer"
    action: Mapped[str] = mapped_column(String(60), index=True)  # e.g. "alert.acknowledge", "flagged.export"
    target_kind: Mapped[str | None] = mapped_column(String(60))  # table of the target row, e.g. "alerts"
    target_id: Mapped[str | None] = mapped_column(Text)  # id, or comma-separated ids, of the target rows
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
