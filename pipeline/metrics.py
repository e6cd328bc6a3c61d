"""The lab's scores as pure functions on strings."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence


def bleu4(reference: str, hypothesis: str) -> float:
    """Character-level BLEU-4 as the lab defines it: NLTK sentence_bleu with smoothing
    method 1, weights (0.33, 0.33, 0.33) for a 3-character reference, else four 0.25s."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    weights = (0.33, 0.33, 0.33) if len(reference) == 3 else (0.25, 0.25, 0.25, 0.25)
    return float(
        sentence_bleu(
            [list(reference)],
            list(hypothesis),
            weights=weights,
            smoothing_function=SmoothingFunction().method1,
        )
    )


def mean_bleu4(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    if len(references) != len(hypotheses) or not references:
        raise ValueError("mean_bleu4 needs as many hypotheses as references, at least one")
    return sum(bleu4(r, h) for r, h in zip(references, hypotheses, strict=True)) / len(references)


def exact_match(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    if len(references) != len(hypotheses) or not references:
        raise ValueError("exact_match needs as many hypotheses as references, at least one")
    return sum(r == h for r, h in zip(references, hypotheses, strict=True)) / len(references)


def gaussian_score(tuples: Sequence[Sequence[str]], train_lines: Iterable[Sequence[str]]) -> float:
    """Share of the generated four-word tuples that equal a line of the training file.

    As in the lab, each generated tuple counts on its own: one verb generated twice counts
    twice. ``distinct_verbs`` says how many different verbs those tuples cover."""
    if not tuples:
        raise ValueError("gaussian_score needs at least one tuple")
    lines = {tuple(t) for t in train_lines}
    return sum(tuple(t) in lines for t in tuples) / len(tuples)


def distinct_verbs(tuples: Sequence[Sequence[str]], train_lines: Iterable[Sequence[str]]) -> int:
    """How many different training lines the matching tuples cover."""
    lines = {tuple(t) for t in train_lines}
    return len({tuple(t) for t in tuples if tuple(t) in lines})


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    if not values:
        raise ValueError("mean_std of no values")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
