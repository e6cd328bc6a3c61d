"""What each job kind does: read the job's params, call ``pipeline``, write its results.

Every write is one transaction, retried whole while the database is unreachable
(db.session.transaction), and idempotent: a job run again after its worker died resumes or
rewrites, and never duplicates a row (unique keys and skip-if-present)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

from sqlalchemy import delete, func, insert, select

import pipeline
from db.models import (
    EPOCH_COLUMNS,
    Checkpoint,
    Conversion,
    EpochMetric,
    GeneratedWord,
    Job,
    Model,
    Score,
)
from db.session import insert_rows, transaction
from pipeline import artifacts
from pipeline.config import from_dict
from pipeline.evaluate import check_words, decode_options, gaussian
from pipeline.metrics import distinct_verbs, gaussian_score
from pipeline.tenses import tense_code
from pipeline.training import EpochReport, resolve_device

from . import settings
from .runner import Cancelled, JobContext, latest_checkpoint

# Conversion lines per transaction (and per cancellation check: about a second of work on 2
# CPU cores). Each batch is sorted by length before decoding, so a bigger one decodes fewer
# padded steps: 40,000 conversions in batches of 8,192 ran at 8,957-9,038 words/s against
# 8,129-8,480 in batches of 2,048 (AMD EPYC, 2 threads, 2026-12-07), and 100,000-line jobs
# at 7,287 and 7,196 lines/s against 6,474 and 7,076 (two runs alternating).
BATCH = 8192


@lru_cache(maxsize=4)
def load_model(ref: str | int) -> pipeline.TenseCVAE:
    """'pretrained' or a model id in the database (models never change once written)."""
    device = resolve_device("auto")
    if ref in (None, "pretrained"):
        return artifacts.load_pretrained(device)

    def read(s):
        row = s.get(Model, int(ref))
        if row is None:
            raise pipeline.ModelLoadError(f"model {ref} is not in the database")
        if artifacts.sha256(row.weights) != row.sha256:
            raise pipeline.ModelLoadError(f"model {ref}: weights do not match their sha256")
        return artifacts.from_bytes(row.weights, f"model {ref}").to(device)

    return transaction(read)


@lru_cache(maxsize=4)
def load_lowered(ref: str | int, precision: str) -> pipeline.TenseCVAE:
    """The bf16 or int8 form of load_model(ref), made once per worker (int8 on the CPU)."""
    from pipeline.precision import lowered

    return lowered(load_model(ref), precision)


def _model_id(ref: Any) -> int | None:
    return None if ref in (None, "pretrained") else int(ref)


# -- scores ------------------------------------------------------------------------------------


def _row(name: str, value: float, spread=None, repeats=None, dataset: str = "test.txt") -> dict:
    return {"name": name, "value": value, "spread": spread, "repeats": repeats, "dataset": dataset}


def score_rows(figures: dict[str, Any], dataset: str) -> list[dict[str, Any]]:
    rows = [_row("bleu4", figures["bleu4"], repeats=1, dataset=dataset)]
    if b := figures.get("bleu4_sampled"):
        rows.append(_row("bleu4_sampled", b["mean"], b["std"], b["samples"], dataset))
    for key in ("gaussian_score", "gaussian_score_joint"):
        if g := figures.get(key):
            rows += _gaussian_rows(g, dataset)
    exact_set = figures.get("exact_match_on", {}).get("file", dataset)
    for direction, value in figures.get("exact_match", {}).items():
        rows.append(_row(f"exact_match:{direction}", value, dataset=exact_set))
    return rows


def _gaussian_rows(g: dict[str, Any], dataset: str) -> list[dict[str, Any]]:
    """A Gaussian score's two rows, score and distinct verbs, named by how it decoded:
    greedy decoding keeps the lab's name; beam search, anchoring and joint choice are told
    apart."""
    tag = "" if g.get("decoding", "greedy") == "greedy" else "_" + g["decoding"].replace(" ", "")
    tag += "_anchored" if g.get("anchored") else ""
    tag += "_joint" if g.get("joint") else ""
    return [
        _row(f"gaussian_score{tag}", g["mean"], g["std"], g["draws"], dataset),
        _row(f"gaussian_distinct_verbs{tag}", g["distinct_verbs_mean"], None, g["draws"], dataset),
    ]


def write_scores(s, job_id: int, model_id: int | None, figures: dict[str, Any]) -> None:
    s.execute(delete(Score).where(Score.job_id == job_id))
    rows = [{**r, "job_id": job_id, "model_id": model_id} for r in score_rows(figures, "test.txt")]
    s.execute(insert(Score), rows)


def _summary(figures: dict[str, Any]) -> dict[str, Any]:
    return {
        k: figures[k]
        for k in (
            "bleu4",
            "bleu4_sampled",
            "gaussian_score",
            "gaussian_score_joint",
            "exact_match",
            "exact_match_on",
        )
        if k in figures
    }


# -- train -------------------------------------------------------------------------------------


def _epoch_writer(job: Job, ctx: JobContext) -> Callable[[EpochReport], None]:
    def on_epoch(rep: EpochReport) -> None:
        f = rep.figures
        data = rep.checkpoint() if rep.checkpoint_due else None

        def write(s):
            if (
                s.scalar(
                    select(EpochMetric.id).where(
                        EpochMetric.job_id == job.id, EpochMetric.epoch == rep.epoch
                    )
                )
                is None
            ):
                s.add(
                    EpochMetric(
                        job_id=job.id,
                        epoch=rep.epoch,
                        figures=f,
                        **{k: f.get(k) for k in EPOCH_COLUMNS},
                    )
                )
            if data is not None:
                s.execute(delete(Checkpoint).where(Checkpoint.job_id == job.id))
                s.add(
                    Checkpoint(
                        job_id=job.id, epoch=rep.epoch, data=data, sha256=artifacts.sha256(data)
                    )
                )
            message = f"epoch {rep.epoch}/{rep.epochs} loss {f['loss']:.3f}" + (
                f" bleu4 {f['bleu4']:.3f}" if "bleu4" in f else ""
            )
            ctx.progress(rep.epoch / rep.epochs * 0.95, message, s)

        transaction(write)
        ctx.check()

    return on_epoch


def _held_out(config, result) -> dict[str, Any] | None:
    """Exact match on the verbs the run held out (train.val_fraction): verbs never seen."""
    if not result.extra.get("val_verbs"):
        return None
    from pipeline.data import load_train, split_by_verb, test_words
    from pipeline.evaluate import exact_by_direction

    t = config.train
    _, held = split_by_verb(load_train(), t.val_fraction, t.seed, test_words())
    return {**exact_by_direction(result.model, held), "verbs": len({q[0] for q in held})}


def _scoring_counts(params: dict[str, Any]) -> tuple[int, int]:
    """A job's bleu_samples and gaussian_draws, refused before any work when they are not
    whole numbers from 0 (a training job would otherwise fail only after training)."""
    counts = params.get("bleu_samples", 100), params.get("gaussian_draws", 20)
    for name, value in zip(("bleu_samples", "gaussian_draws"), counts, strict=True):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a whole number, 0 or more, not {value!r}")
    return counts


def train_job(job: Job, ctx: JobContext) -> dict[str, Any]:
    samples, draws = _scoring_counts(job.params)
    config = from_dict(job.params["config"])
    resume = latest_checkpoint(job.id)
    result = pipeline.train(
        config, on_epoch=_epoch_writer(job, ctx), should_stop=ctx.should_stop, resume=resume
    )
    if result.cancelled:
        raise Cancelled()
    ctx.progress(0.96, "scoring the trained model")
    figures = pipeline.evaluate(
        result.model,
        bleu_samples=samples,
        gaussian_draws=draws,
        seed=config.train.seed,
    )
    if draws and job.params.get("gaussian_joint", True):
        # the same noise again, each z's four forms chosen together (tensevae generate
        # --joint): the decoding whose score the shipped config is chosen on
        figures["gaussian_score_joint"] = gaussian(
            result.model, draws=draws, seed=config.train.seed, **decode_options(0, joint=True)
        )
    held = _held_out(config, result)
    weights = artifacts.to_bytes(result.model.cpu(), {"job_id": job.id, "config": config.to_dict()})

    def write(s):
        model = s.scalars(select(Model).where(Model.job_id == job.id)).first()
        if model is None:
            model = Model(
                name=f"{config.name}-job{job.id}",
                job_id=job.id,
                config=config.to_dict(),
                weights=weights,
                sha256=artifacts.sha256(weights),
                size_bytes=len(weights),
                epoch=result.best_epoch,
            )
            s.add(model)
            s.flush()
        write_scores(s, job.id, model.id, figures)
        if held:
            s.execute(
                insert(Score),
                [
                    {**_row(f"unseen_exact:{k}", v, dataset="held-out verbs"),
                     "job_id": job.id, "model_id": model.id}
                    for k, v in held.items() if k != "verbs"
                ],
            )  # fmt: skip
        return model.id

    model_id = transaction(write)
    return {
        "model_id": model_id,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "resumed": resume is not None,
        **_summary(figures),
        **({"unseen_verbs": held} if held else {}),
    }


# -- evaluate ----------------------------------------------------------------------------------


def evaluate_job(job: Job, ctx: JobContext) -> dict[str, Any]:
    p = job.params
    samples, draws = _scoring_counts(p)
    model = load_model(p.get("model", "pretrained"))
    verbs = [tuple(q) for q in p["verbs"]] if p.get("verbs") else None
    ctx.progress(0.05, "scoring")
    figures = pipeline.evaluate(
        model,
        verbs=verbs,
        verbs_name=p.get("verbs_name"),
        bleu_samples=samples,
        gaussian_draws=draws,
        gaussian_beam=p.get("gaussian_beam", 0),
        gaussian_anchored=p.get("gaussian_anchored", False),
        gaussian_joint=p.get("gaussian_joint", False),
        seed=p.get("seed", 0),
    )
    ctx.check()

    def write(s):
        write_scores(s, job.id, _model_id(p.get("model")), figures)

    transaction(write)
    return {"model": p.get("model", "pretrained"), **_summary(figures)}


# -- convert -----------------------------------------------------------------------------------


def _storable(text: Any, limit: int) -> str:
    """A user's text as a row can hold it: at most ``limit`` characters, and a NUL (which
    PostgreSQL's text cannot hold) written as the four characters \\x00."""
    return str(text).replace("\x00", "\\x00")[:limit]


