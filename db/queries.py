"""The questions users ask of the results database, as functions returning plain data."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from .models import (
    Checkpoint,
    Conversion,
    EpochMetric,
    GeneratedWord,
    Job,
    Model,
    Score,
    Worker,
    utcnow,
)
from .session import session

JOB_FIELDS = (
    "id",
    "kind",
    "state",
    "queue",
    "progress",
    "message",
    "error",
    "submitted_by",
    "worker",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
)


def _iso(v: Any) -> Any:
    return v.isoformat(timespec="seconds") + "Z" if hasattr(v, "isoformat") else v


def job_dict(job: Job, full: bool = False) -> dict[str, Any]:
    d = {k: _iso(getattr(job, k)) for k in JOB_FIELDS}
    if full:
        d["result"] = job.result
        d["params"] = {k: v for k, v in job.params.items() if k not in ("requests", "verbs")}
        if "requests" in job.params:
            d["params"]["lines"] = len(job.params["requests"])
    return d


def get_job(job_id: int, full: bool = True) -> dict[str, Any] | None:
    """A job's fields; ``full`` adds its result and params (a bulk job's lines counted, not
    listed). Pollers ask with full=False: reading params means parsing every line."""
    with session() as s:
        job = s.get(Job, job_id)
        return None if job is None else job_dict(job, full=full)


def list_jobs(
    limit: int = 20, state: str | None = None, kind: str | None = None
) -> list[dict[str, Any]]:
    with session() as s:
        q = select(Job).order_by(Job.id.desc()).limit(limit)
        if state:
            q = q.where(Job.state == state)
        if kind:
            q = q.where(Job.kind == kind)
        return [job_dict(j) for j in s.scalars(q)]


# Scores named alone; a score on another dataset (evaluate --verbs FILE) is NAME@FILE, so
# that it never stands in for the same score on test.txt.
OWN_DATASETS = ("test.txt", "held-out verbs")


def score_key(name: str, dataset: str) -> str:
    return name if dataset in OWN_DATASETS else f"{name}@{dataset}"


def models_with_scores(best_by: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Trained models with their scores (on test.txt, on the verbs their training held out,
    and as NAME@FILE on other files), the latest of each; ``best_by`` (a key) sorts."""
    with session() as s:
        models = list(s.scalars(select(Model).order_by(Model.id.desc())))
        out = []
        for m in models:
            scores = {
                score_key(sc.name, sc.dataset): {
                    "value": sc.value,
                    "spread": sc.spread,
                    "dataset": sc.dataset,
                }
                for sc in s.scalars(select(Score).where(Score.model_id == m.id).order_by(Score.id))
            }
            out.append(
                {
                    "id": m.id,
                    "name": m.name,
                    "job_id": m.job_id,
                    "epoch": m.epoch,
                    "sha256": m.sha256,
                    "size_bytes": m.size_bytes,
                    "created_at": _iso(m.created_at),
                    "scores": scores,
                }
            )
    if best_by:
        out = [m for m in out if best_by in m["scores"]]
        out.sort(key=lambda m: m["scores"][best_by]["value"], reverse=True)
    return out[:limit]


def score_names() -> list[str]:
    """Every score key (score_key) some model has, sorted."""
    with session() as s:
        rows = s.execute(
            select(Score.name, Score.dataset).where(Score.model_id.is_not(None)).distinct()
        )
        return sorted({score_key(name, dataset) for name, dataset in rows})


def job_scores(job_id: int) -> list[dict[str, Any]]:
    with session() as s:
        return [
            {
                "name": r.name,
                "dataset": r.dataset,
                "value": r.value,
                "spread": r.spread,
                "repeats": r.repeats,
                "model_id": r.model_id,
            }
            for r in s.scalars(select(Score).where(Score.job_id == job_id).order_by(Score.id))
        ]


def conversions(job_id: int) -> list[dict[str, Any]]:
    with session() as s:
        rows = s.execute(
            select(
                Conversion.line,
                Conversion.word,
                Conversion.src,
                Conversion.tgt,
                Conversion.output,
                Conversion.error,
            )
            .where(Conversion.job_id == job_id)
            .order_by(Conversion.line)
        )
        return [dict(r._mapping) for r in rows]


def generated(job_id: int) -> list[dict[str, Any]]:
    with session() as s:
        rows = s.scalars(
            select(GeneratedWord)
            .where(GeneratedWord.job_id == job_id)
            .order_by(GeneratedWord.sample)
        )
        return [
            {
                "sample": r.sample,
                "sp": r.sp,
                "tp": r.tp,
                "pg": r.pg,
                "p": r.p,
                "in_train": r.in_train,
            }
            for r in rows
        ]


def epoch_figures(job_id: int) -> list[dict[str, Any]]:
    with session() as s:
        rows = s.scalars(
            select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)
        )
        return [{"epoch": r.epoch, **r.figures} for r in rows]


def resume_point(job_id: int) -> str | None:
    """Where a job run again picks up, in words: a training job's last checkpoint, a bulk
    conversion's rows already written; None where it starts over."""
    with session() as s:
        epoch = s.scalar(select(func.max(Checkpoint.epoch)).where(Checkpoint.job_id == job_id))
        rows = s.scalar(select(func.count(Conversion.id)).where(Conversion.job_id == job_id))
    if epoch:
        return f"resumes after epoch {epoch}, its last checkpoint"
    if rows:
        return f"resumes after the {rows:,} rows written"
    return None


def queue_status(online_within_s: float = 30.0) -> dict[str, Any]:
    """Workers online, queued jobs per queue, running jobs with progress."""
    since = utcnow() - timedelta(seconds=online_within_s)
    with session() as s:
        workers = [
            {
                "name": w.name,
                "queues": w.queues.split(","),
                "pid": w.pid,
                "current_job": w.current_job_id,
                "heartbeat_at": _iso(w.heartbeat_at),
            }
            for w in s.scalars(
                select(Worker).where(Worker.heartbeat_at >= since).order_by(Worker.name)
            )
        ]
        depth = dict(
            s.execute(
                select(Job.queue, func.count()).where(Job.state == "queued").group_by(Job.queue)
            ).all()
        )
        running = [
            job_dict(j)
            for j in s.scalars(select(Job).where(Job.state == "running").order_by(Job.id))
        ]
    return {"workers": workers, "queued": depth, "running": running}


def workers_listening(queue: str, online_within_s: float = 30.0) -> int:
    return sum(queue in w["queues"] for w in queue_status(online_within_s)["workers"])
