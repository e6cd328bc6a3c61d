"""The backends a job-system test runs against: the no-server default, and the real
Redis and PostgreSQL of this machine (skipped with a reason where absent, and a failure
when TENSEVAE_REQUIRE_SERVERS=1, as .ci/run sets)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REDIS_URL = os.environ.get("TENSEVAE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "TENSEVAE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def unavailable(reason: str):
    if os.environ.get("TENSEVAE_REQUIRE_SERVERS") == "1":
        pytest.fail(f"required server missing: {reason}")
    pytest.skip(reason)


def redis_url() -> str:
    import redis

    try:
        r = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        r.ping()
    except Exception as e:
        unavailable(f"Redis at {REDIS_URL} unreachable ({type(e).__name__})")
    r.flushdb()
    return REDIS_URL


def postgres_url() -> tuple[str, str]:
    """A fresh database on the server (and the admin URL to drop it with)."""
    from sqlalchemy import create_engine, text

    admin = POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        eng = create_engine(admin, isolation_level="AUTOCOMMIT")
        name = f"tensevae_test_{uuid.uuid4().hex[:10]}"
        with eng.connect() as c:
            c.execute(text(f"CREATE DATABASE {name}"))
    except Exception as e:
        unavailable(f"PostgreSQL at {POSTGRES_URL} unreachable ({type(e).__name__})")
    return admin.rsplit("/", 1)[0] + "/" + name, admin


def drop_postgres(url: str, admin: str) -> None:
    from sqlalchemy import create_engine, text

    from db.session import engine

    engine(url).dispose()
    name = url.rsplit("/", 1)[1]
    with create_engine(admin, isolation_level="AUTOCOMMIT").connect() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


class Backend:
    def __init__(self, name: str, env: dict[str, str]):
        self.name, self.env = name, env
        self.procs: list[subprocess.Popen] = []

    def __enter__(self):
        self._saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            stop(p)
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def start_worker(self, name: str, queues: str = "gpu,cpu", **env: str) -> subprocess.Popen:
        """A real worker process; returns once it has announced itself in the database."""
        from db.queries import queue_status

        log = open(Path(self.env["TENSEVAE_HOME"]) / f"{name}.log", "w")  # noqa: SIM115
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers.cli",
                "worker",
                "--queues",
                queues,
                "--name",
                name,
                "--loglevel",
                "warning",
            ],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(p)
        deadline = time.time() + 60
        while time.time() < deadline:
            if any(name in w["name"] for w in queue_status()["workers"]):
                return p
            if p.poll() is not None:
                raise RuntimeError(f"worker {name} exited: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.3)
        raise RuntimeError(f"worker {name} did not start: {Path(log.name).read_text()[-2000:]}")


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for(
    job_id: int, states=("succeeded", "failed", "cancelled"), timeout: float = 180
) -> dict:
    from db.queries import get_job

    deadline = time.time() + timeout
    while time.time() < deadline:
        job = get_job(job_id)
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")
