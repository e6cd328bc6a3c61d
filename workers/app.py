"""The Celery app: broker, queues and delivery settings, all from the environment.

``celery -A workers.app worker`` works, and so does ``tensevae worker``."""

from __future__ import annotations

from functools import cache

from celery import Celery
from kombu import Exchange, Queue
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as embedded

from . import settings


class EmbeddedTransport(embedded.Transport):
    """kombu's SQLAlchemy transport, polled every TENSEVAE_EMBEDDED_POLL seconds (0.1) rather
    than every second: with no server to push messages, the poll is a job's wait to start.
    Its transport options all go to create_engine, so the interval cannot travel there."""

    polling_interval = settings.embedded_poll_s()


# Every sqla+ broker URL in tensevae's processes gets the faster poll.
TRANSPORT_ALIASES["sqla"] = TRANSPORT_ALIASES["sqlalchemy"] = f"{__name__}:EmbeddedTransport"


def make_app(broker: str | None = None) -> Celery:
    broker = broker or settings.broker_url()
    app = Celery("tensevae", broker=broker, include=["workers.tasks"])
    queues = settings.all_queues()
    app.conf.update(
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in queues],
        task_default_queue=settings.queue_for("convert"),
        task_routes={f"tensevae.{k}": {"queue": settings.queue_for(k)} for k in settings.QUEUES},
        # The database holds results and states; Celery carries only job ids.
        task_ignore_result=True,
        result_backend=None,
        # A message is acknowledged after its task ran, and comes back if the worker dies;
        # the runner's atomic claim makes a second delivery harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Redis redelivers an unacknowledged message after this; longer than any job. (The
        # embedded broker hands these options to create_engine, so it gets none.)
        broker_transport_options={}
        if settings.is_embedded_broker(broker)
        else {"visibility_timeout": 12 * 3600},
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


@cache
def app_for(broker: str) -> Celery:
    """An app per broker URL, for code that submits jobs to more than one (tests)."""
    return app if broker == app.conf.broker_url else make_app(broker)


app = make_app()
