"""Characters <-> ids, with padding, start, end and unknown tokens."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from .errors import WordError

PAD, SOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def max_word_length(max_length: int) -> int:
    """Longest word a decoder of ``max_length`` steps accepts: room is left for the longest
    suffix it may add."""
    return max_length - 5


@dataclass(frozen=True)
class Vocab:
    """The characters a model reads and writes; ids 0-3 are the special tokens."""

    chars: str = LETTERS

    def __post_init__(self) -> None:
        if len(set(self.chars)) != len(self.chars) or not self.chars:
            raise ValueError("vocabulary characters must be distinct and non-empty")

    @property
    def size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}

    @cached_property
    def _charset(self) -> frozenset[str]:
        return frozenset(self.chars)

    def check(self, word: str) -> str:
        """The word without the spaces around it, or WordError naming why it cannot be read:
        nothing but the model's letters (a-z, lower case) is read."""
        if not isinstance(word, str):
            raise WordError(f"{word!r} is not a word (it is {type(word).__name__})")
        text = word.strip()
        if text and self._charset.issuperset(text):  # the usual case, checked at C speed
            return text
        if not text:
            raise WordError("an empty word cannot be converted")
        alphabet = f"({self.chars[0]}-{self.chars[-1]})"
        # what no case makes a letter is named first; capitals alone get the word to give
        bad = sorted({c for c in text.lower() if c not in self.chars})
        if not bad:
            capitals = "".join(sorted({c for c in text if c not in self.chars}))
            raise WordError(
                f"word {word!r} has capitals ({capitals!r}): the model reads lower case "
                f"{alphabet}; give {text.lower()!r}"
            )
        kind = "a space" if " " in bad else f"characters {''.join(bad)!r}"
        raise WordError(f"word {word!r} has {kind} outside the model's alphabet {alphabet}")

    def check_all(self, words: Sequence[str], max_length: int) -> list[str]:
        """The words as ``check`` reads them; WordError names the first that cannot be read, or
        that a decoder of ``max_length`` steps has no room to write in another form."""
        if isinstance(words, str):  # it would be read as a list of one-letter words
            raise TypeError(f"words are a list of words, not one string: give [{words!r}]")
        limit = max_word_length(max_length)
        out = []
        for w in words:
            word = self.check(w)
            if len(word) > limit:
                raise WordError(f"word {w!r} is longer than this model can write ({limit} letters)")
            out.append(word)
        return out

    def encode(self, word: str) -> list[int]:
        index = self._index
        return [index[c] for c in self.check(word)]

    @cached_property
    def _glyphs(self) -> tuple[str, ...]:
        return ("",) * len(SPECIALS) + tuple(self.chars)

    def decode(self, ids: Iterable[int]) -> str:
        """Characters up to the first end token; specials other than the end are dropped."""
        ids = [int(i) for i in ids]
        if EOS in ids:
            ids = ids[: ids.index(EOS)]
        glyphs = self._glyphs
        return "".join([glyphs[i] for i in ids])

    @classmethod
    def from_words(cls, words: Sequence[str]) -> Vocab:
        return cls("".join(sorted({c for w in words for c in w})))
