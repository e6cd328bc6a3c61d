"""The attending decoder's matrix products, through oneDNN on the CPU in fp32.

torch multiplies fp32 matrices on the CPU with MKL's sgemm, which takes its AVX2 code on a
CPU not made by Intel; oneDNN (``torch.ops.mkldnn._linear_pointwise``, which torch ships for
its own compiler) picks its code by the instructions a CPU has. On an AMD EPYC with AVX-512
(2026-12-07, 2 threads) the decoder's products ran at 195-215 GFLOP/s through MKL and
420-480 through oneDNN, fp32 both (the same sums in another order). On an Intel Xeon with
AVX-512 and AMX, where MKL runs its AVX-512 code, the two ran alike at 1024^3 (331 and 309
GFLOP/s) and greedy conversion ran 0.96x as fast through oneDNN (the median of six rounds
alternating the two in one process, 0.93-1.00x), a whole training step 0.70x. On an AMD
EPYC with AVX2 alone (no AVX-512; 2026-12-07, about 83 GFLOP/s) both run AVX2 code and
converted alike: oneDNN's over torch's 1.00x by the median of ten rounds alternating the
two in one process (0.94-1.10x), every word the same. On an AMD EPYC whose AVX-512 runs on
256-bit units (Zen 4; 2026-12-07) oneDNN reached 200-208 GFLOP/s at 1024^3 against MKL's
185-193, and the two converted alike (torch's over oneDNN's 0.99x and 0.94x by paired rounds
in two runs of ``benchmarks/speed.py``), so ``auto``'s choice of oneDNN's costs nothing there.
nn.LSTM, which the encoder runs, goes through oneDNN either way.

``TENSEVAE_PRODUCTS`` chooses:
- ``auto`` (the default): oneDNN's out of training (conversion, generation, scoring) on a
  CPU where they were measured faster, an AMD one with AVX-512 (``onednn_faster``); torch's
  within ``pipeline.train`` (``training()``), so the shipped config still trains the shipped
  weights byte for byte, and torch's on every other CPU. Greedy conversion ran 1.35x as
  fast on the AMD host with AVX-512, every word of train.txt's 14,724 conversions the same.
- ``onednn``: oneDNN's in training too: the attending decoder's products, their input
  gradients and the weights' gradients over all steps (oneDNN's backward-weights primitive,
  which reads both operands row-major). A whole epoch of the shipped config ran about 1.03x
  as fast on the AMD host; the sums round otherwise, so the weights it trains are its own,
  as those trained on another kind of CPU are.
- ``torch``: torch's everywhere, as every model before 2026-12-07 was trained and scored.
Where oneDNN cannot serve (not on the CPU, not fp32, under autocast for bf16, a torch built
without oneDNN's products) torch's run.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import cache

import torch
from torch.nn import functional as F

from . import environment

# read once a process: every product asks (tests clear the cache to switch)
choice = cache(environment.products)
_state = threading.local()


@contextmanager
def training():
    """Within it, ``auto`` runs torch's products (``pipeline.train`` trains within it)."""
    _state.training = getattr(_state, "training", 0) + 1
    try:
        yield
    finally:
        _state.training -= 1


@cache
def _onednn():
    """oneDNN's fp32 product (x, weight (out, in), bias) -> x @ weight.T + bias, or None
    where this torch has none (checked once on a small product)."""
    try:
        op = torch.ops.mkldnn._linear_pointwise.default
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        if not torch.equal(op(x, w, None, "none", [], ""), torch.full((2, 4), 3.0)):
            return None
        if not torch.equal(_weight_grad(torch.ones(2, 4), x, w), torch.full((4, 3), 2.0)):
            return None
    except (AttributeError, RuntimeError, NotImplementedError):
        return None
    return op


def _weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad (N, M).T @ x (N, K) by oneDNN's backward-weights primitive, which reads both
    row-major (a product by ``_linear_pointwise`` would need both transposed first)."""
    out, _ = torch.ops.aten.mkldnn_linear_backward_weights(
        grad.contiguous().to_mkldnn(), x.contiguous().to_mkldnn(), weight.to_mkldnn(), False
    )
    return out


def onednn_faster(cpuinfo: str | None = None) -> bool:
    """Whether ``auto`` runs oneDNN's products here: on an x86 CPU made by AMD with AVX-512,
    where MKL's sgemm runs AVX2 code and oneDNN AVX-512. Read from /proc/cpuinfo (or the
    text given); where it cannot be read, or the CPU is another (Intel's, where MKL runs its
    best code; AMD's with AVX2 alone, where both run AVX2 and converted alike; not x86),
    torch's."""
    if cpuinfo is None:
        return _onednn_faster_here()
    vendor, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return vendor == "AuthenticAMD" and "avx512f" in flags


@cache
def _onednn_faster_here() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return onednn_faster(f.read())
    except OSError:
        return False


def available() -> bool:
    """Whether this torch has oneDNN's fp32 product."""
    return _onednn() is not None


def serves(*tensors: torch.Tensor) -> bool:
    """Whether oneDNN's product is asked for and serves these operands."""
    asked = choice()
    return (
        (
            asked == "onednn"
            or (asked == "auto" and not getattr(_state, "training", 0) and onednn_faster())
        )
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not torch.is_autocast_enabled("cpu")
        and available()
    )


def _product(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """x (N, K) @ weight (M, K).T [+ bias (M,)], oneDNN's; no autograd."""
    return _onednn()(x, weight, bias, "none", [], "")


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        dx = _product(grad, weight.t().contiguous()) if ctx.needs_input_grad[0] else None
        dw = _weight_grad(grad, x, weight) if ctx.needs_input_grad[1] else None
        db = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """F.linear for x (N, K), weight (M, K), with gradients for all three."""
    if not serves(x, weight):
        return F.linear(x, weight, bias)
    x, weight = x.contiguous(), weight.contiguous()
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    ):
        return _Linear.apply(x, weight, bias)
    return _product(x, weight, bias)


class _Affine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, add, x, weight, weight_t):
        ctx.weight_t = weight_t
        return _product(x, weight).add_(add)

    @staticmethod
    def backward(ctx, grad):
        dx = _product(grad.contiguous(), ctx.weight_t) if ctx.needs_input_grad[1] else None
        return grad, dx, None, None


def affine(
    add: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor | None
) -> torch.Tensor:
    """add + x @ weight.T for a weight whose gradient is taken elsewhere (``_WeightGrad``):
    gradients for ``add`` and ``x`` alone. ``weight`` (M, K) and ``weight_t`` (K, M), its
    transpose, are contiguous; ``weight_t`` may be None without gradients."""
    if not serves(x, weight):
        return torch.addmm(add, x, weight.t())
    if torch.is_grad_enabled() and (add.requires_grad or x.requires_grad):
        return _Affine.apply(add, x.contiguous(), weight, weight_t)
    return _product(x.contiguous(), weight).add_(add)


def weight_grad(grad: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A weight's gradient over N rows, grad (N, M).T @ inputs (N, K), for ``weight``
    (M, K), which gives oneDNN its shape."""
    if not serves(grad, inputs):
        return grad.t().mm(inputs)
    return _weight_grad(grad, inputs, weight.detach().contiguous())
