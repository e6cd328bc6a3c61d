"""Report suspicious lines of a quadruple file: duplicates, and forms that do not look like
one verb's (a heuristic for people to read, never a reason to change the lab's data)."""

from __future__ import annotations

from pathlib import Path

from .data import _lines, read_quads


def _stem_shared(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def line_problems(q: tuple[str, str, str, str]) -> list[str]:
    sp, tp, pg, p = q
    out = []
    if not tp.endswith("s"):
        out.append(f"third person {tp!r} does not end in s")
    if not pg.endswith("ing"):
        out.append(f"progressive {pg!r} does not end in ing")
    if pg.endswith("ing") and p.endswith("ing"):
        out.append(f"past {p!r} looks like a progressive")
    if p.endswith("s") and not sp.endswith("s") and tp == p:
        out.append("past equals the third person")
    if p.endswith("en") and not sp.endswith("en"):
        out.append(f"past {p!r} looks like a participle")
    for name, w in (("tp", tp), ("pg", pg)):
        if _stem_shared(sp, w) < min(2, len(sp)):
            out.append(f"{name} {w!r} shares no stem with {sp!r}")
    return out


def check_quads(path: str | Path) -> list[str]:
    """``FILE:LINE: reason`` for each suspicious line."""
    quads = read_quads(path)
    numbers = [n for n, _ in _lines(path)]
    seen: dict[tuple, int] = {}
    report = []
    for n, q in zip(numbers, quads, strict=True):
        if q in seen:
            report.append(f"{path}:{n}: duplicate of line {seen[q]}")
        seen.setdefault(q, n)
        report += [f"{path}:{n}: {r}" for r in line_problems(q)]
    return report
