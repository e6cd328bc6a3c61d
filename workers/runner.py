"""Run one job: claim its row, call the pipeline, write results, record how it ended.

The Celery tasks call ``run_job``; so does ``tensevae ... --wait`` when no worker listens
in the no-server default. A job is claimed atomically, so a second delivery of its message
(a worker died, two workers on one queue) never runs it twice at once."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import undefer

from db.models import Checkpoint, Job, Worker, utcnow
from db.session import DatabaseUnavailable, session, transaction
from db.states import FINAL_STATES

from . import settings

log = logging.getLogger("tensevae.runner")


class Cancelled(Exception):
    pass


class TimeLimit(Exception):
    pass


class LostClaim(Exception):
    """Another worker took the job over (this one was presumed dead)."""


# -- claiming and finishing ----------------------------------------------------------------


def claim(job_id: int, worker: str) -> Job | None:
    """Mark the job running for this worker, if it is queued or its worker went silent."""
    return transaction(lambda s: _claim(s, job_id, worker))


def _claim(s, job_id: int, worker: str) -> Job | None:
    stale = utcnow() - timedelta(seconds=settings.stale_after_s())
    now = utcnow()
    took = s.execute(
        update(Job)
        .where(Job.id == job_id)
        .where(or_(Job.state == "queued", (Job.state == "running") & (Job.heartbeat_at < stale)))
        .values(
            state="running",
            worker=worker,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
        )
    ).rowcount
    # The handler reads params after this session closes: load them now (they are deferred).
    return s.get(Job, job_id, options=[undefer(Job.params)]) if took else None


def _finish(job_id: int, worker: str, state: str, **values: Any) -> bool:
    def write(s) -> bool:
        ended = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker == worker, Job.state == "running")
            .values(state=state, finished_at=utcnow(), **values)
        ).rowcount
        if ended and state == "succeeded":
            # A checkpoint (weights, optimizer moments, averages: 30 MB for the shipped config,
            # 4 times its model) serves to resume; a succeeded job's model is stored, and it is never run again.
            # A failed or cancelled job keeps its own for `tensevae retry`.
            s.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id))
        return bool(ended)

    return transaction(write)


def touch_in(s, job_id: int, worker: str, **values: Any) -> bool:
    """Heartbeat (and progress) for a running job inside session ``s``, so it commits with
    the results written beside it; False when the job is no longer this worker's."""
    held = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.state == "running")
        .values(heartbeat_at=utcnow(), **values)
    )
    return bool(held.rowcount)


def touch(job_id: int, worker: str, **values: Any) -> bool:
    return transaction(lambda s: touch_in(s, job_id, worker, **values))


class JobContext:
    """What a handler may ask while it runs: progress, cancellation, the time limit."""

    def __init__(self, job: Job, worker: str):
        self.job, self.worker = job, worker
        self.deadline = time.monotonic() + (job.time_limit_s or settings.time_limit(job.kind))
        self._checked, self._cancel = 0.0, False

    def progress(self, fraction: float, message: str | None = None, s=None) -> None:
        """Record progress (in session ``s`` when given); LostClaim if the job is not ours."""
        values = {"progress": min(1.0, fraction), "message": message}
        held = (
            touch_in(s, self.job.id, self.worker, **values)
            if s is not None
            else touch(self.job.id, self.worker, **values)
        )
        if not held:
            raise LostClaim(f"job {self.job.id} is no longer held by {self.worker}")

    def check(self) -> None:
        """Raise Cancelled or TimeLimit; asks the database at most once a second."""
        if time.monotonic() > self.deadline:
            raise TimeLimit(
                f"time limit of {self.job.time_limit_s or settings.time_limit(self.job.kind):.0f} s reached"
            )
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now

            def read(s) -> bool:
                return bool(s.scalar(select(Job.cancel_requested).where(Job.id == self.job.id)))

            self._cancel = transaction(read)
        if self._cancel:
            raise Cancelled()

    def should_stop(self) -> bool:
        self.check()
        return False


# -- the heartbeat thread --------------------------------------------------------------------


class _Beat:
    def __init__(self):
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.current: tuple[int, str] | None = None


_beat = _Beat()


def start_heartbeat(name: str, queues: list[str]) -> None:
    """Announce this worker and keep its running job's heartbeat fresh; also put back on
    the queue any job whose worker went silent."""
    if _beat.thread is not None:
        return
    _beat.stop.clear()
    with session() as s:
        s.merge(
            Worker(
                name=name,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                queues=",".join(queues),
                started_at=utcnow(),
                heartbeat_at=utcnow(),
            )
        )

    def loop():
        while not _beat.stop.wait(settings.heartbeat_s()):
            try:
                current = _beat.current
                with session() as s:
                    s.execute(
                        update(Worker)
                        .where(Worker.name == name)
                        .values(
                            heartbeat_at=utcnow(), current_job_id=current[0] if current else None
                        )
                    )
                if current:
                    touch(*current)
                requeue_stale(queues)
                resend_lost(queues)
            except Exception as e:  # a lost database must not kill the worker
                log.warning("heartbeat failed: %s", settings.redact(str(e).splitlines()[0]))

    _beat.thread = threading.Thread(target=loop, name="tensevae-heartbeat", daemon=True)
    _beat.thread.start()
    _beat.name = name


