"""The benchmarks' Markdown tables: every row has as many cells as its header, so a run of
half an hour does not end in a table that renders wrong or a KeyError."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from pipeline.tenses import DIRECTIONS


def _exact(value: float) -> dict:
    return {**{d: value for d in DIRECTIONS}, "mean": value, "sp_mean": value}


def _run(config: str, seed: int) -> dict:
    return {
        "config": config,
        "variant": config,
        "overrides": [],
        "seed": seed,
        "seconds": 300.0 + seed,
        "epochs": 14,
        "bleu4": 1.0,
        "bleu4_sampled": 0.99,
        "bleu4_sampled_std": 0.01,
        "gaussian": 0.7 + seed / 100,
        "gaussian_std": 0.05,
        "distinct": 60.0,
        "gaussian_beam": 0.75,
        "distinct_beam": 62.0,
        "gaussian_joint": 0.9 + seed / 50,
        "distinct_joint": 79.0 + seed * 2,
        "gaussian_anchored": 0.95,
        "distinct_anchored": 78.0,
        "unseen": _exact(0.9),
        "unseen_roundtrip": _exact(0.92),
        "trained": _exact(0.98),
        "lemminflect": _exact(0.99),
        "by_rule": {
            "share": 0.87,
            "bound": 0.962,
            "ruled": 0.96,
            "rest": 0.708,
            "lemminflect_ruled": 0.995,
            "lemminflect_rest": 0.95,
        },
        "held_verbs": 123,
        "examples": {
            "generated": [("walk", "walks", "walking", "walked")],
            "converted": [("abandon", "abandoned", "abandoning")],
        },
        "recall": {"mean": 0.5, "sample": 0.3},
        "time_to_bleu1": 120.0 if seed else None,
    }


def _cells(line: str) -> int:
    return line.strip().strip("|").count("|") + 1


def _check(text: str) -> None:
    header = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        if header is None:
            header = _cells(line)
        assert _cells(line) == header, line


@pytest.mark.parametrize("name", ["quality", "sweep"])
def test_tables_have_a_cell_for_every_column(name):
    module = __import__(name)
    runs = [_run(c, s) for c in ("default", "lab") for s in (0, 1)]
    if name == "quality":
        text = module.table(runs, 2, "python benchmarks/quality.py --seeds 2")
        assert "0.920 ± 0.000 / 0.920 ± 0.000" in text  # the round trip's column
        assert "| default | 0.870 ± 0.000 | 0.960 ± 0.000 | 0.708 ± 0.000 | 0.962 ± 0.000 |" in text
        assert "| LemmInflect | 0.870 ± 0.000 | 0.995 ± 0.000 | 0.950 ± 0.000 | - |" in text
    else:
        text = module.table(runs, "python benchmarks/sweep.py", "2 CPUs")
        assert "| 0.920 ± 0.000 |" in text
    _check(text)


def test_quality_says_which_decodings_reach_the_gaussian_target():
    import quality

    runs = [_run("default", s) for s in (0, 1)]  # joint: 0.91 over 80 distinct, on average
    assert "reached by default (joint beam 4);" in quality.table(runs, 2, "q")
    for r in runs:
        r["distinct_joint"] = 70.0
    assert "No config reached the Gaussian target" in quality.table(runs, 2, "q")


def _curve(seed: int, reach_target: bool) -> list[dict]:
    points = []
    for i, (bleu, gaussian, distinct) in enumerate(
        [(0.9, 0.5, 50), (1.0, 0.78, 70), (1.0, 0.8, 72)]
    ):
        if reach_target and i == 2:
            gaussian, distinct = 0.91, 81
        points.append(
            {
                "epoch": i + 1,
                "seconds": 50.0 * (i + 1) + 2 * seed,
                "bleu4": bleu,
                "gaussian": gaussian,
                "distinct": distinct,
                "unseen_sp": 0.8 + i / 100,
            }
        )
    return points


def test_quality_times_each_level_of_quality_from_the_epochs_curves():
    import quality

    runs = [{**_run("default", s), "curve": _curve(s, reach_target=False)} for s in (0, 1)]
    text = quality.table(runs, 2, "q")
    _check(text)
    assert "## Time to quality" in text and "is under 'Time to quality'" in text
    assert "BLEU-4 = 1.0 (posterior mean): 101 ± 1 s" in text  # epoch 2 on both seeds
    assert (
        "not reached by any of the 2 runs; the best epoch's score 0.800 ± 0.000 (epoch 3, 3)"
        in text
    )
    assert "95% of its own last epoch's Gaussian score: 101 ± 1 s" in text  # 0.78 >= 0.76
    assert "| 3 | 151 ± 1 | 1.000 ± 0.000 | 0.800 ± 0.000 | 72.0 ± 0.0 | 0.820 ± 0.000 |" in text
    lab = [
        {**_run("lab", s), "curve": [{**p, "gaussian": 0.0} for p in _curve(s, False)]}
        for s in (0, 1)
    ]
    assert "score: none, as no run's last epoch scored above 0" in quality.table(runs + lab, 2, "q")
    runs[1]["curve"] = _curve(1, reach_target=True)
    assert "at least 80 distinct verbs): 152 ± 0 s (1 of 2 never)" in quality.table(runs, 2, "q")
    for r in runs:  # runs scored only at the end say there is no time to the target
        r["curve"] = None
    text = quality.table(runs, 2, "q")
    assert "## Time to quality" not in text and "so there is no time to it" in text


def test_quality_table_says_when_and_on_what_it_ran():
    import _host
    import quality

    text = quality.table([_run("default", 0)], 1, "python benchmarks/quality.py", "Run: then")
    assert "Run: then  \n" in text and f"Machine: {_host.cpu()}," in text
    assert "CPUs" in _host.cpu()
    assert _host.matmul_gflops(n=128, repeats=2) > 0


@pytest.mark.parametrize(
    ("sp", "forms", "ruled"),
    [
        ("walk", ("walks", "walking", "walked"), True),
        ("stop", ("stops", "stopping", "stopped"), True),
        ("open", ("opens", "opening", "opened"), True),  # doubling is a choice, not a rule
        ("try", ("tries", "trying", "tried"), True),
        ("tie", ("ties", "tying", "tied"), True),
        ("make", ("makes", "making", "made"), False),
        ("panic", ("panics", "panicking", "panicked"), True),
        ("acquit", ("acquits", "acquitting", "acquitted"), True),
        ("fix", ("fixes", "fixing", "fixed"), True),
        ("cut", ("cuts", "cutting", "cut"), False),
        ("go", ("goes", "going", "went"), False),
        ("glue", ("glues", "glueing", "gluing"), False),  # train.txt's own line
    ],
)
def test_rule_forms_tell_rule_written_verbs_from_the_rest(sp, forms, ruled):
    from _rules import rule_forms

    rules = rule_forms(sp)
    written = all(f in rules[t] for f, t in zip(forms, ("tp", "pg", "p"), strict=True))
    assert written is ruled


def test_a_run_span_names_its_date_once_on_one_day():
    import _host

    assert _host.now().endswith(" UTC")
    assert _host.span("2000-01-02 03:04 UTC").startswith("2000-01-02 03:04 UTC to 20")
    today = _host.now()
    assert _host.span(today) in (f"{today[:-4]} to {today[11:]}", f"{today} to {_host.now()}")


def test_a_quality_run_end_to_end_renders_and_keeps_its_model(tmp_path):
    """One real (tiny) run of quality.run: every figure the table reads is there, and
    --keep-models saves the very model it scored, as a folder pipeline.load reads, and
    scoring every epoch (the curve) trains the same weights as scoring once."""
    import quality
    import torch

    import pipeline

    overrides = ["train.epochs=1", "train.max_lines=40"]
    run = quality.run("tiny", 0, overrides, 0.1, compare=False, keep=tmp_path, curve=True)
    assert [p["epoch"] for p in run["curve"]] == [1] and run["curve"][0]["unseen_sp"] is not None
    # LemmInflect is a benchmark-only dependency: its comparison row gets stand-in figures
    shown = {**run, "lemminflect": _exact(0.99)}
    shown["by_rule"] = {"lemminflect_ruled": 0.995, "lemminflect_rest": 0.95, **run["by_rule"]}
    _check(quality.table([shown], 1, "python benchmarks/quality.py --configs tiny"))
    kept = pipeline.load(tmp_path / "tiny-seed0")
    recorded = pipeline.artifacts.metadata(tmp_path / "tiny-seed0")["config"]["train"]
    assert (recorded["seed"], recorded["val_fraction"]) == (0, 0.1)  # diagnose.py finds the split
    retrained = pipeline.train(
        pipeline.load_config(
            "tiny",
            ["train.seed=0", "train.val_fraction=0.1", "train.eval_gaussian_draws=1", *overrides],
        )
    ).model
    for name, value in retrained.state_dict().items():
        assert torch.equal(kept.state_dict()[name], value), name


def test_diagnose_finds_a_kept_models_held_out_verbs_or_asks_for_them(tmp_path):
    """benchmarks/diagnose.py on a folder quality.py --keep-models wrote: it reads the
    held-out split from the folder; a folder that does not record it is refused in one line
    naming --split, and --split supplies it."""
    import subprocess

    import pipeline

    cfg = pipeline.load_config(
        "tiny", ["train.epochs=1", "train.max_lines=40", "train.val_fraction=0.1"]
    )
    model = pipeline.train(cfg).model
    script = str(Path(__file__).resolve().parent.parent / "benchmarks" / "diagnose.py")

    def diagnose(folder, *extra):
        return subprocess.run(
            [sys.executable, script, "--model", str(folder), "--draws", "1", *extra],
            capture_output=True,
            text=True,
        )

    pipeline.save(model, tmp_path / "recorded", {"config": cfg.to_dict()})
    out = diagnose(tmp_path / "recorded")
    assert out.returncode == 0 and "held-out lines" in out.stdout, out.stderr
    pipeline.save(model, tmp_path / "bare")
    out = diagnose(tmp_path / "bare")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "pass --split SEED,FRACTION" in out.stderr.strip().splitlines()[-1]
    assert diagnose(tmp_path / "bare", "--split", "0,0.1").stdout == diagnose(
        tmp_path / "recorded"
    ).stdout.replace("--draws 1`", "--draws 1 --split 0,0.1`").replace(
        str(tmp_path / "recorded"), str(tmp_path / "bare")
    )
    assert diagnose(tmp_path / "bare", "--split", "zero").returncode == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal")
def test_a_killed_sweep_leaves_no_run_training(tmp_path):
    """Killing benchmarks/sweep.py (even by SIGKILL) ends the runs it started: a run left
    behind would train on for many minutes and slow whatever is measured next."""
    import os
    import signal
    import subprocess
    import time

    script = str(Path(__file__).resolve().parent.parent / "benchmarks" / "sweep.py")
    sweep = subprocess.Popen(
        [
            sys.executable,
            script,
            "--config",
            "tiny",
            "--variant",
            "long:train.epochs=500",
            "--jobs",
            "1",
            "--out",
            str(tmp_path / "sweep.md"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children = Path(f"/proc/{sweep.pid}/task/{sweep.pid}/children")

    def runs() -> list[int]:  # the sweep's children that run a spawned worker
        pids = [int(p) for p in children.read_text().split()] if children.exists() else []
        found = []
        for pid in pids:
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                pass
        return found

    deadline = time.monotonic() + 60
    while not (workers := runs()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers, "the sweep started no run"
    time.sleep(2)  # the run is training by now
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.2)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, "a run outlived its sweep"
