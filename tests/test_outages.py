"""Servers lost mid-job, for real: a Redis of this machine's killed and started again, and
the PostgreSQL connection cut by a proxy. Workers reconnect, or leave the job to be
resumed; nothing is lost, nothing is written twice, nothing hangs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
from sqlalchemy import select

from tests.servers import (
    POSTGRES_URL,
    Backend,
    PrivateRedis,
    TcpProxy,
    drop_postgres,
    postgres_url,
    redis_url,
    wait_for,
)

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

TRAIN = [
    "train.threads=1",
    "train.eval_gaussian_draws=0",
    "train.eval_every=100",
    "train.max_lines=300",
    "train.val_fraction=0",
]


def _submit_train(epochs: int) -> int:
    from pipeline.config import load_config
    from workers.jobs import submit

    cfg = load_config("tiny", [*TRAIN, f"train.epochs={epochs}"])
    return submit("train", {"config": cfg.to_dict(), "bleu_samples": 1, "gaussian_draws": 1})


def _epochs_written(job_id: int) -> list[int]:
    from db.models import EpochMetric
    from db.session import session

    with session() as s:
        return list(s.scalars(select(EpochMetric.epoch).where(EpochMetric.job_id == job_id)))


def _wait_epochs(job_id: int, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while len(_epochs_written(job_id)) < n:
        assert time.time() < deadline, f"job {job_id} wrote no epoch {n} in {timeout} s"
        time.sleep(0.1)


@pytest.fixture
def database():
    url, admin = postgres_url()
    yield url
    drop_postgres(url, admin)


def test_redis_restarted_mid_job(tmp_path, database):
    """Redis dies and comes back empty while a job trains and another waits in its queue:
    the running job finishes, the lost message is sent again, the worker reconnects."""
    redis_url()  # skips (or fails under TENSEVAE_REQUIRE_SERVERS) without Redis
    server = PrivateRedis(tmp_path)
    server.start()
    env = {
        "TENSEVAE_HOME": str(tmp_path),
        "TENSEVAE_BROKER_URL": server.url,
        "TENSEVAE_DATABASE_URL": database,
        "TENSEVAE_HEARTBEAT": "0.5",
        "TENSEVAE_RESEND_AFTER": "2",
    }
    try:
        with Backend("private-redis", env) as b:
            from db.migrate import upgrade
            from workers.jobs import submit

            upgrade()
            b.start_worker("w1")
            train = _submit_train(epochs=8)
            _wait_epochs(train, 2)
            waiting = submit("generate", {"n": 3})  # queued behind the training job
            server.restart()
            after = submit("generate", {"n": 3})  # sent to the new, empty Redis
            jobs = [wait_for(j, timeout=240) for j in (train, waiting, after)]
            assert [j["state"] for j in jobs] == ["succeeded"] * 3, [j["error"] for j in jobs]
            assert jobs[0]["attempts"] == 1  # the running job was never interrupted
            assert sorted(_epochs_written(train)) == list(range(1, 9))
            assert b.procs[0].poll() is None  # the worker lived through it
    finally:
        server.stop()


@contextmanager
def _training_behind_a_proxy(tmp_path, database, epochs: int, **env: str):
    """A worker whose PostgreSQL connection runs through a TcpProxy, training a job that
    has written two epochs when this yields (backend, proxy, job id)."""
    host_port = POSTGRES_URL.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    proxy = TcpProxy(host, int(port))
    env = {
        "TENSEVAE_HOME": str(tmp_path),
        "TENSEVAE_BROKER_URL": redis_url(),
        "TENSEVAE_DATABASE_URL": database.replace(host_port, f"127.0.0.1:{proxy.port}"),
        "TENSEVAE_HEARTBEAT": "0.5",
        **env,
    }
    with Backend("proxied-postgres", env) as b:
        from db.migrate import upgrade

        upgrade()
        b.start_worker("w1")
        job = _submit_train(epochs=epochs)
        _wait_epochs(job, 2)
        yield b, proxy, job


def test_database_cut_briefly_mid_job_is_retried(tmp_path, database):
    """The database connection drops for a few seconds, shorter than TENSEVAE_DB_RETRY:
    the worker retries its writes and the job ends as if nothing happened; the command
    run meanwhile says in one line that the database is unreachable."""
    with _training_behind_a_proxy(tmp_path, database, 10, TENSEVAE_DB_RETRY="60") as (
        _,
        proxy,
        job,
    ):
        proxy.cut()
        start = time.monotonic()
        cli = subprocess.run(
            [sys.executable, "-m", "workers.cli", "jobs"],
            capture_output=True,
            text=True,
            env={**os.environ, "TENSEVAE_DB_CONNECT_TIMEOUT": "3"},
            timeout=60,
        )
        took = time.monotonic() - start
        time.sleep(max(0.0, 4 - took))
        proxy.restore()
        assert cli.returncode == 2 and cli.stdout == "", cli
        assert len(cli.stderr.strip().splitlines()) == 1 and "unreachable" in cli.stderr
        assert "Traceback" not in cli.stderr and took < 30
        done = wait_for(job, timeout=240)
        assert done["state"] == "succeeded", done["error"]
        assert done["attempts"] == 1 and not done["result"]["resumed"]
        assert sorted(_epochs_written(job)) == list(range(1, 11))  # each epoch once


def test_database_gone_longer_than_the_retry_window(tmp_path, database):
    """The database stays away past TENSEVAE_DB_RETRY: the worker gives the job up without
    a half-written result; once the database is back, the job is found stale, requeued
    and resumed from its last checkpoint, each epoch recorded once. The stale window (5 s,
    ten heartbeats) leaves room for a heartbeat delayed by a loaded machine, which would
    requeue the job while its worker still runs it; the outage (8 s) outlasts it."""
    with _training_behind_a_proxy(
        tmp_path, database, 10, TENSEVAE_STALE_AFTER="5", TENSEVAE_DB_RETRY="1"
    ) as (_, proxy, job):
        proxy.cut()
        time.sleep(8)
        proxy.restore()
        done = wait_for(job, timeout=240)
        log = (tmp_path / "w1.log").read_text()
        assert done["state"] == "succeeded", done["error"]
        assert done["attempts"] == 2 and done["result"]["resumed"]
        assert "abandoned" in log and "requeued" in log
        assert sorted(_epochs_written(job)) == list(range(1, 11))