def stop_heartbeat() -> None:
    _beat.stop.set()
    name = getattr(_beat, "name", None)
    _beat.thread = None
    if name:
        try:
            with session() as s:
                s.execute(delete(Worker).where(Worker.name == name))
        except Exception as e:
            log.warning("could not deregister worker: %s", settings.redact(e))


def requeue_stale(queues: list[str]) -> list[int]:
    """Jobs of these queues left running by a dead worker go back to queued and are sent
    again; the runner resumes training from the last checkpoint."""
    stale = utcnow() - timedelta(seconds=settings.stale_after_s())
    with session() as s:
        ids = list(
            s.scalars(
                select(Job.id).where(
                    Job.state == "running", Job.heartbeat_at < stale, Job.queue.in_(queues)
                )
            )
        )
        for job_id in ids:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == "running", Job.heartbeat_at < stale)
                .values(state="queued", message="worker lost; requeued")
            )
    if ids:
        from .jobs import send

        for job_id in ids:
            log.warning("job %s lost its worker; requeued", job_id)
            with session() as s:
                job = s.get(Job, job_id)
                send(job.id, job.kind, job.queue)
    return ids


def resend_lost(queues: list[str], older_than_s: float | None = None) -> list[int]:
    """Send again the jobs left queued while their broker queue is empty: a Redis restarted
    without persistence loses its messages, never the database's rows. A duplicate message
    is harmless (the claim is atomic), so this errs on the side of sending."""
    if settings.is_embedded_broker():
        return []  # the embedded broker keeps its messages in its own database
    import redis

    r = redis.Redis.from_url(settings.broker_url(), socket_timeout=5)
    age = settings.resend_after_s() if older_than_s is None else older_than_s
    before = utcnow() - timedelta(seconds=age)
    sent = []
    for q in queues:
        if r.llen(q):
            continue
        with session() as s:
            rows = s.execute(select(Job.id, Job.kind).where(
                Job.state == "queued", Job.queue == q, Job.created_at < before,
                Job.cancel_requested.is_(False)).order_by(Job.id).limit(1000)).all()  # fmt: skip
        from .jobs import send

        for job_id, kind in rows:
            send(job_id, kind, q)
            sent.append(job_id)
    if sent:
        log.warning("resent %d queued jobs whose messages were lost: %s", len(sent), sent[:20])
    return sent


# -- running -----------------------------------------------------------------------------------


def run_job(job_id: Any, worker: str) -> str:
    """Run a job to its end and return its final state ('skipped' when not ours to run,
    'abandoned' when the database stayed away: the job is then left running, and a worker's
    heartbeat puts it back on the queue once the database answers and its heartbeat is stale;
    training resumes from its last checkpoint)."""
    try:
        job_id = int(job_id)
    except (TypeError, ValueError):
        log.error("rejected a message with job id %r: not a number", job_id)
        return "rejected"
    try:
        return _run(job_id, worker)
    except DatabaseUnavailable as e:
        log.error("job %s abandoned: %s; it is requeued once the database is back", job_id, e)
        return "abandoned"


def _open(s, job_id: int) -> str | None:
    """Settle what needs no claim: a job that does not exist, has ended or was cancelled
    while queued; None when it is there to be run."""
    job = s.get(Job, job_id)
    if job is None:
        log.error("rejected a message for job %s: no such job", job_id)
        return "rejected"
    if job.state in FINAL_STATES:
        return "skipped"
    if job.cancel_requested and job.state == "queued":
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "queued")
            .values(state="cancelled", finished_at=utcnow())
        )
        return "cancelled"
    return None


def _run(job_id: int, worker: str) -> str:
    settled = transaction(lambda s: _open(s, job_id))
    if settled is not None:
        return settled
    job = claim(job_id, worker)
    if job is None:
        return "skipped"
    from .handlers import HANDLERS

    ctx = JobContext(job, worker)
    _beat.current = (job_id, worker)
    try:
        result = HANDLERS[job.kind](job, ctx)
    except Cancelled:
        _finish(job_id, worker, "cancelled", message="cancelled")
        return "cancelled"
    except LostClaim as e:
        log.warning("%s", e)
        return "skipped"
    except DatabaseUnavailable:
        raise
    except Exception as e:
        reason = _reason(e)
        log.error("job %s failed: %s\n%s", job_id, reason, settings.redact(traceback.format_exc()))
        _finish(job_id, worker, "failed", error=reason)
        return "failed"
    finally:
        _beat.current = None
    _finish(job_id, worker, "succeeded", progress=1.0, result=result, message="done")
    return "succeeded"


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return settings.redact(f"{type(e).__name__}: {text}" if text else type(e).__name__)


def latest_checkpoint(job_id: int) -> bytes | None:
    def read(s) -> bytes | None:
        row = s.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == job_id)
            .order_by(Checkpoint.epoch.desc())
            .limit(1)
        ).first()
        return row.data if row else None

    return transaction(read)
