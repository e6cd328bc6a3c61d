"""The job system end to end, through real worker processes: the no-server default
(SQLite and the embedded broker) and this machine's Redis and PostgreSQL."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from tests.servers import (
    Backend,
    ctrl_c_reaches_it,
    drop_postgres,
    postgres_url,
    redis_url,
    wait_for,
)

TINY = ["train.epochs=1", "train.threads=1", "train.eval_gaussian_draws=0", "train.max_lines=300"]


@pytest.fixture(scope="module", params=["embedded", "redis+postgres"])
def backend(request, tmp_path_factory):
    home = tmp_path_factory.mktemp(request.param.replace("+", "-"))
    env = {"TENSEVAE_HOME": str(home), "TENSEVAE_STALE_AFTER": "60", "TENSEVAE_HEARTBEAT": "1"}
    dropper = None
    if request.param == "redis+postgres":
        url, admin = postgres_url()
        env.update(TENSEVAE_BROKER_URL=redis_url(), TENSEVAE_DATABASE_URL=url)
        dropper = (url, admin)
    with Backend(request.param, env) as b:
        from db.migrate import upgrade

        upgrade()
        b.start_worker("w1")
        yield b
    if dropper:
        drop_postgres(*dropper)


def _submit_train(overrides=(), queue=None, **params):
    from pipeline.config import load_config
    from workers.jobs import submit

    cfg = load_config("tiny", [*TINY, *overrides])
    params = {"config": cfg.to_dict(), "bleu_samples": 3, "gaussian_draws": 2, **params}
    return submit("train", params, queue=queue)


@pytest.fixture(scope="module")
def trained(backend):
    job_id = _submit_train()
    return wait_for(job_id)


def test_training_job_end_to_end(backend, trained):
    from db.models import Checkpoint, EpochMetric, Model, Score
    from db.session import session

    assert trained["state"] == "succeeded", trained["error"]
    assert "w1" in trained["worker"] and trained["attempts"] == 1
    result = trained["result"]
    assert 0 <= result["bleu4"] <= 1 and result["gaussian_score"]["draws"] == 2
    with session() as s:
        model = s.get(Model, result["model_id"])
        assert model.job_id == trained["id"] and len(model.sha256) == 64
        # the checkpoint served to resume; once the model is stored it is dropped
        assert s.scalar(select(func.count()).where(Checkpoint.job_id == trained["id"])) == 0
        assert s.scalar(select(func.count()).where(EpochMetric.job_id == trained["id"])) == 1
        names = set(s.scalars(select(Score.name).where(Score.model_id == model.id)))
    assert {"bleu4", "bleu4_sampled", "gaussian_score"} <= names
    # the same draws scored again with each z's four forms chosen together
    joint = result["gaussian_score_joint"]
    assert joint["joint"] is True and joint["draws"] == 2 and joint["decoding"] == "beam 4"
    assert {"gaussian_score_beam4_joint", "gaussian_distinct_verbs_beam4_joint"} <= names
    assert any(n.startswith("exact_match:") for n in names)


def _bulk_job(trained, path, content: bytes) -> tuple[dict, list[dict]]:
    """A bulk conversion job of the file ``content``, run to its end: (job, its rows)."""
    from db.queries import conversions
    from pipeline.data import read_requests
    from workers.jobs import submit

    path.write_bytes(content)
    requests = [list(r) for r in read_requests(path)]
    job = wait_for(
        submit("convert", {"model": trained["result"]["model_id"], "requests": requests})
    )
    assert job["state"] == "succeeded", job["error"]
    return job, conversions(job["id"])


def test_bulk_conversion_job_keeps_good_lines_and_records_bad_ones(backend, trained, tmp_path):
    text = b"abandon sp p\nWalk present past\nab1 sp p\nwalk sp future\nsplit sp ing\n"
    job, rows = _bulk_job(trained, tmp_path / "in.txt", text)
    assert job["result"] == {"lines": 5, "converted": 2, "refused": 3}
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[1]["word"] == "Walk" and "give 'walk'" in rows[1]["error"]
    assert rows[1]["output"] is None and rows[0]["output"] and rows[4]["output"]
    assert "ab1" in rows[2]["error"] and rows[2]["output"] is None
    assert "unknown tense 'future'" in rows[3]["error"]


def test_bulk_conversion_refuses_a_nul_byte_by_line(backend, trained, tmp_path):
    """PostgreSQL's text cannot hold a NUL: a line carrying one is refused with its reason
    (stored as the four characters \\x00), and the job and its other lines go on."""
    text = b"abandon sp p\nab\x00c sp p\nwalk sp p\x00st\na\\b sp p\nwalk sp p\n"
    job, rows = _bulk_job(trained, tmp_path / "in.txt", text)
    assert job["result"] == {"lines": 5, "converted": 2, "refused": 3}
    assert rows[1]["word"] == "ab\\x00c" and "'\\x00'" in rows[1]["error"]
    assert rows[2]["tgt"] == "p\\x00st" and "unknown tense" in rows[2]["error"]
    assert rows[3]["word"] == "a\\b" and rows[3]["output"] is None
    assert rows[0]["output"] and rows[4]["output"]


def test_bulk_conversion_in_int8_and_by_beam_search(backend, trained):
    """The options of a bulk job reach its worker: int8 writes fp32's words, a beam width (by
    itself or for a round trip) is the width asked for, and a precision that does not exist,
    or bf16 on a CPU that would emulate it, fails the job, saying why."""
    import pipeline
    from db.queries import conversions
    from pipeline.precision import cpu_runs_bf16
    from workers.handlers import load_model
    from workers.jobs import submit

    model_id = trained["result"]["model_id"]
    words = ["abandon", "walk", "sing", "need", "symbolize", "withhold"]
    requests = [[i + 1, w, "sp", "pg"] for i, w in enumerate(words)]
    model = load_model(model_id)
    expected_fp32 = pipeline.convert(model, words, "sp", "pg")
    for params, expected in (
        ({"precision": "int8"}, expected_fp32),
        (
            {"method": "beam", "beam_width": 3},
            pipeline.convert(model, words, "sp", "pg", method="beam", beam_width=3),
        ),
        (
            {"method": "roundtrip", "beam_width": 3},
            pipeline.convert(model, words, "sp", "pg", method="roundtrip", beam_width=3),
        ),
    ):
        job = wait_for(submit("convert", {"model": model_id, "requests": requests, **params}))
        assert job["state"] == "succeeded", job["error"]
        assert [r["output"] for r in conversions(job["id"])] == expected, params
    bad = wait_for(
        submit("convert", {"model": model_id, "requests": requests, "precision": "fp16"})
    )
    assert bad["state"] == "failed" and "precision 'fp16'" in bad["error"], bad["error"]
    # bf16 where the worker's CPU computes in it; refused, saying why, where it would emulate
    job = wait_for(
        submit("convert", {"model": model_id, "requests": requests, "precision": "bf16"})
    )
    if cpu_runs_bf16():
        assert job["state"] == "succeeded", job["error"]
        assert [r["output"] for r in conversions(job["id"])] == expected_fp32
    else:
        assert job["state"] == "failed" and "no bf16 arithmetic" in job["error"], job["error"]


def test_generation_and_evaluation_jobs(backend, trained):
    from db.queries import generated, job_scores
    from workers.jobs import submit

    model = trained["result"]["model_id"]
    gen = wait_for(submit("generate", {"model": model, "n": 7, "seed": 3}))
    assert gen["state"] == "succeeded", gen["error"]
    assert len(generated(gen["id"])) == 7
    beam = wait_for(submit("generate", {"model": model, "n": 7, "seed": 3, "beam": 3}))
    assert beam["state"] == "succeeded", beam["error"]
    assert len(generated(beam["id"])) == 7
    anchored = wait_for(submit("generate", {"model": model, "n": 4, "seed": 3, "anchored": True}))
    assert anchored["state"] == "succeeded" and anchored["result"]["anchored"] is True
    assert [g["sp"] for g in generated(anchored["id"])] == [g["sp"] for g in generated(gen["id"])][
        :4
    ]
    joint = wait_for(submit("generate", {"model": model, "n": 4, "seed": 3, "joint": True}))
    assert joint["state"] == "succeeded" and joint["result"]["joint"] is True, joint["error"]
    assert len(generated(joint["id"])) == 4
    ev = wait_for(
        submit(
            "evaluate",
            {
                "model": model,
                "bleu_samples": 2,
                "gaussian_draws": 1,
                "gaussian_beam": 2,
                "verbs": [["walk", "walks", "walking", "walked"]],
                "verbs_name": "mine.txt",
            },
        )
    )
    assert ev["state"] == "succeeded", ev["error"]
    assert len([k for k in ev["result"]["exact_match"] if "->" in k]) == 12
    assert {s["dataset"] for s in job_scores(ev["id"]) if s["name"].startswith("exact")} == {
        "mine.txt"
    }
    names = {s["name"] for s in job_scores(ev["id"])}
    assert "gaussian_score_beam2" in names and "gaussian_score" not in names
    ev = wait_for(
        submit(
            "evaluate",
            {"model": model, "bleu_samples": 0, "gaussian_draws": 1, "gaussian_joint": True},
        )
    )
    assert ev["state"] == "succeeded", ev["error"]
    assert "gaussian_score_beam4_joint" in {s["name"] for s in job_scores(ev["id"])}


def test_an_idle_worker_starts_a_job_within_a_fraction_of_a_second(backend, trained):
    """Submit-to-start with no job ahead: Redis pushes the message; the embedded broker is
    polled every TENSEVAE_EMBEDDED_POLL (0.1 s), where kombu's own 1 s would fail this."""
    import statistics

    from db.models import Job
    from db.session import session
    from workers.jobs import submit

    waits = []
    for _ in range(5):
        job = wait_for(submit("generate", {"model": trained["result"]["model_id"], "n": 1}))
        assert job["state"] == "succeeded", job["error"]
        with session() as s:
            row = s.get(Job, job["id"])
            waits.append((row.started_at - row.created_at).total_seconds())
    assert statistics.median(waits) < 0.5, waits


