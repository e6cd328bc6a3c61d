"""Soak test: two workers, a few hundred mixed jobs, a worker killed (kill -9) and Redis
restarted while they run. Reports jobs submitted, succeeded, failed (with reasons) and lost.

    python benchmarks/soak.py [--jobs 300] [--database postgresql://postgres@127.0.0.1:5432/test]
                              [--out benchmarks/results/soak.md]

Redis is a redis-server of this machine's started on a port of its own, killed a third of the
way in and started again empty two thirds in (as a crash without persistence would leave it),
so the machine's own Redis is not touched. The jobs go to a fresh PostgreSQL database, dropped
at the end. A lost job is one not in a final state when the run ends; the run fails if any is."""

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--gap", type=float, default=0.1, help="seconds between submissions")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.md"))
    args = ap.parse_args()
    import tempfile

    from tests.servers import PrivateRedis

    redis_dir = tempfile.TemporaryDirectory()
    server = PrivateRedis(Path(redis_dir.name))
    server.start()
    from sqlalchemy import create_engine, text

    name = f"tensevae_soak_{uuid.uuid4().hex[:8]}"
    admin = create_engine(
        args.database.replace("postgresql://", "postgresql+psycopg://"),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    os.environ.update(
        TENSEVAE_BROKER_URL=server.url,
        TENSEVAE_RESEND_AFTER="10",
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
        time.sleep(args.gap)
        if i == args.jobs // 3:
            procs[0].kill()  # kill -9 mid-run; a new worker takes its place
            procs[0].wait()
            procs[0] = worker("soak3")
        if i == 2 * args.jobs // 3:
            server.restart(down_s=2)  # every queued message is lost
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
    kinds = collections.Counter(j["kind"] for j in jobs)
    resumed = sum(1 for j in jobs if (j["attempts"] or 0) > 1)
    summary = (
        f"submitted {len(ids)}, succeeded {counts['succeeded']}, failed {counts['failed']}, "
        f"cancelled {counts['cancelled']}, lost {len(lost)} in {time.time() - started:.0f} s"
    )
    lines = [
        "# tensevae soak test",
        "",
        f"Command: `{' '.join(['python benchmarks/soak.py', *sys.argv[1:]])}`  ",
        "Two workers (one torch thread each) on a private redis-server and a fresh PostgreSQL "
        f"database; jobs: {dict(kinds)}. A third of the way in one worker was killed with "
        "SIGKILL and replaced; two thirds in, Redis was killed and started again empty.",
        "",
        f"**{summary}.** Jobs run more than once (picked up again after the kill or the "
        f"restart): {resumed}.",
        "",
    ]
    lines += [f"- failed x{n}: {reason}" for reason, n in reasons.most_common()]
    print("\n".join(lines))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    for p in procs:
        p.terminate()
        p.wait()
    server.stop()
    from db.session import engine

    engine().dispose()
    with admin.connect() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
