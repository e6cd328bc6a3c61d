"""KL-weight, teacher-forcing and learning-rate schedules: pure functions of the training step."""

from __future__ import annotations

import math


def kl_weight(
    step: int,
    total_steps: int,
    *,
    schedule: str,
    kl_max: float = 1.0,
    warmup: float = 0.3,
    cycles: int = 4,
    ratio: float = 0.5,
) -> float:
    """beta at ``step`` (0-based) of ``total_steps``.

    constant: kl_max throughout. monotonic: rises linearly from 0 to kl_max over the first
    ``warmup`` share of training, then stays. cyclical: ``cycles`` equal cycles, each rising
    linearly from 0 over its first ``ratio`` share, then holding kl_max (Fu et al., 2019)."""
    if schedule == "constant":
        return kl_max
    total = max(1, total_steps)
    if schedule == "monotonic":
        span = warmup * total
        return kl_max if span <= 0 else kl_max * min(1.0, step / span)
    if schedule == "cyclical":
        period = total / cycles
        position = (step % period) / period
        return kl_max * min(1.0, position / ratio)
    raise ValueError(f"unknown KL schedule {schedule!r}")


def teacher_forcing(step: int, total_steps: int, *, start: float, end: float, shape: str) -> float:
    """Probability of feeding the true previous character at ``step``."""
    progress = min(1.0, step / max(1, total_steps - 1))
    if shape == "constant":
        return start
    if shape == "linear":
        return start + (end - start) * progress
    if shape == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
    if shape == "step":
        return start if progress < 0.5 else end
    raise ValueError(f"unknown teacher-forcing shape {shape!r}")


def learning_rate(step: int, total_steps: int, *, lr: float, schedule: str, floor: float) -> float:
    """The optimizer's learning rate at ``step``. constant: ``lr`` throughout. cosine: from
    ``lr`` down to ``floor * lr`` along half a cosine over training, so the last epochs take
    small steps and the weights kept at the end are not caught mid-swing."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        progress = min(1.0, step / max(1, total_steps - 1))
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")