def test_a_failing_job_records_its_error(backend):
    job = wait_for(_submit_train(["train.lr=1e30", "train.optimizer=sgd", "train.grad_clip=0"]))
    assert job["state"] == "failed"
    assert job["error"].startswith("TrainingDiverged: loss became")
    from workers.jobs import submit

    missing = wait_for(submit("generate", {"model": 99999, "n": 3}))
    assert missing["state"] == "failed" and "model 99999 is not in the database" in missing["error"]
    # n out of bounds, as a job submitted other than by the command line may carry it
    for n, shown in ((10_001, "10001"), (0, "0"), ("7", "'7'")):
        job = wait_for(submit("generate", {"n": n}))
        assert job["state"] == "failed"
        assert job["error"] == f"ValueError: n must be a whole number from 1 to 10,000, not {shown}"


def test_bad_scoring_counts_fail_a_job_before_it_trains(backend):
    from db.queries import epoch_figures

    # a long run, so that a refusal that came only after training would time the test out
    job = wait_for(_submit_train(["train.epochs=200"], gaussian_draws=-1), timeout=60)
    assert job["state"] == "failed"
    assert job["error"] == "ValueError: gaussian_draws must be a whole number, 0 or more, not -1"
    assert epoch_figures(job["id"]) == []


def test_cancelling_a_running_job(backend):
    from workers.jobs import cancel

    job_id = _submit_train(["train.epochs=200"])
    wait_for(job_id, states=("running",))
    assert cancel(job_id) == "running"
    job = wait_for(job_id, timeout=60)
    assert job["state"] == "cancelled"


