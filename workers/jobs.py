"""Submitting, sending and cancelling jobs: what the CLI and tests call."""

from __future__ import annotations

import getpass
import logging
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import select, update

from db.migrate import ensure_schema
from db.models import Job, Model, utcnow
from db.session import session
from db.states import ACTIVE_STATES, FINAL_STATES

from . import settings

log = logging.getLogger("tensevae.jobs")


class BrokerError(RuntimeError):
    def __init__(self, message: str, job_id: int | None = None):
        super().__init__(message)
        self.job_id = job_id


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def send(job_id: int, kind: str, queue: str) -> None:
    """Put the job's id on its queue; the job's row already says everything else."""
    from .app import app_for

    try:
        app_for(settings.broker_url()).send_task(
            f"tensevae.{kind}",
            args=[job_id],
            queue=queue,
            routing_key=queue,
            retry=True,
            retry_policy={
                "max_retries": 3,
                "interval_start": 0.5,
                "interval_step": 1,
                "interval_max": 3,
            },
        )
    except Exception as e:
        raise BrokerError(
            f"could not reach the broker at {settings.redact(settings.broker_url())}: "
            f"{type(e).__name__}"
        ) from None


def submit(
    kind: str,
    params: dict[str, Any],
    *,
    queue: str | None = None,
    time_limit_s: float | None = None,
    input_model_id: int | None = None,
) -> int:
    """Record a queued job and send it; returns its id. If the broker cannot be reached
    the job is marked failed with that reason, never left queued with no message."""
    if kind not in settings.QUEUES:
        raise ValueError(f"unknown job kind {kind!r}")
    ensure_schema()
    queue = queue or settings.queue_for(kind)
    with session() as s:
        job = Job(
            kind=kind,
            state="queued",
            queue=queue,
            params=params,
            submitted_by=_user(),
            time_limit_s=time_limit_s or settings.time_limit(kind),
            input_model_id=input_model_id,
            progress=0.0,
            attempts=0,
            cancel_requested=False,
            created_at=utcnow(),
        )
        s.add(job)
        s.flush()
        job_id = job.id
    _send_or_fail(job_id, kind, queue)
    return job_id


def _send_or_fail(job_id: int, kind: str, queue: str) -> None:
    """Send a queued job; where the broker cannot be reached, the job is failed with the
    reason (never left queued with no message) and BrokerError says so."""
    try:
        send(job_id, kind, queue)
    except BrokerError as e:
        with session() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == "queued")
                .values(state="failed", error=str(e), finished_at=utcnow())
            )
        raise BrokerError(f"job {job_id} failed: {e}", job_id) from None


def cancel(job_id: int) -> str:
    """Ask a job to stop. A queued job is cancelled at once; a running one stops within
    one epoch or one batch of conversions. Returns the job's state after the request."""
    with session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        if job.state in FINAL_STATES:
            return job.state
        job.cancel_requested = True
        if job.state == "queued":
            job.state, job.finished_at, job.message = (
                "cancelled",
                utcnow(),
                "cancelled while queued",
            )
        return job.state


def retry(job_id: int, queue: str | None = None) -> str:
    """Put a failed or cancelled job back on its queue (or on ``queue``), as it was
    submitted: training resumes from its last checkpoint and a bulk conversion after the
    rows it wrote, as when a worker dies. Returns the job's kind. LookupError for no such
    job, ValueError for one that is not failed or cancelled; BrokerError (the job failed
    again, with the reason) where the broker cannot be reached."""
    ensure_schema()
    with session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        if job.state not in ("failed", "cancelled"):
            now = "is " if job.state in ACTIVE_STATES else ""
            raise ValueError(
                f"job {job_id} {now}{job.state}: only a failed or cancelled job can be retried"
            )
        kind, queue = job.kind, queue or job.queue
        job.state, job.error, job.finished_at, job.queue = "queued", None, None, queue
        job.cancel_requested, job.message = False, f"retried by {_user()}"
    _send_or_fail(job_id, kind, queue)
    return kind


def delete(job_ids: list[int]) -> list[dict[str, Any]]:
    """Delete finished jobs with everything they wrote (conversions, generated words, scores,
    epoch figures, checkpoints) and a training job's model with every score of it, all in
    one transaction: nothing is deleted where one of them cannot be. LookupError for a job
    that does not exist; ValueError for one not finished, or whose model a queued or running
    job is to read. Returns [{job_id, kind, model_id}] for what was deleted."""
    ensure_schema()
    with session() as s:
        jobs = {i: s.get(Job, i) for i in dict.fromkeys(job_ids)}
        for i, job in jobs.items():
            if job is None:
                raise LookupError(f"no job {i}")
            if job.state not in FINAL_STATES:
                raise ValueError(f"job {i} is {job.state}: cancel it or let it end first")
        models = {i: s.scalar(select(Model.id).where(Model.job_id == i)) for i in jobs}
        owners = {m: i for i, m in models.items() if m is not None}
        if owners:
            active = select(Job.id, Job.state, Job.params).where(Job.state.in_(ACTIVE_STATES))
            for reader, state, params in s.execute(active):
                ref = (params or {}).get("model")
                if isinstance(ref, int) and not isinstance(ref, bool) and ref in owners:
                    raise ValueError(
                        f"model {ref} of job {owners[ref]} is to be read by job {reader} "
                        f"({state}): let it end or cancel it first"
                    )
            s.execute(sql_delete(Model).where(Model.id.in_(list(owners))))  # and its scores
        # and what each wrote; a job put back on its queue meanwhile keeps everything
        gone = s.execute(
            sql_delete(Job).where(Job.id.in_(list(jobs)), Job.state.in_(FINAL_STATES))
        ).rowcount
        if gone != len(jobs):
            raise ValueError("a job changed state while being deleted: nothing was deleted")
        return [{"job_id": i, "kind": j.kind, "model_id": models[i]} for i, j in jobs.items()]
