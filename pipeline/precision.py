"""Conversion in reduced precision that writes fp32's words.

``lowered(model, "bf16")`` is a copy of the model's weights in bfloat16, on its device,
converting under bf16 autocast: matrix products, the LSTMs and the element-wise work after
them (the LSTM cell, attention's softmax, the copy mix) all run in bf16. Weights kept in
fp32 would be cast again at every product (autocast keeps no cast of a weight's slices
from one step to the next): on an AMD EPYC with AVX-512 and bf16 (2026-12-07), the copy,
with the source's keys made contiguous once, converted train.txt's 14,724 conversions 1.12
times as fast as autocast over the fp32 weights (the median of eight paired rounds), with
the same words. On a CPU it needs one that oneDNN runs bf16 on, and says so where it cannot.
``lowered(model, "int8")`` is a
copy whose encoder LSTM, the attending decoder's recurrent matrix and its two attention
projections run as int8 dynamic quantization (weights quantized once, per output row; each
product's input quantized on its own range as it comes); the embeddings, z's heads, the
decoder's start, the output layer and the copy gate stay fp32. It runs on the CPU
(fbgemm/x86 or qnnpack kernels; oneDNN's on a CPU with AMX, ``int8_engine``).

Rounding can move a score a little, so lower precision alone could write another word than
fp32 where two characters are close to a tie. ``convert`` (pipeline.evaluate) therefore
watches every word's closest call: a word whose best and second-best scores came within
``TIE_MARGIN`` of each other at some step is decoded again in fp32 and takes fp32's answer
(each form counts those words in its ``redecoded``). benchmarks/speed.py reports, for the
shipped model, the words each precision alone changes, how near a tie each came, and the
share the margin sends back to fp32. On 2026-11-30: of train.txt's 14,724 conversions, bf16
alone changed 6 (each within 0.02 of a tie) and int8 13 (within 0.13); of 3,681 words fed in
the wrong tense, the model's hardest inputs, 24 (within 0.66) and 65 (within 0.56); the
margin sent 4.4-4.5% of train.txt's conversions back to fp32. On 2026-12-01, with the
prior_words 32 weights, int8 alone changed one wrong-tense word whose closest call lay 1.07
from a tie, past the margin of 1.0 then, so the margin is now 1.5.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch
from torch import nn

from .errors import TenseVAEError
from .model import TenseCVAE

PRECISIONS = ("fp32", "bf16", "int8")
TIE_MARGIN = 1.5  # nats: a word whose closest call came nearer than this is decoded in fp32


class PrecisionUnavailable(TenseVAEError):
    """This torch build or this machine cannot run the precision asked for."""


def precision_of(model: TenseCVAE) -> str:
    return getattr(model, "precision", "fp32")


def lowered(model: TenseCVAE, precision: str) -> TenseCVAE:
    """``model`` itself for fp32, else its bf16 or int8 form for greedy conversion."""
    if precision not in PRECISIONS:
        raise PrecisionUnavailable(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return model
    return bf16(model) if precision == "bf16" else int8(model)


def autocast(model: TenseCVAE):
    """The context a conversion by ``model`` runs in: bf16 autocast for a bf16 form."""
    if precision_of(model) == "bf16":
        return torch.autocast(model.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bf16(model: TenseCVAE) -> TenseCVAE:
    """A bf16 form of ``model``: a copy of its weights in bf16 where the model is,
    converting under bf16 autocast; ``model`` itself is left as it was and is kept, as
    ``reference``, to decode the close calls."""
    if precision_of(model) == "bf16":
        return model
    reference = _reference(model)
    if reference.device.type == "cpu" and not cpu_runs_bf16():
        raise PrecisionUnavailable(
            "bf16 is not available here: oneDNN has no bf16 arithmetic on this CPU, and "
            "emulated bf16 converts about 12 times slower than fp32; use int8 or fp32"
        )
    form = copy.deepcopy(reference).to(torch.bfloat16)
    form.__dict__.update(precision="bf16", reference=reference)  # not a submodule
    _probe(form)
    return form


def int8(model: TenseCVAE) -> TenseCVAE:
    """An int8 copy of ``model`` (moved to the CPU); ``model`` itself is left as it was and
    is kept, as ``reference``, to decode the close calls."""
    if precision_of(model) == "int8":
        return model
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as e:  # eager-mode quantization is deprecated in torch
        raise PrecisionUnavailable(f"int8 needs torch.ao.quantization: {e}") from None
    reference = _reference(model)
    q = copy.deepcopy(reference).to("cpu").eval()
    names = ["encoder"]
    if q.config.attention:
        names += ["combine", "attn_key"]
    else:
        names.append("decoder")  # the plain decoder is nn.LSTM all through
    try:
        with warnings.catch_warnings(), _packing_engine(int8_engine()):
            warnings.simplefilter("ignore")  # torch's deprecation notices, not the user's
            q = quantize_dynamic(
                q, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8
            )
            if q.config.attention:
                q.recurrent_int8 = _pack(q.recurrent_weight().detach())
    except (RuntimeError, AttributeError, NotImplementedError) as e:
        raise PrecisionUnavailable(f"int8 is not available here: {_first_line(e)}") from None
    q.__dict__.update(precision="int8", reference=reference)  # not a submodule: no state_dict
    _probe(q)
    return q


def int8_engine() -> str | None:
    """The quantized engine the int8 copy's weights are packed for: oneDNN's on a CPU with
    AMX, whose int8 tiles it runs, else torch's default (None). Each packed weight keeps its
    engine, so the setting is only changed while packing. On an Intel Xeon with AMX
    (2026-12-07) the recurrent product (512 x 512 by 1024, weights per row) took 401 µs packed
    for oneDNN, 729-746 for fbgemm or torch's default x86 engine (fp32: 1,810), and greedy
    conversion of train.txt in int8 alone ran about 1.2 times fp32's rate instead of 0.97,
    with as many words unlike fp32's (one) and as many close calls (301 within the margin).
    On an AMD EPYC with AVX2 alone (no VNNI, no AMX; 2026-12-07) no engine beat the default:
    the recurrent product by 1,024 rows took 12.5-12.6 ms packed for x86, fbgemm or oneDNN,
    23.5 for qnnpack, 12.8 in fp32, and int8 conversion alone ran 0.93-0.97x fp32's rate by
    paired rounds for the first three (0.53x for qnnpack), each alone writing one word of
    train.txt's conversions or none unlike fp32's. On an AMD EPYC with AVX-512 VNNI but no
    AMX (Zen 4, 2026-12-07) the engines were alike, so the default stays there too: the
    recurrent product by 1,024 rows took 1.83-1.89 ms packed for oneDNN, 1.91-1.99 for x86,
    1.88-1.95 for fbgemm (qnnpack 20.1-20.4; fp32 7.5-7.8), and int8 conversion alone ran
    1.22x and 1.30x fp32's rate packed for oneDNN against 1.40x and 1.29x for x86, two
    processes each."""
    try:
        if "onednn" in torch.backends.quantized.supported_engines and bool(
            torch.cpu._is_amx_tile_supported()
        ):
            return "onednn"
    except (AttributeError, RuntimeError):
        pass
    return None


@contextlib.contextmanager
def _packing_engine(engine: str | None):
    before = torch.backends.quantized.engine
    if engine is not None:
        torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def cpu_runs_bf16() -> bool:
    """Whether oneDNN computes in bf16 on this CPU (AVX-512 or newer). Without it, on an
    AVX2 CPU, torch emulates bf16: greedy conversion of train.txt's 14,724 conversions
    under bf16 autocast ran at 225 words/s against fp32's 2,701 (2026-12-07, an AMD EPYC
    with AVX2 alone, ``benchmarks/speed.py --parts convert``). Where torch cannot say,
    the probe at lowering decides."""
    try:  # a private operator of torch's: absent from a build, it decides nothing
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def _reference(model: TenseCVAE) -> TenseCVAE:
    """The fp32 model behind ``model`` (itself, when it is fp32), in eval mode."""
    reference = getattr(model, "reference", None)
    return model.eval() if reference is None else reference


def _probe(form: TenseCVAE) -> None:
    """Convert a few words now, so that a machine that cannot run the precision says so
    before a bulk job starts rather than at its first batch."""
    from .evaluate import convert

    try:
        convert(form, ["walk", "abandon", "go"], "sp", "p")
        convert(form, ["walk"], "sp", "p")  # one length: the encoder's fp32 fallback
    except RuntimeError as e:  # oneDNN refuses bf16 LSTM primitives on some CPUs
        what = precision_of(form)
        raise PrecisionUnavailable(f"{what} is not available here: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _pack(weight: torch.Tensor):
    """Per-row symmetric int8 weights, packed for torch.ops.quantized.linear_dynamic."""
    scales = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
    zero = torch.zeros(weight.size(0), dtype=torch.long)
    q = torch.quantize_per_channel(weight.float(), scales, zero, 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(q, None)


def quantized_modules(model: nn.Module) -> list[str]:
    """Names of the submodules that run int8 (for tests and the benchmark's report)."""
    return [
        name
        for name, m in model.named_modules()
        if type(m).__module__.startswith("torch.ao.nn.quantized")
    ]
