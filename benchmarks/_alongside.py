"""One process's in-process greedy conversion rate over a window of wall-clock time, for
benchmarks/speed.py: run alone, then two at once, it tells how far this machine's cores let
two processes scale, before any queue, broker or database is involved.

    python benchmarks/_alongside.py THREADS

loads the shipped model, prints "ready", reads "START STOP" (epoch seconds) from its
standard input, sleeps until START, converts train.txt's conversions in batches of 512
until STOP and prints its words/s, and when it began and ended, as one JSON line. The
processes of one window are given it once every one is ready, so they convert over the
same seconds."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    threads = int(sys.argv[1])
    import torch

    torch.set_num_threads(threads)
    import pipeline
    from pipeline.data import directed, load_train
    from pipeline.evaluate import convert

    model = pipeline.load_pretrained()
    words, src, _, tgt = directed(load_train())
    convert(model, words[:512], src[:512], tgt[:512])  # oneDNN builds its kernels once
    print("ready", flush=True)
    start, stop = (float(x) for x in sys.stdin.readline().split())
    time.sleep(max(0.0, start - time.time()))
    began, done, i = time.time(), 0, 0
    while time.time() < stop:
        chunk = slice(i, i + 512)
        done += len(convert(model, words[chunk], src[chunk], tgt[chunk]))
        i = (i + 512) % len(words)
    ended = time.time()
    print(json.dumps({"words/s": done / (ended - began), "began": began, "ended": ended}))


if __name__ == "__main__":
    main()
