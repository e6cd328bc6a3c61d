import hashlib

import pytest
import torch

from pipeline.data import (
    bundled,
    kfold_by_verb,
    load_test,
    load_train,
    make_batch,
    make_pairs,
    read_conversions,
    read_quads,
    read_requests,
    split_by_verb,
)
from pipeline.errors import DataError
from pipeline.vocab import EOS, PAD, SOS, Vocab


def test_bundled_files_are_the_lab_dataset_byte_for_byte():
    digest = {
        n: hashlib.sha256(bundled(n).read_bytes()).hexdigest() for n in ("train.txt", "test.txt")
    }
    assert digest["train.txt"] == "78909b86473883836d17c45c777e89ed506d17180ee7ab7a5512f3c563d9732f"
    assert digest["test.txt"] == "ff9715c2106fc9922c1d2611e7d95f100abe33fdb2396aad2c4d5121d4327cd6"


def test_known_facts_of_the_dataset():
    train = load_train()
    assert len(train) == 1227 and len(set(train)) == 1217
    assert max(len(w) for q in train for w in q) == 15
    words = {w for q in train for w in q}
    tests = load_test()
    assert len(tests) == 10
    assert all(c.source in words and c.target in words for c in tests)
    assert (tests[0].src, tests[0].tgt) == ("sp", "p") and (tests[4].src, tests[4].tgt) == (
        "p",
        "tp",
    )


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("a b c d\nx y z\n", 2, "expected 4 words"),
        ("a b c d\n\nab1 b c d\n", 3, "outside the model's alphabet"),
        ("a b c d\nA-b b c d\n", 2, "'-'"),
    ],
)
def test_malformed_quadruple_lines_name_file_and_line(tmp_path, text, line, reason):
    f = tmp_path / "q.txt"
    f.write_text(text)
    with pytest.raises(DataError) as e:
        read_quads(f)
    assert str(e.value).startswith(f"{f}:{line}: ") and reason in str(e.value)


