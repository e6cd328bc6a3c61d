"""Use a trained model: convert words, generate verbs, and score it the lab's way."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from . import decoding
from .data import (
    Conversion,
    Quad,
    directed,
    encode_sources,
    load_test,
    load_train,
    make_batch,
    read_quads,
)
from .metrics import distinct_verbs, exact_match, gaussian_score, mean_bleu4, mean_std
from .model import TenseCVAE, reconstruction_loss
from .tenses import DIRECTIONS, SP_DIRECTIONS, TENSES, tense_index
from .vocab import max_word_length as vocab_max_word_length

CHUNK = 512  # words decoded at once: short chunks waste fewer steps and stay in cache
ROUNDTRIP_WIDTH = 4  # candidates a round trip weighs unless told otherwise
# Joint generation: what a unit of the four forms' disagreement costs, in nats of their
# log-probability per squared unit of z (the prior's N(0, I) scale), and the widest beam it
# weighs (width ** 4 choices per z). Chosen on draws that no score uses (7,000,000 onward):
# 1 to 10 scored alike on the shipped model (benchmarks/results/sweeps.md).
AGREEMENT = 3.0
JOINT_WIDTH, JOINT_MAX_WIDTH = 4, 8


def max_word_length(model: TenseCVAE) -> int:
    """Longest word accepted: room is left for the longest suffix the decoder may add."""
    return vocab_max_word_length(model.config.max_length)


def check_words(model: TenseCVAE, words: Sequence[str]) -> list[str]:
    """The words as the model reads them; WordError names the first that cannot be converted."""
    return model.vocab.check_all(words, model.config.max_length)


def decode_options(beam: int, roundtrip: bool = False, joint: bool = False) -> dict[str, Any]:
    """Keyword arguments for convert/generate/gaussian from a beam width (0 is greedy), and
    for convert whether beam search's candidates are chosen by their round trip too (width 4
    unless given); for generate/gaussian whether a z's four forms are chosen together
    (``joint``, width JOINT_WIDTH unless given)."""
    if joint:
        return {"method": "beam", "beam_width": beam or JOINT_WIDTH, "joint": True}
    if roundtrip:
        return {"method": "roundtrip", "beam_width": beam or ROUNDTRIP_WIDTH}
    return {"method": "beam", "beam_width": beam} if beam else {"method": "greedy"}


def _indices(tenses: str | Sequence[str], n: int) -> list[int]:
    if isinstance(tenses, str):
        return [tense_index(tenses)] * n
    if len(tenses) != n:
        raise ValueError("give one tense, or one per word")
    return [tense_index(t) for t in tenses]


METHODS = ("greedy", "beam", "roundtrip")  # how convert decodes; generation: the first two


def _whole(x: Any) -> bool:
    """An int, numpy's included, but not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_decoding(method: str, beam_width: int, methods: Sequence[str]) -> None:
    """A ValueError, before any decoding, for a method not in ``methods`` or a beam width
    that is not a whole number of 1 or more."""
    if method not in methods:
        raise ValueError(f"unknown decoding method {method!r} ({', '.join(methods)})")
    if method != "greedy" and not (_whole(beam_width) and beam_width >= 1):
        raise ValueError(f"beam_width must be a whole number, 1 or more, not {beam_width!r}")


