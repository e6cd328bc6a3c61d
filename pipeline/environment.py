"""The pipeline's settings from the environment; torch-free, so that a command can refuse a
bad one in one line before it loads anything."""

from __future__ import annotations

import os

from .errors import ConfigError

PRODUCTS = ("torch", "onednn")


def products() -> str:
    """TENSEVAE_PRODUCTS: whose fp32 matrix products the attending decoder runs on the CPU,
    torch's (the default) or oneDNN's (``pipeline.products``)."""
    raw = os.environ.get("TENSEVAE_PRODUCTS") or "torch"
    if raw.strip().lower() not in PRODUCTS:
        raise ConfigError(f"TENSEVAE_PRODUCTS must be torch or onednn, not {raw!r}")
    return raw.strip().lower()
