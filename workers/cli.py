"""The ``tensevae`` command: submit jobs, follow them, query results, watch the queue.

Imports are lazy: ``tensevae convert WORD --from T --to T`` loads torch and the model,
never Celery or SQLAlchemy."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit code 2."""


def _print_json(data: Any, file=None) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str), file=file)


def _status_stream(args):
    """Where a job command tells what became of its job: standard output, unless the job's
    rows go there (``--output -``), which then keeps them alone."""
    return sys.stderr if getattr(args, "output", None) == "-" else sys.stdout


def _err(message: str) -> None:
    print(f"tensevae: {message}", file=sys.stderr, flush=True)


# -- models --------------------------------------------------------------------------------------


def _model_ref(text: str) -> str | int:
    """'pretrained', a model id in the database, or a model folder (stored in the database
    so that workers on other machines can read it)."""
    if text == "pretrained":
        return "pretrained"
    if text.isdigit():
        from db.models import Model
        from db.session import session

        _ensure_db()
        with session() as s:
            if s.get(Model, int(text)) is None:
                raise UserError(f"--model {text}: no model with that id in the database")
        return int(text)
    return _store_folder(Path(text))


def _store_folder(folder: Path) -> int:
    from pipeline import artifacts

    model = artifacts.load(folder)  # ModelLoadError names what is wrong
    from db.models import Model
    from db.session import session

    _ensure_db()
    data = artifacts.to_bytes(model)
    digest = artifacts.sha256(data)
    from sqlalchemy import select

    with session() as s:
        known = s.scalar(select(Model.id).where(Model.sha256 == digest, Model.job_id.is_(None)))
        if known is not None:  # the same folder submitted again: one row serves
            return known
        row = Model(
            name=folder.name,
            job_id=None,
            config=artifacts.describe(model),
            weights=data,
            sha256=digest,
            size_bytes=len(data),
            epoch=0,
        )
        s.add(row)
        s.flush()
        return row.id


def _load_model_now(text: str):
    from pipeline import artifacts

    if text == "pretrained":
        return artifacts.load_pretrained()
    if text.isdigit():
        from workers.handlers import load_model

        _ensure_db()
        return load_model(int(text))
    return artifacts.load(text)


def _ensure_db() -> None:
    from db.migrate import ensure_schema

    ensure_schema()


# -- submitting and waiting --------------------------------------------------------------------


def _submit(kind: str, params: dict[str, Any], args) -> int:
    from workers.jobs import submit

    job_id = submit(kind, params, queue=args.queue)
    if not args.json or not args.wait:
        if args.json:
            _print_json({"job_id": job_id, "state": "queued"}, _status_stream(args))
        else:
            print(f"job {job_id} queued ({kind})", file=_status_stream(args), flush=True)
    return job_id


def _run_here_if_nobody_listens(job_id: int, queue: str):
    """In the no-server default, with no worker on the job's queue, run the job in this
    process, in a thread, exactly as a worker would; returns the thread or None."""
    import threading

    from db.queries import workers_listening
    from workers import settings

    if not settings.is_embedded_broker() or workers_listening(queue):
        return None
    from workers import runner

    name = f"cli-{os.uname().nodename}-{os.getpid()}"
    runner.start_heartbeat(name, [queue])

    def work():
        try:
            runner.run_job(job_id, name)
        finally:
            runner.stop_heartbeat()

    thread = threading.Thread(target=work, name="tensevae-job", daemon=True)
    thread.start()
    return thread


class _TimeLeft:
    """About how long a running job has left, from the progress this command has watched it
    make (not from the job's start: a job resumed from a checkpoint starts part way)."""

    def __init__(self):
        self.seen: tuple[float, float] | None = None  # (time, progress) when first seen running

    def __call__(self, state: str, progress: float, now: float) -> str:
        if state != "running":
            return ""
        if self.seen is None:
            self.seen = (now, progress)
        t0, p0 = self.seen
        if progress - p0 < 0.05 or progress >= 1:  # too little watched to say
            return ""
        return f" (about {_duration((now - t0) / (progress - p0) * (1 - progress))} left)"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _wait(job_id: int, quiet: bool, run_here: bool = True) -> dict[str, Any]:
    """Follow a job to its end, printing its progress; with ``run_here``, run it in this
    process where no worker listens (the no-server default)."""
    from db.queries import get_job
    from workers.jobs import cancel

    queue = get_job(job_id, full=False)["queue"]
    thread = _run_here_if_nobody_listens(job_id, queue) if run_here else None
    if thread is None and not quiet:
        print(
            f"waiting for a worker on queue {queue!r}",
            file=sys.stderr,
            flush=True,
        )
    elif not quiet:
        print(
            "no worker is listening: running the job in this process", file=sys.stderr, flush=True
        )
    last, eta = None, _TimeLeft()
    try:
        while True:
            job = get_job(job_id, full=False)
            line = f"[job {job_id}] {job['state']} {job['progress'] * 100:3.0f}% {job['message'] or ''}"
            left = eta(job["state"], job["progress"], time.monotonic())
            if line != last and not quiet:
                print(line.rstrip() + left, file=sys.stderr, flush=True)
                last = line
            if job["state"] in ("succeeded", "failed", "cancelled") and (
                thread is None or not thread.is_alive()
            ):
                return get_job(job_id)
            time.sleep(0.3)
    except KeyboardInterrupt:
        if thread is None:  # a worker runs it: stop following, never stop the work
            state = get_job(job_id, full=False)["state"]
            print(
                f"\nstopped following job {job_id}, which stays {state}: `tensevae jobs "
                f"{job_id} --wait` follows it again, `tensevae cancel {job_id}` stops it",
                file=sys.stderr,
                flush=True,
            )
            raise
        # this process runs it and is about to end: the job ends with it, as cancelled
        print(f"\ncancelling job {job_id} ...", file=sys.stderr, flush=True)
        cancel(job_id)
        thread.join()
        return get_job(job_id)


