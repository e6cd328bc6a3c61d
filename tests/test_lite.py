"""pipeline.lite: the numpy forward pass gives torch's conversions, and the CLI falls back to
torch wherever numpy cannot answer for certain."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from pipeline import artifacts, lite, modelfile
from pipeline.config import ModelConfig
from pipeline.data import read_quads
from pipeline.errors import ModelLoadError, WordError
from pipeline.evaluate import _closest_calls, convert
from pipeline.model import TenseCVAE
from pipeline.tenses import TENSES
from pipeline.vocab import Vocab
from workers import cli

WORDS = ["walk", "abandon", "sing", "need", "symbolize", "go", "be", "crisscross", "zyx"]


@pytest.fixture(scope="module")
def shipped():
    folder = modelfile.pretrained_path()
    return lite.LiteModel.load(folder), artifacts.load(folder)


def _margins(model, words, a, b) -> np.ndarray:
    ids, lengths = lite.encode_words(words, model.vocab)
    n = len(words)
    return model.greedy(ids, lengths, np.full(n, a), np.full(n, b))[1]


@pytest.mark.slow
def test_shipped_model_converts_as_torch_does_over_train_txt(shipped):
    """All twelve directions over train.txt: the same word each time, and the closest calls
    agree to well within MARGIN, so the words left to torch are the only ones that could
    differ."""
    model, reference = shipped
    quads = read_quads(modelfile.pretrained_path().parent / "train.txt")
    left = 0
    for a, src in enumerate(TENSES):
        for b, tgt in enumerate(TENSES):
            if a == b:
                continue
            words = [q[a] for q in quads]
            out, close = lite.convert(model, words, src, tgt)
            assert out == convert(reference, words, src, tgt), (src, tgt)
            left += len(close)
    assert left < 0.005 * 12 * len(quads)  # about 7 of 14,724 on the shipped model
    words = [q[0] for q in quads]
    with torch.no_grad():
        _, expected = _closest_calls(reference, words, [0] * len(words), [3] * len(words))
    assert np.abs(_margins(model, words, 0, 3) - expected.numpy()).max() < lite.MARGIN / 10


VARIANTS = [
    {},
    {"bidirectional": True, "attention": True, "decoder_input_z": True, "copy": True},
    {"attention": True, "copy": True, "position_bias": 2, "latent_memory": 5},
    {
        "bidirectional": True,
        "attention": True,
        "decoder_input_z": True,
        "decoder_init_tense": False,
        "latent_memory": 7,
        "latent_memory_size": 6,
        "latent_memory_read": "hard",
        "latent_memory_z": False,
    },
    {"decoder_input_z": True, "latent_memory": 4},
]


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: ",".join(kw) or "plain")
def test_each_architecture_option_matches_torch(tmp_path, kw):
    """Small untrained models of each option the shipped config does not use: lite's words
    and closest calls are torch's (the output layer is scaled up so that the untrained
    model's choices are not near-ties; weights that start at zero are drawn at random)."""
    torch.manual_seed(0)
    config = ModelConfig(
        hidden_size=16, latent_size=4, tense_embedding=3, char_embedding=8, max_length=16, **kw
    )
    model = TenseCVAE(config, Vocab()).eval()
    with torch.no_grad():
        model.out.weight.mul_(20)
        for p in model.parameters():  # what starts at zero (the position bias) counts too
            if not p.any():
                p.normal_()
    artifacts.save(model, tmp_path)
    small = lite.LiteModel.load(tmp_path)
    for a, b in ((0, 3), (2, 1)):
        expected_out = convert(model, WORDS, TENSES[a], TENSES[b])
        out, _ = lite.convert(small, WORDS, TENSES[a], TENSES[b])
        with torch.no_grad():
            _, expected = _closest_calls(model, WORDS, [a] * len(WORDS), [b] * len(WORDS))
        margins = _margins(small, WORDS, a, b)
        assert np.abs(margins - expected.numpy()).max() < 1e-4
        decisive = [i for i in range(len(WORDS)) if margins[i] > 1e-3]
        assert len(decisive) >= len(WORDS) // 2
        assert [out[i] for i in decisive] == [expected_out[i] for i in decisive]


