"""The tables. A job's row is the truth about it; Celery carries only its id."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, bytes: LargeBinary}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    queue: Mapped[str] = mapped_column(String(64))
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    message: Mapped[str | None] = mapped_column(Text)  # last progress line, for people
    # What was asked. Deferred: a bulk job's lines run to megabytes, and listing, polling and
    # the heartbeat read jobs far more often than a handler needs its params.
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, deferred=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # summary when done
    error: Mapped[str | None] = mapped_column(Text)  # why it failed
    submitted_by: Mapped[str | None] = mapped_column(String(128))
    worker: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    time_limit_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    # The model a job reads (not a foreign key: jobs and models would refer to each other).
    input_model_id: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_jobs_state_queue", "state", "queue"),)


class Model(Base):
    """A trained model: safetensors bytes (config and vocabulary in their metadata)."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    scores: Mapped[list[Score]] = relationship(back_populates="model")

    __table_args__ = (UniqueConstraint("job_id", name="uq_models_job"),)


class Checkpoint(Base):
    """A training job's resumable state after an epoch (model, optimizer, random state)."""

    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("job_id", "epoch", name="uq_checkpoints_job_epoch"),)


# The epoch figures with a column of their own (every figure is also in ``figures``).
EPOCH_COLUMNS = (
    "loss",
    "recon",
    "kl",
    "beta",
    "teacher_forcing",
    "bleu4",
    "gaussian_score",
    "seconds",
)


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    recon: Mapped[float | None] = mapped_column(Float)
    kl: Mapped[float | None] = mapped_column(Float)
    beta: Mapped[float | None] = mapped_column(Float)
    teacher_forcing: Mapped[float | None] = mapped_column(Float)
    bleu4: Mapped[float | None] = mapped_column(Float)
    gaussian_score: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float | None] = mapped_column(Float)
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)  # every figure of the epoch

    __table_args__ = (UniqueConstraint("job_id", "epoch", name="uq_epoch_metrics_job_epoch"),)


class Score(Base):
    """One figure of one model: bleu4, bleu4_sampled, gaussian_score, exact_match:sp->p, ..."""

    __tablename__ = "scores"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    dataset: Mapped[str] = mapped_column(String(255))  # test.txt, or the verbs file
    value: Mapped[float] = mapped_column(Float)
    spread: Mapped[float | None] = mapped_column(Float)  # standard deviation over repeats
    repeats: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    model: Mapped[Model | None] = relationship(back_populates="scores")

    __table_args__ = (
        UniqueConstraint("job_id", "name", "dataset", name="uq_scores_job_name_dataset"),
        Index("ix_scores_model_name", "model_id", "name"),
    )


class Conversion(Base):
    __tablename__ = "conversions"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    line: Mapped[int] = mapped_column(Integer)  # line number in the submitted file
    word: Mapped[str] = mapped_column(String(255))
    src: Mapped[str] = mapped_column(String(32))
    tgt: Mapped[str] = mapped_column(String(32))
    output: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)  # why this line was refused

    __table_args__ = (UniqueConstraint("job_id", "line", name="uq_conversions_job_line"),)


class GeneratedWord(Base):
    __tablename__ = "generated_words"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    sample: Mapped[int] = mapped_column(Integer)
    sp: Mapped[str] = mapped_column(String(255))
    tp: Mapped[str] = mapped_column(String(255))
    pg: Mapped[str] = mapped_column(String(255))
    p: Mapped[str] = mapped_column(String(255))
    in_train: Mapped[bool] = mapped_column(Boolean)  # the four forms equal a line of train.txt

    __table_args__ = (UniqueConstraint("job_id", "sample", name="uq_generated_job_sample"),)


class Worker(Base):
    """A worker's heartbeat, so ``tensevae queue`` shows who is online on any broker."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    current_job_id: Mapped[int | None] = mapped_column(Integer)
