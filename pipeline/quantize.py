"""int8 conversion: the same words as fp32, from matrix products in eight-bit integers.

``int8(model)`` makes a copy for conversion in which the encoder's LSTM, the attending
decoder's recurrent matrix and its two attention projections run as int8 dynamic
quantization (weights quantized once, per output row; each product's input quantized on its
own range as it comes). Everything that decides a character's score directly stays fp32:
the embeddings, z's heads, the decoder's start, the output layer and the copy gate.

Rounding can move a score a little, so the copy's greedy output could differ from fp32's
where two characters are close to a tie. ``convert`` (pipeline.evaluate) therefore watches
every word's closest call; any word whose best and second-best scores came within
``TIE_MARGIN`` of each other at some step is decoded again in fp32 and takes fp32's answer.
benchmarks/speed.py reports, for the shipped model, the words int8 alone changes, how near a
tie each came, and the share of words the margin sends back to fp32. (On 2026-11-30: int8
alone changed 17 of train.txt's 14,724 conversions, all within 0.08 of a tie, and 62 of
4,096 words fed in the wrong tense, its hardest inputs, within 0.73; the margin re-decoded
4.5% of the real conversions.)

int8 runs on the CPU (fbgemm/x86 or qnnpack kernels); a model on a GPU is copied to the CPU.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .errors import TenseVAEError
from .model import TenseCVAE

TIE_MARGIN = 1.0  # nats: a word whose closest call came nearer than this is decoded in fp32


class QuantizationUnavailable(TenseVAEError):
    """This torch build cannot run int8 products on this machine."""


def is_int8(model: TenseCVAE) -> bool:
    return getattr(model, "reference", None) is not None


def int8(model: TenseCVAE) -> TenseCVAE:
    """An int8 copy of ``model`` for greedy conversion; ``model`` itself is left as it was
    and is kept, as ``copy.reference``, to decode the close calls."""
    if is_int8(model):
        return model
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as e:  # eager-mode quantization is deprecated in torch
        raise QuantizationUnavailable(f"int8 needs torch.ao.quantization: {e}") from None
    reference = model.eval()
    q = copy.deepcopy(model).to("cpu").eval()
    names = ["encoder"]
    if q.config.attention:
        names += ["combine", "attn_key"]
    else:
        names.append("decoder")  # the plain decoder is nn.LSTM all through
    try:
        with warnings.catch_warnings():  # deprecation notices, not the user's business
            warnings.simplefilter("ignore")
            q = quantize_dynamic(
                q, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8
            )
            if q.config.attention:
                q.recurrent_int8 = _pack(_recurrent(q))
    except (RuntimeError, AttributeError, NotImplementedError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QuantizationUnavailable(f"int8 is not available here: {first}") from None
    q.__dict__["reference"] = reference  # not a submodule: no second copy of its weights
    return q


def _recurrent(model: TenseCVAE) -> torch.Tensor:
    """The attending decoder's matrix for [fed-back output, h], as _cell_weights cuts it."""
    d, C = model.decoder, model.config.char_embedding
    fixed = d.weight_ih_l0.size(1) - C - model.config.hidden_size  # z, tense, memory read
    return torch.cat([d.weight_ih_l0[:, C + fixed :], d.weight_hh_l0], dim=1).detach()


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
