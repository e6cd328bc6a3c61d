"""Settings from the environment; importing this module imports neither Celery nor SQLAlchemy."""

from __future__ import annotations

import os
import re

from db.session import home, mask_url

QUEUES = {"train": "gpu", "evaluate": "gpu", "convert": "cpu", "generate": "cpu"}
# Seconds a job may run before it is stopped and failed, by kind (TENSEVAE_TIME_LIMIT_<KIND>).
TIME_LIMITS = {"train": 6 * 3600, "evaluate": 3600, "convert": 3600, "generate": 600}
# A running job whose heartbeat is older than this is taken to have lost its worker.
STALE_AFTER_S = float(os.environ.get("TENSEVAE_STALE_AFTER", "60"))
HEARTBEAT_S = float(os.environ.get("TENSEVAE_HEARTBEAT", "10"))
# A job queued this long while its Redis queue is empty had its message lost; it is sent again.
RESEND_AFTER_S = float(os.environ.get("TENSEVAE_RESEND_AFTER", "30"))


def broker_url() -> str:
    url = os.environ.get("TENSEVAE_BROKER_URL")
    if url:
        return url
    return f"sqla+sqlite:///{home() / 'broker.sqlite'}"


def is_embedded_broker(url: str | None = None) -> bool:
    return (url or broker_url()).startswith("sqla+")


def queue_for(kind: str) -> str:
    """The queue a job kind goes to; TENSEVAE_QUEUE_<KIND> overrides (e.g. all on cpu)."""
    return os.environ.get(f"TENSEVAE_QUEUE_{kind.upper()}", QUEUES[kind])


def time_limit(kind: str) -> float:
    return float(os.environ.get(f"TENSEVAE_TIME_LIMIT_{kind.upper()}", TIME_LIMITS[kind]))


def all_queues() -> list[str]:
    return sorted({queue_for(k) for k in QUEUES})


def redact(text: str) -> str:
    """Any URL in the text with its password masked (for logs and recorded errors)."""
    return re.sub(r"[a-z][a-z0-9+.-]*://\S+", lambda m: mask_url(m.group(0)), str(text))
