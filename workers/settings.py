"""Settings from the environment; importing this module imports SQLAlchemy (db.session) but not Celery."""

from __future__ import annotations

import os
import re

from db.session import home, mask_url
from pipeline import environment


class SettingError(ValueError):
    """An environment setting that cannot be used; the command line prints it as one line."""


QUEUES = {"train": "gpu", "evaluate": "gpu", "convert": "cpu", "generate": "cpu"}
# Seconds a job may run before it is stopped and failed, by kind (TENSEVAE_TIME_LIMIT_<KIND>).
TIME_LIMITS = {"train": 6 * 3600, "evaluate": 3600, "convert": 3600, "generate": 600}
# Verbs one generation job may write: 10,000 take about 5 s greedily and about 50 s by joint
# beam search of width 4 on 2 CPU cores (2026-12-06), well inside the job's 600 s; far more
# would run into that limit and fail after minutes of work instead of at once.
MAX_GENERATE = 10_000


def seconds(name: str, default: float, most: float = 7 * 24 * 3600) -> float:
    """The environment variable ``name`` as seconds in (0, most]; ``default`` when unset."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= most:  # also false for nan
        raise SettingError(f"{name} must be a number of seconds in (0, {most:.0f}], not {raw!r}")
    return value


# Read when used, not at import, so that a bad value is reported where it matters.
def stale_after_s() -> float:
    """A running job whose heartbeat is older than this has lost its worker."""
    return seconds("TENSEVAE_STALE_AFTER", 60)


def heartbeat_s() -> float:
    return seconds("TENSEVAE_HEARTBEAT", 10)


def resend_after_s() -> float:
    """A job queued this long while its Redis queue is empty had its message lost."""
    return seconds("TENSEVAE_RESEND_AFTER", 30)


def broker_url() -> str:
    url = os.environ.get("TENSEVAE_BROKER_URL")
    if url:
        return url
    return f"sqla+sqlite:///{home() / 'broker.sqlite'}"


def embedded_poll_s() -> float:
    """Seconds between a worker's polls of the embedded broker (TENSEVAE_EMBEDDED_POLL)."""
    return seconds("TENSEVAE_EMBEDDED_POLL", 0.1, most=60)


def check() -> None:
    """SettingError for the first unusable setting: a worker checks them all as it starts,
    not when its heartbeat thread first reads one."""
    stale_after_s(), heartbeat_s(), resend_after_s(), embedded_poll_s()
    environment.products()
    for kind in QUEUES:
        time_limit(kind)


def is_embedded_broker(url: str | None = None) -> bool:
    return (url or broker_url()).startswith("sqla+")


def queue_for(kind: str) -> str:
    """The queue a job kind goes to; TENSEVAE_QUEUE_<KIND> overrides (e.g. all on cpu)."""
    return os.environ.get(f"TENSEVAE_QUEUE_{kind.upper()}", QUEUES[kind])


def time_limit(kind: str) -> float:
    return seconds(f"TENSEVAE_TIME_LIMIT_{kind.upper()}", TIME_LIMITS[kind], most=365 * 24 * 3600)


def all_queues() -> list[str]:
    return sorted({queue_for(k) for k in QUEUES})


def redact(text: str) -> str:
    """Any URL in the text with its password masked (for logs and recorded errors)."""
    return re.sub(r"[a-z][a-z0-9+.-]*://\S+", lambda m: mask_url(m.group(0)), str(text))
