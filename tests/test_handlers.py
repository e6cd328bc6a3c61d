"""Job handlers run in this process against a SQLite file, with a stand-in job context."""

from __future__ import annotations

import pytest
from sqlalchemy import select

WORDS = ["walk", "go", "sing", "jump", "talk", "be", "run"]


class Context:
    """Counts progress writes and fails the one numbered ``fail_at`` (1-based)."""

    def __init__(self, fail_at: int | None = None):
        self.writes, self.fail_at = [], fail_at

    def check(self) -> None:
        pass

    def progress(self, fraction, message=None, s=None) -> None:
        self.writes.append(message)
        if len(self.writes) == self.fail_at:
            raise RuntimeError("the write failed")


@pytest.fixture
def job(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    monkeypatch.setenv("TENSEVAE_DATABASE_URL", url)
    from db.migrate import upgrade
    from db.models import Job
    from db.session import session
    from workers import handlers

    upgrade(url)
    monkeypatch.setattr(handlers, "BATCH", 2)  # seven lines: four batches
    requests = [[i + 1, w, "sp", "p"] for i, w in enumerate(WORDS)]
    with session() as s:
        j = Job(kind="convert", queue="convert", params={"requests": requests})
        s.add(j)
        s.flush()
        job_id = j.id
    with session() as s:
        yield s.get(Job, job_id)


def _lines(job_id) -> list[int]:
    from db.models import Conversion
    from db.session import session

    with session() as s:
        return sorted(s.scalars(select(Conversion.line).where(Conversion.job_id == job_id)))


def test_bulk_conversion_writes_every_batch_behind_the_next(job):
    from pipeline import artifacts, convert
    from workers.handlers import convert_job

    ctx = Context()
    assert convert_job(job, ctx) == {"lines": 7, "converted": 7, "refused": 0}
    assert ctx.writes == ["2/7 lines", "4/7 lines", "6/7 lines", "7/7 lines"]
    assert _lines(job.id) == [1, 2, 3, 4, 5, 6, 7]
    from db.queries import conversions

    expected = convert(artifacts.load_pretrained(), WORDS, "sp", "p")
    assert [r["output"] for r in conversions(job.id)] == expected


def test_a_failed_write_stops_the_job_and_a_rerun_finishes_the_rest(job):
    from workers.handlers import convert_job

    with pytest.raises(RuntimeError, match="the write failed"):
        convert_job(job, Context(fail_at=2))
    assert _lines(job.id) == [1, 2]  # the failed batch's transaction left nothing behind
    ctx = Context()
    assert convert_job(job, ctx)["converted"] == 7
    assert ctx.writes == ["4/7 lines", "6/7 lines", "7/7 lines"]
    assert _lines(job.id) == [1, 2, 3, 4, 5, 6, 7]


def test_a_bulk_jobs_lines_are_read_only_by_its_handler(job):
    """Polling, listing and the heartbeat read jobs often: they must not parse every line of
    a bulk job. The worker's claim loads them for the handler, which runs after the
    claim's session has closed."""
    from sqlalchemy import inspect

    from db.models import Job
    from db.queries import get_job, list_jobs
    from db.session import session
    from workers.runner import claim

    job_id = job.id
    with session() as s:
        listed = s.get(Job, job_id)
        assert "params" in inspect(listed).unloaded
    polled = get_job(job_id, full=False)
    assert polled["state"] == "queued" and "params" not in polled
    assert get_job(job_id)["params"] == {"lines": len(WORDS)}
    assert [j["id"] for j in list_jobs()] == [job_id]
    held = claim(job_id, "w1")
    assert inspect(held).detached and len(held.params["requests"]) == len(WORDS)


def test_score_names_tell_decodings_apart():
    from workers.handlers import score_rows

    def names(decoding, anchored, joint=False):
        g = {"mean": 0.5, "std": 0.1, "draws": 2, "distinct_verbs_mean": 40.0,
             "decoding": decoding, "anchored": anchored, "joint": joint}  # fmt: skip
        return {r["name"] for r in score_rows({"bleu4": 1.0, "gaussian_score": g}, "test.txt")}

    assert "gaussian_score" in names("greedy", False)
    assert "gaussian_score_beam4" in names("beam 4", False)
    assert "gaussian_score_anchored" in names("greedy", True)
    assert "gaussian_score_beam4_anchored" in names("beam 4", True)
    assert "gaussian_score_beam4_joint" in names("beam 4", False, joint=True)
    assert "gaussian_distinct_verbs_beam4_joint" in names("beam 4", False, joint=True)