def _finish(job: dict[str, Any], args, show) -> int:
    out = _status_stream(args)
    if args.json:
        _print_json(
            {
                "job_id": job["id"],
                "state": job["state"],
                "error": job["error"],
                **(job.get("result") or {}),
            },
            out,
        )
    elif job["state"] == "succeeded":
        show(job)
    else:
        print(
            f"job {job['id']} {job['state']}" + (f": {job['error']}" if job["error"] else ""),
            file=out,
        )
    return 0 if job["state"] == "succeeded" else 1


def _figure(v: Any) -> str:
    if isinstance(v, dict) and "mean" in v:
        return f"{v['mean']:.4f} ± {v.get('std', 0):.4f}"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _show_scores(job: dict[str, Any]) -> None:
    r = job["result"] or {}
    print(f"job {job['id']} succeeded" + (f": model {r['model_id']}" if "model_id" in r else ""))
    for key in ("bleu4", "bleu4_sampled", "gaussian_score", "gaussian_score_joint"):
        if r.get(key) is not None:
            extra = ""
            if key.startswith("gaussian_score"):
                how = r[key].get("decoding", "greedy")
                how += ", anchored: not the lab's decoding" if r[key].get("anchored") else ""
                how += ", the four forms chosen together" if r[key].get("joint") else ""
                extra = (
                    f" (over {r[key]['draws']} draws of {r[key]['n']}, {how}; "
                    f"{r[key]['distinct_verbs_mean']:.1f} distinct verbs per draw)"
                )
            print(f"  {key:<20} {_figure(r[key])}{extra}")
    em = r.get("exact_match") or {}
    if em:
        on = (r.get("exact_match_on") or {}).get("file", "")
        print(f"  exact match on {on}: mean {em.get('mean', 0):.4f}")
        print("   " + "  ".join(f"{k} {v:.3f}" for k, v in em.items() if "->" in k))
    unseen = r.get("unseen_verbs")
    if unseen:
        print(
            f"  verbs never seen ({unseen['verbs']} held out by verb): "
            f"{unseen['sp_mean']:.4f} over the six sp directions, {unseen['mean']:.4f} over all 12"
        )


# -- commands ------------------------------------------------------------------------------------


def _check_writable(path: str | None) -> None:
    """Refuse, before any work is submitted, a file the command could not write at the end."""
    if not path or path == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{path}: is a folder, not a file to write")
    folder = target.parent
    if not folder.is_dir():
        raise UserError(f"{path}: no folder {folder} to write it in")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UserError(f"{path}: not writable")


def _check_written_at_end(args, flag: str, path: str | None) -> None:
    """A file the command writes when its job ends: refused without --wait, or where it
    could not be written."""
    if path and not args.wait:
        raise UserError(f"{flag} is written when the job ends: add --wait")
    _check_writable(path)


def _check_plot_path(path: str | None) -> None:
    """Curves asked for in a format they are not written in: refused before any work."""
    from pipeline.plots import check_format

    if path:
        try:
            check_format(path)
        except ValueError as e:
            raise UserError(str(e)) from None


def cmd_train(args) -> int:
    from pipeline.config import load_config

    _check_written_at_end(args, "--plot", args.plot)
    _check_plot_path(args.plot)
    if args.plot == "-":
        raise UserError("--plot -: the job's result goes to standard output; give a file")
    _check_scoring(args)
    config = load_config(args.config, args.set)
    params = {
        "config": config.to_dict(),
        "bleu_samples": args.samples,
        "gaussian_draws": args.draws,
        "gaussian_joint": not args.no_joint,
    }
    job_id = _submit("train", params, args)
    if not args.wait:
        return 0
    job = _wait(job_id, args.json)
    code = _finish(job, args, _show_scores)
    if job["state"] == "succeeded":
        path = _plot(job_id, args.plot)
        if not args.json:
            print(f"  curves: {path}")
    return code


def _plot(job_id: int, target: str | None) -> Path | None:
    """Write a training job's curves to ``target`` (a file; - for standard output, as PNG),
    or to the home folder; the path written, None for standard output."""
    from db.queries import epoch_figures
    from db.session import home
    from pipeline.plots import plot_history, render_history

    figures = epoch_figures(job_id)
    if not figures:
        raise UserError(f"job {job_id} recorded no epoch figures to plot (training jobs do)")
    title = f"tensevae training job {job_id}"
    if target == "-":
        sys.stdout.buffer.write(render_history(figures, "png", title))
        sys.stdout.flush()
        return None
    path = Path(target) if target else home() / f"job-{job_id}-curves.png"
    try:
        return plot_history(figures, path, title=title)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def cmd_convert(args) -> int:
    _check_beam(args.beam, "--beam")
    if args.precision != "fp32" and (args.beam or args.roundtrip):
        flag = "--roundtrip" if args.roundtrip else "--beam"
        raise UserError(
            f"--precision {args.precision} decodes greedily: drop {flag} or --precision"
        )
    if args.roundtrip and args.beam == 1:
        raise UserError("--roundtrip weighs several candidates: give --beam 2 or more")
    if args.words == ["-"]:
        args.words = sys.stdin.read().split()
        if not args.words:
            raise UserError("no words on standard input")
    elif "-" in args.words:
        raise UserError("'-' reads the words from standard input: give it alone")
    if args.input:
        if args.words:
            raise UserError("give words or --input FILE, not both")
        if args.engine != "auto":
            raise UserError(
                "--engine chooses how one-off conversions run; a bulk job's worker uses torch"
            )
        return _bulk_convert(args)
    if args.output or args.format:
        raise UserError("--output and --format write a bulk job's conversions: use --input FILE")
    if args.queue:
        raise UserError(
            "--queue sends a job to workers; words given on the command line are converted "
            "at once in this process: use --input FILE for a bulk job"
        )
    if not args.words:
        raise UserError("give words to convert, or --input FILE for a bulk job")
    if not args.src or not args.tgt:
        raise UserError("one-off conversion needs --from and --to")
    from pipeline.tenses import tense_code

    src, tgt = tense_code(args.src), tense_code(args.tgt)
    outputs = _convert_lite(args, src, tgt) if args.engine != "torch" else None
    if outputs is None:
        outputs = _convert_torch(args, args.words, src, tgt)
    if args.json:
        _print_json(
            [
                {"word": w, "from": src, "to": tgt, "output": o}
                for w, o in zip(args.words, outputs, strict=True)
            ]
        )
    else:
        for o in outputs:
            print(o)
    return 0


