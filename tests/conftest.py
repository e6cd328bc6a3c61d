import os

import pytest

# One torch thread per test process: the suite runs beside workers on 2 cores, and
# oversubscribed OpenMP threads slow everything tenfold.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_config():
    from pipeline import load_config

    return load_config("tiny", ["train.epochs=1", "train.threads=1"])


@pytest.fixture(scope="session")
def tiny_run(tiny_config):
    """One epoch of the tiny config, shared by the tests that need a trained model."""
    from pipeline import train

    reports = []
    result = train(tiny_config, on_epoch=reports.append)
    return result, reports
