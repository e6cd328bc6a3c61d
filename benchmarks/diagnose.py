"""Where a trained model's generation and conversion of new verbs go wrong.

    python benchmarks/diagnose.py [--model pipeline/data/pretrained] [--draws 5] [--split SEED,FRACTION]

Prints, in Markdown:
- how the tuples generated from z ~ N(0, I) fail the Gaussian score: is the simple present a
  training verb, and which of its other forms belong to another verb (or to none);
- exact match on the model's held-out verbs (its validation split, all twelve directions)
  decoded greedily, by beam search, and with z taken from elsewhere than the posterior mean
  (zero, a prior draw, a posterior draw): how much conversion of new verbs rests on z;
- exact match over the six sp directions on held-out verbs whose forms a regular spelling
  rule writes, against the rest, which only analogy with a training verb can reach;
- the verbs it trained on that it still converts wrong (all twelve directions, greedy),
  line by line, with the lines `tensevae check-data` finds suspicious set apart.
No training; about two minutes on 2 CPU cores."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline import artifacts  # noqa: E402
from pipeline.data import (  # noqa: E402
    directed,
    encode_sources,
    load_train,
    make_pairs,
    split_by_verb,
    test_words,
)
from pipeline.datacheck import line_problems  # noqa: E402
from pipeline.evaluate import _decode, convert, decode_latents, exact_by_direction  # noqa: E402
from pipeline.tenses import TENSES  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from _rules import exact_by_rule  # noqa: E402


@torch.no_grad()
def generation(model, draws: int) -> tuple[Counter, float | None]:
    """How the tuples of ``draws`` draws of 100 z ~ N(0, I) (generate()'s, seed by seed) fare
    against train.txt; and, for a model with a latent memory, the share of train.txt lines
    when the same z are first moved to their nearest memory key (a learned map before the
    decoder: a diagnostic, not the lab's score)."""
    train = load_train()
    lines = {tuple(q) for q in train}
    by_sp = {q[0]: q for q in train}
    kinds: Counter = Counter()
    snapped = 0
    for seed in range(draws):
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(100, model.config.latent_size, generator=gen)
        for t in decode_latents(model, z):
            if t in lines:
                kinds["a line of train.txt"] += 1
            elif t[0] in by_sp:
                wrong = [TENSES[i] for i in range(1, 4) if t[i] != by_sp[t[0]][i]]
                kinds[f"sp a training verb; {', '.join(wrong)} not its form"] += 1
            else:
                kinds["sp not a training verb"] += 1
        if model.config.latent_memory:
            keys = model.memory_keys.detach()
            near = keys[torch.cdist(z, keys).argmin(1)]
            snapped += sum(t in lines for t in decode_latents(model, near))
    return kinds, snapped / (100 * draws) if model.config.latent_memory else None


@torch.no_grad()
def held_out_exact(model, held, z_from: str, seed: int = 0) -> float:
    """Exact match over the twelve directions of ``held`` with z taken from elsewhere than
    the posterior mean (greedy; the posterior mean is exact_by_direction's)."""
    pairs = make_pairs(held, "cross")
    g = torch.Generator().manual_seed(seed)
    model.eval()
    right = 0
    for i in range(0, len(pairs), 512):
        part = pairs[i : i + 512]
        ids, lengths = encode_sources([p[0] for p in part], model.vocab)
        post = model.encode(ids, lengths, torch.tensor([p[1] for p in part]))
        noise = torch.randn(post.mu.shape, generator=g)
        z = {
            "zero": torch.zeros_like(post.mu),
            "a prior draw": noise,
            "a posterior draw": post.mu + noise * torch.exp(0.5 * post.logvar),
        }[z_from]
        state = model.init_decoder(z, torch.tensor([p[3] for p in part]), post)
        out = _decode(model, state, len(part))
        right += sum(o == p[2] for o, p in zip(out, part, strict=True))
    return right / len(pairs)


def by_rule(model, held) -> list[str]:
    """The held-out verbs that a spelling rule writes against the rest, as Markdown."""
    from pipeline.tenses import SP_DIRECTIONS

    r = exact_by_rule(model, held)
    n_rule = sum(r["rule_written"])
    rows = [
        f"{n_rule} of {len(held)} held-out lines ({r['share']:.1%}) have every form a spelling "
        f"rule writes; {len(held) - n_rule} do not (irregular, or spelled against the rules).\n",
        "| verbs | " + " | ".join(SP_DIRECTIONS) + " | mean |",
        "|---|" + "---|" * (len(SP_DIRECTIONS) + 1),
    ]
    for kind, label in (("ruled", "a rule writes every form"), ("rest", "the rest")):
        v = r[kind]
        rows.append(
            f"| {label} | " + " | ".join(f"{v[d]:.3f}" for d in SP_DIRECTIONS)
            + f" | {v['sp_mean']:.3f} |"
        )  # fmt: skip
    rows.append(
        f"\nA converter exact on every rule-written verb and as good as this model on the rest "
        f"would score {r['bound']:.3f} over the six sp directions; exact on the rule-written "
        f"verbs and wrong on all the rest, {r['share']:.3f}.\n"
    )
    misses = r["misses"]
    rows.append(
        f"Misses on rule-written verbs ({len(misses)}): "
        + "; ".join(misses[:40])
        + (" ..." if len(misses) > 40 else "")
    )
    return rows


def trained_misses(model, kept) -> list[str]:
    """The kept (trained) lines' twelve conversions the model gets wrong, greedy, as
    Markdown: how many, by direction, and each line's misses, the lines whose forms do not
    look like one verb's (pipeline.datacheck) apart from the rest."""
    words, src, refs, tgt = directed(kept)
    hyps = convert(model, words, src, tgt)
    line_of = [q for q in kept for _ in range(12)]  # directed() gives each line's 12 in turn
    wrong = [k for k, (r, h) in enumerate(zip(refs, hyps, strict=True)) if r != h]
    rows = [
        f"{len(words) - len(wrong)} of {len(words)} right ({1 - len(wrong) / len(words):.4f}); "
        f"misses by direction: "
        + ", ".join(
            f"{d} {n}" for d, n in Counter(f"{src[k]}->{tgt[k]}" for k in wrong).most_common()
        )
        + ".\n"
    ]
    by_line: dict[tuple, list[str]] = {}
    for k in wrong:
        by_line.setdefault(line_of[k], []).append(f"{words[k]} -> {hyps[k]} ({refs[k]})")
    odd = {q for q in by_line if line_problems(q)}
    for label, lines in (
        ("Lines that look like one verb's", [q for q in by_line if q not in odd]),
        ("Lines `tensevae check-data` finds suspicious", [q for q in by_line if q in odd]),
    ):
        rows.append(f"{label} ({len(lines)}):\n")
        rows += [f"- `{' '.join(q)}`: " + "; ".join(by_line[q]) for q in lines]
        rows.append("")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(artifacts.pretrained_path()))
    ap.add_argument("--draws", type=int, default=5, help="draws of 100 z")
    ap.add_argument(
        "--split",
        metavar="SEED,FRACTION",
        help="the seed and held-out fraction the model trained with, for a folder that does "
        "not record its training config",
    )
    args = ap.parse_args()
    model = artifacts.load(args.model)
    meta = artifacts.metadata(args.model).get("config", {}).get("train")
    if args.split:
        try:
            seed, fraction = args.split.split(",")
            meta = {"seed": int(seed), "val_fraction": float(fraction)}
        except ValueError:
            ap.error(f"--split {args.split!r} is not SEED,FRACTION (as in 0,0.1)")
    elif meta is None:
        ap.error(
            f"{args.model} does not record the config it trained with, so its held-out verbs "
            "are unknown: pass --split SEED,FRACTION"
        )
    print(
        f"# Diagnosis of {args.model}\n\nCommand: `python benchmarks/diagnose.py "
        f"{' '.join(sys.argv[1:])}`\n"
    )
    kinds, snapped = generation(model, args.draws)
    total = sum(kinds.values())
    print(f"## {total} tuples generated from z ~ N(0, I), greedy\n\n| tuple | share |\n|---|---|")
    for kind, n in kinds.most_common():
        print(f"| {kind} | {n / total:.3f} |")
    if snapped is not None:
        raw = kinds["a line of train.txt"] / total
        print(
            f"\nThe same draws moved to the nearest latent-memory key before decoding: "
            f"{snapped:.3f} lines of train.txt (raw: {raw:.3f})."
        )
    if not meta.get("val_fraction"):
        print("\nThis model held no verbs out of training: nothing to convert that it never saw.")
        return
    kept, held = split_by_verb(load_train(), meta["val_fraction"], meta["seed"], test_words())
    verbs = len({q[0] for q in held})
    print(f"\n## {len(held)} held-out lines ({verbs} verbs), all twelve directions (exact match)\n")
    print("| decoding | z | exact |\n|---|---|---|")
    for label, method in (("greedy", "greedy"), ("beam 4", "beam")):
        exact = exact_by_direction(model, held, method=method)["mean"]
        print(f"| {label} | posterior mean | {exact:.3f} |")
    for z_from in ("zero", "a prior draw", "a posterior draw"):
        print(f"| greedy | {z_from} | {held_out_exact(model, held, z_from):.3f} |")
    print("\n## Held-out verbs that a spelling rule writes, and the rest (greedy)\n")
    print("\n".join(by_rule(model, held)))
    print(f"\n## Verbs it trained on ({len(kept)} lines), all twelve directions (greedy)\n")
    print("\n".join(trained_misses(model, kept)))


if __name__ == "__main__":
    main()