# Above this many words the auto engine leaves numpy for torch: torch's import (about 1.3 s on
# 2 cores) pays for itself in faster decoding, and a long list more likely holds a word close
# to a tie, which brings torch in anyway (2026-12-06 on 2 cores: 1,000 words 0.6 s in numpy
# against 1.6 s in torch; 2,000 words 2.6 s against 1.7 s).
LITE_MAX_WORDS = 1000


def _convert_lite(args, src: str, tgt: str) -> list[str] | None:
    """The words converted by pipeline.lite (numpy), those that came close to a tie decoded
    again by torch; None where only torch can serve (auto engine)."""
    forced = args.engine == "numpy"
    why = None
    if args.precision != "fp32" or args.beam or args.roundtrip:
        why = "decodes greedily in fp32: drop --beam, --roundtrip and --precision"
    elif args.model.isdigit():
        why = "reads model folders: give --model pretrained or a folder, not a database id"
    if not forced and len(args.words) > LITE_MAX_WORDS:
        return None
    if why:
        if forced:
            raise UserError(f"--engine numpy {why}")
        return None
    from pipeline import lite, modelfile

    folder = modelfile.pretrained_path() if args.model == "pretrained" else Path(args.model)
    try:
        model = lite.LiteModel.load(folder)
    except lite.LiteUnsupported as e:
        if forced:
            raise UserError(
                f"--engine numpy cannot run this model ({e}): use --engine torch"
            ) from None
        return None
    outputs, close = lite.convert(model, args.words, src, tgt)
    if close:
        again = _convert_torch(args, [args.words[i] for i in close], src, tgt)
        for i, word in zip(close, again, strict=True):
            outputs[i] = word
    return outputs


def _convert_torch(args, words: list[str], src: str, tgt: str) -> list[str]:
    from pipeline.evaluate import convert, decode_options

    model = _load_model_now(args.model)
    if args.precision != "fp32":
        from pipeline.precision import lowered

        model = lowered(model, args.precision)
    return convert(model, words, src, tgt, **decode_options(args.beam, args.roundtrip))


def _bulk_convert(args) -> int:
    from pipeline.data import read_requests
    from pipeline.evaluate import decode_options

    _check_written_at_end(args, "--output", args.output)
    if bool(args.src) != bool(args.tgt):
        raise UserError(
            "--from and --to go together: with --input they convert the lines that hold a "
            "word alone"
        )
    src = tgt = None
    if args.src:
        from pipeline.tenses import tense_code

        src, tgt = tense_code(args.src), tense_code(args.tgt)
    requests = read_requests(args.input, src, tgt)
    params = {
        "model": _model_ref(args.model),
        "requests": [list(r) for r in requests],
        "input": str(args.input),
        **decode_options(args.beam, args.roundtrip),
    }
    if args.precision != "fp32":
        params["precision"] = args.precision
    job_id = _submit("convert", params, args)
    if not args.wait:
        return 0
    job = _wait(job_id, args.json)
    if job["state"] == "succeeded" and args.output:
        _export_conversions(job_id, args.output, args.format)
    return _finish(
        job,
        args,
        lambda j: _show_converted(j, args.output, _status_stream(args)),
    )


def _export_conversions(job_id: int, path: str, fmt: str | None) -> None:
    from db.queries import conversions

    _write_rows(conversions(job_id), path, fmt)


def _write_rows(rows: list[dict[str, Any]], path: str, fmt: str | None) -> None:
    import csv

    fmt = fmt or ("json" if str(path).endswith(".json") else "csv")
    try:
        out = sys.stdout if path == "-" else open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        if fmt == "json":
            json.dump(rows, out, indent=1)
            out.write("\n")
        else:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["line"])
            writer.writeheader()
            writer.writerows(rows)
    finally:
        if out is not sys.stdout:
            out.close()


def cmd_evaluate(args) -> int:
    _check_scoring(args)
    params: dict[str, Any] = {
        "model": _model_ref(args.model),
        "bleu_samples": args.samples,
        "gaussian_draws": args.draws,
        "seed": args.seed,
    }
    _check_beam(args.gaussian_beam, "--gaussian-beam")
    _check_joint(args.gaussian_joint, args.gaussian_anchored, args.gaussian_beam, "--gaussian-")
    if args.gaussian_beam:
        params["gaussian_beam"] = args.gaussian_beam
    if args.gaussian_anchored:
        params["gaussian_anchored"] = True
    if args.gaussian_joint:
        params["gaussian_joint"] = True
    if args.verbs:
        from pipeline.data import read_quads

        params["verbs"] = [list(q) for q in read_quads(args.verbs)]
        params["verbs_name"] = "stdin" if args.verbs == "-" else Path(args.verbs).name
    job_id = _submit("evaluate", params, args)
    if not args.wait:
        return 0
    return _finish(_wait(job_id, args.json), args, _show_scores)


