"""tensevae's job system: Celery workers, the job runner and the ``tensevae`` command."""