def _convert_batch(
    model, rows: Sequence[Sequence[Any]], decode: dict[str, Any]
) -> list[dict[str, Any]]:
    """Rows (line, word, src, tgt) to conversion rows; a bad line gets its reason, the
    good lines of the batch are still converted."""
    out, good = [], []
    for line, word, src, tgt in rows:
        row = {
            "line": line,
            "word": _storable(word, 255),
            "src": _storable(src, 32),
            "tgt": _storable(tgt, 32),
            "output": None,
            "error": None,
        }
        try:
            row["src"], row["tgt"] = tense_code(src), tense_code(tgt)
            (row["word"],) = check_words(model, [word])
            good.append(row)
        except ValueError as e:
            row["error"] = _storable(e, 10_000)
        out.append(row)
    if good:
        outputs = pipeline.convert(
            model,
            [r["word"] for r in good],
            [r["src"] for r in good],
            [r["tgt"] for r in good],
            **decode,
        )
        for r, o in zip(good, outputs, strict=True):
            r["output"] = o
    return out


def convert_job(job: Job, ctx: JobContext) -> dict[str, Any]:
    p = job.params
    ref, precision = p.get("model", "pretrained"), p.get("precision", "fp32")
    model = load_model(ref) if precision == "fp32" else load_lowered(ref, precision)
    decode = {"method": p.get("method", "greedy")}
    if decode["method"] in ("beam", "roundtrip"):
        decode["beam_width"] = p.get("beam_width", 4)
    requests = p["requests"]

    def written_lines(s) -> set[int]:  # resume after the last batch written
        return set(s.scalars(select(Conversion.line).where(Conversion.job_id == job.id)))

    done = transaction(written_lines)
    todo = [r for r in requests if r[0] not in done]
    # One batch is written (its own transaction, on a writer thread) while the next is
    # converted: torch leaves the interpreter free while it computes. A failed write is
    # raised here before the next one starts; leaving the block waits for the last.
    with ThreadPoolExecutor(1, thread_name_prefix="tensevae-writer") as writer:
        pending = None
        for start in range(0, len(todo), BATCH):
            ctx.check()
            rows = _convert_batch(model, todo[start : start + BATCH], decode)
            written = len(done) + start + len(rows)

            def write(s, rows=rows, written=written):
                insert_rows(s, Conversion, [{**r, "job_id": job.id} for r in rows])
                ctx.progress(written / len(requests), f"{written}/{len(requests)} lines", s)

            if pending is not None:
                pending.result()
            pending = writer.submit(transaction, write)
        if pending is not None:
            pending.result()

    def refused(s) -> int:
        return s.scalar(
            select(func.count()).where(Conversion.job_id == job.id, Conversion.error.is_not(None))
        )

    n_bad = transaction(refused)
    return {"lines": len(requests), "converted": len(requests) - n_bad, "refused": n_bad}


