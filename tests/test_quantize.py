"""int8 conversion: really int8, and the same words as fp32."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import pipeline
from pipeline import quantize
from pipeline.data import load_test, load_train
from pipeline.evaluate import _convert_all
from pipeline.quantize import int8, quantized_modules
from pipeline.tenses import TENSES
from pipeline.vocab import Vocab


@pytest.fixture(scope="module")
def shipped():
    model = pipeline.load_pretrained()
    return model, int8(model)


def _directions(quads):
    """All twelve conversions of each line: (words, sources, targets)."""
    words, src, tgt = [], [], []
    for s in range(4):
        for t in range(4):
            if s != t:
                words += [q[s] for q in quads]
                src += [TENSES[s]] * len(quads)
                tgt += [TENSES[t]] * len(quads)
    return words, src, tgt


def test_the_copy_runs_int8_and_leaves_the_original_alone(shipped):
    model, q = shipped
    assert set(quantized_modules(q)) >= {"encoder", "combine", "attn_key"}
    assert q.recurrent_int8 is not None and model.recurrent_int8 is None
    assert type(model.encoder) is nn.LSTM and quantized_modules(model) == []
    assert q.reference is model and int8(q) is q
    assert all(not n.startswith("reference") for n in q.state_dict())
    # int8 moves the encoder's output a little, not a lot
    ids = torch.tensor([[4, 5, 6, 7, 8]])
    with torch.no_grad():
        a = model.encode(ids, torch.tensor([5]), torch.tensor([0])).mu
        b = q.encode(ids, torch.tensor([5]), torch.tensor([0])).mu
    assert 0 < (a - b).abs().max() < 0.1


def test_int8_converts_as_fp32_does_on_the_bundled_data(shipped):
    model, q = shipped
    for c in load_test():
        assert pipeline.convert(q, [c.source], c.src, c.tgt) == pipeline.convert(
            model, [c.source], c.src, c.tgt
        )
    quads = random.Random(0).sample(load_train(), 150)
    words, src, tgt = _directions(quads)
    q.redecoded = 0
    assert pipeline.convert(q, words, src, tgt) == pipeline.convert(model, words, src, tgt)
    assert q.redecoded < 0.15 * len(words)  # the close calls are few: int8 does the rest


def test_close_calls_are_decoded_again_in_fp32(shipped, monkeypatch):
    """Words fed in the wrong tense are the model's hardest inputs: many close calls."""
    model, q = shipped
    words = [w for quad in load_train()[:250] for w in quad[1:]]
    fp32 = pipeline.convert(model, words, "sp", "p")
    q.redecoded = 0
    assert pipeline.convert(q, words, "sp", "p") == fp32
    assert q.redecoded > 0
    monkeypatch.setattr(quantize, "TIE_MARGIN", 0.0)
    q.redecoded = 0
    with torch.no_grad():
        gaps = torch.full((len(words),), float("inf"))
        alone = _convert_all(
            q, words, [0] * len(words), [3] * len(words), "greedy", 4, False, None, gaps
        )
    pipeline.convert(q, words, "sp", "p")
    assert q.redecoded == 0
    # where int8 alone writes another word, it came close to a tie on the way
    differ = [i for i, (a, b) in enumerate(zip(alone, fp32, strict=True)) if a != b]
    assert all(gaps[i] < 1.0 for i in differ), [(words[i], float(gaps[i])) for i in differ]


def test_int8_refuses_what_it_does_not_do(shipped):
    _, q = shipped
    with pytest.raises(ValueError, match="greedily"):
        pipeline.convert(q, ["walk"], "sp", "p", method="beam")
    with pytest.raises(ValueError, match="greedily"):
        pipeline.convert(q, ["walk"], "sp", "p", sample_z=True)
    with pytest.raises(ValueError, match="generate with its fp32"):
        pipeline.generate(q, 2)


def test_a_model_without_attention_quantizes_its_decoder(tiny_config):
    cfg = tiny_config.replace(model={"attention": False, "copy": False})
    model = pipeline.TenseCVAE(cfg.model, Vocab()).eval()
    q = int8(model)
    assert {"encoder", "decoder"} <= set(quantized_modules(q))
    words = ["walk", "sing", "abandon"]
    assert pipeline.convert(q, words, "sp", "pg") == pipeline.convert(model, words, "sp", "pg")