def test_a_cancelled_training_job_retried_resumes_from_its_checkpoint(backend):
    from db.queries import epoch_figures, get_job, resume_point
    from workers.jobs import cancel, retry

    job_id = _submit_train(["train.epochs=20"], bleu_samples=2, gaussian_draws=1)
    queue = get_job(job_id)["queue"]
    deadline = time.time() + 120
    while len(epoch_figures(job_id)) < 2:
        assert time.time() < deadline, "training never reached epoch 2"
        time.sleep(0.05)
    assert cancel(job_id) == "running"
    assert wait_for(job_id, timeout=60)["state"] == "cancelled"
    done = len(epoch_figures(job_id))
    assert (
        2 <= done < 20
        and resume_point(job_id) == f"resumes after epoch {done}, its last checkpoint"
    )
    assert retry(job_id, queue="nobody-listens") == "train"  # cancelled again, sent elsewhere
    assert get_job(job_id)["queue"] == "nobody-listens" and cancel(job_id) == "cancelled"
    assert retry(job_id, queue=queue) == "train"
    job = wait_for(job_id, timeout=120)
    assert job["state"] == "succeeded" and job["attempts"] == 2 and job["error"] is None, job
    assert job["result"]["resumed"] is True and job["result"]["epochs"] == 20
    assert [f["epoch"] for f in epoch_figures(job_id)] == list(range(1, 21))
    assert resume_point(job_id) is None  # its model is stored: the checkpoint is dropped
    with pytest.raises(ValueError, match=f"job {job_id} succeeded: only a failed or cancelled"):
        retry(job_id)
    with pytest.raises(LookupError, match="no job 424242"):
        retry(424242)


