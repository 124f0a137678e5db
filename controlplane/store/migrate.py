"""Run the Alembic migrations from code (controlplane db upgrade, test fixtures)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.exc import SQLAlchemyError

import migrations
from controlplane.errors import StoreError

log = logging.getLogger(__name__)


def alembic_config(url: str) -> Config:
    """Build an Alembic config for `url` that finds the project's migrations wherever it is installed."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # ConfigParser treats % as interpolation; URLs with escaped passwords contain it.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision`."""
    try:
        command.upgrade(alembic_config(url), revision)
    except SQLAlchemyError as exc:
        raise StoreError(f"migration to {revision} failed on {_redact(url)}: {exc}") from exc
    log.info("database at %s upgraded to %s", _redact(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Downgrade the database at `url` to `revision` ('base' removes every table)."""
    try:
        command.downgrade(alembic_config(url), revision)
    except SQLAlchemyError as exc:
        raise StoreError(f"migration to {revision} failed on {_redact(url)}: {exc}") from exc


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def check_current(url: str) -> None:
    """Raise StoreError unless the database at `url` is at the latest revision."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from controlplane.store.engine import make_engine

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot reach the database at {_redact(url)}: {exc}") from exc
    finally:
        engine.dispose()
    if current != head:
        raise StoreError(
            f"database at {_redact(url)} is at revision {current or 'none'}, expected {head}: run 'controlplane db upgrade'"
        )
