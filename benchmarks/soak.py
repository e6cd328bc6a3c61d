"""Soak test: two workers, a few hundred mixed jobs, a worker killed (kill -9) and Redis
restarted while they run. Reports jobs submitted, succeeded, failed (with reasons) and lost.

    python benchmarks/soak.py [--jobs 300] [--redis redis://127.0.0.1:6379/13]
                              [--database postgresql://postgres@127.0.0.1:5432/test]

It restarts this machine's Redis (`redis-cli shutdown nosave`, then the command that started
it), so run it where nothing else needs Redis for a few seconds. A lost job is one that is not
in a final state when the run ends; the run fails if any is lost."""

from __future__ import annotations

import argparse
import collections
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REDIS_START = (
    "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' "
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def worker(name: str) -> subprocess.Popen:
    return subprocess.Popen(
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
        ],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def restart_redis() -> None:
    subprocess.run(["redis-cli", "shutdown", "nosave"], capture_output=True)
    time.sleep(1)
    subprocess.run(REDIS_START, shell=True, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    from sqlalchemy import create_engine, text

    name = f"tensevae_soak_{uuid.uuid4().hex[:8]}"
    admin = create_engine(
        args.database.replace("postgresql://", "postgresql+psycopg://"),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    os.environ.update(
        TENSEVAE_BROKER_URL=args.redis,
        TENSEVAE_HEARTBEAT="2",
        TENSEVAE_STALE_AFTER="10",
        TENSEVAE_DATABASE_URL=args.database.rsplit("/", 1)[0] + "/" + name,
    )
    from db.migrate import upgrade
    from db.queries import get_job
    from pipeline.config import load_config
    from workers.jobs import BrokerError, submit

    upgrade()
    procs = [worker("soak1"), worker("soak2")]
    rng = random.Random(0)
    tiny = load_config(
        "tiny", ["train.epochs=3", "train.max_lines=200", "train.threads=1"]
    ).to_dict()
    ids, started = [], time.time()
    for i in range(args.jobs):
        kind = rng.choice(["convert", "convert", "generate", "generate", "evaluate", "train"])
        params = {
            "convert": {
                "requests": [
                    [1, "walk", "sp", "p"],
                    [2, "ab1", "sp", "p"],
                    [3, "begin", "sp", "tp"],
                ]
            },
            "generate": {"n": 5, "seed": i},
            "evaluate": {"bleu_samples": 2, "gaussian_draws": 1},
            "train": {"config": tiny, "bleu_samples": 2, "gaussian_draws": 1},
        }[kind]
        try:
            ids.append(submit(kind, params))
        except BrokerError as e:  # recorded on the job as failed, with the reason
            ids.append(e.job_id)
        if i == args.jobs // 3:
            procs[0].kill()  # kill -9 mid-run; a new worker takes its place
            procs[0].wait()
            procs[0] = worker("soak3")
        if i == 2 * args.jobs // 3:
            restart_redis()
    final = ("succeeded", "failed", "cancelled")
    while time.time() - started < args.timeout:
        states = [get_job(i)["state"] for i in ids]
        if all(s in final for s in states):
            break
        time.sleep(2)
    jobs = [get_job(i) for i in ids]
    counts = collections.Counter(j["state"] for j in jobs)
    reasons = collections.Counter(j["error"] for j in jobs if j["state"] == "failed")
    lost = [j["id"] for j in jobs if j["state"] not in final]
    print(
        f"submitted {len(ids)}, succeeded {counts['succeeded']}, failed {counts['failed']}, "
        f"cancelled {counts['cancelled']}, lost {len(lost)} in {time.time() - started:.0f} s"
    )
    for reason, n in reasons.most_common():
        print(f"  failed x{n}: {reason}")
    for p in procs:
        p.terminate()
        p.wait()
    from db.session import engine

    engine().dispose()
    with admin.connect() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
