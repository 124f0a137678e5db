"""INSERT ... ON CONFLICT DO NOTHING for the two dialects the store supports."""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_ignore(session: Session, model: type, rows: Sequence[dict[str, Any]], conflict: Sequence[str]) -> None:
    """Insert `rows`, skipping any whose `conflict` columns match an existing row."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement = postgresql.insert(model).on_conflict_do_nothing(index_elements=list(conflict))
    elif dialect == "sqlite":
        statement = sqlite.insert(model).on_conflict_do_nothing(index_elements=list(conflict))
    else:
        raise NotImplementedError(f"insert_ignore supports postgresql and sqlite, not {dialect}")
    session.execute(statement, list(rows))
