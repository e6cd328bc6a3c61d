"""One thin task per job kind: all they carry is the job id; the runner does the rest."""

from __future__ import annotations

import logging

from celery.signals import worker_ready, worker_shutdown

from . import runner
from .app import app

log = logging.getLogger("tensevae.tasks")


def _run(task, job_id) -> str:
    return runner.run_job(job_id, worker=task.request.hostname or "celery")


@app.task(name="tensevae.train", bind=True)
def train(self, job_id):
    return _run(self, job_id)


@app.task(name="tensevae.evaluate", bind=True)
def evaluate(self, job_id):
    return _run(self, job_id)


@app.task(name="tensevae.convert", bind=True)
def convert(self, job_id):
    return _run(self, job_id)


@app.task(name="tensevae.generate", bind=True)
def generate(self, job_id):
    return _run(self, job_id)


@worker_ready.connect
def _started(sender=None, **_):
    queues = [q.name for q in sender.app.amqp.queues.consume_from.values()] if sender else []
    runner.start_heartbeat(sender.hostname if sender else "celery", queues)


@worker_shutdown.connect
def _stopped(sender=None, **_):
    runner.stop_heartbeat()
