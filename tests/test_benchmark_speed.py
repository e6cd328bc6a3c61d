"""benchmarks/speed.py's measure of what the cores allow: processes that convert alongside
one another must convert over the same seconds, or their sum says nothing."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_processes_converting_alongside_one_another_share_one_window():
    import speed

    runs = speed.alongside(2, 1, window=1.0)
    assert len(runs) == 2
    assert all(run["words/s"] > 0 for run in runs)
    # each began once both were ready, and each converted for about the window given
    assert max(run["began"] for run in runs) < min(run["ended"] for run in runs)
    assert all(0.9 < run["ended"] - run["began"] < 30 for run in runs)
    assert abs(runs[0]["began"] - runs[1]["began"]) < 0.5
