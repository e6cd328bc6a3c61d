"""Alembic, driven from code: ``tensevae db upgrade`` and the no-server default call it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from .session import database_url, engine, is_sqlite


def alembic_config(url: str | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["url"] = url or database_url()
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def current_revision(url: str | None = None) -> str | None:
    with engine(url or database_url()).connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except Exception:
            return None


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


class SchemaError(RuntimeError):
    pass


def ensure_schema(url: str | None = None) -> None:
    """Migrate a SQLite database on first use; a server database must be migrated by
    ``tensevae db upgrade`` (one migration step, not every worker racing to do it)."""
    url = url or database_url()
    if current_revision(url) == head_revision():
        return
    if is_sqlite(url):
        upgrade(url)
        return
    raise SchemaError("the database is not at the current schema: run 'tensevae db upgrade'")