def test_ctrl_c_stops_following_a_job_a_worker_runs_not_the_job(backend):
    """`--wait` follows a job; Ctrl-C there gives the terminal back and leaves the worker's
    job running (exit 130), where it used to cancel it."""
    import os
    import signal
    import subprocess
    import sys

    from db.queries import list_jobs
    from workers.jobs import cancel

    args = ["train", "--config", "tiny", "--wait"]
    for item in [*TINY, "train.epochs=200"]:
        args += ["--set", item]
    cli = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_reaches_it,
    )
    try:
        deadline = time.time() + 60
        while not (jobs := list_jobs(state="running", kind="train")) and time.time() < deadline:
            time.sleep(0.2)
        assert jobs, "the job never started"
        time.sleep(1)  # the command is following it
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
    job_id = jobs[0]["id"]
    assert cli.returncode == 130, err
    assert f"stopped following job {job_id}, which stays running" in err
    assert f"`tensevae jobs {job_id} --wait` follows it again" in err
    time.sleep(1)
    assert "w1" in wait_for(job_id, states=("running",), timeout=1)["worker"]
    assert cancel(job_id) == "running"
    assert wait_for(job_id, timeout=60)["state"] == "cancelled"


def test_cancelling_a_queued_job(backend):
    from workers.jobs import cancel, submit

    job_id = submit("generate", {"n": 1}, queue="nobody-listens")
    assert cancel(job_id) == "cancelled"
    assert wait_for(job_id)["state"] == "cancelled"


def test_two_workers_never_run_one_job_twice(backend, trained):
    from db.models import GeneratedWord, Job
    from db.session import session
    from workers.jobs import submit

    backend.start_worker("w2", queues="cpu")
    model = trained["result"]["model_id"]
    # Jobs long enough (a few hundred decodes each) that both workers are busy at once.
    ids = [submit("generate", {"model": model, "n": 400, "seed": i}) for i in range(16)]
    jobs = [wait_for(i) for i in ids]
    assert all(j["state"] == "succeeded" for j in jobs)
    assert all(j["attempts"] == 1 for j in jobs)
    with session() as s:
        counts = dict(
            s.execute(
                select(GeneratedWord.job_id, func.count())
                .where(GeneratedWord.job_id.in_(ids))
                .group_by(GeneratedWord.job_id)
            ).all()
        )
        workers = set(s.scalars(select(Job.worker).where(Job.id.in_(ids))))
    assert counts == dict.fromkeys(ids, 400)
    assert len(workers) == 2, f"both workers should have taken jobs, got {workers}"


def test_a_message_for_a_job_that_does_not_exist_is_rejected(backend):
    from workers import runner

    assert runner.run_job(123456, "test") == "rejected"
    assert runner.run_job("not-a-number", "test") == "rejected"


def test_a_second_delivery_of_a_finished_job_does_nothing(backend, trained):
    from workers import runner

    assert runner.run_job(trained["id"], "late-duplicate") == "skipped"


def test_a_job_past_its_time_limit_fails_with_the_reason(backend):
    from pipeline.config import load_config
    from workers.jobs import submit

    cfg = load_config("tiny", [*TINY, "train.epochs=200"])
    job = wait_for(submit("train", {"config": cfg.to_dict()}, time_limit_s=2))
    assert job["state"] == "failed" and job["error"].startswith("TimeLimit: time limit of 2 s")