# -- generate ----------------------------------------------------------------------------------


def generate_job(job: Job, ctx: JobContext) -> dict[str, Any]:
    p = job.params
    n = p.get("n", 100)
    # A job submitted other than by the command line is refused here, before any work.
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= settings.MAX_GENERATE:
        raise ValueError(f"n must be a whole number from 1 to {settings.MAX_GENERATE:,}, not {n!r}")
    model = load_model(p.get("model", "pretrained"))
    tuples = pipeline.generate(
        model,
        n,
        seed=p.get("seed", 0),
        anchored=p.get("anchored", False),
        **decode_options(p.get("beam", 0), joint=p.get("joint", False)),
    )
    train = pipeline.data.load_train()
    lines = {tuple(q) for q in train}
    rows = [
        {"job_id": job.id, "sample": i, "sp": t[0], "tp": t[1], "pg": t[2], "p": t[3],
         "in_train": tuple(t) in lines}
        for i, t in enumerate(tuples)
    ]  # fmt: skip

    def write(s):
        s.execute(delete(GeneratedWord).where(GeneratedWord.job_id == job.id))
        insert_rows(s, GeneratedWord, rows)

    transaction(write)
    return {
        "n": len(tuples),
        "anchored": p.get("anchored", False),
        "joint": p.get("joint", False),
        "gaussian_score": gaussian_score(tuples, train),
        "distinct_verbs": distinct_verbs(tuples, train),
    }


HANDLERS: dict[str, Callable[[Job, JobContext], dict[str, Any]]] = {
    "train": train_job,
    "evaluate": evaluate_job,
    "convert": convert_job,
    "generate": generate_job,
}
