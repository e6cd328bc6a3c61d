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
from pipeline.model import TenseCVAE
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


@pytest.mark.parametrize("engine", [None, "onednn"])
def test_int8_packs_its_weights_for_the_engine_chosen_and_puts_the_setting_back(
    shipped, monkeypatch, engine
):
    """oneDNN's quantized engine where int8_engine() chooses it (a CPU with AMX), torch's
    default elsewhere; the process's setting is as it was afterwards, and the copy converts
    as fp32 does (close calls decoded again in fp32)."""
    if engine is not None and engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"this torch has no {engine} quantized engine")
    before = torch.backends.quantized.engine
    seen = []
    pack = precision._pack
    monkeypatch.setattr(precision, "int8_engine", lambda: engine)
    monkeypatch.setattr(
        precision, "_pack", lambda w: seen.append(torch.backends.quantized.engine) or pack(w)
    )
    q = int8(shipped)
    assert seen == [engine or before]
    assert torch.backends.quantized.engine == before
    cases = load_test()
    words, src, tgt = [c.source for c in cases], [c.src for c in cases], [c.tgt for c in cases]
    assert pipeline.convert(q, words, src, tgt) == pipeline.convert(shipped, words, src, tgt)


def test_int8_chooses_onednn_where_the_cpu_has_amx(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    expected = "onednn" if "onednn" in torch.backends.quantized.supported_engines else None
    assert precision.int8_engine() == expected
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert precision.int8_engine() is None


def test_the_bf16_form_holds_its_weights_in_bf16_and_leaves_the_original_alone(shipped):
    try:
        form = lowered(shipped, "bf16")
    except PrecisionUnavailable as e:
        pytest.skip(str(e))
    assert {p.dtype for p in form.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in shipped.parameters()} == {torch.float32}
    assert form.reference is shipped and lowered(form, "bf16") is form
    assert all(not n.startswith("reference") for n in form.state_dict())
    # out of training the source's keys and values are whole tensors: a batched product
    # over a strided half would copy it at every step
    with torch.no_grad(), precision.autocast(form):
        ids, lengths, tense = torch.tensor([[4, 5, 6]]), torch.tensor([3]), torch.tensor([0])
        post = form.encode(ids, lengths, tense)
        state = form.init_decoder(post.mu, tense, post)
    assert state.keys.dtype == torch.bfloat16
    assert state.keys.is_contiguous() and state.values.is_contiguous()


def test_lower_precision_moves_scores_a_little_not_a_lot(shipped, form):
    # two words of two lengths: a batch oneDNN runs in bf16 on the CPUs it computes bf16
    # on; where it builds no bf16 LSTM for a batch, conversion encodes it in fp32
    # (test_a_chunk_onednn_cannot_encode_in_bf16...)
    ids, lengths, tense = torch.tensor([[4, 5, 6, 7, 8], [6, 7, 8, 0, 0]]), [5, 3], [0, 0]
    with torch.no_grad():
        a = shipped.encode(ids, torch.tensor(lengths), torch.tensor(tense)).mu
        with precision.autocast(form):
            try:
                b = form.encode(ids, torch.tensor(lengths), torch.tensor(tense)).mu
            except RuntimeError as e:
                if form.precision != "bf16" or "primitive descriptor" not in str(e):
                    raise
                pytest.skip(f"no bf16 LSTM on this CPU: {e}")
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


def test_bf16_is_refused_where_the_cpu_would_emulate_it(shipped, monkeypatch):
    """Without bf16 arithmetic in oneDNN (a CPU with AVX2 alone) torch emulates bf16, which
    converted 12 times slower than fp32: it is refused, saying so, before any word; int8
    still serves."""
    monkeypatch.setattr(precision, "cpu_runs_bf16", lambda: False)
    with pytest.raises(PrecisionUnavailable, match="no bf16 arithmetic on this CPU"):
        lowered(shipped, "bf16")
    assert lowered(shipped, "int8").precision == "int8"


def test_whether_the_cpu_runs_bf16_follows_its_instructions():
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        pytest.skip(f"torch reports {capability} for this CPU")
    assert precision.cpu_runs_bf16() is (capability == "AVX512")


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


def test_a_chunk_onednn_cannot_encode_in_bf16_is_encoded_in_fp32(shipped, monkeypatch):
    """Some CPUs build no bf16 LSTM primitive for a batch whose words share one length
    (single words, length-sorted chunks); such a chunk's encoder runs in fp32, and the words
    come out as fp32's. Elsewhere an encoder error is not swallowed."""
    ids, lengths, tense = torch.tensor([[4, 5, 6], [6, 7, 0]]), torch.tensor([3, 2]), [0, 0]
    try:  # whether this CPU runs bf16 at all, apart from the fallback under test
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            shipped.encode(ids, lengths, torch.tensor(tense))
    except RuntimeError as e:
        pytest.skip(f"no bf16 LSTM on this CPU: {e}")
    monkeypatch.setattr(precision, "_probe", lambda form: None)
    form = lowered(shipped, "bf16")
    direction, calls = TenseCVAE._encoder_direction, []

    def refuses_bf16(self, *args, **kwargs):
        calls.append(torch.is_autocast_enabled("cpu"))
        if calls[-1]:
            raise RuntimeError("could not create a primitive descriptor for the LSTM")
        return direction(self, *args, **kwargs)

    monkeypatch.setattr(TenseCVAE, "_encoder_direction", refuses_bf16)
    words = ["walk", "talk", "jump", "abandon"]
    assert pipeline.convert(form, words, "sp", "p") == pipeline.convert(shipped, words, "sp", "p")
    assert True in calls and False in calls
    monkeypatch.setattr(TenseCVAE, "_encoder_direction", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        pipeline.convert(form, words, "sp", "p")
