"""Where a trial runs: its device, its CPU threads, and whether bf16 is fast there.

Imports only torch. Used by the Trainer at set-up, by the Ray trainable (its CPU allotment)
and by `vaelab train` (all CPUs of its affinity mask).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or taskset's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def use_cpu_threads(cpus: float) -> int:
    """Give torch exactly the CPUs a trial was allotted: intra-op threads = cpus (at least 1).

    Two trials packed on one node that each spin up one thread per core oversubscribe it
    (two 2-thread torch processes on 2 cores ran 10–40× slower than one: benchmarks/
    RESULTS.md), so the caller passes its Ray CPU allotment, or all CPUs when alone.
    """
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    return threads


def has_fast_bf16(device: torch.device) -> bool:
    """Whether the device's matrix units run bf16 faster than fp32: CUDA compute capability
    >= 8 (Ampere tensor cores), or a CPU with AMX-BF16 or AVX512-BF16 instructions."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume not
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where the hardware is fast at it, else fp32; others unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if has_fast_bf16(device) else "fp32"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
