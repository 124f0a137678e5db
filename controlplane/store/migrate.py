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
