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


# -- bulk rows: COPY on PostgreSQL, INSERT elsewhere ----------------------------------------

ODD_ROWS = [  # what COPY's text format must escape, and NULL beside empty text
    {"line": 1, "word": "tab\there", "src": "sp", "tgt": "p", "output": None, "error": "a\\b\nc"},
    {"line": 2, "word": "naïve 'x' \"y\"", "src": "sp", "tgt": "p", "output": "ok", "error": None},
    {"line": 3, "word": "\\N", "src": "sp", "tgt": "p", "output": "", "error": "\r,;"},
]


def _new_job(url) -> int:
    from db.models import Job
    from db.session import session

    with session(url) as s:
        job = Job(kind="convert", params={}, queue="cpu")
        s.add(job)
        s.flush()
        return job.id


def _rows_of(url, job_id):
    from sqlalchemy import select

    from db.models import Conversion
    from db.session import session

    cols = [Conversion.line, Conversion.word, Conversion.src, Conversion.tgt]
    cols += [Conversion.output, Conversion.error]
    with session(url) as s:
        query = select(*cols).where(Conversion.job_id == job_id).order_by(Conversion.line)
        return [dict(r._mapping) for r in s.execute(query)]


def _statements(url) -> list[str]:
    from sqlalchemy import event

    seen: list[str] = []
    event.listen(engine(url), "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


@pytest.mark.parametrize("server", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_insert_rows_writes_every_value_back_unchanged(server, tmp_path):
    from db.models import Conversion
    from db.session import insert_rows, session

    url, admin = (f"sqlite:///{tmp_path / 'x.sqlite'}", None)
    if server == "postgres":
        url, admin = postgres_url()
    try:
        upgrade(url)
        job = _new_job(url)
        seen = _statements(url)
        with session(url) as s:
            insert_rows(s, Conversion, [{**r, "job_id": job} for r in ODD_ROWS])
        inserts = [q for q in seen if q.lstrip().upper().startswith("INSERT")]
        # PostgreSQL takes the rows by COPY, which SQLAlchemy does not see; SQLite by INSERT
        assert (inserts == []) == (server == "postgres"), inserts
        assert _rows_of(url, job) == ODD_ROWS
    finally:
        if admin:
            drop_postgres(url, admin)


@pytest.mark.postgres
def test_copy_on_a_lost_connection_is_retried_like_an_insert(monkeypatch):
    """The server drops the session's connection just before its COPY: the driver's error
    reaches ``retrying`` as SQLAlchemy's OperationalError, and the whole transaction runs
    again on a new connection, writing each row once."""
    import time

    from sqlalchemy import create_engine, text

    from db.models import Conversion
    from db.session import insert_rows, transaction

    url, admin = postgres_url()
    try:
        upgrade(url)
        monkeypatch.setenv("TENSEVAE_DATABASE_URL", url)  # where transaction() writes
        job = _new_job(url)
        attempts = []

        def work(s):
            attempts.append(s.scalar(text("SELECT pg_backend_pid()")))
            if len(attempts) == 1:
                with create_engine(admin, isolation_level="AUTOCOMMIT").connect() as c:
                    c.execute(text("SELECT pg_terminate_backend(:p)"), {"p": attempts[0]})
                    gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = :p"
                    while c.execute(text(gone), {"p": attempts[0]}).scalar():
                        time.sleep(0.05)
            insert_rows(s, Conversion, [{**r, "job_id": job} for r in ODD_ROWS])

        transaction(work, window_s=30)
        assert len(attempts) == 2 and attempts[0] != attempts[1]
        assert _rows_of(url, job) == ODD_ROWS
    finally:
        drop_postgres(url, admin)