def test_words_are_checked_as_torch_checks_them(shipped):
    model, _ = shipped
    assert lite.convert(model, ["walk "], "sp", "p")[0] == ["walked"]
    with pytest.raises(WordError, match="has capitals"):
        lite.convert(model, ["Walk"], "sp", "p")
    with pytest.raises(WordError, match="outside the model's alphabet"):
        lite.convert(model, ["aband0n"], "sp", "p")
    with pytest.raises(WordError, match="longer than"):
        lite.convert(model, ["a" * 60], "sp", "p")
    assert lite.convert(model, [], "sp", "p") == ([], [])
    with pytest.raises(TypeError, match=r"not one string: give \['walk'\]"):
        lite.convert(model, "walk", "sp", "p")  # would be four one-letter words


def test_damaged_or_unsupported_folders(tmp_path, shipped):
    _, reference = shipped
    folder = artifacts.save(reference, tmp_path / "m")
    weights = folder / modelfile.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one weight's bytes changed
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="checksum"):
        lite.LiteModel.load(folder)
    weights.write_bytes(b"not safetensors")
    with pytest.raises(lite.LiteUnsupported):  # torch's loader names the damage
        lite.LiteModel.load(folder)
    folder = artifacts.save(reference, tmp_path / "n")
    meta = json.loads((folder / modelfile.CONFIG_FILE).read_text())
    del meta["digest"]
    (folder / modelfile.CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(lite.LiteUnsupported, match="checksum"):
        lite.LiteModel.load(folder)


def _run(args, capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def sent_to_torch(monkeypatch) -> list[list[str]]:
    """The word lists the command hands to its torch path, which still converts them."""
    sent: list[list[str]] = []
    torch_path = cli._convert_torch

    def spy(a, words, src, tgt):
        sent.append(list(words))
        return torch_path(a, words, src, tgt)

    monkeypatch.setattr(cli, "_convert_torch", spy)
    return sent


def test_cli_leaves_close_calls_to_torch(monkeypatch, capsys, sent_to_torch):
    """With every call counted close, every word goes to torch, and the output is the
    same."""
    args = ["convert", *WORDS, "--from", "sp", "--to", "p"]
    sent = sent_to_torch
    code, plain, _ = _run(args, capsys)
    assert code == 0 and sent == []  # the shipped model is sure of these words
    monkeypatch.setattr(lite, "MARGIN", float("inf"))
    code, again, _ = _run(args, capsys)
    assert code == 0 and sent == [WORDS] and again == plain


def test_cli_engines(tmp_path, capsys):
    args = ["convert", "walk", "sing", "--from", "sp", "--to", "p"]
    outs = {e: _run([*args, "--engine", e], capsys) for e in ("auto", "numpy", "torch")}
    assert outs["auto"] == outs["numpy"] == outs["torch"]
    assert outs["auto"][1].split() == ["walked", "sang"]
    for extra, needle in (
        (["--beam", "2"], "decodes greedily"),
        (["--precision", "int8"], "decodes greedily"),
        (["--model", "3"], "reads model folders"),
    ):
        code, _, err = _run([*args, "--engine", "numpy", *extra], capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    # a folder only torch can read: auto uses torch, numpy says why it cannot
    folder = artifacts.save(artifacts.load_pretrained(), tmp_path / "m")
    meta = json.loads((folder / modelfile.CONFIG_FILE).read_text())
    del meta["digest"]
    (folder / modelfile.CONFIG_FILE).write_text(json.dumps(meta))
    code, out, _ = _run([*args, "--model", str(folder)], capsys)
    assert code == 0 and out.split() == ["walked", "sang"]
    code, _, err = _run([*args, "--model", str(folder), "--engine", "numpy"], capsys)
    assert code == 2 and "--engine torch" in err


def test_auto_engine_leaves_long_lists_to_torch(monkeypatch, capsys, sent_to_torch):
    sent = sent_to_torch
    monkeypatch.setattr(cli, "LITE_MAX_WORDS", 1)
    args = ["convert", "walk", "sing", "--from", "sp", "--to", "p"]
    code, out, _ = _run(args, capsys)
    assert code == 0 and out.split() == ["walked", "sang"] and sent == [["walk", "sing"]]
    sent.clear()
    code, out, _ = _run([*args, "--engine", "numpy"], capsys)  # asked for: numpy still
    assert code == 0 and out.split() == ["walked", "sang"] and sent == []


def test_package_names_stay_functions():
    """The package imports its names lazily; ``pipeline.evaluate`` is still the function,
    also after its submodule of that name has been imported."""
    import pipeline
    import pipeline.evaluate as imported

    assert callable(pipeline.evaluate) and pipeline.evaluate is imported
    assert pipeline.evaluate is sys.modules["pipeline.evaluate"].evaluate
    with pytest.raises(AttributeError):
        _ = pipeline.no_such_name