def test_a_worker_killed_mid_training_is_resumed_from_its_checkpoint(backend):
    """kill -9 the only worker after two epochs; a new worker finds the job's heartbeat stale,
    takes it back and resumes from the last checkpoint; the figures equal those of an
    uninterrupted run with the same seed, and no epoch is written twice."""
    import time

    import pipeline
    from db.queries import epoch_figures
    from pipeline.config import load_config

    overrides = ["train.epochs=5", "train.eval_gaussian_draws=1"]
    queue = f"resume-{backend.name.replace('+', '-')}"  # no other worker listens here
    victim = backend.start_worker("victim", queues=queue, TENSEVAE_STALE_AFTER="4")
    job_id = _submit_train(overrides, queue=queue, bleu_samples=2, gaussian_draws=1)
    deadline = time.time() + 120
    while len(epoch_figures(job_id)) < 2:
        assert time.time() < deadline, "training never reached epoch 2"
        time.sleep(0.1)
    victim.kill()
    victim.wait()
    backend.start_worker("rescuer", queues=queue, TENSEVAE_STALE_AFTER="4")
    job = wait_for(job_id, timeout=240)
    assert job["state"] == "succeeded", job["error"]
    assert (
        job["attempts"] == 2 and job["result"]["resumed"] is True and "rescuer" in job["worker"]
    ), job
    figures = epoch_figures(job_id)
    assert [f["epoch"] for f in figures] == [1, 2, 3, 4, 5]
    expected = pipeline.train(load_config("tiny", [*TINY, *overrides])).history
    drop = {"seconds", "words_per_s"}
    for got, want in zip(figures, expected, strict=True):
        assert {k: v for k, v in got.items() if k not in drop} == pytest.approx(
            {k: v for k, v in want.items() if k not in drop}
        )


def test_messages_lost_by_redis_are_sent_again(backend):
    """A Redis restarted without persistence loses queued messages; the database still has
    the rows, and a worker's heartbeat sends them again."""
    if backend.name != "redis+postgres":
        pytest.skip("the embedded broker keeps its messages in its own database")
    from datetime import timedelta

    import redis
    from sqlalchemy import update

    from db.models import Job, utcnow
    from db.session import session
    from workers import runner, settings
    from workers.jobs import submit

    r = redis.Redis.from_url(settings.broker_url())
    job_id = submit("generate", {"n": 1}, queue="lost-and-found")
    assert r.llen("lost-and-found") == 1
    r.delete("lost-and-found")  # what a restart without persistence does
    with session() as s:
        s.execute(
            update(Job).where(Job.id == job_id).values(created_at=utcnow() - timedelta(minutes=5))
        )
    assert runner.resend_lost(["lost-and-found"]) == [job_id]
    assert r.llen("lost-and-found") == 1
    assert runner.resend_lost(["lost-and-found"]) == []  # not again while one waits
    r.delete("lost-and-found")


def test_deleting_jobs_takes_what_they_wrote_all_or_nothing(backend):
    from db.models import EpochMetric, GeneratedWord, Job, Model, Score
    from db.session import session
    from workers.jobs import cancel, delete, submit

    trained = wait_for(_submit_train(bleu_samples=2, gaussian_draws=1))
    model = trained["result"]["model_id"]
    made = wait_for(submit("generate", {"model": model, "n": 3}))
    reader = submit("evaluate", {"model": model, "bleu_samples": 2}, queue="nobody-listens")

    def count(table, column, value):
        with session() as s:
            return s.scalar(select(func.count()).select_from(table).where(column == value))

    ids = [trained["id"], made["id"], reader]
    with pytest.raises(ValueError, match=f"job {reader} is queued: cancel it or let it end"):
        delete(ids)
    with pytest.raises(ValueError, match=f"model {model} of job {ids[0]} is to be read by job"):
        delete(ids[:2])
    with pytest.raises(LookupError, match="no job 424242"):
        delete([ids[1], 424242])
    assert count(Job, Job.id, ids[1]) == 1 and count(Model, Model.id, model) == 1  # all kept
    assert count(GeneratedWord, GeneratedWord.job_id, ids[1]) == 3
    assert cancel(reader) == "cancelled"
    assert delete(ids) == [
        {"job_id": ids[0], "kind": "train", "model_id": model},
        {"job_id": ids[1], "kind": "generate", "model_id": None},
        {"job_id": reader, "kind": "evaluate", "model_id": None},
    ]
    for table, column, value in [
        (Job, Job.id, ids[0]),
        (Model, Model.id, model),
        (Score, Score.model_id, model),
        (EpochMetric, EpochMetric.job_id, ids[0]),
        (GeneratedWord, GeneratedWord.job_id, ids[1]),
    ]:
        assert count(table, column, value) == 0, table.__tablename__
