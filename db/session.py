"""Engines and sessions from TENSEVAE_DATABASE_URL (a SQLite file by default)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def home() -> Path:
    """Where the no-server default keeps its files (TENSEVAE_HOME, else ./tensevae-data)."""
    return Path(os.environ.get("TENSEVAE_HOME") or "tensevae-data").resolve()


def database_url() -> str:
    url = os.environ.get("TENSEVAE_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{home() / 'tensevae.sqlite'}"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, safe to print or log."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


def _normalise(url: str) -> str:
    # psycopg 3 is the PostgreSQL driver tensevae installs; plain postgresql:// means it.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@cache
def engine(url: str | None = None) -> Engine:
    url = _normalise(url or database_url())
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        eng = create_engine(url, connect_args={"timeout": 30})
        event.listen(eng, "connect", _sqlite_pragmas)
        return eng
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the CLI read while a worker writes; foreign keys are off by default in SQLite.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@cache
def _factory(url: str | None) -> sessionmaker[Session]:
    return sessionmaker(engine(url), expire_on_commit=False)


@contextmanager
def session(url: str | None = None) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any error."""
    s = _factory(url or database_url())()
    try:
        yield s
        s.commit()
    except BaseException:
        s.rollback()
        raise
    finally:
        s.close()


def is_sqlite(url: str | None = None) -> bool:
    return _normalise(url or database_url()).startswith("sqlite")