MAX_BEAM = 64


def _check_scoring(args) -> None:
    """--samples and --draws count sampled z and draws of 100: 0 (skip) or more."""
    for flag, value in (("--samples", args.samples), ("--draws", args.draws)):
        if value < 0:
            raise UserError(f"{flag} must be 0 (skip) or more, not {value}")


def _check_beam(width: int, flag: str) -> None:
    if not 0 <= width <= MAX_BEAM:
        raise UserError(f"{flag} must be 0 (greedy) or a beam width up to {MAX_BEAM}, not {width}")


def _check_joint(joint: bool, anchored: bool, width: int, prefix: str) -> None:
    """Joint generation weighs beam search's candidates: a width from 2 to
    JOINT_MAX_WIDTH (0 takes JOINT_WIDTH), and it is not anchored generation."""
    from pipeline.evaluate import JOINT_MAX_WIDTH

    if not joint:
        return
    if anchored:
        raise UserError(f"{prefix}joint and {prefix}anchored are two procedures: give one")
    if width and not 2 <= width <= JOINT_MAX_WIDTH:
        raise UserError(
            f"{prefix}joint chooses among 2 to {JOINT_MAX_WIDTH} candidates of each tense, "
            f"not {width}: give {prefix}beam from 2 to {JOINT_MAX_WIDTH} (4 if not given)"
        )


def cmd_generate(args) -> int:
    from workers.settings import MAX_GENERATE

    if not 1 <= args.n <= MAX_GENERATE:
        raise UserError(f"-n must be from 1 to {MAX_GENERATE:,}, not {args.n}")
    _check_beam(args.beam, "--beam")
    _check_joint(args.joint, args.anchored, args.beam, "--")
    params = {"model": _model_ref(args.model), "n": args.n, "seed": args.seed}
    if args.beam:
        params["beam"] = args.beam
    if args.anchored:
        params["anchored"] = True
    if args.joint:
        params["joint"] = True
    job_id = _submit("generate", params, args)
    if not args.wait:
        return 0
    return _finish(_wait(job_id, args.json), args, _show_generated)


def _show_generated(job: dict[str, Any]) -> None:
    from db.queries import generated

    r = job["result"]
    how = ""
    if r.get("anchored"):
        how = " (anchored: sp from the noise, the rest converted from it)"
    elif r.get("joint"):
        how = " (joint: the four forms chosen together among beam search's candidates)"
    print(
        f"job {job['id']} succeeded: {r['n']} verbs{how}, {r['gaussian_score']:.2f} match "
        f"train.txt ({r['distinct_verbs']} distinct)"
    )
    for g in generated(job["id"]):
        print(
            f"  {g['sp']} {g['tp']} {g['pg']} {g['p']}"
            + ("" if g["in_train"] else "   (not in train.txt)")
        )


def _show_converted(job: dict[str, Any], output: str | None = None, out=None) -> None:
    r = job["result"]
    print(
        f"job {job['id']} succeeded: {r['converted']} converted, {r['refused']} refused"
        + (f"; written to {output}" if output not in (None, "-") else ""),
        file=out,
    )


def _finish_shown(job: dict[str, Any], args) -> int:
    """_finish with the result shown as the command that submitted a job of its kind does."""
    shows = {"generate": _show_generated, "convert": _show_converted}
    return _finish(job, args, shows.get(job["kind"], _show_scores))


def cmd_jobs(args) -> int:
    from db.queries import get_job, list_jobs
    from db.states import FINAL_STATES

    _ensure_db()
    if args.wait and args.id is None:
        raise UserError("--wait follows one job: give its id")
    if args.id is not None:
        job = get_job(args.id)
        if job is None:
            raise UserError(f"no job {args.id}")
        if args.wait:  # follow it to its end, as the command that submitted it would have
            if job["state"] not in FINAL_STATES:  # a queued one runs here if no one listens
                job = _wait(args.id, args.json, run_here=job["state"] == "queued")
            return _finish_shown(job, args)
        if args.json:
            _print_json(job)
        else:
            for k, v in job.items():
                print(f"{k:<13} {json.dumps(v, default=str) if isinstance(v, dict) else v}")
        return 0
    jobs = list_jobs(args.limit, args.state, args.kind)
    if args.json:
        _print_json(jobs)
        return 0
    print(
        f"{'id':>5} {'kind':<9} {'state':<10} {'progress':>8}  {'queue':<6} {'worker':<24} message"
    )
    if not jobs:
        _say_none("jobs", args.state or args.kind, "submit one with `tensevae train` or `convert`")
    for j in jobs:
        msg = j["error"] or j["message"] or ""
        print(
            f"{j['id']:>5} {j['kind']:<9} {j['state']:<10} {j['progress'] * 100:7.0f}%  "
            f"{j['queue']:<6} {(j['worker'] or '-')[:24]:<24} {msg[:60]}"
        )
    return 0


