"""The migrations build exactly the tables the models describe, on SQLite and PostgreSQL."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from db.migrate import current_revision, head_revision, upgrade
from db.models import Base
from db.session import engine
from tests.servers import drop_postgres, postgres_url


def _diff(url):
    upgrade(url)
    with engine(url).connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_sqlite_migration_matches_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    assert _diff(url) == []
    assert current_revision(url) == head_revision()


@pytest.mark.postgres
def test_postgres_migration_matches_models():
    url, admin = postgres_url()
    try:
        assert _diff(url) == []
        assert current_revision(url) == head_revision()
    finally:
        drop_postgres(url, admin)


def test_server_database_must_be_migrated_explicitly(monkeypatch):
    from db.migrate import SchemaError, ensure_schema

    url, admin = postgres_url()
    try:
        with pytest.raises(SchemaError, match="tensevae db upgrade"):
            ensure_schema(url)
    finally:
        drop_postgres(url, admin)


def test_retrying_rides_out_a_short_outage_and_gives_up_on_a_long_one(monkeypatch):
    from sqlalchemy.exc import OperationalError

    from db import session as dbs

    monkeypatch.setattr(dbs.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
        return "ok"

    assert dbs.retrying(flaky, window_s=60) == "ok" and len(calls) == 3

    def down():
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))

    with pytest.raises(dbs.DatabaseUnavailable, match="unreachable for 0 s"):
        dbs.retrying(down, window_s=0)

    def wrong():  # not an outage: no retry
        calls.append(1)
        raise ValueError("a bug")

    calls.clear()
    with pytest.raises(ValueError):
        dbs.retrying(wrong, window_s=60)
    assert len(calls) == 1
