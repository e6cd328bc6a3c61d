"""``python -m pipeline train CONFIG --out FOLDER``: train without the job system.

This is how the shipped model is made:
    python -m pipeline train configs/default.yaml --out pipeline/data/pretrained
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a config and save the model folder")
    p.add_argument("config")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    from .errors import TenseVAEError

    try:
        return _train(args)
    except TenseVAEError as e:
        print(f"python -m pipeline: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the model folder could not be made or written
        print(f"python -m pipeline: {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2


def _train(args) -> int:
    from . import artifacts, evaluate, load_config, train
    from .plots import plot_history
    from .training import resolve_device

    config = load_config(args.config, args.set)
    resolve_device(config.train.device)  # no CUDA where the config asks for it: say so now
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(errno.EEXIST, "a file is in the way of the model folder")
    out.mkdir(parents=True, exist_ok=True)  # before the training, not after it
    start = time.perf_counter()

    def report(rep):
        f = rep.figures
        shown = " ".join(
            f"{k} {f[k]:.3f}"
            for k in ("loss", "kl", "bleu4", "gaussian_score", "val_exact")
            if k in f
        )
        print(
            f"epoch {rep.epoch}/{rep.epochs} {time.perf_counter() - start:.0f}s {shown}", flush=True
        )

    result = train(config, on_epoch=report)
    figures = evaluate(result.model, bleu_samples=100, gaussian_draws=20, seed=config.train.seed)
    figures.pop("conversions")
    extra = {
        "config": config.to_dict(),
        "train_seconds": round(result.seconds, 1),
        "best_epoch": result.best_epoch,
        "scores": figures,
    }
    folder = artifacts.save(result.model, args.out, extra)
    plot_history(result.history, folder / "curves.png", title=f"tensevae {config.name}")
    (folder / "history.json").write_text(json.dumps(result.history, indent=1) + "\n")
    print(json.dumps({"seconds": round(result.seconds, 1), **figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
