"""The pipeline's settings from the environment; torch-free, so that a command can refuse a
bad one in one line before it loads anything."""

from __future__ import annotations

import os

from .errors import ConfigError

PRODUCTS = ("auto", "onednn", "torch")


def products() -> str:
    """TENSEVAE_PRODUCTS: whose fp32 matrix products the attending decoder runs on the CPU
    (``pipeline.products``): ``auto`` (the default) oneDNN's out of training on a CPU where
    they ran faster (AMD's with AVX-512) and torch's elsewhere and in training, ``onednn``
    oneDNN's everywhere, ``torch`` torch's everywhere."""
    raw = os.environ.get("TENSEVAE_PRODUCTS") or "auto"
    if raw.strip().lower() not in PRODUCTS:
        raise ConfigError(f"TENSEVAE_PRODUCTS must be auto, onednn or torch, not {raw!r}")
    return raw.strip().lower()