def cmd_results(args) -> int:
    from db import queries

    if args.job is None and (args.output or args.format):
        flag = "--output" if args.output else "--format"
        raise UserError(f"{flag} writes a job's rows: add --job ID (--json for the models)")
    _ensure_db()
    _check_writable(args.output)
    if args.job is not None:
        job = queries.get_job(args.job)
        if job is None:
            raise UserError(f"no job {args.job}")
        rows = {"convert": queries.conversions, "generate": queries.generated}.get(
            job["kind"], queries.job_scores
        )(args.job)
        if args.output or args.format:
            _write_rows(rows, args.output or "-", args.format)
        elif args.json:
            _print_json(rows)
        else:
            for r in rows:
                print("  ".join(str(v) for v in r.values()))
        return 0
    if args.best_by and args.best_by not in (names := queries.score_names()) and names:
        raise UserError(
            f"no model has a score named {args.best_by!r}; scores: {_names_in_short(names)}"
        )
    models = queries.models_with_scores(args.best_by, args.limit)
    if args.json:
        _print_json(models)
        return 0
    print(
        f"{'model':>5} {'job':>5} {'name':<24} {'bleu4':>7} {'bleu4~z':>15} {'gaussian':>15} "
        f"{'joint':>15} {'exact':>6} {'unseen':>6}"
    )
    if not models:
        _say_none("models", False, "train one with `tensevae train --wait`")
    for m in models:
        s = m["scores"]

        def fig(name, s=s):
            if name not in s:
                return "-"
            v = s[name]
            return f"{v['value']:.3f}" + (
                f" ± {v['spread']:.3f}" if v["spread"] is not None else ""
            )

        print(
            f"{m['id']:>5} {m['job_id'] or '-':>5} {m['name'][:24]:<24} {fig('bleu4'):>7} "
            f"{fig('bleu4_sampled'):>15} {fig('gaussian_score'):>15} "
            f"{fig(_joint_score_name(s)):>15} {fig('exact_match:mean'):>6} "
            f"{fig('unseen_exact:sp_mean'):>6}"
        )
    return 0


def _say_none(what: str, filtered, hint: str) -> None:
    """On standard error, so that a listing piped elsewhere stays its header alone: that
    the database holds none of ``what`` (or none that the filters match)."""
    if filtered:
        print(f"(no {what} match)", file=sys.stderr)
    else:
        print(f"(no {what} yet: {hint})", file=sys.stderr)


def _names_in_short(names: list[str]) -> str:
    """Score names for one line: a family's directions (exact_match:sp->p, ...) as one
    'exact_match:{mean, sp->p...}', those on another file as 'sp->p...@FILE'."""
    plain, families = [], {}
    for name in names:
        family, sep, rest = name.partition(":")
        if not sep:
            plain.append(name)
            continue
        rests = families.setdefault(family, [])
        at = rest[rest.index("@") :] if "@" in rest else ""
        shown = f"sp->p...{at}" if "->" in rest else rest
        if shown not in rests:
            rests.append(shown)
    grouped = [
        f"{f}:{{{', '.join(sorted(r, key=lambda x: '->' in x))}}}" for f, r in families.items()
    ]
    return ", ".join(plain + grouped)


def _joint_score_name(scores: dict[str, Any]) -> str:
    """The name of a model's Gaussian score with each z's four forms chosen together
    (gaussian_score_beam4_joint, or another beam's), beam 4 first."""
    names = sorted(
        (n for n in scores if n.startswith("gaussian_score_beam") and n.endswith("_joint")),
        key=lambda n: (n != "gaussian_score_beam4_joint", n),
    )
    return names[0] if names else "gaussian_score_beam4_joint"


def cmd_queue(args) -> int:
    from db.queries import queue_status

    _ensure_db()
    while True:
        status = queue_status()
        status["broker"] = _broker_depths()
        if args.json:
            _print_json(status)
        else:
            _show_queue(status)
        if not args.watch:
            return 0
        time.sleep(args.watch)
        print()


def _broker_depths() -> dict[str, Any]:
    """Messages waiting in the broker per queue (Redis: list lengths)."""
    from workers import settings

    url = settings.broker_url()
    out: dict[str, Any] = {"url": settings.redact(url)}
    if url.startswith(("redis://", "rediss://")):
        try:
            import redis

            r = redis.Redis.from_url(url, socket_timeout=2)
            out["messages"] = {q: r.llen(q) for q in settings.all_queues()}
        except Exception as e:
            out["error"] = f"{type(e).__name__}"
    return out


def _show_queue(status: dict[str, Any]) -> None:
    print(f"broker: {status['broker']['url']}")
    print(f"workers online: {len(status['workers'])}")
    for w in status["workers"]:
        print(f"  {w['name']:<32} queues {','.join(w['queues']):<10} job {w['current_job'] or '-'}")
    queued = status["queued"]
    msgs = status["broker"].get("messages", {})
    from workers import settings

    for q in settings.all_queues():
        extra = f" ({msgs[q]} messages in the broker)" if q in msgs else ""
        print(f"queue {q:<5} {queued.get(q, 0)} jobs queued{extra}")
    print(f"running: {len(status['running'])}")
    for j in status["running"]:
        print(
            f"  job {j['id']:<5} {j['kind']:<9} {j['progress'] * 100:4.0f}%  {j['worker']}  {j['message'] or ''}"
        )


