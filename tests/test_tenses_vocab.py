import pytest

from pipeline.errors import TenseError, WordError
from pipeline.tenses import DIRECTIONS, SP_DIRECTIONS, tense_code
from pipeline.vocab import EOS, PAD, SOS, Vocab


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("sp", "sp"),
        ("present", "sp"),
        ("TP", "tp"),
        ("3sg", "tp"),
        ("ing", "pg"),
        ("Present Progressive", "pg"),
        ("past", "p"),
        ("p", "p"),
    ],
)
def test_tense_aliases(name, code):
    assert tense_code(name) == code


def test_unknown_tense_lists_accepted_names():
    with pytest.raises(TenseError) as e:
        tense_code("future")
    assert "'future'" in str(e.value) and "sp" in str(e.value) and "pg" in str(e.value)


def test_directions():
    assert len(DIRECTIONS) == 12 and len(set(DIRECTIONS)) == 12
    assert set(SP_DIRECTIONS) <= set(DIRECTIONS)


def test_vocab_round_trip():
    v = Vocab()
    for word in ["abandon", "z", "queueing"]:
        ids = v.encode(word)
        assert min(ids) > 3
        assert v.decode([*ids, EOS, 5, 6]) == word
    assert v.decode([SOS, *v.encode("ab"), PAD]) == "ab"


def test_vocab_refuses_capitals_naming_the_word_to_give():
    with pytest.raises(WordError, match=r"'Abandon' has capitals \('A'\).*give 'abandon'"):
        Vocab().check("Abandon")
    with pytest.raises(WordError, match="outside the model's alphabet"):  # not capitals alone
        Vocab().check("Ab1")
    assert Vocab().check(" abandon\n") == "abandon"


@pytest.mark.parametrize("bad", ["ab1", "re-do", "don't", "two words", "café", "", "   "])
def test_vocab_refuses_words_outside_alphabet(bad):
    with pytest.raises(WordError) as e:
        Vocab().check(bad)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)
