"""Which verbs a regular English spelling rule inflects, and a model's exact match on those
against the rest: how much of what a converter misses on verbs it never saw is irregular
(no learner without a dictionary can know it) and how much it could have written by rule."""

from __future__ import annotations

from pipeline.tenses import SP_DIRECTIONS, TENSES

VOWELS = set("aeiou")


def rule_forms(sp: str) -> dict[str, set[str]]:
    """Every spelling that a regular English inflection rule writes for each form of ``sp``:
    -s/-es/-ies, -ing with a silent e dropped or ie turned to y, -ed/-d/-ied, a k after a
    final c, and the final consonant doubled where the stem ends consonant-vowel-consonant.
    Doubling depends on stress, which spelling does not show, so both spellings are kept: a
    set, not a choice."""
    ends_cy = len(sp) > 1 and sp[-1] == "y" and sp[-2] not in VOWELS
    cvc = len(sp) > 2 and sp[-1] not in VOWELS | set("wxy") and sp[-2] in VOWELS
    cvc = cvc and (sp[-3] not in VOWELS or sp[-4:-2] == "qu")  # acquit: qu is a consonant
    tp = {sp + "s"}
    if sp.endswith(("s", "x", "z", "ch", "sh", "o")):
        tp.add(sp + "es")
    if ends_cy:
        tp.add(sp[:-1] + "ies")
    pg = {sp + "ing"}
    if sp.endswith("ie"):
        pg.add(sp[:-2] + "ying")
    elif sp.endswith("e") and not sp.endswith(("ee", "ye", "oe")):
        pg.add(sp[:-1] + "ing")
    p = {sp + "d"} if sp.endswith("e") else {sp + "ed"}
    if ends_cy:
        p.add(sp[:-1] + "ied")
    if cvc:
        pg.add(sp + sp[-1] + "ing")
        p.add(sp + sp[-1] + "ed")
    if sp.endswith("c"):  # panic: panicking, panicked
        pg.add(sp + "king")
        p.add(sp + "ked")
    return {"sp": {sp}, "tp": tp, "pg": pg, "p": p}


def rule_written(quad) -> bool:
    """Every form of the line is one a spelling rule writes from its simple present."""
    rules = rule_forms(quad[0])
    return all(quad[i] in rules[t] for i, t in enumerate(TENSES))


def exact_by_rule(model, held) -> dict:
    """Exact match (greedy, posterior mean) over the six sp directions on the held-out lines
    a spelling rule writes (``ruled``) and on the rest, each by direction with ``sp_mean``;
    ``rule_written``, line by line, and its ``share``; ``bound``: the six-direction score of a converter exact
    on every rule-written line and as good as this model on the rest; the misses on
    rule-written lines as 'word -> output (reference)'."""
    from pipeline.evaluate import convert

    ruled = [rule_written(q) for q in held]
    out: dict = {"ruled": {}, "rest": {}, "misses": []}
    for d in SP_DIRECTIONS:
        s, t = d.split("->")
        i, j = TENSES.index(s), TENSES.index(t)
        hyps = convert(model, [q[i] for q in held], s, t)
        for kind, want in (("ruled", True), ("rest", False)):
            rows = [(q, h) for q, h, r in zip(held, hyps, ruled, strict=True) if r is want]
            out[kind][d] = sum(h == q[j] for q, h in rows) / max(1, len(rows))
            if want:
                out["misses"] += [f"{q[i]} -> {h} ({q[j]})" for q, h in rows if h != q[j]]
    for kind in ("ruled", "rest"):
        out[kind]["sp_mean"] = sum(out[kind][d] for d in SP_DIRECTIONS) / len(SP_DIRECTIONS)
    out["rule_written"] = ruled
    out["share"] = sum(ruled) / len(held)
    out["bound"] = out["share"] + (1 - out["share"]) * out["rest"]["sp_mean"]
    return out
