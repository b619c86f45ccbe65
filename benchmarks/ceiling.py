"""The hardware ceiling of a training step, measured in the same run as the step itself.

A step's matrix work is a fixed list of matmuls (mm / bmm / baddbmm / addmm with given
shapes, forward and backward). `record_matmuls` captures that list from one real step with a
dispatch mode; `matmul_seconds` times exactly those matmuls back to back, in fp32 and in
bf16, on this machine with the same threads. So

    ceiling steps/s = 1 / (time of the step's matmuls alone)

is the speed the step would reach if everything that is not matrix work (elementwise ops,
batch norm, noise, autograd and optimiser overhead) cost nothing; a measured steps/s divided
by it says what fraction of the machine's limit the step reaches.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
MATMULS = {aten.mm.default: "mm", aten.bmm.default: "bmm", aten.addmm.default: "addmm",
           aten.baddbmm.default: "baddbmm"}


@dataclass(frozen=True)
class MatmulCall:
    """One matmul of the step: `op` with operand shapes (batch, m, k) @ (batch, k, n)."""

    op: str
    batch: int
    m: int
    k: int
    n: int

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.m * self.k * self.n


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[MatmulCall] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = MATMULS.get(func)
        if name is not None:
            a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            batch = a.shape[0] if a.dim() == 3 else 1
            self.calls.append(MatmulCall(name, batch, a.shape[-2], a.shape[-1], b.shape[-1]))
        return func(*args, **(kwargs or {}))


def record_matmuls(step: Callable[[], None]) -> list[MatmulCall]:
    """The matmuls of one call of `step` (forward and backward) in call order."""
    recorder = _Recorder()
    with recorder:
        step()
    return recorder.calls


def step_flops(calls: list[MatmulCall]) -> float:
    return sum(c.flops for c in calls)


def matmul_seconds(calls: list[MatmulCall], dtype: torch.dtype, repeats: int = 20) -> float:
    """Seconds to run the step's matmuls once, back to back, in `dtype` (median of repeats)."""
    operands = []
    for c in calls:
        a = torch.randn(c.batch, c.m, c.k).to(dtype)
        b = torch.randn(c.batch, c.k, c.n).to(dtype)
        operands.append((a, b) if c.batch > 1 or c.op in ("bmm", "baddbmm") else (a[0], b[0]))

    def once() -> None:
        for a, b in operands:
            torch.matmul(a, b)

    for _ in range(3):
        once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def cpu_description() -> str:
    """'MODEL NAME, AMX: yes|no (AVX512-BF16: yes|no)' from /proc/cpuinfo (Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "CPU model unknown (no /proc/cpuinfo), AMX unknown"
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = set((re.search(r"^flags\s*:\s*(.+)$", info, re.M) or [None, ""])[1].split())
    yes = {True: "yes", False: "no"}
    return (f"{name.group(1).strip() if name else 'CPU model unknown'}, AMX: {yes['amx_bf16' in flags]} "
            f"(AVX512-BF16: {yes['avx512_bf16' in flags]})")


def has_amx() -> bool:
    return "AMX: yes" in cpu_description()


def memory_bandwidth(megabytes: int = 256, repeats: int = 10) -> float:
    """Bytes per second moved by this process's threads: the faster of a large copy (read
    one tensor, write one) and a large add (read two, write one), median of repeats, on
    fp32 tensors of `megabytes` each (far beyond the last-level cache)."""
    n = megabytes * 2 ** 20 // 4
    a, b, c = torch.rand(n), torch.rand(n), torch.empty(n)
    ops = {"copy": (lambda: c.copy_(a), 2), "add": (lambda: torch.add(a, b, out=c), 3)}
    best = 0.0
    for run, tensors in ops.values():
        run()  # first touch of the output pages
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        best = max(best, tensors * 4 * n / sorted(times)[len(times) // 2])
    return best


def optimizer_bytes(parameters: int) -> int:
    """The optimiser's unavoidable traffic per step: read and write parameter, gradient and
    both Adam moments once each, fp32."""
    return parameters * 4 * 2 * 4


@dataclass(frozen=True)
class Ceiling:
    """The matmul-only limit of one step on this machine, and the roofline beside it."""

    gflop_per_step: float
    fp32_gflops: float  # achieved by the step's own matmul shapes
    bf16_gflops: float
    optimizer_mb: float = 0.0  # optimizer_bytes per step, MB (10^6 bytes)
    bandwidth_gbs: float = float("inf")  # memory_bandwidth, GB/s (10^9 bytes/s)

    @property
    def fp32_steps_per_s(self) -> float:
        return self.fp32_gflops / self.gflop_per_step

    @property
    def bf16_steps_per_s(self) -> float:
        return self.bf16_gflops / self.gflop_per_step

    def matmul_ms(self, precision: str = "bf16") -> float:
        return 1e3 / (self.bf16_steps_per_s if precision == "bf16" else self.fp32_steps_per_s)

    @property
    def optimizer_ms(self) -> float:
        return self.optimizer_mb / self.bandwidth_gbs  # MB / (GB/s) = ms

    def roofline_steps_per_s(self, precision: str = "bf16") -> float:
        """Steps/s with the matmuls (in `precision`) at their own speed plus the optimiser's
        traffic at full bandwidth, nothing else."""
        return 1e3 / (self.matmul_ms(precision) + self.optimizer_ms)


def measure_ceiling(step: Callable[[], None], repeats: int = 20, parameters: int = 0,
                    bandwidth: float | None = None, bf16: bool = True) -> Ceiling:
    """Record one real step's matmuls, then time them alone in fp32 and in bf16 (not when
    `bf16` is False: on a CPU without AVX512-BF16 or AMX a bf16 matmul is a slow reference
    loop, minutes per step, and its ceiling NaN); with `parameters` (fp32 parameters of the
    cohort) also the roofline at `bandwidth` bytes/s (measured here when not given)."""
    calls = record_matmuls(step)
    flops = step_flops(calls)
    fp32 = matmul_seconds(calls, torch.float32, repeats)
    bf16 = matmul_seconds(calls, torch.bfloat16, repeats) if bf16 else float("inf")
    if not parameters:
        return Ceiling(flops / 1e9, flops / fp32 / 1e9, flops / bf16 / 1e9)
    bandwidth = bandwidth or memory_bandwidth()
    return Ceiling(flops / 1e9, flops / fp32 / 1e9, flops / bf16 / 1e9,
                   optimizer_bytes(parameters) / 1e6, bandwidth / 1e9)
