"""The attending decoder's products through oneDNN or torch (TENSEVAE_PRODUCTS): the same
function to rounding, with the same gradients; by default torch's in training alone."""

from __future__ import annotations

import pytest
import torch

import pipeline
from pipeline import products
from pipeline.data import directed, load_test, load_train, make_batch, make_pairs
from pipeline.errors import ConfigError
from pipeline.evaluate import convert
from pipeline.training import Trainer


@pytest.fixture
def use(monkeypatch):
    """use('onednn') or use('torch') for the rest of a test; the choice is read once a
    process, so the cache is cleared on the way in and out."""

    def switch(name: str | None) -> None:
        if name is None:
            monkeypatch.delenv("TENSEVAE_PRODUCTS", raising=False)
        else:
            monkeypatch.setenv("TENSEVAE_PRODUCTS", name)
        products.choice.cache_clear()

    yield switch
    monkeypatch.delenv("TENSEVAE_PRODUCTS", raising=False)
    products.choice.cache_clear()


needs_onednn = pytest.mark.skipif(not products.available(), reason="this torch has no oneDNN")


def test_auto_runs_onednn_out_of_training_and_a_bad_choice_is_refused(use):
    one = torch.ones(1)
    use(None)  # auto: oneDNN's out of training where they ran faster, torch's within it
    assert products.choice() == "auto"
    here = products.available() and products.onednn_faster()
    assert products.serves(one) == here
    with products.training():
        assert not products.serves(one)
    assert products.serves(one) == here
    use("onednn")
    with products.training():
        assert products.serves(one) == products.available()
    use(" Torch ")
    assert products.choice() == "torch" and not products.serves(one)
    use("mkl")
    with pytest.raises(ConfigError, match="must be auto, onednn or torch, not 'mkl'"):
        products.choice()


def test_auto_chooses_onednn_on_the_cpus_where_it_ran_faster():
    """AMD's with AVX-512 (MKL runs AVX2 there, oneDNN AVX-512); not Intel's, where MKL
    runs its best code and oneDNN ran slower, nor one with AVX2 alone, nor an unreadable one."""

    def cpu(vendor: str, flags: str) -> str:
        core = f"processor\t: {{}}\nvendor_id\t: {vendor}\nflags\t\t: fpu sse2 {flags}\n\n"
        return core.format(0) + core.format(1)

    assert products.onednn_faster(cpu("AuthenticAMD", "avx2 avx512f avx512_bf16"))
    assert not products.onednn_faster(cpu("AuthenticAMD", "avx2"))
    assert not products.onednn_faster(cpu("GenuineIntel", "avx2 avx512f amx_bf16"))
    assert not products.onednn_faster("")
    assert not products.onednn_faster("CPU implementer\t: 0x41\nFeatures\t: fp asimd\n")


@needs_onednn
def test_linear_and_affine_are_torchs_function_with_its_gradients(use):
    use("onednn")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 48, generator=g, requires_grad=True)
    w = torch.randn(64, 48, generator=g, requires_grad=True)
    b = torch.randn(64, generator=g, requires_grad=True)
    add = torch.randn(37, 64, generator=g, requires_grad=True)
    up = torch.randn(37, 64, generator=g)
    assert products.serves(x, w)

    def grads(out):
        for t in (x, w, b, add):
            t.grad = None
        (out * up).sum().backward()
        return [None if t.grad is None else t.grad.clone() for t in (x, w, b, add)]

    # a column slice, as the decoder's character weights are: not contiguous
    for weight in (w, w[:, :40]):
        xs = x[:, : weight.size(1)]
        ours, theirs = products.linear(xs, weight, b), torch.nn.functional.linear(xs, weight, b)
        assert ours.grad_fn is not None and "Linear" in type(ours.grad_fn).__name__
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        for a, e in zip(grads(ours), grads(theirs), strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    # affine: the weight's gradient is taken elsewhere, so none flows to it here
    wd = w.detach()
    ours = products.affine(add, x, wd, wd.t().contiguous())
    theirs = torch.addmm(add, x, wd.t())
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    for a, e in zip(grads(ours), grads(theirs), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(products.affine(add, x, wd, None), theirs)
    # under autocast (bf16 conversion) torch's products run
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not products.serves(x, w)


@needs_onednn
def test_a_training_step_and_the_shipped_models_conversions_agree_with_torchs(use, monkeypatch):
    """The same step's loss and gradients to rounding, and the shipped model converts
    test.txt and a sample of train.txt to the same words either way; oneDNN's products
    did run (counted)."""
    calls = []
    real = products._product
    monkeypatch.setattr(products, "_product", lambda *a: calls.append(1) or real(*a))
    cfg = pipeline.load_config("tiny", ["model.hidden_size=64", "model.copy=true"])
    quads = load_train()[:60]
    batch = make_batch(make_pairs(quads, "all")[:96], pipeline.model.Vocab())
    results = {}
    for name in ("torch", "onednn"):
        use(name)
        torch.manual_seed(0)
        trainer = Trainer(cfg, quads, torch.device("cpu"))
        trainer.model.train()
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        calls.clear()
        figures = trainer.train_step(batch)
        assert bool(calls) == (name == "onednn")
        after = trainer.model.state_dict()
        moved = {k: after[k] - before[k] for k in before if after[k].is_floating_point()}
        results[name] = (figures["loss"], moved)
    loss_t, moved_t = results["torch"]
    loss_o, moved_o = results["onednn"]
    assert loss_o == pytest.approx(loss_t, rel=1e-5)
    for k in moved_t:  # Adam's first step moves each weight by about lr times its sign
        torch.testing.assert_close(moved_o[k], moved_t[k], rtol=1e-3, atol=1e-5)

    model = pipeline.load_pretrained()
    test = load_test()
    words, src, _, tgt = directed(load_train()[::10])
    words += [c.source for c in test]
    src += [c.src for c in test]
    tgt += [c.tgt for c in test]
    out = {}
    for name in ("torch", "onednn"):
        use(name)
        calls.clear()
        out[name] = convert(model, words, src, tgt)
        assert bool(calls) == (name == "onednn")
    assert out["onednn"] == out["torch"]


@needs_onednn
def test_training_by_default_is_torchs_byte_for_byte_and_onednn_trains_its_own(use):
    """pipeline.train under auto (the default) trains the weights torch's products train,
    bit for bit, as the shipped weights were; TENSEVAE_PRODUCTS=onednn trains others."""
    cfg = pipeline.load_config("tiny", ["train.epochs=1", "train.max_lines=120"])
    weights = {}
    for name in ("auto", "torch", "onednn"):
        use(name)
        state = pipeline.train(cfg).model.state_dict()
        weights[name] = b"".join(state[k].numpy().tobytes() for k in sorted(state))
    assert weights["auto"] == weights["torch"]
    assert weights["onednn"] != weights["torch"]