def cmd_worker(args) -> int:
    from workers import settings

    settings.check()
    _ensure_db()
    queues = args.queues or ",".join(settings.all_queues())
    from workers.app import app

    name = args.name or f"tensevae-{'-'.join(queues.split(','))}@%h"
    if args.threads < 0:
        raise UserError(f"--threads must be 0 (torch's default) or more, not {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    argv = [
        "worker",
        "--pool",
        "solo",
        "--queues",
        queues,
        "--hostname",
        name,
        "--loglevel",
        args.loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    print(
        f"tensevae worker on queues {queues}; broker {settings.redact(settings.broker_url())}",
        flush=True,
    )
    app.worker_main(argv=argv)
    return 0


def cmd_db(args) -> int:
    from db import migrate
    from db.session import database_url, mask_url

    if args.action == "upgrade":
        migrate.upgrade()
        print(f"database {mask_url(database_url())} is at revision {migrate.current_revision()}")
    else:
        print(migrate.current_revision() or "empty (run 'tensevae db upgrade')")
    return 0


def cmd_cancel(args) -> int:
    from workers.jobs import cancel

    _ensure_db()
    try:
        state = cancel(args.id)
    except LookupError as e:
        raise UserError(str(e)) from None
    print(
        f"job {args.id}: {state}"
        + (" (stops within one epoch or batch)" if state == "running" else "")
    )
    return 0


def cmd_retry(args) -> int:
    """A failed or cancelled job back on its queue; training picks up from its last
    checkpoint, a bulk conversion after the rows it wrote."""
    from db.queries import resume_point
    from workers.jobs import retry

    _ensure_db()
    try:
        kind = retry(args.id, args.queue)
    except (LookupError, ValueError) as e:
        raise UserError(str(e)) from None
    where = resume_point(args.id)
    if not (args.json and args.wait):
        if args.json:
            _print_json({"job_id": args.id, "state": "queued", "resumes": where})
        else:
            print(f"job {args.id} queued again ({kind}" + (f"; {where})" if where else ")"))
    if not args.wait:
        return 0
    return _finish_shown(_wait(args.id, args.json), args)


def cmd_delete(args) -> int:
    from workers.jobs import delete

    _ensure_db()
    try:
        deleted = delete(args.ids)
    except (LookupError, ValueError) as e:
        raise UserError(str(e)) from None
    if args.json:
        _print_json(deleted)
        return 0
    for d in deleted:
        model = f" and its model {d['model_id']}" if d["model_id"] is not None else ""
        print(f"deleted job {d['job_id']} ({d['kind']}){model}")
    return 0


def cmd_plot(args) -> int:
    from db.queries import get_job

    _ensure_db()
    _check_writable(args.output)
    _check_plot_path(args.output)
    if args.output == "-" and sys.stdout.isatty():
        raise UserError("--output -: standard output is a terminal; redirect it (> curves.png)")
    if get_job(args.id, full=False) is None:
        raise UserError(f"no job {args.id}")
    path = _plot(args.id, args.output)
    if path is not None:
        print(path)
    return 0


def cmd_export(args) -> int:
    """A model of the database written as a folder: what `--model FOLDER`, the numpy engine
    and `pipeline.load` read, on any machine."""
    from db.models import Model
    from db.session import session
    from pipeline import artifacts, modelfile

    folder = Path(args.folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: a file is in the way of the model folder")
    for name in (modelfile.CONFIG_FILE, modelfile.WEIGHTS_FILE):
        if (folder / name).exists():
            raise UserError(f"{folder} already holds a model ({name}): give a new folder")
    _ensure_db()
    with session() as s:
        row = s.get(Model, args.id)
        if row is None:
            raise UserError(f"no model {args.id}")
        data, sha, name, job_id = row.weights, row.sha256, row.name, row.job_id
        scores = [
            {"name": sc.name, "value": sc.value, "spread": sc.spread, "dataset": sc.dataset,
             "job_id": sc.job_id}
            for sc in sorted(row.scores, key=lambda sc: sc.id)
        ]  # fmt: skip
    if artifacts.sha256(data) != sha:
        raise UserError(f"model {args.id}: its weights do not match their sha256")
    source = {"model_id": args.id, "name": name, "job_id": job_id, "sha256": sha}
    try:
        artifacts.bytes_to_folder(
            data, folder, f"model {args.id}", {"exported_from": source, "database_scores": scores}
        )
    except OSError as e:
        raise UserError(f"cannot write {folder}: {e.strerror or e}") from None
    print(folder)
    return 0


def cmd_check_data(args) -> int:
    from pipeline.datacheck import check_quads

    problems = check_quads(args.file)
    for p in problems:
        print(p)
    print(f"{len(problems)} suspicious lines in {args.file}", file=sys.stderr)
    return 0


# -- parser ----------------------------------------------------------------------------------------


def _at_least_one(text: str) -> int:
    """An argparse type: a whole number of 1 or more (a row limit)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {n}")
    return n


def _seconds(text: str) -> float:
    """An argparse type: a positive number of seconds (at least 0.1, a screen's refresh)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not x >= 0.1 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"give at least 0.1 seconds, not {text}")
    return x


def _job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="follow the job and print its result")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--queue", help="send to this queue instead of the kind's default")


def _model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="pretrained",
        help="a model id, a model folder, or 'pretrained' (the shipped model)",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, telling a mistake on the command line in one line (exit code 2) instead of
    its usage block; subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"tensevae: {message} (see {self.prog} --help)\n")


class _Version(argparse.Action):
    """--version: tensevae's version, read only when asked (the one-off path stays quick)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        kwargs.setdefault("help", "print tensevae's version and exit")
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("tensevae")
        except PackageNotFoundError:
            number = "(not installed: run ./scripts/setup)"
        print(f"tensevae {number}")
        parser.exit()


def _command(sub, name: str, summary: str, *examples: str) -> argparse.ArgumentParser:
    """A subcommand whose --help opens with its summary and ends with examples."""
    epilog = "examples:\n" + "\n".join(f"  tensevae {e}" for e in examples) if examples else None
    return sub.add_parser(
        name,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="tensevae",
        description=__doc__.splitlines()[0],
        epilog="Each command's --help says what it takes, with examples.",
    )
    ap.add_argument("--version", action=_Version)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        sub,
        "train",
        "submit a training job",
        "train --wait --plot curves.png",
        "train --config lab --set train.epochs=5 --wait",
        "train --set model.hidden_size=192 --queue gpu",
    )
    p.add_argument("--config", help="a YAML config file, or a name in configs/ (default: default)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value"
    )
    p.add_argument("--plot", help="with --wait: where to write the curves (.png, .pdf or .svg)")
    p.add_argument(
        "--samples", type=int, default=100, help="sampled z for BLEU-4's spread (default: 100)"
    )
    p.add_argument(
        "--draws", type=int, default=20, help="draws of 100 z for the Gaussian score (default: 20)"
    )
    p.add_argument(
        "--no-joint",
        action="store_true",
        help="score the Gaussian draws greedily only, not also with each z's four forms "
        "chosen together (generate --joint; about 8 s more for 20 draws on 2 cores)",
    )
    _job_options(p)
    p.set_defaults(func=cmd_train)

    p = _command(
        sub,
        "convert",
        "convert words now, or submit a bulk conversion job",
        "convert abandon go --from sp --to past",
        "convert - --from sp --to p < verbs.txt",
        "convert --input words.txt --output out.csv --wait",
        "convert --input verbs.txt --from sp --to p --roundtrip --model 3 --wait",
    )
    p.add_argument(
        "words",
        nargs="*",
        help="words to convert at once (needs --from and --to); - reads them from standard "
        "input, separated by spaces or lines, one output a line",
    )
    p.add_argument("--from", dest="src", help="tense of the words (sp, tp, pg, p or an alias)")
    p.add_argument("--to", dest="tgt", help="tense to convert to")
    p.add_argument(
        "--input",
        help="a file of 'word from to' lines (with --from and --to, also lines of a word "
        "alone), - for standard input: submits a bulk job",
    )
    p.add_argument("--output", help="with --wait: write the conversions here (.csv or .json)")
    p.add_argument(
        "--format",
        choices=["csv", "json"],
        help="of --output (default: json for a .json file, else csv)",
    )
    p.add_argument("--beam", type=int, default=0, help="beam width (default: greedy)")
    p.add_argument(
        "--roundtrip",
        action="store_true",
        help="beam search (width --beam, default 4), keeping the candidate that is likeliest "
        "both as the conversion and converted back to the word: fewer slips on verbs the "
        "model never saw, for up to twice beam search's time",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "int8"],
        default="fp32",
        help="matrix products in bf16 (autocast) or int8 on the CPU; words that come close to "
        "a tie are decoded again in fp32, so the output is fp32's (default: fp32)",
    )
    p.add_argument(
        "--engine",
        choices=["auto", "numpy", "torch"],
        default="auto",
        help="what runs a one-off greedy fp32 conversion: numpy (no torch to import: about "
        "1.5 s sooner on 2 cores; a word that comes close to a tie is decoded again by "
        "torch, so the output is torch's), or torch; auto: numpy for up to 1,000 words "
        "where the model is a folder (or pretrained) it can run (default: auto)",
    )
    _model_option(p)
    _job_options(p)
    p.set_defaults(func=cmd_convert)

    p = _command(
        sub,
        "evaluate",
        "submit an evaluation job",
        "evaluate --wait",
        "evaluate --verbs my-verbs.txt --model 3 --wait --json",
    )
    p.add_argument(
        "--verbs",
        help="a quadruple file (sp tp pg p per line; - for standard input) to score all 12 "
        "directions on",
    )
    p.add_argument(
        "--samples", type=int, default=100, help="sampled z for BLEU-4's spread (default: 100)"
    )
    p.add_argument(
        "--draws", type=int, default=20, help="draws of 100 z for the Gaussian score (default: 20)"
    )
    p.add_argument(
        "--gaussian-beam",
        type=int,
        default=0,
        help="decode the Gaussian score's noise by beam search of this width (default: greedy)",
    )
    p.add_argument(
        "--gaussian-anchored",
        action="store_true",
        help="score anchored generation (see generate --anchored) instead of the lab's decoding",
    )
    p.add_argument(
        "--gaussian-joint",
        action="store_true",
        help="decode each z's four forms together (see generate --joint; beam 4 unless "
        "--gaussian-beam says)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the sampled z and the draws (default: 0)"
    )
    _model_option(p)
    _job_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = _command(
        sub,
        "generate",
        "submit a generation job (verbs from Gaussian noise)",
        "generate -n 10 --wait",
        "generate -n 10 --joint --wait --json",
    )
    p.add_argument("-n", type=int, default=100, help="how many z to draw (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    p.add_argument("--beam", type=int, default=0, help="beam width (default: greedy)")
    p.add_argument(
        "--anchored",
        action="store_true",
        help="decode only the simple present from the noise and conjugate it with the model's "
        "own conversions (the four forms agree; not the lab's decoding)",
    )
    p.add_argument(
        "--joint",
        action="store_true",
        help="choose each z's four forms together among beam search's candidates (beam 4 "
        "unless --beam says), so that the encoder places them together",
    )
    _model_option(p)
    _job_options(p)
    p.set_defaults(func=cmd_generate)

    from db.states import JOB_KINDS, JOB_STATES

    p = _command(
        sub,
        "jobs",
        "list jobs, or show one",
        "jobs --state running",
        "jobs 7 --wait",
    )
    p.add_argument("id", nargs="?", type=int, help="a job's id: show that job")
    p.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    p.add_argument("--kind", choices=JOB_KINDS, help="only jobs of this kind")
    p.add_argument(
        "--wait", action="store_true", help="with an id: follow the job to its end, with its result"
    )
    p.add_argument(
        "--limit", type=_at_least_one, default=20, help="the latest this many (default: 20)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_jobs)

    p = _command(
        sub,
        "results",
        "models and their scores, or one job's results",
        "results --best-by bleu4",
        "results --job 7 --output conversions.csv",
    )
    p.add_argument("--job", type=int, help="a job's conversions, generated words or scores")
    p.add_argument(
        "--best-by",
        help="sort models by this score (bleu4, gaussian_score, unseen_exact:sp_mean, ...; "
        "NAME@FILE for a score on another file)",
    )
    p.add_argument(
        "--limit", type=_at_least_one, default=20, help="at most this many models (default: 20)"
    )
    p.add_argument(
        "--output", help="with --job: write its rows to this file (- for standard output)"
    )
    p.add_argument(
        "--format",
        choices=["csv", "json"],
        help="of a job's rows (default: json for a .json file, else csv)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_results)

    p = _command(
        sub, "queue", "workers online, queue depths, running jobs", "queue", "queue --watch 5"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--watch",
        type=_seconds,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until interrupted",
    )
    p.set_defaults(func=cmd_queue)

    p = _command(
        sub,
        "worker",
        "run a worker (one job at a time; run more to scale)",
        "worker",
        "worker --queues cpu --threads 1 --name cpu-1",
    )
    p.add_argument("--queues", help="comma-separated queues (default: all: gpu,cpu)")
    p.add_argument("--name", help="worker name (default: tensevae-QUEUES@host)")
    p.add_argument("--loglevel", default="info", help="Celery's log level (default: info)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default: torch's, one per core; with several workers on "
        "one machine give each cores/workers)",
    )
    p.set_defaults(func=cmd_worker)

    p = _command(sub, "db", "database schema", "db current", "db upgrade")
    p.add_argument(
        "action",
        choices=["upgrade", "current"],
        help="upgrade: bring the schema to this tensevae's (every command does so when it "
        "needs the database); current: print the schema's revision",
    )
    p.set_defaults(func=cmd_db)

    p = _command(sub, "cancel", "cancel a queued or running job", "cancel 7")
    p.add_argument("id", type=int, help="the job's id (tensevae jobs)")
    p.set_defaults(func=cmd_cancel)

    p = _command(
        sub,
        "retry",
        "put a failed or cancelled job back on its queue (training resumes from its last "
        "checkpoint, a bulk conversion after the rows it wrote)",
        "retry 7 --wait",
        "retry 7 --queue cpu",
    )
    p.add_argument("id", type=int, help="the job's id (tensevae jobs --state failed)")
    p.add_argument("--wait", action="store_true", help="follow the job and print its result")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--queue", help="send it to this queue instead of its own (where a worker listens)"
    )
    p.set_defaults(func=cmd_retry)

    p = _command(
        sub,
        "delete",
        "delete finished jobs with what they wrote (rows, scores, curves' figures, "
        "checkpoints) and a training job's model with every score of it",
        "delete 4 5 6",
        "delete 7 --json",
    )
    p.add_argument("ids", nargs="+", type=int, metavar="id", help="the jobs' ids (tensevae jobs)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_delete)

    p = _command(
        sub,
        "plot",
        "write a training job's curves (PNG, PDF or SVG)",
        "plot 1 --output curves.pdf",
        "plot 1 --output - > curves.png",
    )
    p.add_argument("id", type=int, help="a training job's id (tensevae jobs --kind train)")
    p.add_argument(
        "--output",
        help="the file, its format by suffix (.png, .pdf, .svg; PNG without one); - for PNG "
        "on standard output (default: job-ID-curves.png in tensevae's data folder)",
    )
    p.set_defaults(func=cmd_plot)

    p = _command(
        sub,
        "export",
        "write a model of the database as a folder (config.json, weights)",
        "export 1 my-model && tensevae convert walk --from sp --to p --model my-model",
    )
    p.add_argument("id", type=int, help="the model's id (tensevae results)")
    p.add_argument("folder", help="a new folder; --model FOLDER and pipeline.load read it")
    p.set_defaults(func=cmd_export)

    p = _command(
        sub,
        "check-data",
        "report suspicious lines of a quadruple file",
        "check-data my-verbs.txt",
    )
    p.add_argument("file", help="a file of 'sp tp pg p' lines, as train.txt")
    p.set_defaults(func=cmd_check_data)
    return ap


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [UserError]
    mods = sys.modules
    if "workers.settings" in mods:
        errors.append(mods["workers.settings"].SettingError)
    if "pipeline.errors" in mods:
        errors.append(mods["pipeline.errors"].TenseVAEError)
    if "db.migrate" in mods:
        errors.append(mods["db.migrate"].SchemaError)
    if "db.session" in mods:
        errors.append(mods["db.session"].DatabaseSettingError)
    if "workers.jobs" in mods:
        errors.append(mods["workers.jobs"].BrokerError)
    if "sqlalchemy" in mods:
        errors.append(mods["sqlalchemy"].exc.OperationalError)
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        from pipeline import environment

        environment.products()  # a bad TENSEVAE_PRODUCTS is refused before any work
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        from workers.settings import redact

        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "sqlalchemy" in type(e).__module__:
            text = f"the database is unreachable: {redact(text)}"
        _err(redact(text))
        return 2


if __name__ == "__main__":
    sys.exit(main())
