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

import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Ceiling:
    """The matmul-only limit of one step on this machine."""

    gflop_per_step: float
    fp32_gflops: float  # achieved by the step's own matmul shapes
    bf16_gflops: float

    @property
    def fp32_steps_per_s(self) -> float:
        return self.fp32_gflops / self.gflop_per_step

    @property
    def bf16_steps_per_s(self) -> float:
        return self.bf16_gflops / self.gflop_per_step


def measure_ceiling(step: Callable[[], None], repeats: int = 20) -> Ceiling:
    """Record one real step's matmuls, then time them alone in fp32 and in bf16."""
    calls = record_matmuls(step)
    flops = step_flops(calls)
    fp32 = matmul_seconds(calls, torch.float32, repeats)
    bf16 = matmul_seconds(calls, torch.bfloat16, repeats)
    return Ceiling(flops / 1e9, flops / fp32 / 1e9, flops / bf16 / 1e9)
