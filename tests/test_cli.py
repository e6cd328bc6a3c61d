"""The tensevae command as a user meets it: bad input is one line and exit code 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.servers import ctrl_c_reaches_it

ROOT = Path(__file__).resolve().parent.parent


def tv(*args, home, check=None, env=None, stdin=""):
    e = {**os.environ, "TENSEVAE_HOME": str(home), "OMP_NUM_THREADS": "1", **(env or {})}
    e.pop("TENSEVAE_DATABASE_URL", None) if not env or "TENSEVAE_DATABASE_URL" not in env else None
    e.pop("TENSEVAE_BROKER_URL", None) if not env or "TENSEVAE_BROKER_URL" not in env else None
    p = subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=e,
        cwd=ROOT,
        timeout=300,
    )
    if check is not None:
        assert p.returncode == check, (p.stdout, p.stderr)
    return p


def one_line_error(p):
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_every_command_and_argument_says_what_it_is_and_its_examples_parse():
    import argparse
    import shlex

    from workers.cli import parser

    ap = parser()
    (commands,) = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(commands.choices) >= 13
    for name, p in commands.choices.items():
        assert p.description and p.epilog.startswith("examples:"), name
        for action in p._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
        for line in p.epilog.splitlines()[1:]:
            words = shlex.split(line)
            assert words[:2] == ["tensevae", name], line
            end = next((i for i, w in enumerate(words) if w in ("&&", "<", ">")), len(words))
            ap.parse_args(words[1:end])  # an example that does not parse exits 2 here


def test_time_left_comes_from_the_progress_watched():
    from workers.cli import _duration, _TimeLeft

    left = _TimeLeft()
    assert left("queued", 0.0, 0.0) == "" and left("running", 0.5, 10.0) == ""  # resumed at 50%
    assert left("running", 0.52, 12.0) == ""  # too little progress watched to say
    assert left("running", 0.6, 30.0) == " (about 80 s left)"  # 10% in 20 s, 40% to go
    assert left("running", 0.7, 90.0) == " (about 2 min left)"  # 20% in 80 s, 30% to go
    assert left("running", 1.0, 40.0) == "" and left("succeeded", 1.0, 41.0) == ""
    assert [_duration(x) for x in (0.2, 59.4, 89, 91, 3599, 3600, 5400, 7230)] == [
        "1 s", "59 s", "89 s", "2 min", "60 min", "1 h", "1 h 30 min", "2 h"]  # fmt: skip


def test_following_a_job_prints_the_time_left(monkeypatch, capsys):
    import time

    import db.queries
    from workers import cli

    seen = [("queued", 0.0, None), ("running", 0.0, "epoch 0/2"), ("running", 0.5, "epoch 1/2"),
            ("succeeded", 1.0, "done")]  # fmt: skip
    jobs = iter([dict(zip(("state", "progress", "message"), j, strict=True)) for j in seen])
    last = {}

    def get_job(job_id, full=True):
        last.update(next(jobs, last), queue="cpu")
        return last

    clock = iter(range(0, 1000, 30))
    monkeypatch.setattr(db.queries, "get_job", get_job)
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(time, "sleep", lambda s: None)
    assert cli._wait(7, quiet=False, run_here=False)["state"] == "succeeded"
    assert capsys.readouterr().err.splitlines()[1:] == [
        "[job 7] running   0% epoch 0/2",
        "[job 7] running  50% epoch 1/2 (about 30 s left)",  # half done in 30 s
        "[job 7] succeeded 100% done",
    ]


def test_score_names_in_short():
    from workers.cli import _names_in_short

    names = ["bleu4", "exact_match:mean", "exact_match:p->sp", "exact_match:sp->p",
             "exact_match:p->sp@v.txt", "unseen_exact:sp_mean", "unseen_exact:tp->p"]  # fmt: skip
    assert _names_in_short(names) == (
        "bleu4, exact_match:{mean, sp->p..., sp->p...@v.txt}, unseen_exact:{sp_mean, sp->p...}"
    )


def test_version(tmp_path):
    from importlib.metadata import version

    assert tv("--version", home=tmp_path, check=0).stdout == f"tensevae {version('tensevae')}\n"


def test_empty_listings_say_so_on_standard_error(tmp_path):
    """A new database lists no jobs and no models: standard output keeps the header alone
    (a script reading it sees no rows), standard error says why it is empty."""
    for args, note in [
        (["jobs"], "(no jobs yet: submit one"),
        (["jobs", "--state", "failed"], "(no jobs match)"),
        (["results"], "(no models yet: train one"),
    ]:
        p = tv(*args, home=tmp_path, check=0)
        assert len(p.stdout.splitlines()) == 1, p.stdout
        assert p.stderr.startswith(note), p.stderr
    tv("generate", "-n", "1", "--wait", home=tmp_path, check=0)
    p = tv("jobs", home=tmp_path, check=0)
    assert len(p.stdout.splitlines()) == 2 and p.stderr == "", (p.stdout, p.stderr)
    assert tv("jobs", "--state", "failed", home=tmp_path, check=0).stderr == "(no jobs match)\n"


def test_one_off_conversion_with_the_shipped_model(tmp_path):
    p = tv(
        "convert",
        "abandon",
        "walk",
        "--from",
        "sp",
        "--to",
        "past",
        "--json",
        home=tmp_path,
        check=0,
    )
    out = json.loads(p.stdout)
    assert out[0]["output"] == "abandoned"
    assert out[1]["word"] == "walk" and out[1]["to"] == "p"


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_one_off_conversion_in_lower_precision(tmp_path, precision):
    from pipeline.precision import cpu_runs_bf16

    args = ["convert", "abandon", "sing", "need", "symbolize", "--from", "sp", "--to", "p"]
    p = tv(*args, "--precision", precision, home=tmp_path)
    if precision == "bf16" and not cpu_runs_bf16():  # emulated bf16 is refused, in one line
        assert p.returncode == 2 and p.stdout == ""
        assert p.stderr.count("\n") == 1 and "no bf16 arithmetic on this CPU" in p.stderr
        return
    assert p.returncode == 0, p.stderr
    assert p.stdout == tv(*args, home=tmp_path, check=0).stdout
    assert p.stdout.split()[0] == "abandoned"
    assert p.stderr == ""  # torch's deprecation notices about its int8 API are not shown


@pytest.mark.parametrize(("engine", "unused"), [("auto", ["torch"]), ("torch", [])])
def test_one_off_conversion_imports_no_job_system(engine, unused):
    """Nothing the one-off path does not use is imported: never the job system, and by
    default not torch either (pipeline.lite converts in numpy)."""
    names = ["celery", "sqlalchemy", "kombu", "redis", "alembic", "matplotlib", *unused]
    code = (
        "import sys; from workers.cli import main; main(['convert', 'walk', '--from', 'sp', "
        f"'--to', 'p', '--engine', '{engine}']); "
        f"bad = [m for m in {names!r} if m in sys.modules]; print('IMPORTED', bad)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert p.stdout.startswith("walked\n") and "IMPORTED []" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["convert", "ab1", "--from", "sp", "--to", "p"], "'ab1'"),
        (["convert", "re-do", "--from", "sp", "--to", "p"], "'-'"),
        (["convert", "Walk", "--from", "sp", "--to", "p"], "has capitals ('W')"),
        (["convert", "walk", "--from", "sp", "--to", "future"], "unknown tense 'future'"),
        (["convert", "", "--from", "sp", "--to", "p"], "empty word"),
        (["convert", "a" * 60, "--from", "sp", "--to", "p"], "longer than"),
        (
            ["convert", "walk", "--from", "sp", "--to", "p", "--model", "/nonexistent"],
            "no such model folder",
        ),
        (["convert", "walk"], "--from and --to"),
        (["train", "--config", "/nonexistent.yaml"], "no such config"),
        (["train", "--set", "train.epochs=many"], "expected int"),
        (["train", "--draws", "-1"], "--draws must be 0 (skip) or more, not -1"),
        (["evaluate", "--samples", "-2"], "--samples must be 0 (skip) or more, not -2"),
        (["jobs", "424242"], "no job 424242"),
        (["cancel", "424242"], "no job 424242"),
        (["worker", "--threads", "-1"], "--threads must be 0"),
        (["convert", "walk", "--from", "sp", "--to", "p", "--beam", "-1"], "--beam must be 0"),
        (
            ["convert", "walk", "--from", "sp", "--to", "p", "--precision", "int8", "--beam", "2"],
            "drop --beam",
        ),
        (
            ["convert", "walk", "--from", "sp", "--to", "p", "--precision", "bf16", "--roundtrip"],
            "drop --roundtrip",
        ),
        (
            ["convert", "walk", "--from", "sp", "--to", "p", "--roundtrip", "--beam", "1"],
            "--beam 2 or more",
        ),
        (["generate", "--beam", "100000"], "up to 64, not 100000"),
        (["generate", "-n", "0"], "-n must be from 1 to 10,000, not 0"),
        (["generate", "-n", "10001"], "-n must be from 1 to 10,000, not 10001"),
        (["evaluate", "--gaussian-beam", "-2"], "--gaussian-beam must be 0"),
        (["generate", "--joint", "--beam", "1"], "give --beam from 2 to 8"),
        (["generate", "--joint", "--beam", "9"], "not 9: give --beam from 2 to 8"),
        (["generate", "--joint", "--anchored"], "two procedures"),
        (["evaluate", "--gaussian-joint", "--gaussian-beam", "16"], "give --gaussian-beam"),
        (["evaluate", "--gaussian-joint", "--gaussian-anchored"], "two procedures"),
        (["convert", "walk", "--beam", "x"], "invalid int value: 'x' (see tensevae convert"),
        (["convert", "walk", "--precision", "fp16"], "invalid choice: 'fp16'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["jobs", "--limit"], "expected one argument"),
        (["jobs", "--limit", "-1"], "argument --limit: must be 1 or more, not -1"),
        (["results", "--limit", "0"], "argument --limit: must be 1 or more, not 0"),
        (["results", "--limit", "ten"], "expected a whole number, not 'ten'"),
        (["queue", "--watch", "-1"], "give at least 0.1 seconds, not -1"),
        (["queue", "--watch", "0"], "give at least 0.1 seconds, not 0"),
        (["queue", "--watch", "nan"], "give at least 0.1 seconds, not nan"),
        (["plot", "424242"], "no job 424242"),
        (["delete", "424242"], "no job 424242"),
        (["delete"], "the following arguments are required: id"),
        (["jobs", "--state", "done"], "invalid choice: 'done' (choose from 'queued'"),
        (["jobs", "--kind", "training"], "invalid choice: 'training'"),
        (["convert", "--input", "in.txt", "--from", "sp"], "--from and --to go together"),
        (["convert", "--input", "in.txt", "--from", "sp", "--to", "future"], "'future'"),
        (["convert", "walk", "--from", "sp", "--to", "p", "--output", "x.csv"], "use --input"),
        (["convert", "--input", "in.txt", "--output", "x.csv"], "add --wait"),
        (["convert", "walk", "--from", "sp", "--to", "p", "--queue", "gpu"], "use --input FILE"),
        (["convert", "--input", "in.txt", "--wait", "--output", "/no/such/x.csv"], "no folder"),
        (["convert", "--input", "in.txt", "--wait", "--output", "/"], "is a folder"),
        (["train", "--plot", "x.png"], "add --wait"),
        (["train", "--wait", "--plot", "/no/such/x.png"], "no folder /no/such"),
        (["results", "--job", "1", "--output", "/no/such/x.csv"], "no folder"),
        (["plot", "1", "--output", "/no/such/x.png"], "no folder"),
        (["plot", "1", "--output", "curves.txt"], "curves are written as .png, .pdf, .svg"),
        (["train", "--wait", "--plot", "curves.jpg"], "not .jpg"),
        (["train", "--wait", "--plot", "-"], "--plot -: the job's result goes to standard output"),
        (["results", "--output", "models.csv"], "--output writes a job's rows: add --job ID"),
        (["results", "--format", "json"], "--format writes a job's rows: add --job ID"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    line = one_line_error(tv(*args, home=tmp_path))
    assert line.startswith("tensevae: ") and needle in line


def test_one_off_words_from_standard_input(tmp_path):
    p = tv("convert", "-", "--from", "sp", "--to", "p", home=tmp_path, stdin="walk\njump  look\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n") == ["walked", "jumped", "looked", ""]
    line = one_line_error(tv("convert", "-", "--from", "sp", "--to", "p", home=tmp_path))
    assert line == "tensevae: no words on standard input"
    line = one_line_error(tv("convert", "walk", "-", "--from", "sp", "--to", "p", home=tmp_path))
    assert "give it alone" in line


def test_bad_bulk_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "empty" in one_line_error(tv("convert", "--input", str(empty), home=tmp_path))
    bad = tmp_path / "bad.txt"
    bad.write_text("walk sp p\nwalk sp\n")
    assert f"{bad}:2:" in one_line_error(tv("convert", "--input", str(bad), home=tmp_path))
    assert "no such file" in one_line_error(
        tv("convert", "--input", str(tmp_path / "no.txt"), home=tmp_path)
    )
    assert "is a directory" in one_line_error(
        tv("evaluate", "--verbs", str(tmp_path), home=tmp_path)
    )


@pytest.mark.parametrize(
    ("args", "setting", "value"),
    [
        (["worker"], "TENSEVAE_HEARTBEAT", "-1"),
        (["worker"], "TENSEVAE_TIME_LIMIT_TRAIN", "1h"),
        (["generate", "-n", "1", "--wait"], "TENSEVAE_EMBEDDED_POLL", "fast"),
        (["train", "--config", "tiny", "--wait"], "TENSEVAE_PRODUCTS", "mkl"),
        (["convert", "walk", "--from", "sp", "--to", "p"], "TENSEVAE_PRODUCTS", "fast"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(tmp_path, args, setting, value):
    line = one_line_error(tv(*args, home=tmp_path, env={setting: value}))
    assert setting in line and repr(value) in line


def test_unreachable_database_is_one_line(tmp_path):
    env = {"TENSEVAE_DATABASE_URL": "postgresql://someone:s3cret@127.0.0.1:1/nowhere"}
    line = one_line_error(tv("jobs", home=tmp_path, env=env))
    assert "unreachable" in line and "s3cret" not in line


@pytest.mark.parametrize("args", [["jobs"], ["generate", "-n", "1", "--wait"], ["worker"]])
def test_a_home_that_cannot_be_made_is_one_line(tmp_path, args):
    """TENSEVAE_HOME (or a SQLite URL) under a file: one line naming the folder, exit 2."""
    (tmp_path / "file").write_text("")
    line = one_line_error(tv(*args, home=tmp_path / "file" / "home"))
    assert str(tmp_path / "file" / "home") in line and "TENSEVAE_HOME" in line
    env = {"TENSEVAE_DATABASE_URL": f"sqlite:///{tmp_path / 'file' / 'db.sqlite'}"}
    line = one_line_error(tv(*args, home=tmp_path, env=env))
    assert "a file is in the way" in line


@pytest.mark.parametrize(
    ("setting", "value", "needle"),
    [
        ("TENSEVAE_DATABASE_URL", "garbage", "'garbage' cannot be used"),
        ("TENSEVAE_DATABASE_URL", "nosuchdb://me:s3cret@h/db", "'nosuchdb://me:***@h/db'"),
        ("TENSEVAE_DB_CONNECT_TIMEOUT", "soon", "not 'soon'"),
    ],
)
def test_a_database_setting_that_cannot_be_used_is_one_line(tmp_path, setting, value, needle):
    env = {setting: value}
    if setting == "TENSEVAE_DB_CONNECT_TIMEOUT":
        env["TENSEVAE_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    line = one_line_error(tv("jobs", home=tmp_path, env=env))
    assert setting in line and needle in line and "s3cret" not in line


def test_a_job_the_broker_never_got_is_retried_once_it_answers(tmp_path):
    down = {"TENSEVAE_BROKER_URL": "redis://127.0.0.1:1/0"}
    line = one_line_error(tv("generate", "-n", "2", home=tmp_path, env=down))
    assert line.startswith("tensevae: job 1 failed: could not reach the broker")
    # the broker down still: the job fails again with the reason, and can be retried later
    again = one_line_error(tv("retry", "1", home=tmp_path, env=down))
    assert again.startswith("tensevae: job 1 failed: could not reach the broker")
    assert json.loads(tv("jobs", "1", "--json", home=tmp_path, check=0).stdout)["state"] == "failed"
    p = tv("retry", "1", "--wait", home=tmp_path, check=0)  # the no-server default answers
    assert p.stdout.startswith("job 1 queued again (generate)\njob 1 succeeded: 2 verbs")
    assert "only a failed or cancelled job" in one_line_error(tv("retry", "1", home=tmp_path))
    assert one_line_error(tv("retry", "9", home=tmp_path)) == "tensevae: no job 9"
    assert tv("delete", "1", home=tmp_path, check=0).stdout == "deleted job 1 (generate)\n"
    assert one_line_error(tv("jobs", "1", home=tmp_path)) == "tensevae: no job 1"


def test_plot_writes_no_image_onto_a_terminal(tmp_path):
    import pty

    terminal, stdout = pty.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "workers.cli", "plot", "1", "--output", "-"],
                           stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120,
                           env={**os.environ, "TENSEVAE_HOME": str(tmp_path)})  # fmt: skip
    finally:
        os.close(stdout)
        os.close(terminal)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "tensevae: --output -: standard output is a terminal; redirect it (> curves.png)"
    ]


def test_plot_of_a_job_without_epochs_is_one_line(tmp_path):
    tv("generate", "-n", "1", "--wait", home=tmp_path, check=0)
    assert "no epoch figures" in one_line_error(tv("plot", "1", home=tmp_path))


def test_no_server_default_runs_a_job_with_one_command(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("abandon sp p\nbegin sp tp\nab1 sp p\n")
    out = tmp_path / "out.csv"
    p = tv("convert", "--input", str(f), "--output", str(out), "--wait", home=tmp_path, check=0)
    assert "2 converted, 1 refused" in p.stdout
    text = out.read_text().splitlines()
    assert text[0] == "line,word,src,tgt,output,error" and text[1].startswith(
        "1,abandon,sp,p,abandoned,"
    )
    listing = tv("jobs", "--json", home=tmp_path, check=0)
    assert json.loads(listing.stdout)[0]["state"] == "succeeded"
    exported = tv("results", "--job", "1", "--format", "json", home=tmp_path, check=0)
    assert json.loads(exported.stdout)[2]["error"]


def test_a_bulk_job_of_words_alone_takes_from_and_to(tmp_path):
    """With --from and --to, a line may hold a word alone; a line of its own tenses keeps
    them. Without them, such a line is an error of the file that says what is missing."""
    f = tmp_path / "in.txt"
    f.write_text("abandon\nbegin sp pg\nwalk\n")
    line = one_line_error(tv("convert", "--input", str(f), home=tmp_path))
    assert f"{f}:1: expected 'word from to', found 1 field" in line and "--from and --to" in line
    out = tmp_path / "out.json"
    p = tv("convert", "--input", str(f), "--from", "present", "--to", "past", "--output",
           str(out), "--wait", home=tmp_path, check=0)  # fmt: skip
    assert "3 converted, 0 refused" in p.stdout
    rows = [(r["word"], r["src"], r["tgt"], r["output"]) for r in json.loads(out.read_text())]
    assert rows == [
        ("abandon", "sp", "p", "abandoned"),
        ("begin", "sp", "pg", "beginning"),
        ("walk", "sp", "p", "walked"),
    ]


def test_a_bulk_job_from_standard_input_to_standard_output(tmp_path):
    """`--input -` reads the lines from standard input; with `--output -` standard output
    holds the rows alone and what became of the job goes to standard error."""
    p = tv("convert", "--input", "-", "--from", "sp", "--to", "p", "--output", "-", "--wait",
           home=tmp_path, check=0, stdin="walk\nsing sp pg\n")  # fmt: skip
    assert p.stdout.splitlines() == [
        "line,word,src,tgt,output,error",
        "1,walk,sp,p,walked,",
        "2,sing,sp,pg,singing,",
    ]
    assert "job 1 queued (convert)" in p.stderr and "2 converted, 0 refused" in p.stderr
    line = one_line_error(tv("convert", "--input", "-", home=tmp_path, stdin="walk\n"))
    assert line.startswith("tensevae: stdin:1: expected 'word from to', found 1 field")
    assert "stdin: the file is empty" in one_line_error(
        tv("convert", "--input", "-", home=tmp_path, stdin="")
    )
    p = tv("evaluate", "--verbs", "-", "--samples", "0", "--draws", "0", "--wait", home=tmp_path,
           check=0, stdin="walk walks walking walked\n")  # fmt: skip
    assert "exact match on stdin: mean 1.0000" in p.stdout


def test_following_a_job_again(tmp_path):
    """`jobs ID --wait` follows a job submitted without --wait (or left by Ctrl-C) to its
    end and prints its result as the submitting command would; a queued job with no worker
    listening runs here, a finished one is shown at once."""
    tv("generate", "-n", "2", home=tmp_path, check=0)
    p = tv("jobs", "1", "--wait", home=tmp_path, check=0)
    assert p.stdout.startswith("job 1 succeeded: 2 verbs")
    assert "no worker is listening: running the job in this process" in p.stderr
    again = tv("jobs", "1", "--wait", "--json", home=tmp_path, check=0)
    assert again.stderr == "" and json.loads(again.stdout)["state"] == "succeeded"
    assert "give its id" in one_line_error(tv("jobs", "--wait", home=tmp_path))


def test_ctrl_c_on_a_job_this_process_runs_cancels_it(tmp_path):
    """With no worker listening, `--wait` runs the job in the command's process: Ctrl-C
    there ends the process, so the job is recorded cancelled, not left running."""
    import signal
    import time

    e = {**os.environ, "TENSEVAE_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    for name in ("TENSEVAE_DATABASE_URL", "TENSEVAE_BROKER_URL"):
        e.pop(name, None)
    cli = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "train", "--config", "tiny", "--set",
         "train.epochs=400", "--set", "train.max_lines=300", "--wait"],
        env=e, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ctrl_c_reaches_it,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        # the job's progress: Ctrl-C once it trains. Any epoch will do: the command polls
        # every 0.3 s, and a fast host runs a tiny epoch in less, so epoch 1 may never show
        for line in cli.stderr:
            if re.search(r"epoch \d+/400", line) or time.time() > deadline:
                break
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 1 and "cancelling job 1" in err and "job 1 cancelled" in out
    job = json.loads(tv("jobs", "1", "--json", home=tmp_path, check=0).stdout)
    assert job["state"] == "cancelled"


def test_bulk_options_reach_the_job(tmp_path):
    """--precision, --beam and --roundtrip on a bulk job are the job's params, as the worker
    reads them."""
    f = tmp_path / "in.txt"
    f.write_text("abandon sp p\nbegin sp tp\nneed sp pg\n")
    outputs = []
    choices = ([], ["--precision", "int8"], ["--beam", "3"], ["--roundtrip"])
    for job_id, flags in enumerate(choices, start=1):
        out = tmp_path / f"out{job_id}.json"
        tv(
            "convert",
            "--input",
            str(f),
            "--output",
            str(out),
            *flags,
            "--wait",
            home=tmp_path,
            check=0,
        )
        outputs.append([r["output"] for r in json.loads(out.read_text())])
        params = json.loads(tv("jobs", str(job_id), "--json", home=tmp_path, check=0).stdout)
        params = params["params"]
        assert params.get("precision", "fp32") == ("int8" if "int8" in flags else "fp32")
        method = "beam" if "--beam" in flags else "roundtrip" if "--roundtrip" in flags else None
        assert params["method"] == (method or "greedy")
        assert params.get("beam_width") == {"beam": 3, "roundtrip": 4}.get(method)
    assert outputs[1] == outputs[0] and outputs[0][0] == "abandoned"
    assert outputs[3][0] == "abandoned"


def test_evaluate_json_keys(tmp_path):
    verbs = tmp_path / "verbs.txt"
    verbs.write_text("walk walks walking walked\n")
    p = tv(
        "evaluate",
        "--verbs",
        str(verbs),
        "--samples",
        "2",
        "--draws",
        "1",
        "--wait",
        "--json",
        home=tmp_path,
        check=0,
    )
    r = json.loads(p.stdout)
    assert {"bleu4", "bleu4_sampled", "gaussian_score", "exact_match", "job_id"} <= set(r)
    assert "sp->p" in r["exact_match"] and "mean" in r["exact_match"]


def test_compose_file_parses_and_names_real_commands():
    from workers.cli import parser

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "migrate", "worker-gpu", "worker-cpu"} <= set(services)
    commands = {
        name: s["command"]
        for name, s in services.items()
        if s.get("image") == "tensevae:latest" or "<<" in s or s.get("build")
    }
    sub = parser()._subparsers._group_actions[0].choices
    for name in ("migrate", "worker-gpu", "worker-cpu"):
        cmd = services[name]["command"]
        assert cmd[0] in sub, f"{name}: {cmd}"
        sub[cmd[0]].parse_args(cmd[1:])  # raises SystemExit on an unknown option
    assert services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0][
        "capabilities"
    ] == ["gpu"]
    text = (ROOT / "docker-compose.yml").read_text()
    assert (
        "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD" in text
        and "password" not in text.lower().replace("postgres_password", "")
    )
    assert commands


def test_train_through_the_queue_writes_scores_and_curves(tmp_path):
    png = tmp_path / "curves.png"
    p = tv("train", "--config", "tiny", "--set", "train.epochs=1", "--set", "train.max_lines=200",
        "--set",
        "train.val_fraction=0.1",
           "--samples", "2", "--draws", "1", "--wait", "--plot", str(png), home=tmp_path, check=0)  # fmt: skip
    assert (
        "job 1 queued (train)" in p.stdout and "bleu4" in p.stdout and "gaussian_score" in p.stdout
    )
    assert "verbs never seen (" in p.stdout
    assert "gaussian_score_joint" in p.stdout and "the four forms chosen together" in p.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"
    # the curves on standard output, for a pipe or a redirection; a file's path otherwise
    env = {**os.environ, "TENSEVAE_HOME": str(tmp_path)}
    piped = subprocess.run([sys.executable, "-m", "workers.cli", "plot", "1", "--output", "-"],
                           capture_output=True, env=env, cwd=ROOT, timeout=120, check=True)  # fmt: skip
    assert piped.stdout[:4] == b"\x89PNG" and piped.stdout.endswith(b"IEND\xaeB`\x82")
    svg = tmp_path / "c.svg"
    assert tv("plot", "1", "--output", str(svg), home=tmp_path, check=0).stdout.strip() == str(svg)
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    models = json.loads(
        tv("results", "--json", "--best-by", "bleu4", home=tmp_path, check=0).stdout
    )
    assert models[0]["job_id"] == 1 and "bleu4" in models[0]["scores"]
    # the model out of the database as a folder, converting as its database id does
    folder = tmp_path / "exported"
    assert tv("export", "1", str(folder), home=tmp_path, check=0).stdout.strip() == str(folder)
    by_id = tv("convert", "walk", "sing", "--from", "sp", "--to", "p", "--model", "1",
               home=tmp_path, check=0).stdout  # fmt: skip
    by_folder = tv("convert", "walk", "sing", "--from", "sp", "--to", "p", "--model",
                   str(folder), home=tmp_path, check=0).stdout  # fmt: skip
    assert by_folder == by_id and len(by_id.split()) == 2
    meta = json.loads((folder / "config.json").read_text())
    assert meta["exported_from"]["model_id"] == 1 and meta["config"]["name"] == "tiny"
    assert "already holds a model" in one_line_error(tv("export", "1", str(folder), home=tmp_path))
    assert one_line_error(tv("export", "9", str(tmp_path / "m9"), home=tmp_path)).endswith(
        "no model 9"
    )
    header, row = tv("results", home=tmp_path, check=0).stdout.splitlines()
    assert header.split()[-3:] == ["joint", "exact", "unseen"] and "-" not in row.split()
    # a score on another file keeps its own key and never stands in for test.txt's
    verbs = tmp_path / "verbs.txt"
    verbs.write_text("walk walks walking walked\n")
    tv("evaluate", "--model", "1", "--verbs", str(verbs), "--samples", "0", "--draws", "0",
       "--wait", home=tmp_path, check=0)  # fmt: skip
    scores = json.loads(tv("results", "--json", home=tmp_path, check=0).stdout)[0]["scores"]
    assert scores["exact_match:mean"]["dataset"] == "test.txt"
    assert scores["exact_match:mean@verbs.txt"]["dataset"] == "verbs.txt"
    assert scores["unseen_exact:sp_mean"]["dataset"] == "held-out verbs"
    line = one_line_error(tv("results", "--best-by", "gaussian", home=tmp_path))
    assert "no model has a score named 'gaussian'" in line and "gaussian_score," in line
    gen = json.loads(
        tv("generate", "-n", "3", "--model", "1", "--beam", "2", "--wait", "--json",
           home=tmp_path, check=0).stdout
    )  # fmt: skip
    assert gen["state"] == "succeeded" and gen["n"] == 3


def test_a_model_folder_serves_one_off_and_jobs(tmp_path, tiny_run):
    import pipeline

    folder = pipeline.save(tiny_run[0].model, tmp_path / "mine")
    expected = pipeline.convert(tiny_run[0].model, ["walk"], "sp", "p")[0]
    p = tv(
        "convert",
        "walk",
        "--from",
        "sp",
        "--to",
        "p",
        "--model",
        str(folder),
        home=tmp_path,
        check=0,
    )
    assert p.stdout.strip() == expected
    for _ in range(2):
        tv("generate", "-n", "2", "--model", str(folder), "--wait", home=tmp_path, check=0)
    models = json.loads(tv("results", "--json", home=tmp_path, check=0).stdout)
    assert [m["name"] for m in models] == ["mine"]  # stored once, used twice


def test_train_no_joint_asks_the_job_for_greedy_scoring_only(tmp_path):
    tv("train", "--config", "tiny", "--no-joint", home=tmp_path, check=0)
    tv("train", "--config", "tiny", home=tmp_path, check=0)
    jobs = [json.loads(tv("jobs", str(i), "--json", home=tmp_path, check=0).stdout) for i in (1, 2)]
    assert [j["params"]["gaussian_joint"] for j in jobs] == [False, True]


def _pipeline_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=ROOT,
        timeout=300,
    )


def test_the_shipping_command_writes_a_model_folder(tmp_path):
    """`python -m pipeline train CONFIG --out FOLDER`, the command that made the shipped
    model, on the tiny config."""
    import pipeline

    out = tmp_path / "model"
    p = _pipeline_cli("train", "tiny", "--out", str(out), "--set", "train.epochs=1",
                      "--set", "train.max_lines=100")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in out.iterdir()) == [
        "config.json", "curves.png", "history.json", "model.safetensors"
    ]  # fmt: skip
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["name"] == "tiny" and "bleu4" in meta["scores"]
    assert json.loads(p.stdout[p.stdout.index("{") :])["bleu4"] == meta["scores"]["bleu4"]
    assert len(pipeline.convert(pipeline.load(out), ["walk"], "sp", "p")) == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "nope", "--out", "{tmp}/m"], "nope: no such config file"),
        (["train", "tiny", "--out", "{tmp}/file"], "a file is in the way of the model folder"),
        (["train", "tiny", "--out", "{tmp}/m", "--set", "train.epoch=2"], "train.epochs?"),
        (["train", "tiny", "--out", "{tmp}/m", "--set", "train.device=cuda"], "no CUDA device"),
    ],
)
def test_the_shipping_command_refuses_before_training(tmp_path, args, needle):
    import torch

    if "train.device=cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "file").write_text("")
    p = _pipeline_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("python -m pipeline: ") and needle in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "epoch" not in p.stdout