@torch.no_grad()
def convert(
    model: TenseCVAE,
    words: Sequence[str],
    src: str | Sequence[str],
    tgt: str | Sequence[str],
    *,
    method: str = "greedy",
    beam_width: int = 4,
    sample_z: bool = False,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Convert each word from tense ``src`` to ``tgt`` (one tense, or one per word).

    z is the posterior mean unless ``sample_z``; ``method`` is greedy, beam or roundtrip:
    beam search's ``beam_width`` candidates, of which the one with the highest
    log p(candidate | word) + log p(word | candidate) wins, the second term scoring the
    conversion back (a candidate that drops or invents a letter of the stem seldom converts
    back to the word). A bf16 or int8
    form of a model (pipeline.precision) converts greedily from the posterior mean, and gives
    every word that came close to a tie to its fp32 original: its output is fp32's."""
    _check_decoding(method, beam_width, METHODS)
    words = check_words(model, words)
    s, t = _indices(src, len(words)), _indices(tgt, len(words))
    reference = getattr(model, "reference", None)
    if reference is None:
        return _convert_all(model, words, s, t, method, beam_width, sample_z, generator, None)
    from .precision import TIE_MARGIN

    if method != "greedy" or sample_z:
        raise ValueError(f"a {model.precision} model converts greedily from the posterior mean")
    out, margins = _closest_calls(model, words, s, t)
    close = (margins < TIE_MARGIN).nonzero().squeeze(1).tolist()
    model.redecoded = getattr(model, "redecoded", 0) + len(close)
    if close:
        again = _convert_all(
            reference, *_pick(close, words, s, t), method, beam_width, False, None, None
        )
        for i, word in zip(close, again, strict=True):
            out[i] = word
    return out


@torch.no_grad()
def closest_calls(
    model: TenseCVAE, words: Sequence[str], src: str | Sequence[str], tgt: str | Sequence[str]
) -> tuple[list[str], torch.Tensor]:
    """Greedy conversions by ``model`` on its own (a bf16 or int8 form unchecked by its fp32
    original), and each word's closest call: the smallest gap between its best and
    second-best character's scores over the steps it wrote."""
    words = check_words(model, words)
    return _closest_calls(model, words, _indices(src, len(words)), _indices(tgt, len(words)))


def _closest_calls(model, words, s, t) -> tuple[list[str], torch.Tensor]:
    from .precision import autocast

    margins = torch.full((len(words),), float("inf"), device=model.device)
    with autocast(model):
        out = _convert_all(model, words, s, t, "greedy", 4, False, None, margins)
    return out, margins


def _pick(index: Sequence[int], *lists: Sequence) -> list[list]:
    """Each list's items at ``index``, in its order."""
    return [[xs[i] for i in index] for xs in lists]


def _convert_all(model, words, s, t, method, beam_width, sample_z, generator, margins):
    model.eval()
    # Words of like length decode together: a chunk runs as many steps as its longest word.
    order = sorted(range(len(words)), key=lambda i: len(words[i]))
    out: list[str] = [""] * len(words)
    for i in range(0, len(words), CHUNK):
        part = order[i : i + CHUNK]
        gaps = None if margins is None else torch.full_like(margins[: len(part)], float("inf"))
        done = _convert_chunk(
            model, *_pick(part, words, s, t), method, beam_width, sample_z, generator, gaps
        )
        for j, word in zip(part, done, strict=True):
            out[j] = word
        if margins is not None:
            margins[part] = gaps
    return out


def _convert_chunk(
    model, words, s, t, method, beam_width, sample_z, generator, margins=None
) -> list[str]:
    if not words:
        return []
    dev = model.device
    ids, lengths = encode_sources(words, model.vocab)
    ids, s_t = ids.to(dev), torch.tensor(s, device=dev)
    try:
        post = model.encode(ids, lengths, s_t)
    except RuntimeError:
        if getattr(model, "precision", None) != "bf16":
            raise
        # On some CPUs oneDNN builds no bf16 LSTM primitive for some batches (seen on an
        # AVX2 one on 2026-11-30, with packed batches whose words all had one length; bf16
        # is refused on such CPUs since 2026-12-07): the fp32 original encodes such a
        # chunk; the decoder stays bf16.
        with torch.autocast(dev.type, enabled=False):
            post = model.reference.encode(ids, lengths, s_t)
        post = replace(
            post, **{k: getattr(post, k).to(torch.bfloat16) for k in ("mu", "logvar", "memory")}
        )
    z = model.reparameterize(post.mu, post.logvar, generator) if sample_z else post.mu
    state = model.init_decoder(z, torch.tensor(t, device=dev), post)
    if method == "roundtrip":
        return _roundtrip(model, words, s, t, state, beam_width)
    return _decode(model, state, len(words), method, beam_width, margins)


def _roundtrip(model, words, s, t, state, width: int) -> list[str]:
    """Of each word's ``width`` beam-search candidates, the one whose forward score plus
    its conversion back to the word (log-probabilities, posterior means) is highest."""
    n = len(words)
    history, forward = decoding.nbest(
        model.decode_step, state, n, model.config.max_length, width=width, device=model.device
    )
    candidates = [[model.vocab.decode(row) for row in rows] for rows in history.tolist()]
    back = torch.full((n, width), float("-inf"))
    # a beam that never lived, or wrote nothing, has nothing to convert back
    live = [
        (i, k)
        for i in range(n)
        for k in range(width)
        if candidates[i][k] and forward[i, k] > float("-inf")
    ]
    if live:
        # words and candidates are the model's own letters already: no check, no names
        scores = _log_likelihood(model, [(candidates[i][k], t[i], words[i], s[i]) for i, k in live])
        back[tuple(zip(*live, strict=True))] = scores.float().cpu()
    best = (forward.float().cpu() + back).argmax(dim=1).tolist()
    return [candidates[i][k] for i, k in enumerate(best)]


@torch.no_grad()
def log_likelihood(
    model: TenseCVAE,
    sources: Sequence[str],
    src: str | Sequence[str],
    targets: Sequence[str],
    tgt: str | Sequence[str],
) -> torch.Tensor:
    """log p(target | source) under the model (N,), each target's characters and its end
    scored teacher-forced, with z the posterior mean of its source. WordError names a word
    that holds anything but lower-case letters."""
    if len(targets) != len(sources):
        raise ValueError("give one target per source")
    sources = [model.vocab.check(w) for w in sources]
    targets = [model.vocab.check(w) for w in targets]
    s, t = _indices(src, len(sources)), _indices(tgt, len(sources))
    return _log_likelihood(model, list(zip(sources, s, targets, t, strict=True)))


def _log_likelihood(model, pairs: Sequence[tuple[str, int, str, int]]) -> torch.Tensor:
    """log_likelihood over (source, its tense index, target, its tense index) pairs."""
    model.eval()
    out = []
    for i in range(0, len(pairs), CHUNK):
        b = make_batch(pairs[i : i + CHUNK], model.vocab).to(model.device)
        post = model.encode(b.src, b.src_len, b.src_tense)
        logits = model.decode(b.tgt_in, model.init_decoder(post.mu, b.tgt_tense, post))
        out.append(-reconstruction_loss(logits, b.tgt_out))
    return torch.cat(out) if out else torch.zeros(0)


def _decode(model, state, n, method="greedy", beam_width=4, margins=None) -> list[str]:
    limit = model.config.max_length
    if method == "beam":
        ids = decoding.beam(
            model.decode_step, state, n, limit, width=beam_width, device=model.device
        )
    elif method == "greedy":
        ids = decoding.greedy(
            model.decode_step,
            state,
            n,
            limit,
            device=model.device,
            margins=margins,  # on the model's device, as _run's rows are
        )
    else:
        raise ValueError(f"unknown decoding method {method!r} (greedy or beam)")
    return [model.vocab.decode(row) for row in ids.tolist()]


@torch.no_grad()
def decode_latents(
    model: TenseCVAE,
    z: torch.Tensor,
    *,
    method: str = "greedy",
    beam_width: int = 4,
    anchored: bool = False,
    joint: bool = False,
) -> list[Quad]:
    """The four forms each latent (N, Z) decodes to, with no source word to attend to.

    ``joint``: each tense's form is one of its ``beam_width`` beam-search candidates from z,
    and the four are chosen together (see _agreeing_forms).

    ``anchored``: only the simple present comes from z; the other three forms are the
    model's own conversions of it (through the encoder's posterior, attending to its
    characters), so the four are forms of one verb as the model conjugates it. Where the
    simple present cannot be read back (empty, or too long), its forms stay as z wrote them."""
    if getattr(model, "reference", None) is not None:
        raise ValueError(
            f"a {model.precision} model converts words only; generate with its fp32 original"
        )
    _check_decoding(method, beam_width, METHODS[:2])
    if joint and anchored:
        raise ValueError("joint and anchored generation are two procedures: choose one")
    if joint and not (method == "beam" and 2 <= beam_width <= JOINT_MAX_WIDTH):
        raise ValueError(
            f"joint generation chooses among beam search's candidates: give a beam width "
            f"from 2 to {JOINT_MAX_WIDTH}"
        )
    model.eval()
    z = z.to(model.device)
    if joint:  # CHUNK beams at a time: each z is 4 tenses x width beams
        step = max(1, CHUNK // (4 * beam_width))
        return [
            q
            for i in range(0, z.size(0), step)
            for q in _agreeing_forms(model, z[i : i + step], beam_width)
        ]
    if not anchored:
        return _four_forms(model, z, method, beam_width)
    n = z.size(0)
    sp = torch.zeros(n, dtype=torch.long, device=model.device)
    lemmas = _decode(model, model.init_decoder(z, sp), n, method, beam_width)
    limit = max_word_length(model)
    readable = [i for i, w in enumerate(lemmas) if 0 < len(w) <= limit]
    words = [lemmas[i] for i in readable]
    forms = [
        convert(model, words, "sp", t, method=method, beam_width=beam_width) for t in TENSES[1:]
    ]
    quads: list[Quad | None] = [None] * n
    for i, *rest in zip(readable, *forms, strict=True):
        quads[i] = (lemmas[i], *rest)
    unread = [i for i, q in enumerate(quads) if q is None]
    if unread:
        for i, q in zip(unread, _four_forms(model, z[unread], method, beam_width), strict=True):
            quads[i] = q
    return quads


def _four_forms(model: TenseCVAE, z: torch.Tensor, method: str, beam_width: int) -> list[Quad]:
    n = z.size(0)
    zz = z.repeat_interleave(4, dim=0)  # (4N, Z): four tenses per z
    tenses = torch.arange(4, device=model.device).repeat(n)
    words = _decode(model, model.init_decoder(zz, tenses), 4 * n, method, beam_width)
    return [tuple(words[4 * i : 4 * i + 4]) for i in range(n)]


def _agreeing_forms(model: TenseCVAE, z: torch.Tensor, width: int) -> list[Quad]:
    """Joint decoding of each z's four forms. Beam search gives each tense's ``width``
    likeliest forms from z; the encoder gives each candidate's posterior mean under its
    own tense, where in z it says that form belongs. Of the width ** 4 ways to take one
    candidate per tense, the one kept maximises the four log-probabilities' sum less
    AGREEMENT times the spread of the four posterior means (summed squared distances from
    their centre): forms the decoder finds likely that the encoder also places together,
    as the four forms of one verb are. Every form is still the decoder's from z under its
    tense; the encoder only weighs them. A z with a tense whose candidates all are empty or
    too long to read back keeps beam search's likeliest forms."""
    n, W, device = z.size(0), width, model.device
    zz = z.repeat_interleave(4, dim=0)  # (4N, Z): row 4i + k is z_i under tense k
    tenses = torch.arange(4, device=device).repeat(n)
    history, logp = decoding.nbest(
        model.decode_step, model.init_decoder(zz, tenses), 4 * n, model.config.max_length,
        width=W, device=device,
    )  # fmt: skip
    words = [[model.vocab.decode(row) for row in rows] for rows in history.tolist()]
    logp = logp.float().cpu()
    limit = max_word_length(model)
    readable = [
        (r, j)
        for r in range(4 * n)
        for j in range(W)
        if logp[r, j] > float("-inf") and 0 < len(words[r][j]) <= limit
    ]
    means = torch.zeros(4 * n, W, z.size(1))
    for i in range(0, len(readable), CHUNK):
        part = readable[i : i + CHUNK]
        ids, lengths = encode_sources([words[r][j] for r, j in part], model.vocab)
        tense = torch.tensor([r % 4 for r, _ in part], device=device)
        mu = model.encode(ids.to(device), lengths, tense).mu.float().cpu()
        means[tuple(zip(*part, strict=True))] = mu
    usable = torch.full((4 * n, W), float("-inf"))
    if readable:
        usable[tuple(zip(*readable, strict=True))] = 0.0
    # every choice of one candidate per tense, (W^4, 4)
    choices = torch.cartesian_prod(*[torch.arange(W)] * 4)
    tense_of = torch.arange(4)
    quads: list[Quad] = []
    for i in range(n):
        rows = slice(4 * i, 4 * i + 4)
        score = (logp[rows] + usable[rows])[tense_of, choices].sum(1)  # (W^4,)
        picked = means[rows][tense_of, choices]  # (W^4, 4, Z)
        spread = (picked - picked.mean(1, keepdim=True)).pow(2).sum((1, 2))
        score = score - AGREEMENT * spread
        best = choices[score.argmax()] if bool(torch.isfinite(score).any()) else None
        if best is None:  # nothing to weigh: beam search's own likeliest forms
            best = logp[rows].argmax(1)
        quads.append(tuple(words[4 * i + k][int(best[k])] for k in range(4)))
    return quads


def generate(
    model: TenseCVAE,
    n: int = 100,
    seed: int = 0,
    *,
    method: str = "greedy",
    beam_width: int = 4,
    anchored: bool = False,
    joint: bool = False,
) -> list[Quad]:
    """n verbs, each the four forms decoded from one z ~ N(0, I), greedily (the lab's way)
    or by beam search, which writes the likeliest form of each tense instead of the likeliest
    character at each step; ``joint``: the four forms chosen together among beam search's
    candidates; ``anchored``: the simple present from z, the rest converted from it (see
    decode_latents)."""
    if not _whole(n) or n < 1:
        raise ValueError(f"generate needs a whole number n of 1 or more, not {n!r}")
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.config.latent_size, generator=g)
    return decode_latents(
        model, z, method=method, beam_width=beam_width, anchored=anchored, joint=joint
    )


def gaussian(
    model: TenseCVAE,
    train: Sequence[Quad] | None = None,
    draws: int = 20,
    n: int = 100,
    seed: int = 0,
    *,
    method: str = "greedy",
    beam_width: int = 4,
    anchored: bool = False,
    joint: bool = False,
) -> dict[str, Any]:
    """The lab's Gaussian score over ``draws`` independent draws of ``n`` z: mean, spread,
    and the distinct training verbs the matching tuples cover. ``joint`` decodes each z's
    four forms together (see _agreeing_forms); ``anchored`` scores the anchored generation
    instead (not the lab's score: three forms are conversions)."""
    train = load_train() if train is None else train
    scores, distinct = [], []
    for d in range(draws):
        tuples = generate(
            model,
            n,
            seed=seed * 100_003 + d,
            method=method,
            beam_width=beam_width,
            anchored=anchored,
            joint=joint,
        )
        scores.append(gaussian_score(tuples, train))
        distinct.append(distinct_verbs(tuples, train))
    mean, std = mean_std(scores)
    return {
        "mean": mean,
        "std": std,
        "draws": draws,
        "n": n,
        "distinct_verbs_mean": sum(distinct) / draws,
        "decoding": method if method == "greedy" else f"beam {beam_width}",
        "anchored": anchored,
        "joint": joint,
    }


def bleu_on(model: TenseCVAE, tests: Sequence[Conversion], samples: int = 0, seed: int = 0) -> dict:
    """BLEU-4 with the posterior mean as z; with ``samples``, also mean and spread over that
    many sampled z (each sample scores all conversions)."""
    refs = [c.target for c in tests]
    args = ([c.source for c in tests], [c.src for c in tests], [c.tgt for c in tests])
    hyps = convert(model, *args)
    result: dict[str, Any] = {"bleu4": mean_bleu4(refs, hyps), "outputs": hyps}
    if samples:
        g = torch.Generator().manual_seed(seed)
        k = len(tests)
        many = convert(
            model,
            [w for _ in range(samples) for w in args[0]],
            list(args[1]) * samples,
            list(args[2]) * samples,
            sample_z=True,
            generator=g,
        )
        values = [mean_bleu4(refs, many[i * k : (i + 1) * k]) for i in range(samples)]
        mean, std = mean_std(values)
        result["bleu4_sampled"] = {"mean": mean, "std": std, "samples": samples}
    return result


def exact_by_direction(
    model: TenseCVAE, quads: Sequence[Quad], method: str = "greedy"
) -> dict[str, float]:
    """Exact match of all 12 directed conversions over the quadruples, with ``mean`` (12)
    and ``sp_mean`` (the six to and from sp)."""
    words, src, refs, tgt = directed(quads)
    hyps = convert(model, words, src, tgt, method=method)
    names = [f"{a}->{b}" for a, b in zip(src, tgt, strict=True)]
    result = {}
    for d in DIRECTIONS:
        rows = [(r, h) for r, h, n in zip(refs, hyps, names, strict=True) if n == d]
        result[d] = exact_match([r for r, _ in rows], [h for _, h in rows])
    result["mean"] = sum(result[d] for d in DIRECTIONS) / len(DIRECTIONS)
    result["sp_mean"] = sum(result[d] for d in SP_DIRECTIONS) / len(SP_DIRECTIONS)
    return result


def _exact_on_tests(tests: Sequence[Conversion], hyps: Sequence[str]) -> dict[str, float]:
    by: dict[str, list[bool]] = {}
    for c, h in zip(tests, hyps, strict=True):
        by.setdefault(f"{c.src}->{c.tgt}", []).append(c.target == h)
    result = {d: sum(v) / len(v) for d, v in sorted(by.items())}
    result["mean"] = sum(c.target == h for c, h in zip(tests, hyps, strict=True)) / len(tests)
    return result


def evaluate(
    model: TenseCVAE,
    *,
    tests: Sequence[Conversion] | None = None,
    verbs: str | Path | Sequence[Quad] | None = None,
    verbs_name: str | None = None,
    bleu_samples: int = 100,
    gaussian_draws: int = 20,
    gaussian_beam: int = 0,
    gaussian_anchored: bool = False,
    gaussian_joint: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """All the lab's figures for a model: BLEU-4 (posterior mean, and sampled z), Gaussian
    score (mean over draws), and exact match per direction on the test conversions, or on
    all 12 directions of a user's quadruple file ``verbs`` (a path, or its quadruples).
    The Gaussian score decodes greedily, or by beam search of width ``gaussian_beam``;
    ``gaussian_joint`` chooses each z's four forms together among its candidates (width 4
    unless given); ``gaussian_anchored`` scores anchored generation instead (see
    decode_latents)."""
    tests = load_test() if tests is None else tests
    bleu = bleu_on(model, tests, samples=bleu_samples, seed=seed)
    result: dict[str, Any] = {
        "bleu4": bleu["bleu4"],
        "bleu4_sampled": bleu.get("bleu4_sampled"),
        "gaussian_score": gaussian(
            model,
            draws=gaussian_draws,
            seed=seed,
            anchored=gaussian_anchored,
            **decode_options(gaussian_beam, joint=gaussian_joint),
        )
        if gaussian_draws
        else None,
        "conversions": [
            {"source": c.source, "src": c.src, "tgt": c.tgt, "target": c.target, "output": h}
            for c, h in zip(tests, bleu["outputs"], strict=True)
        ],
    }
    if verbs is not None:
        is_path = isinstance(verbs, str | Path)
        quads = read_quads(verbs, model.vocab) if is_path else [tuple(q) for q in verbs]
        check_words(model, [w for q in quads for w in q])
        result["exact_match"] = exact_by_direction(model, quads)
        name = verbs_name or (str(verbs) if is_path else "verbs")
        result["exact_match_on"] = {"file": name, "verbs": len(quads)}
    else:
        result["exact_match"] = _exact_on_tests(tests, bleu["outputs"])
        result["exact_match_on"] = {"file": "test.txt", "conversions": len(tests)}
    return result
