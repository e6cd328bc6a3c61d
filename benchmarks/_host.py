"""What a benchmark's figures ran on: the CPU by name and instruction sets, this moment's
fp32 matrix-multiply rate, and the UTC time, for the header of its table. The host's speed
moves from hour to hour; absolute figures mean little without it."""

from __future__ import annotations

import os
import platform
import time
from datetime import datetime, timezone

import torch


def cpu() -> str:
    """'AMD EPYC, 2 CPUs, AVX-512 with bf16' and the like (Linux's /proc/cpuinfo; elsewhere
    what platform says)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name in ("", platform.machine()):
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = (
        "AMX" if "amx_bf16" in flags else
        "AVX-512 with bf16" if "avx512_bf16" in flags else
        "AVX-512" if "avx512f" in flags else
        "AVX2" if "avx2" in flags else ""
    )  # fmt: skip
    return ", ".join(x for x in (name, f"{os.cpu_count()} CPUs", isa) if x)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 matrix products of n x n on torch's threads now, in GFLOP/s (best of ``repeats``,
    after a warm-up): the host's speed at this moment."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def span(started: str) -> str:
    """'2026-12-05 22:52 to 23:21 UTC' from a start given by now(), the date said once when
    the run ends the day it began."""
    end = now()
    if end[:10] == started[:10]:
        return f"{started.removesuffix(' UTC')} to {end[11:]}"
    return f"{started} to {end}"
