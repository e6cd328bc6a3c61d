"""bf16 and int8 conversion: really in lower precision, and the same words as fp32."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import pipeline
from pipeline import precision
from pipeline.data import directed, load_test, load_train
from pipeline.evaluate import closest_calls
from pipeline.precision import PrecisionUnavailable, int8, lowered, quantized_modules
from pipeline.vocab import Vocab


@pytest.fixture(scope="module")
def shipped():
    return pipeline.load_pretrained()


@pytest.fixture(scope="module", params=["int8", "bf16"])
def form(request, shipped):
    try:
        return lowered(shipped, request.param)
    except PrecisionUnavailable as e:  # bf16 needs a CPU oneDNN runs it on
        pytest.skip(str(e))


def test_the_int8_copy_runs_int8_and_leaves_the_original_alone(shipped):
    q = int8(shipped)
    assert set(quantized_modules(q)) >= {"encoder", "combine", "attn_key"}
    assert q.recurrent_int8 is not None and shipped.recurrent_int8 is None
    assert type(shipped.encoder) is nn.LSTM and quantized_modules(shipped) == []
    assert q.reference is shipped and int8(q) is q and lowered(shipped, "fp32") is shipped
    assert all(not n.startswith("reference") for n in q.state_dict())


def test_lower_precision_moves_scores_a_little_not_a_lot(shipped, form):
    ids = torch.tensor([[4, 5, 6, 7, 8]])
    with torch.no_grad():
        a = shipped.encode(ids, torch.tensor([5]), torch.tensor([0])).mu
        with precision.autocast(form):
            b = form.encode(ids, torch.tensor([5]), torch.tensor([0])).mu
    assert 0 < (a - b.float()).abs().max() < 0.1
    assert form.precision in ("bf16", "int8") and shipped.__dict__.get("precision") is None


def test_it_converts_as_fp32_does_on_the_bundled_data(shipped, form):
    for c in load_test():
        assert pipeline.convert(form, [c.source], c.src, c.tgt) == pipeline.convert(
            shipped, [c.source], c.src, c.tgt
        )
    words, src, _, tgt = directed(random.Random(0).sample(load_train(), 150))
    form.redecoded = 0
    assert pipeline.convert(form, words, src, tgt) == pipeline.convert(shipped, words, src, tgt)
    assert 0 < form.redecoded < 0.15 * len(words)  # the close calls are few


def test_close_calls_are_decoded_again_in_fp32(shipped, form, monkeypatch):
    """Words fed in the wrong tense are the model's hardest inputs: many close calls."""
    words = [w for quad in load_train()[:250] for w in quad[1:]]
    fp32 = pipeline.convert(shipped, words, "sp", "p")
    assert pipeline.convert(form, words, "sp", "p") == fp32
    alone, gaps = closest_calls(form, words, "sp", "p")
    # where the lower precision alone writes another word, it came near a tie on the way
    differ = [i for i, (a, b) in enumerate(zip(alone, fp32, strict=True)) if a != b]
    assert all(gaps[i] < precision.TIE_MARGIN for i in differ), [
        (words[i], float(gaps[i])) for i in differ
    ]
    monkeypatch.setattr(precision, "TIE_MARGIN", 0.0)
    form.redecoded = 0
    assert pipeline.convert(form, words, "sp", "p") == alone and form.redecoded == 0


def test_lower_precision_refuses_what_it_does_not_do(form):
    with pytest.raises(ValueError, match="greedily"):
        pipeline.convert(form, ["walk"], "sp", "p", method="beam")
    with pytest.raises(ValueError, match="greedily"):
        pipeline.convert(form, ["walk"], "sp", "p", sample_z=True)
    with pytest.raises(ValueError, match="generate with its fp32"):
        pipeline.generate(form, 2)
    with pytest.raises(PrecisionUnavailable, match="'fp16'"):
        lowered(form, "fp16")


def test_a_model_without_attention_quantizes_its_decoder(tiny_config):
    cfg = tiny_config.replace(model={"attention": False, "copy": False})
    model = pipeline.TenseCVAE(cfg.model, Vocab()).eval()
    q = int8(model)
    assert {"encoder", "decoder"} <= set(quantized_modules(q))
    words = ["walk", "sing", "abandon"]
    assert pipeline.convert(q, words, "sp", "pg") == pipeline.convert(model, words, "sp", "pg")
