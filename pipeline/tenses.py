"""The four verb forms, their codes and the names users may give them."""

from __future__ import annotations

from .errors import TenseError

TENSES: tuple[str, ...] = ("sp", "tp", "pg", "p")
NAMES = {
    "sp": "simple present",
    "tp": "third person singular",
    "pg": "present progressive",
    "p": "simple past",
}
_ALIASES = {
    "sp": ("sp", "present", "simple-present", "simple_present", "base", "infinitive", "inf"),
    "tp": ("tp", "3sg", "third", "third-person", "third_person", "s"),
    "pg": ("pg", "ing", "progressive", "present-progressive", "present_progressive", "gerund"),
    "p": ("p", "past", "simple-past", "simple_past", "ed", "preterite"),
}
_LOOKUP = {alias: code for code, aliases in _ALIASES.items() for alias in aliases}

# The twelve directed conversions between different forms, as "src->tgt" keys.
DIRECTIONS: tuple[str, ...] = tuple(f"{a}->{b}" for a in TENSES for b in TENSES if a != b)
# The six directions to and from the simple present (the usual generalisation benchmark).
SP_DIRECTIONS: tuple[str, ...] = ("sp->tp", "sp->pg", "sp->p", "tp->sp", "pg->sp", "p->sp")


def tense_code(name: str) -> str:
    """The code (sp, tp, pg, p) of a tense name or alias, case-insensitive."""
    code = _LOOKUP.get(name) if isinstance(name, str) else None  # the usual case: a code
    if code is None:
        code = _LOOKUP.get(str(name).strip().lower().replace(" ", "-"))
    if code is None:
        accepted = ", ".join(f"{c} ({'/'.join(a[1:3])})" for c, a in _ALIASES.items())
        raise TenseError(f"unknown tense {name!r}: accepted are {accepted}")
    return code


def tense_index(name: str) -> int:
    return TENSES.index(tense_code(name))


def direction(src: str, tgt: str) -> str:
    return f"{tense_code(src)}->{tense_code(tgt)}"
