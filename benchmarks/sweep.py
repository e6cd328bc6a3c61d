"""Compare config variants side by side: each variant and seed trains in its own process.

    python benchmarks/sweep.py --variant base: --variant mmd:train.mmd_weight=10,free_bits=0 \\
        [--config default] [--seeds 1] [--jobs 2] [--threads 1] [--out benchmarks/results/sweep.md]

A variant is NAME:KEY=VALUE,KEY=VALUE (overrides of the config, as ``--set`` takes them).
Every run is scored the way benchmarks/quality.py scores one (BLEU-4 with the posterior mean
and 100 sampled z, Gaussian score over 20 draws of 100 z greedy, by beam 4, joint beam 4 and
anchored, exact match on the verbs trained on and on those held out by verb), without
LemmInflect. Results stream to a JSON-lines file as runs finish, and the table is written at
the end. This is for choosing a config; quality.py measures the chosen one.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise SystemExit(f"sweep.py: variant {text!r} is not NAME:KEY=VALUE,...")
    return name, [item for item in rest.split(",") if item]


def die_with_parent(sweep: int) -> None:
    """Each run's process ends with the sweep: on Linux the kernel sends it SIGTERM when the
    sweep's process dies, however it dies, so a killed sweep leaves no run training on."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != sweep:  # the sweep died before the line above ran
        os._exit(1)


def one(config: str, name: str, overrides: list[str], seed: int, holdout: float, threads: int):
    import torch

    torch.set_num_threads(threads)
    import quality

    start = time.perf_counter()
    try:
        r = quality.run(config, seed, overrides, holdout, compare=False, trained=True)
    except Exception as e:  # one bad variant must not sink the sweep
        return {"variant": name, "seed": seed, "error": f"{type(e).__name__}: {e}"}
    r.update(variant=name, overrides=overrides, wall=time.perf_counter() - start)
    return r


def ms(values) -> str:
    values = list(values)
    if not values:
        return "-"
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.3f} ± {s:.3f}"


def table(runs: list[dict], command: str, device: str) -> str:
    lines = [
        "# tensevae config sweep",
        "",
        f"Command: `{command}`  ",
        f"Device: {device}; mean ± standard deviation over seeds.",
        "",
        "| variant | overrides | seeds | train s | BLEU-4 | BLEU-4 sampled | Gaussian | distinct "
        "| Gaussian, beam 4 | joint, beam 4 (distinct) | anchored, beam 4 (distinct) "
        "| trained verbs, all 12 | unseen sp | unseen all | unseen sp, round trip |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["variant"], []).append(r)
    for name, rs in by.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            lines.append(f"| {name} | failed: {rs[0]['error']} ||||||||||||||")
            continue
        lines.append(
            f"| {name} | {' '.join(ok[0]['overrides']) or '-'} | {len(ok)} "
            f"| {ms(r['seconds'] for r in ok)} | {ms(r['bleu4'] for r in ok)} "
            f"| {ms(r['bleu4_sampled'] for r in ok)} | {ms(r['gaussian'] for r in ok)} "
            f"| {ms(r['distinct'] for r in ok)} | {ms(r['gaussian_beam'] for r in ok)} "
            f"| {ms(r['gaussian_joint'] for r in ok)} ({ms(r['distinct_joint'] for r in ok)}) "
            f"| {ms(r['gaussian_anchored'] for r in ok)} ({ms(r['distinct_anchored'] for r in ok)}) "
            f"| {ms(r['trained']['mean'] for r in ok)} "
            f"| {ms(r['unseen']['sp_mean'] for r in ok)} "
            f"| {ms(r['unseen']['mean'] for r in ok)} "
            f"| {ms(r['unseen_roundtrip']['sp_mean'] for r in ok if 'unseen_roundtrip' in r)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", required=True, metavar="NAME:K=V,...")
    ap.add_argument("--config", default="default")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every variant")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="runs at once")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep.md"))
    args = ap.parse_args()
    variants = [(name, [*args.set, *o]) for name, o in map(parse_variant, args.variant)]
    import torch

    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"{os.cpu_count()} CPUs, {args.threads} threads a run"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stream = out.with_suffix(".jsonl")
    stream.write_text("")
    runs = []
    sys.path.insert(0, str(ROOT / "benchmarks"))
    # spawn: a forked child cannot use CUDA once the parent has touched it
    with ProcessPoolExecutor(
        args.jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        futures = [
            pool.submit(one, args.config, name, o, seed, args.holdout, args.threads)
            for seed in range(args.first_seed, args.first_seed + args.seeds)
            for name, o in variants
        ]
        for f in as_completed(futures):
            r = f.result()
            runs.append(r)
            with stream.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
            if "error" in r:
                print(f"{r['variant']} seed {r['seed']}: {r['error']}", flush=True)
            else:
                print(
                    f"{r['variant']} seed {r['seed']}: {r['seconds']:.0f}s bleu {r['bleu4']:.3f} "
                    f"sampled {r['bleu4_sampled']:.3f} gaussian {r['gaussian']:.3f} "
                    f"({r['distinct']:.0f} distinct) joint {r['gaussian_joint']:.3f} "
                    f"({r['distinct_joint']:.0f}) anchored {r['gaussian_anchored']:.3f} "
                    f"trained {r['trained']['mean']:.3f} unseen sp {r['unseen']['sp_mean']:.3f} "
                    f"recall mean {r['recall']['mean']:.3f} sample {r['recall']['sample']:.3f}",
                    flush=True,
                )
    order = {name: i for i, (name, _) in enumerate(variants)}
    runs.sort(key=lambda r: (order[r["variant"]], r["seed"]))
    command = "python benchmarks/sweep.py " + " ".join(sys.argv[1:])
    text = table(runs, command, device)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
