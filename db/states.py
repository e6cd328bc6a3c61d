"""What a job can be and where it can stand: plain tuples, so that the ``tensevae`` command
can offer them as choices without importing SQLAlchemy."""

JOB_KINDS = ("train", "evaluate", "convert", "generate")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = ("succeeded", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")  # a worker has it, or will
