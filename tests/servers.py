"""The backends a job-system test runs against: the no-server default, and the real
Redis and PostgreSQL of this machine (skipped with a reason where absent, and a failure
when TENSEVAE_REQUIRE_SERVERS=1, as .ci/run sets)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REDIS_URL = os.environ.get("TENSEVAE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "TENSEVAE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def ctrl_c_reaches_it() -> None:
    """A subprocess's preexec_fn: Ctrl-C (SIGINT) back to its default in the child. A shell
    without job control starts a background command (`./scripts/test &`) with SIGINT
    ignored, and the child would inherit that: Python then raises no KeyboardInterrupt,
    and a test of what Ctrl-C does would wait on a command that never heard it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def unavailable(reason: str):
    if os.environ.get("TENSEVAE_REQUIRE_SERVERS") == "1":
        pytest.fail(f"required server missing: {reason}")
    pytest.skip(reason)


def redis_url() -> str:
    import redis

    try:
        r = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        r.ping()
    except Exception as e:
        unavailable(f"Redis at {REDIS_URL} unreachable ({type(e).__name__})")
    r.flushdb()
    return REDIS_URL


def postgres_url() -> tuple[str, str]:
    """A fresh database on the server (and the admin URL to drop it with)."""
    from sqlalchemy import create_engine, text

    admin = POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        eng = create_engine(admin, isolation_level="AUTOCOMMIT")
        name = f"tensevae_test_{uuid.uuid4().hex[:10]}"
        with eng.connect() as c:
            c.execute(text(f"CREATE DATABASE {name}"))
    except Exception as e:
        unavailable(f"PostgreSQL at {POSTGRES_URL} unreachable ({type(e).__name__})")
    return admin.rsplit("/", 1)[0] + "/" + name, admin


def drop_postgres(url: str, admin: str) -> None:
    from sqlalchemy import create_engine, text

    from db.session import engine

    engine(url).dispose()
    name = url.rsplit("/", 1)[1]
    with create_engine(admin, isolation_level="AUTOCOMMIT").connect() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


class Backend:
    def __init__(self, name: str, env: dict[str, str]):
        self.name, self.env = name, env
        self.procs: list[subprocess.Popen] = []

    def __enter__(self):
        self._saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            stop(p)
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def start_worker(self, name: str, queues: str = "gpu,cpu", **env: str) -> subprocess.Popen:
        """A real worker process; returns once it has announced itself in the database."""
        from db.queries import queue_status

        log = open(Path(self.env["TENSEVAE_HOME"]) / f"{name}.log", "w")  # noqa: SIM115
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers.cli",
                "worker",
                "--queues",
                queues,
                "--name",
                name,
                "--loglevel",
                "warning",
            ],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(p)
        deadline = time.time() + 60
        while time.time() < deadline:
            if any(name in w["name"] for w in queue_status()["workers"]):
                return p
            if p.poll() is not None:
                raise RuntimeError(f"worker {name} exited: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.3)
        raise RuntimeError(f"worker {name} did not start: {Path(log.name).read_text()[-2000:]}")


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for(
    job_id: int, states=("succeeded", "failed", "cancelled"), timeout: float = 180
) -> dict:
    from db.queries import get_job

    deadline = time.time() + timeout
    while time.time() < deadline:
        job = get_job(job_id)
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of this machine's on a port of its own, so a test may restart it
    without touching the Redis other tests use. Like the machine's, it keeps nothing on
    disk: a restart loses every message."""

    def __init__(self, workdir: Path):
        import shutil

        if shutil.which("redis-server") is None:
            unavailable("redis-server is not installed")
        self.port, self.dir = free_port(), workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # as abrupt as a crash: nothing is saved
            self.proc.wait()
            self.proc = None

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


class TcpProxy:
    """Forwards 127.0.0.1:port to a server; ``cut()`` drops every connection and refuses
    new ones (a database gone from the network), ``restore()`` lets them through again."""

    def __init__(self, host: str, port: int):
        import threading

        self.target = (host, port)
        self.port = free_port()
        self.lock = threading.Lock()
        self.conns: list = []
        self.listener = None
        self.restore()

    def restore(self) -> None:
        import socket
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self) -> None:
        import socket

        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass
