"""How many seeds would decide an inconclusive claim cell: the power of claims.py's tests.

For a cell whose test is inconclusive, the number of seeds n that gives the test
`TARGET_POWER` (80 %) at the claim's α if the true effect and spread are the observed ones:

- paired differences or values − threshold: the two-sided one-sample t-test on n values
  of mean `effect` and standard deviation `sd`, whose statistic follows a noncentral t
  with n − 1 degrees of freedom and noncentrality effect·√n / sd;
- unpaired (Welch): n seeds on each side with standard deviations sd_a and sd_b; a
  noncentral t with the Welch–Satterthwaite degrees of freedom and noncentrality
  effect / √((sd_a² + sd_b²) / n) — the usual approximation of Welch's power;
- no spread at all (every value equal): the t statistic is undefined and claims.py falls
  back to the exact permutation p, so n is the smallest whose exact floor is below α
  (2 / 2ⁿ sign flips; 2 / C(2n, n) relabellings);
- an exact permutation test needs at least that floor n too; beyond it, the t-test's
  n (the permutation test's power approaches the t-test's).

An effect that needs more than `MAX_SEEDS` seeds is too small to chase at this spread:
no number is given. An sd from fewer than five seeds is itself uncertain, and the advice
says it is a rough guide. Imports numpy and scipy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy import integrate, stats

TARGET_POWER = 0.8
MAX_SEEDS = 100
ROUGH_BELOW = 5  # an sd from fewer seeds is itself very uncertain: say so


@dataclass(frozen=True)
class SeedsAdvice:
    """What to do about an inconclusive cell: `needed` seeds (None: none would do) and why."""

    needed: Optional[int] = None
    text: str = ""  # one clause: how many and why, or why none would do
    short: str = "—"  # for a table column: '12', '> 100', 'none'

    @classmethod
    def of(cls, needed: int, text: str) -> "SeedsAdvice":
        return cls(needed, text, str(needed))


def one_sample_power(effect: float, sd: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample t-test of mean 0 on n draws of N(effect, sd²)."""
    df = n - 1
    return _two_sided_power(float(stats.t.ppf(1.0 - alpha / 2.0, df)), df, effect * math.sqrt(n) / sd)


def welch_power(effect: float, sd_a: float, sd_b: float, n: int, alpha: float) -> float:
    """Power of the two-sided Welch t-test with n draws on each side (Satterthwaite df)."""
    var_a, var_b = sd_a**2, sd_b**2
    df = (n - 1) * (var_a + var_b) ** 2 / (var_a**2 + var_b**2)
    return _two_sided_power(float(stats.t.ppf(1.0 - alpha / 2.0, df)), df, effect / math.sqrt((var_a + var_b) / n))


def _two_sided_power(crit: float, df: float, nc: float) -> float:
    """P(|T| > crit) for T noncentral t(df, nc)."""
    power = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if math.isfinite(power):
        return power
    # scipy's nct gives NaN for some large noncentralities (an effect many sds wide):
    # T = (Z + nc) / √(V / df) with V ~ χ²(df), so integrate the normal tails over V
    def given(v: float) -> float:
        scaled = crit * math.sqrt(v / df)
        return float(stats.norm.sf(scaled - nc) + stats.norm.cdf(-scaled - nc)) * float(stats.chi2.pdf(v, df))

    return float(integrate.quad(given, 0.0, np.inf)[0])


def sign_flip_floor_seeds(alpha: float) -> int:
    """The fewest paired seeds whose exact sign-flip p can fall below α (2 / 2ⁿ < α)."""
    return next(n for n in range(1, 64) if 2.0 / 2**n < alpha)


def relabel_floor_seeds(alpha: float) -> int:
    """The fewest seeds per side whose exact relabelling p can fall below α (2 / C(2n, n) < α)."""
    return next(n for n in range(1, 64) if 2.0 / math.comb(2 * n, n) < alpha)


def smallest_n(power_at: Callable[[int], float], start: int = 2) -> Optional[int]:
    """The smallest n in [start, MAX_SEEDS] with power_at(n) ≥ TARGET_POWER, or None.

    Power grows with n, so a bisection finds it in a few evaluations."""
    low, high = max(start, 2), MAX_SEEDS
    if power_at(high) < TARGET_POWER:
        return None
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if power_at(mid) >= TARGET_POWER else (mid + 1, high)
    return low


def seeds_advice(
    effect: float, sds: tuple[float, ...], n: int, alpha: float, permutation: bool
) -> SeedsAdvice:
    """Seeds for 80 % power: `sds` is (sd,) for paired / one-sample, (sd_a, sd_b) for Welch; n the seeds at hand."""
    paired = len(sds) == 1
    floor_n = sign_flip_floor_seeds(alpha) if paired else relabel_floor_seeds(alpha)
    if effect == 0.0:
        return SeedsAdvice(None, "no difference observed: no number of seeds would decide it", "none")
    if all(sd == 0.0 for sd in sds):
        needed = max(floor_n, n + 1)
        return SeedsAdvice.of(needed, f"no spread across seeds: {needed} seeds let the exact test reach α={alpha:g} "
                                      "if the values stay this steady")
    if paired:
        needed = smallest_n(lambda k: one_sample_power(effect, sds[0], k, alpha), floor_n if permutation else 2)
    else:
        needed = smallest_n(lambda k: welch_power(effect, sds[0], sds[1], k, alpha), floor_n if permutation else 2)
    spread = "sd " + " / ".join(f"{sd:.3g}" for sd in sds)
    seen = f"the observed effect {effect:+.3g} and {spread}"
    if needed is None:
        return SeedsAdvice(None, f"over {MAX_SEEDS} seeds for {TARGET_POWER:.0%} power at α={alpha:g} "
                                 f"with {seen}: too small to matter at this spread", f"> {MAX_SEEDS}")
    needed = max(needed, n + 1)  # the seeds at hand were not enough, whatever the power says
    side = "" if paired else " per side"
    rough = f"; the sd rests on {n} seeds, so this is a rough guide" if n < ROUGH_BELOW else ""
    return SeedsAdvice.of(needed, f"{needed} seeds{side} give {TARGET_POWER:.0%} power at α={alpha:g} for {seen} "
                                  f"({needed - n} more){rough}")
