"""Job-path figures for benchmarks/speed.py, run in the environment it is given: prints
one JSON line of {figure: [median, min, max]}."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from db.migrate import upgrade  # noqa: E402
from db.models import Job  # noqa: E402
from db.queries import get_job, queue_status  # noqa: E402
from db.session import session  # noqa: E402
from pipeline.data import load_train, make_pairs  # noqa: E402
from pipeline.tenses import TENSES  # noqa: E402
from workers.jobs import submit  # noqa: E402


def med(values):
    v = sorted(values)
    return [statistics.median(v), v[0], v[-1]]


def start_worker(name: str, threads: int) -> subprocess.Popen:
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workers.cli",
            "worker",
            "--queues",
            "gpu,cpu",
            "--name",
            name,
            "--loglevel",
            "error",
            "--threads",
            str(threads),
        ],
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not any(name in w["name"] for w in queue_status()["workers"]):
        time.sleep(0.2)
    return p


def wait(job_id: int) -> dict:
    while True:
        job = get_job(job_id, full=False)
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)


def main() -> None:
    bulk, repeats, bulk_repeats = (int(a) for a in sys.argv[1:4])
    upgrade()
    out = {}
    cores = os.cpu_count() or 1
    workers = [start_worker("bench1", cores)]
    # Latency: a tiny generation job, one at a time, submit -> started_at.
    latency = []
    for i in range(10):
        job_id = submit("generate", {"n": 1, "seed": i})
        wait(job_id)
        with session() as s:  # full-resolution timestamps (the CLI shows whole seconds)
            job = s.get(Job, job_id)
            latency.append((job.started_at - job.created_at).total_seconds())
    out["submit-to-start latency (s)"] = med(latency)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        ids = [submit("generate", {"n": 1, "seed": i}) for i in range(20)]
        for i in ids:
            wait(i)
        rates.append(20 / (time.perf_counter() - start))
    out["jobs/s through one worker"] = med(rates)
    # train.txt's twelve conversions of each line, in turn, as many times as it takes
    pairs = make_pairs(load_train(), "cross")
    requests = []
    for i in range(bulk):
        word, s, _, t = pairs[i % len(pairs)]
        requests.append([i + 1, word, TENSES[s], TENSES[t]])
    # One worker with every core; two with the cores shared out (threads = cores / workers);
    # and one worker on one core, which two one-core workers are to be compared with.
    running = (1, cores)  # the latency figures' worker
    for n_workers, threads in ((1, cores), (2, max(1, cores // 2)), (1, max(1, cores // 2))):
        if (n_workers, threads) != running:
            for p in workers:
                p.terminate()
                p.wait()
            workers = [
                start_worker(f"bench{n_workers}-{threads}-{k}", threads) for k in range(n_workers)
            ]
            running = (n_workers, threads)
        rates = []
        for _ in range(bulk_repeats):
            # Split the lines into one job per worker, as a user scaling out would.
            chunk = -(-bulk // n_workers)
            start = time.perf_counter()
            ids = [
                submit("convert", {"requests": requests[k : k + chunk]})
                for k in range(0, bulk, chunk)
            ]
            for i in ids:
                assert wait(i)["state"] == "succeeded"
            rates.append(bulk / (time.perf_counter() - start))
        what = f"{n_workers} worker(s) of {threads} thread(s)"
        out[f"bulk conversion of {bulk} lines, {what} (lines/s)"] = med(rates)
    for p in workers:
        p.terminate()
        p.wait()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