def test_file_problems(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_quads(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="is a directory"):
        read_quads(tmp_path)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match="empty"):
        read_quads(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes(b"walk walks walking walked\ncaf\xe9 x y z\n")
    with pytest.raises(DataError, match=r"latin1.txt:2: bytes that are not UTF-8"):
        read_quads(tmp_path / "latin1.txt")


def test_crlf_is_read_and_a_capital_refused_by_line(tmp_path):
    f = tmp_path / "q.txt"
    f.write_bytes(b"walk walks walking walked\r\ntalk talks talking talked\r\n")
    assert read_quads(f) == [
        ("walk", "walks", "walking", "walked"),
        ("talk", "talks", "talking", "talked"),
    ]
    f.write_bytes(b"walk walks walking walked\r\nTalk talks talking talked\r\n")
    with pytest.raises(DataError, match=r"q.txt:2: word 'Talk' has capitals"):
        read_quads(f)


def test_conversions_with_own_tenses_and_requests(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("walk walked sp past\nwalks walking tp ing\n")
    c = read_conversions(f)
    assert (c[1].src, c[1].tgt) == ("tp", "pg")
    f.write_text("walk walked sp future\n")
    with pytest.raises(DataError, match=r"c.txt:1: unknown tense 'future'"):
        read_conversions(f)
    r = tmp_path / "r.txt"
    r.write_text("walk sp p\n\nBad1 sp p\nonly two\n")
    with pytest.raises(DataError, match=r"r.txt:4: expected 'word from to', found 2 fields$"):
        read_requests(r)
    r.write_text("walk\nsing sp pg\n")
    with pytest.raises(DataError, match=r"r.txt:1: .* found 1 field \(words alone"):
        read_requests(r)
    assert read_requests(r, "sp", "p") == [(1, "walk", "sp", "p"), (2, "sing", "sp", "pg")]
    r.write_text("walk sp\n")
    with pytest.raises(DataError, match=r"r.txt:1: expected 'word' or 'word from to', found 2"):
        read_requests(r, "sp", "p")


def test_split_by_verb_never_splits_a_verb():
    train = load_train()
    kept, held = split_by_verb(train, 0.1, seed=3)
    assert len(kept) + len(held) == len(train)
    assert not {q[0] for q in kept} & {q[0] for q in held}
    assert abs(len({q[0] for q in held}) - 0.1 * len({q[0] for q in train})) <= 1
    assert split_by_verb(train, 0.1, seed=3) == (kept, held)
    folds = kfold_by_verb(train, 5, seed=0)
    held_verbs = [{q[0] for q in h} for _, h in folds]
    assert sum(len(h) for h in held_verbs) == len({q[0] for q in train})


def test_pairs_and_padded_batches():
    quad = ("walk", "walks", "walking", "walked")
    assert len(make_pairs([quad], "same")) == 4
    assert len(make_pairs([quad], "cross")) == 12
    assert len(make_pairs([quad], "all")) == 16
    b = make_batch([("walk", 0, "walked", 3), ("go", 0, "went", 3)], Vocab())
    assert b.src.shape == (2, 4) and b.src_len.tolist() == [4, 2]
    assert b.tgt_in[:, 0].tolist() == [SOS, SOS]
    assert b.tgt_out[0, 6] == EOS and b.tgt_out[1, 4] == EOS and b.tgt_out[1, 5] == PAD
    assert b.tgt_in.shape == b.tgt_out.shape


def test_made_up_stems_change_shared_letters_alike_and_spare_the_end():
    from pipeline.data import STEM_CONSONANTS, STEM_VOWELS, made_up_stems

    vocab = Vocab()
    pairs = [
        ("withhold", 0, "withholds", 1),
        ("stop", 0, "stopped", 3),
        ("take", 0, "took", 3),
        ("abandoning", 2, "abandoned", 3),
    ] * 50
    b = make_batch(pairs, vocab)
    g = torch.Generator().manual_seed(0)
    out, n = made_up_stems(b, vocab, 0.5, g)
    assert 60 < n < 140 and out.src.size(0) == len(pairs) + n
    for field in ("src", "src_len", "src_tense", "tgt_in", "tgt_out", "tgt_tense"):
        assert torch.equal(getattr(out, field)[: len(pairs)], getattr(b, field))
    changed = 0
    for i in range(len(pairs), len(pairs) + n):
        src = vocab.decode(out.src[i].tolist())
        tgt = vocab.decode(out.tgt_out[i].tolist())
        assert vocab.decode(out.tgt_in[i, 1:].tolist()) == tgt  # <s> + target, shifted
        real = next(p for p in pairs if len(p[0]) == len(src) and p[2][-3:] == tgt[-3:])
        assert len(tgt) == len(real[2]) and int(out.src_len[i]) == len(src)
        shared = next(
            (k for k, (a, c) in enumerate(zip(real[0], real[2], strict=False)) if a != c),
            min(len(real[0]), len(real[2])),
        )
        for k, (a, r) in enumerate(zip(src, real[0], strict=True)):
            if a != r:
                changed += 1
                assert k < shared - 3 and tgt[k] == a  # the same letter in the target
                assert (a in STEM_VOWELS) == (r in STEM_VOWELS)
                assert a in STEM_VOWELS + STEM_CONSONANTS
        assert src[max(0, shared - 3) :] == real[0][max(0, shared - 3) :]
        assert tgt[max(0, shared - 3) :] == real[2][max(0, shared - 3) :]
    assert changed > n  # withhold and abandoning have 5 and 4 letters that may change
    assert made_up_stems(b, vocab, 0.0, g) == (b, 0)


def test_made_up_prefixes_put_one_start_before_both_words():
    from pipeline.data import made_up_prefixes

    vocab = Vocab()
    pairs = [("take", 0, "took", 3), ("stopping", 2, "stops", 1), ("go", 0, "went", 3)] * 60
    b = make_batch(pairs, vocab)
    starts = ["over", "mis", "un", "be"]
    known = frozenset({"bego"})  # a real word: "bego -> bewent" is never taught
    out, n = made_up_prefixes(b, vocab, 0.5, torch.Generator().manual_seed(0), starts, known, 30)
    assert 60 < n < 120 and out.src.size(0) == len(pairs) + n
    for field in ("src_len", "src_tense", "tgt_tense"):
        assert torch.equal(getattr(out, field)[: len(pairs)], getattr(b, field))
    for field in ("src", "tgt_in", "tgt_out"):  # the words, padded to the wider rows
        kept = getattr(out, field)[: len(pairs)]
        assert torch.equal(kept[:, : getattr(b, field).size(1)], getattr(b, field))
        assert bool((kept[:, getattr(b, field).size(1) :] == PAD).all())
    used = set()
    for i in range(len(pairs), len(pairs) + n):
        src, tgt = vocab.decode(out.src[i].tolist()), vocab.decode(out.tgt_out[i].tolist())
        assert vocab.decode(out.tgt_in[i, 1:].tolist()) == tgt and out.tgt_in[i, 0] == SOS
        assert int(out.src_len[i]) == len(src) and src != "bego"
        start = next(s for s in starts if src.startswith(s))
        real = next(p for p in pairs if p[0] == src[len(start) :])
        assert tgt == start + real[2]
        assert (int(out.src_tense[i]), int(out.tgt_tense[i])) == (real[1], real[3])
        used.add(start)
    assert used == set(starts)
    # too long for the model, or nothing to draw from: nothing appended
    assert made_up_prefixes(b, vocab, 1.0, torch.Generator(), starts, known, 5)[1] == 0
    assert made_up_prefixes(b, vocab, 0.0, torch.Generator(), starts, known, 30) == (b, 0)
    assert made_up_prefixes(b, vocab, 1.0, torch.Generator(), [], known, 30) == (b, 0)


def test_prefix_starts_are_beginnings_never_whole_words():
    from pipeline.data import prefix_starts

    quads = [("overtake", "overtakes", "overtaking", "overtook"), ("go", "goes", "going", "went")]
    assert prefix_starts(quads) == ["o", "ov", "ove", "over", "g"]
    assert prefix_starts(quads, longest=2) == ["o", "ov", "g"]


def test_regular_lines_follow_the_spelling_rules_and_exceptions_do_not():
    from pipeline.data import load_train, regular

    for line in [
        "abandon abandons abandoning abandoned",
        "try tries trying tried",
        "stop stops stopping stopped",
        "die dies dying died",
        "love loves loving loved",
        "picnic picnics picnicking picnicked",
        "kiss kisses kissing kissed",
    ]:
        assert regular(tuple(line.split())), line
    for line in [
        "take takes taking took",
        "have has having had",
        "hit hits hitting hit",
        "bleed bleeds bleeding bled",
        "pay pays paying paid",
        "go goes going went",
    ]:
        assert not regular(tuple(line.split())), line
    share = sum(map(regular, load_train())) / len(load_train())
    assert 0.8 < share < 0.95  # train.txt is mostly regular verbs, with ~150 exceptions


def test_made_up_stems_come_only_from_eligible_pairs():
    from pipeline.data import made_up_stems

    vocab = Vocab()
    pairs = [("stop", 0, "stopped", 3), ("take", 0, "took", 3)] * 100
    b = make_batch(pairs, vocab)
    eligible = torch.tensor([p[2] == "stopped" for p in pairs])
    out, n = made_up_stems(b, vocab, 0.5, torch.Generator().manual_seed(0), eligible=eligible)
    assert 30 < n < 70
    targets = [vocab.decode(t.tolist()) for t in out.tgt_out[len(pairs) :]]
    assert all(t.endswith("opped") for t in targets)
    # every pair eligible is the same as no limit: the same draws, the same batch
    everyone = torch.ones(len(pairs), dtype=torch.bool)
    a, n_a = made_up_stems(b, vocab, 0.5, torch.Generator().manual_seed(1), eligible=everyone)
    c, n_c = made_up_stems(b, vocab, 0.5, torch.Generator().manual_seed(1))
    assert n_a == n_c and torch.equal(a.src, c.src) and torch.equal(a.tgt_out, c.tgt_out)
