"""Read and validate the dataset files; pairs, batches and a split by verb."""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from .errors import DataError
from .tenses import TENSES, tense_code
from .vocab import EOS, PAD, SOS, Vocab

# The tense conditions of the lab's test.txt, by line (from its data_readme.txt).
LAB_TEST_CONDITIONS: tuple[tuple[str, str], ...] = (
    ("sp", "p"),
    ("sp", "pg"),
    ("sp", "tp"),
    ("sp", "tp"),
    ("p", "tp"),
    ("sp", "pg"),
    ("p", "sp"),
    ("pg", "sp"),
    ("pg", "p"),
    ("pg", "tp"),
)

Quad = tuple[str, str, str, str]


@dataclass(frozen=True)
class Conversion:
    source: str
    target: str
    src: str  # tense code of the source word
    tgt: str  # tense code of the target word


def bundled(name: str) -> Path:
    """Path of a file shipped in pipeline/data (train.txt, test.txt, ...)."""
    return Path(str(resources.files("pipeline") / "data" / name))


def _lines(path: str | Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines; errors name the file. ``-`` is
    standard input (named ``stdin`` in errors)."""
    if str(path) == "-":
        p, raw = _shown(path), sys.stdin.buffer.read()
    else:
        p = Path(path)
        if not p.exists():
            raise DataError(f"{p}: no such file")
        if p.is_dir():
            raise DataError(f"{p}: is a directory, not a file")
        raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{p}:{line}: bytes that are not UTF-8") from None
    rows = [(i, s.strip()) for i, s in enumerate(text.splitlines(), 1) if s.strip()]
    if not rows:
        raise DataError(f"{p}: the file is empty")
    return rows


def _shown(path: str | Path) -> str | Path:
    """How errors name a file: ``-`` is standard input."""
    return "stdin" if str(path) == "-" else path


def _check_word(path: Path | str, line: int, word: str, vocab: Vocab) -> str:
    try:
        return vocab.check(word)
    except ValueError as e:
        raise DataError(f"{path}:{line}: {e}") from None


def read_quads(path: str | Path, vocab: Vocab | None = None) -> list[Quad]:
    """Lines of ``sp tp pg p``; a malformed line stops with ``FILE:LINE: what is wrong``."""
    vocab = vocab or Vocab()
    quads = []
    rows, path = _lines(path), _shown(path)
    for n, text in rows:
        words = text.split()
        if len(words) != 4:
            raise DataError(f"{path}:{n}: expected 4 words (sp tp pg p), found {len(words)}")
        quads.append(tuple(_check_word(path, n, w, vocab) for w in words))
    return quads


def read_conversions(
    path: str | Path,
    conditions: Sequence[tuple[str, str]] | None = None,
    vocab: Vocab | None = None,
) -> list[Conversion]:
    """A conversion file: ``source target`` lines whose tenses are given by ``conditions``
    (the lab's ten by default), or ``source target src tgt`` lines that name their own."""
    vocab = vocab or Vocab()
    rows, path = _lines(path), _shown(path)
    out = []
    for k, (n, text) in enumerate(rows):
        words = text.split()
        if len(words) == 4:
            src, tgt = (_tense(path, n, t) for t in words[2:])
        elif len(words) == 2:
            conds = LAB_TEST_CONDITIONS if conditions is None else conditions
            if k >= len(conds):
                raise DataError(
                    f"{path}:{n}: no tense condition for this line ({len(conds)} known); "
                    "write it as 'source target src tgt'"
                )
            src, tgt = conds[k]
        else:
            raise DataError(
                f"{path}:{n}: expected 'source target [src tgt]', found {len(words)} words"
            )
        source, target = (_check_word(path, n, w, vocab) for w in words[:2])
        out.append(Conversion(source, target, src, tgt))
    return out


def read_requests(
    path: str | Path, src: str | None = None, tgt: str | None = None
) -> list[tuple[int, str, str, str]]:
    """Lines ``word from to`` of a bulk conversion: (line, word, src, tgt), unchecked words.

    Given ``src`` and ``tgt`` (the command's ``--from`` and ``--to``), a line may also hold
    the word alone, converted between those tenses. Words and tenses are validated later,
    one by one, so that one bad word never stops a bulk job; a line with another number of
    fields is still an error of the file."""
    out = []
    alone = src is not None and tgt is not None  # may a line hold the word alone
    expected = "'word' or 'word from to'" if alone else "'word from to'"
    rows, path = _lines(path), _shown(path)
    for n, text in rows:
        parts = text.split()
        if len(parts) == 1 and alone:
            parts = [parts[0], src, tgt]
        if len(parts) != 3:
            found = f"found {len(parts)} field{'s' if len(parts) != 1 else ''}"
            hint = " (words alone, one a line, need --from and --to)" if len(parts) == 1 else ""
            raise DataError(f"{path}:{n}: expected {expected}, {found}{hint}")
        out.append((n, parts[0], parts[1], parts[2]))
    return out


def _tense(path: str | Path, line: int, name: str) -> str:
    try:
        return tense_code(name)
    except ValueError as e:
        raise DataError(f"{path}:{line}: {e}") from None


def load_train() -> list[Quad]:
    return read_quads(bundled("train.txt"))


def load_test() -> list[Conversion]:
    return read_conversions(bundled("test.txt"))


def split_by_verb(
    quads: Sequence[Quad],
    fraction: float,
    seed: int,
    keep: frozenset[str] = frozenset(),
) -> tuple[list[Quad], list[Quad]]:
    """(kept, held out): every line of a verb (its simple present) lands on one side.

    Verbs with a form in ``keep`` are never held out (the lab's test words, which the lab
    means to be seen in training); the held-out share is of all verbs."""
    verbs = sorted({q[0] for q in quads})
    n_held = round(len(verbs) * fraction)
    protected = {q[0] for q in quads if set(q) & keep}
    verbs = [v for v in verbs if v not in protected]
    random.Random(seed).shuffle(verbs)
    held = set(verbs[:n_held])
    return [q for q in quads if q[0] not in held], [q for q in quads if q[0] in held]


def test_words() -> frozenset[str]:
    """Every word of the lab's test.txt."""
    return frozenset(w for c in load_test() for w in (c.source, c.target))


def kfold_by_verb(quads: Sequence[Quad], k: int, seed: int) -> list[tuple[list[Quad], list[Quad]]]:
    """k (train, held out) folds; each verb is held out in exactly one fold."""
    verbs = sorted({q[0] for q in quads})
    random.Random(seed).shuffle(verbs)
    folds = []
    for i in range(k):
        held = set(verbs[i::k])
        folds.append(([q for q in quads if q[0] not in held], [q for q in quads if q[0] in held]))
    return folds


def make_pairs(quads: Sequence[Quad], mode: str) -> list[tuple[str, int, str, int]]:
    """Training pairs (source, src index, target, tgt index) from quadruples.

    ``same``: each word to itself (the lab's objective); ``cross``: the twelve directed
    conversions of each line; ``all``: both."""
    if mode not in ("same", "cross", "all"):
        raise DataError(f"pairs must be same, cross or all, not {mode!r}")
    pairs = []
    for q in quads:
        for i in range(4):
            for j in range(4):
                if (i == j and mode != "cross") or (i != j and mode != "same"):
                    pairs.append((q[i], i, q[j], j))
    return pairs


def directed(quads: Sequence[Quad]) -> tuple[list[str], list[str], list[str], list[str]]:
    """The twelve conversions of each line, in make_pairs' order, as four lists: the words,
    their tenses, the words asked for and their tenses (codes)."""
    pairs = make_pairs(quads, "cross")
    return (
        [p[0] for p in pairs],
        [TENSES[p[1]] for p in pairs],
        [p[2] for p in pairs],
        [TENSES[p[3]] for p in pairs],
    )


@dataclass
class Batch:
    """Padded batch-first tensors; padding is PAD and never reaches the loss."""

    src: torch.Tensor  # (B, S) source characters
    src_len: torch.Tensor  # (B,)
    src_tense: torch.Tensor  # (B,)
    tgt_in: torch.Tensor  # (B, T) <s> + target characters
    tgt_out: torch.Tensor  # (B, T) target characters + </s>
    tgt_tense: torch.Tensor  # (B,)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in vars(self).values()))


# Letters a made-up stem draws from, each in its own class so that the spelling rules that
# hang on consonants and vowels still hold; y is never drawn or replaced (flies, flied).
STEM_VOWELS = "aeiou"
STEM_CONSONANTS = "bcdfghjklmnpqrstvwxz"


def regular(quad: Quad) -> bool:
    """Whether a line's three other forms follow English's spelling rules from its simple
    present (abandon abandons abandoning abandoned; try tries trying tried; stop stops
    stopping stopped; die dies dying died), as against learned exceptions (take took,
    have has, hit hit). Lenient: any of the rules' outcomes counts, whether or not it is the
    one the rules would pick for that stem."""
    sp, tp, pg, p = quad
    if not sp:
        return False
    last, cut = sp[-1], sp[:-1]
    third = {sp + "s", sp + "es", cut + "ies"}
    progressive = {sp + "ing", cut + "ing", sp + last + "ing", sp[:-2] + "ying", sp + "king"}
    past = {sp + "ed", sp + "d", cut + "ied", sp + last + "ed", sp + "ked"}
    return tp in third and pg in progressive and p in past


def made_up_stems(
    b: Batch,
    vocab: Vocab,
    share: float,
    generator: torch.Generator,
    spare: int = 3,
    rate: float = 0.5,
    eligible: torch.Tensor | None = None,
) -> tuple[Batch, int]:
    """The batch with a ``share`` of its pairs appended again under made-up stems, and how
    many were appended. Of the letters the source and target share from their start, all but
    the last ``spare`` may change (each with probability ``rate``, a vowel to a vowel, a
    consonant to a consonant), identically in both: "withhold -> withholds" may come back as
    "wuthhold -> wuthholds". What changes is only ever copied, so a model can get these
    pairs right only by reading the stem, never by remembering the verb; the letters at the
    end, where English inflects, stay as they were (stop -> stopped keeps its "op").
    ``eligible`` (a bool per pair) limits the choice to those pairs."""
    chosen = torch.rand(b.src.size(0), generator=generator) < share
    if eligible is not None:
        chosen &= eligible
    pick = chosen.nonzero().squeeze(1)
    n = pick.numel()
    if n == 0:
        return b, 0
    src, tgt_in, tgt_out = b.src[pick].clone(), b.tgt_in[pick].clone(), b.tgt_out[pick].clone()
    W = min(src.size(1), tgt_out.size(1) - 1)
    head, target = src[:, :W], tgt_out[:, :W]
    shared = ((head == target) & (head != PAD)).long().cumprod(1).sum(1)  # common prefix
    movable = torch.arange(W) < (shared - spare).unsqueeze(1)
    vowels = torch.tensor(vocab.encode(STEM_VOWELS))
    consonants = torch.tensor(vocab.encode(STEM_CONSONANTS))
    is_vowel, is_consonant = torch.isin(head, vowels), torch.isin(head, consonants)
    flip = movable & (is_vowel | is_consonant) & (torch.rand(n, W, generator=generator) < rate)
    new = torch.where(
        is_vowel,
        vowels[torch.randint(len(vowels), (n, W), generator=generator)],
        consonants[torch.randint(len(consonants), (n, W), generator=generator)],
    )
    src[:, :W] = torch.where(flip, new, head)
    tgt_out[:, :W] = torch.where(flip, new, target)
    tgt_in[:, 1 : W + 1] = torch.where(flip, new, tgt_in[:, 1 : W + 1])
    made_up = Batch(src, b.src_len[pick], b.src_tense[pick], tgt_in, tgt_out, b.tgt_tense[pick])
    return join_batches(b, made_up), n


def prefix_starts(quads: Sequence[Quad], longest: int = 4) -> list[str]:
    """The first 1 to ``longest`` letters of each line's simple present (never the whole
    word), one entry per line and length: what made_up_prefixes draws from, as often as
    English's verbs begin so ("over", "mis", "with", "be")."""
    return [q[0][:k] for q in quads for k in range(1, min(longest, len(q[0]) - 1) + 1)]


def made_up_prefixes(
    b: Batch,
    vocab: Vocab,
    share: float,
    generator: torch.Generator,
    starts: Sequence[str],
    known: frozenset[str] | set[str],
    max_length: int,
) -> tuple[Batch, int]:
    """The batch with a ``share`` of its pairs appended again, each with one prefix drawn
    from ``starts`` before both its words ("take -> took" as "overtake -> overtook"), and
    how many were appended. English inflects at the end of a word, whatever comes before:
    these pairs teach that a word ending in a known verb is inflected as that verb. A pair
    whose prefixed source or target is in ``known`` (real words, whose forms may differ:
    "welcome" is no "come"), or longer than ``max_length``, is not appended."""
    chosen = (torch.rand(b.src.size(0), generator=generator) < share).nonzero().squeeze(1)
    if chosen.numel() == 0 or not starts:
        return b, 0
    draws = torch.randint(len(starts), (chosen.numel(),), generator=generator).tolist()
    rows = []
    for i, d in zip(chosen.tolist(), draws, strict=True):
        start = starts[d]
        src = start + vocab.decode(b.src[i].tolist())
        tgt = start + vocab.decode(b.tgt_out[i].tolist())
        if src in known or tgt in known or max(len(src), len(tgt)) > max_length:
            continue
        rows.append((src, int(b.src_tense[i]), tgt, int(b.tgt_tense[i])))
    if not rows:
        return b, 0
    return join_batches(b, make_batch(rows, vocab)), len(rows)


def stack_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows of a (N, T) over rows of b (M, U), padded with PAD to max(T, U) columns."""
    width = max(a.size(1), b.size(1))
    a = torch.nn.functional.pad(a, (0, width - a.size(1)), value=PAD)
    return torch.cat([a, torch.nn.functional.pad(b, (0, width - b.size(1)), value=PAD)])


def join_batches(a: Batch, b: Batch) -> Batch:
    """a's rows, then b's, each padded to the wider of the two."""
    return Batch(
        stack_padded(a.src, b.src),
        torch.cat([a.src_len, b.src_len]),
        torch.cat([a.src_tense, b.src_tense]),
        stack_padded(a.tgt_in, b.tgt_in),
        stack_padded(a.tgt_out, b.tgt_out),
        torch.cat([a.tgt_tense, b.tgt_tense]),
    )


def pad(seqs: Sequence[Sequence[int]], value: int = PAD) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([[*s, *([value] * (width - len(s)))] for s in seqs], dtype=torch.long)


def encode_sources(words: Sequence[str], vocab: Vocab) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [vocab.encode(w) for w in words]
    return pad(ids), torch.tensor([len(s) for s in ids], dtype=torch.long)


def make_batch(pairs: Sequence[tuple[str, int, str, int]], vocab: Vocab) -> Batch:
    src, src_len = encode_sources([p[0] for p in pairs], vocab)
    tgt = [vocab.encode(p[2]) for p in pairs]
    return Batch(
        src=src,
        src_len=src_len,
        src_tense=torch.tensor([p[1] for p in pairs], dtype=torch.long),
        tgt_in=pad([[SOS, *t] for t in tgt]),
        tgt_out=pad([[*t, EOS] for t in tgt]),
        tgt_tense=torch.tensor([p[3] for p in pairs], dtype=torch.long),
    )


def batches(pairs: Sequence, vocab: Vocab, size: int, generator: torch.Generator | None = None):
    """Batches over the pairs. With a ``generator`` the pairs are shuffled, then grouped by
    length within windows of 32 batches, so a batch holds words of similar length and pads
    little; the batches themselves come in shuffled order."""
    if generator is None:
        for start in range(0, len(pairs), size):
            yield make_batch(pairs[start : start + size], vocab)
        return
    order = torch.randperm(len(pairs), generator=generator).tolist()
    window = size * 32
    groups = []
    for start in range(0, len(order), window):
        chunk = sorted(
            order[start : start + window], key=lambda i: (len(pairs[i][2]), len(pairs[i][0]))
        )
        groups += [chunk[k : k + size] for k in range(0, len(chunk), size)]
    for g in torch.randperm(len(groups), generator=generator).tolist():
        yield make_batch([pairs[i] for i in groups[g]], vocab)


__all__ = [
    "LAB_TEST_CONDITIONS",
    "TENSES",
    "Batch",
    "Conversion",
    "Quad",
    "batches",
    "bundled",
    "directed",
    "encode_sources",
    "kfold_by_verb",
    "load_test",
    "load_train",
    "make_batch",
    "make_pairs",
    "read_conversions",
    "read_quads",
    "read_requests",
    "regular",
    "split_by_verb",
]
