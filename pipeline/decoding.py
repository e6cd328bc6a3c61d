"""Greedy, beam and sampled decoding over any ``step(tokens, state) -> (logits, state)``.

Nothing here knows the model class: a state only needs ``select(index)`` for beam search."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .vocab import EOS, PAD, SOS

Step = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]


def greedy(
    step: Step,
    state: Any,
    batch: int,
    max_length: int,
    device=None,
    margins: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token ids (B, <= max_length); each row ends at its first EOS, then PAD.

    ``margins`` (B,), if given, is lowered in place to each row's closest call: the
    smallest gap, over the steps it wrote, between its best and second-best score."""
    return _run(step, state, batch, max_length, device, lambda logits: logits.argmax(-1), margins)


def sample(
    step: Step,
    state: Any,
    batch: int,
    max_length: int,
    device=None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    def pick(logits):
        probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)

    return _run(step, state, batch, max_length, device, pick)


def _run(step, state, batch, max_length, device, pick, margins=None) -> torch.Tensor:
    """Decode until every row has written EOS. Rows that have finished are dropped from the
    batch once they are a quarter of it (where the state can ``select``), so short words do
    not pay for the longest word's steps."""
    out = torch.full((batch, max_length), PAD, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)  # each live row's place in ``out``
    tokens = torch.full((batch,), SOS, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    compact = hasattr(state, "select")
    written = 0  # steps taken
    while written < max_length:
        logits, state = step(tokens, state)
        if margins is not None:
            top = logits.topk(2, dim=-1).values
            gap = (top[:, 0] - top[:, 1]).masked_fill(done, float("inf"))
            margins[rows] = torch.minimum(margins[rows], gap.to(margins.dtype))
        tokens = pick(logits).masked_fill(done, PAD)
        out[rows, written] = tokens
        written += 1
        done |= tokens == EOS
        finished = int(done.sum())
        if finished == done.numel():
            break
        if compact and 4 * finished >= done.numel():
            keep = (~done).nonzero().squeeze(1)
            rows, tokens, done, state = rows[keep], tokens[keep], done[keep], state.select(keep)
    return out[:, :written]


def beam(
    step: Step, state: Any, batch: int, max_length: int, width: int = 4, device=None
) -> torch.Tensor:
    """The highest log-probability sequence of each row among ``width`` beams, (B, T)."""
    history, scores = nbest(step, state, batch, max_length, width, device)
    return history[torch.arange(batch, device=device), scores.argmax(dim=-1)]


def nbest(
    step: Step, state: Any, batch: int, max_length: int, width: int = 4, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``width`` beams at the end of beam search: token ids (B, W, T), each
    beam ending at its EOS, then PAD, and their log-probabilities (B, W), -inf for a beam
    that never lived (a row with fewer than ``width`` possible sequences)."""
    V = None
    # Each row's beams sit side by side: row b owns positions b*width .. b*width+width-1.
    index = torch.arange(batch, device=device).repeat_interleave(width)
    state = state.select(index)
    tokens = torch.full((batch * width,), SOS, dtype=torch.long, device=device)
    scores = torch.full((batch, width), float("-inf"), device=device)
    scores[:, 0] = 0.0  # start from one live beam per row, not `width` copies of it
    finished = torch.zeros(batch * width, dtype=torch.bool, device=device)
    history = torch.zeros(batch * width, 0, dtype=torch.long, device=device)
    for _ in range(max_length):
        logits, state = step(tokens, state)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B*W, V)
        V = logp.size(-1)
        # A finished beam may only extend with PAD, at no cost.
        frozen = torch.full_like(logp, float("-inf"))
        frozen[:, PAD] = 0.0
        logp = torch.where(finished.unsqueeze(1), frozen, logp)
        total = (scores.view(-1, 1) + logp).view(batch, width * V)
        scores, flat = total.topk(width, dim=-1)  # (B, W)
        parent = flat // V + torch.arange(batch, device=device).unsqueeze(1) * width
        tokens = (flat % V).view(-1)
        parent = parent.view(-1)
        history = torch.cat([history[parent], tokens.unsqueeze(1)], dim=1)
        finished = finished[parent] | (tokens == EOS) | (tokens == PAD)
        # Parents never leave their row's block, so a state may skip per-word constants.
        state = state.reorder(parent) if hasattr(state, "reorder") else state.select(parent)
        if bool(finished.all()):
            break
    return history.view(batch, width, -1), scores
