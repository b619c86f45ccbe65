"""Claims: each paper claim of a study's `report:` section tested over the seeds.

A claim (`report.spec.ClaimSpec`) is split into comparisons, one per cell (value of
`per`) and, in the compare form, per level of `b`:

- effect = mean(a) − mean(b), or mean − threshold in the threshold form;
- paired by seed on the seeds both sides share, each once per side (differences
  a_s − b_s), when that is every seed of both or at least two: a trial whose seed has no
  partner on the other side (its partner failed, say) is named in `left_out` rather than
  turning the whole cell into an unpaired test. Otherwise unpaired (Welch); the threshold
  form is a one-sample test;
- `test: t` — two-sided t-test (`scipy.stats.ttest_1samp` on the paired differences,
  `ttest_ind(equal_var=False)`, `ttest_1samp` against the threshold);
  `test: permutation` — exact two-sided permutation test (`scipy.stats.permutation_test`
  with every sign flip / relabelling enumerated). The confidence interval is always the
  (1 − α) t-interval of the effect (`TtestResult.confidence_interval`);
- a cell without spread (every difference, or every value − threshold, equal; or each
  side of an unpaired cell one value) has no t statistic — integer metrics such as active
  units do this. Its p is then the exact permutation p, which needs no variance: 2/2ⁿ for
  n sign flips, 1 or 2 over C(n_a + n_b, n_a) relabellings; the reason says so;
- a comparison holds when p < α and the effect has the claimed sign, is contradicted
  when p < α with the opposite sign, and is inconclusive otherwise. With one seed on a
  side it is "inconclusive (one seed)" before any test is run; when the exact test cannot
  reach α with this n the reason says so.

Cells combine (`combine`):
- all (the claim holds in every cell): holds when every comparison holds — an
  intersection-union test, valid at α with no correction; contradicted when some
  comparison is contradicted after a Holm correction over the claim's comparisons;
- any: holds when some comparison holds after Holm; contradicted when every comparison
  is contradicted (intersection-union).

An inconclusive comparison says how many seeds would give its test 80 % power at α for
the effect and spread observed, or that none would (report/power.py).

Many claims, one α: each claim's verdict is reached at α on its own. Across the study a
second verdict corrects for the number of claims (Holm across claims, `study_verdict`).
A claim's p (`ClaimResult.p`) is the p its verdict is reached at, so that it is decided
(holds or contradicted) exactly when p < α: all — the largest p when every comparison has
the claimed sign (intersection-union), or the smallest within-claim Holm p of a
contradicting comparison; any — the smallest within-claim Holm p of a comparison with the
claimed sign, or the largest p when every comparison is contradicted; the smaller of the
two where both exist (1 where neither does). The claims with a p are then Holm-adjusted
together (`p_study`); a claim keeps its verdict across the study when p_study < α, and is
inconclusive across the study otherwise. A claim with nothing tested has no p and is not
counted.

Only finished trials with a finite metric are used; the unused trials of the compared
sides are named in `left_out` (trials of cells or levels the claim does not compare are
not its business). Imports pandas, numpy and scipy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from vaelab.report import order
from vaelab.report.power import SeedsAdvice, seeds_advice
from vaelab.report.spec import ClaimSpec, Level, exact_p_floor, switch_level
from vaelab.report.tables import axis_column, matches, plain

HOLDS, CONTRADICTED, INCONCLUSIVE = "holds", "contradicted", "inconclusive"
HOLM_ACROSS = ("across the study each claim's p (the p its verdict is reached at) is Holm-adjusted over the "
               "study's tested claims: a claim keeps its verdict across the study when that adjusted p < α.")
METHODS = {
    ("t", True): "paired t-test on the per-seed differences (scipy.stats.ttest_1samp)",
    ("t", False): "Welch t-test (scipy.stats.ttest_ind, equal_var=False)",
    ("t", None): "one-sample t-test against the threshold (scipy.stats.ttest_1samp)",
    ("permutation", True): "exact sign-flip permutation test on the per-seed differences (scipy.stats.permutation_test)",
    ("permutation", False): "exact permutation test of the difference of means (scipy.stats.permutation_test)",
    ("permutation", None): "exact sign-flip permutation test of value − threshold (scipy.stats.permutation_test)",
}
_SCHEMA = pa.schema(
    [
        ("claim", pa.string()), ("statement", pa.string()), ("source", pa.string()),
        ("metric", pa.string()), ("cell", pa.string()), ("a", pa.string()), ("b", pa.string()),
        ("direction", pa.string()), ("test", pa.string()), ("method", pa.string()),
        ("paired", pa.bool_()), ("n_a", pa.int64()), ("n_b", pa.int64()), ("n", pa.int64()),
        ("mean_a", pa.float64()), ("mean_b", pa.float64()), ("effect", pa.float64()),
        ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("confidence", pa.float64()),
        ("p", pa.float64()), ("p_holm", pa.float64()), ("alpha", pa.float64()),
        ("verdict", pa.string()), ("reason", pa.string()),
        ("seeds_needed", pa.int64()), ("seeds_advice", pa.string()),
        ("claim_verdict", pa.string()), ("combine", pa.string()),
        ("claim_p", pa.float64()), ("claim_p_study", pa.float64()), ("claim_verdict_study", pa.string()),
    ]
)


@dataclass(frozen=True)
class Comparison:
    """One claim × cell (× level of b): a row of claims.parquet."""

    cell: str  # 'latent_dims=64-32'; without `per`, the `where` filter or 'all trials'
    a: str
    b: str  # a level of the axis, or 'threshold 0.1'
    paired: Optional[bool]  # None: one-sample (threshold form)
    n_a: int
    n_b: int  # pairs when paired; 0 in the threshold form
    mean_a: Optional[float]
    mean_b: Optional[float]  # the threshold in the threshold form
    effect: Optional[float]
    ci: tuple[Optional[float], Optional[float]]
    p: Optional[float]
    verdict: str
    reason: str
    method: str
    p_holm: Optional[float] = None
    seeds: SeedsAdvice = SeedsAdvice()  # inconclusive only: seeds for 80 % power, or why none would do

    @property
    def n(self) -> int:
        """Seeds behind the test: pairs, the smaller side, or the one sample."""
        return self.n_a if self.paired is None else min(self.n_a, self.n_b)


@dataclass
class ClaimResult:
    spec: ClaimSpec
    alpha: float
    comparisons: list[Comparison]
    verdict: str
    why: str  # how the cells combined into the verdict
    left_out: list[str] = field(default_factory=list)  # trials and cells not tested
    p: Optional[float] = None  # the p the verdict is reached at (None: nothing tested); see the module docstring
    p_study: Optional[float] = None  # p Holm-adjusted across the study's claims
    study_verdict: str = INCONCLUSIVE  # the verdict once the study's claims are corrected together
    study_claims: int = 0  # how many claims the study-wide Holm ran over

    def methods(self) -> str:
        """The tests that were run ('' when every comparison was short of seeds)."""
        return "; ".join(sorted({c.method for c in self.comparisons if c.p is not None}))

    def side_text(self) -> str:
        """'VAE+BN+WU > VAE+BN' / 'kl_layer_4 > 0.1'."""
        sign = ">" if self.spec.direction == "greater" else "<"
        if self.spec.threshold is not None:
            return f"{self.spec.metric} {sign} {order.display(self.spec.threshold)}"
        others = ", ".join(level_text(b) for b in self.spec.b) or f"every other {self.spec.axis}"
        axis = "" if self.spec.axis == "variant" else f"{self.spec.axis}: "
        return f"{axis}{level_text(self.spec.a)} {sign} {others} on {self.spec.metric}"


# --------------------------------------------------------------------------- evaluation


def evaluate_claims(specs: Iterable[ClaimSpec], trials: pd.DataFrame, alpha: float) -> list[ClaimResult]:
    """Test every claim on a trials frame (trials.parquet + `label`, see collect.with_labels),
    each at α and all of them together (Holm across claims)."""
    return with_study_holm([evaluate_claim(spec, trials, alpha) for spec in specs], alpha)


def with_study_holm(results: list[ClaimResult], alpha: float) -> list[ClaimResult]:
    """Holm across the claims that have a p: `p_study` and `study_verdict` of each."""
    adjusted = holm([r.p for r in results])
    counted = sum(r.p is not None for r in results)
    for result, p_study in zip(results, adjusted):
        result.p_study, result.study_claims = p_study, counted
        decided = p_study is not None and p_study < alpha
        result.study_verdict = result.verdict if decided else INCONCLUSIVE
    return results


def evaluate_claim(spec: ClaimSpec, trials: pd.DataFrame, alpha: float) -> ClaimResult:
    problems = _frame_problems(spec, trials)
    if problems:
        return ClaimResult(spec, alpha, [], INCONCLUSIVE, "; ".join(problems), problems)
    subset = trials[_where_mask(spec.where, trials)]
    compared: list[pd.DataFrame] = []  # the trials of every side a test looked at
    notes: list[str] = []
    comparisons: list[Comparison] = []
    for cell_name, cell in _cells(spec, subset):
        if spec.threshold is not None:
            compared.append(cell)
            comparisons.append(_threshold_comparison(spec, cell_name, cell, alpha))
        else:
            comparisons += _level_comparisons(spec, cell_name, cell, subset, alpha, notes, compared)
    comparisons = _with_holm(comparisons)
    verdict, why = _combine(spec, comparisons, alpha)
    return ClaimResult(spec, alpha, comparisons, verdict, why, _left_out(spec, compared) + notes,
                       p=claim_p(spec, comparisons))


def _frame_problems(spec: ClaimSpec, trials: pd.DataFrame) -> list[str]:
    dims = [spec.per] if spec.per else []
    dims += [spec.axis] if spec.threshold is None else []
    problems = [f"no trial has {dim!r} (neither a param nor variant)" for dim in dims + list(spec.where)
                if axis_column(dim) not in trials.columns]
    if spec.metric not in trials.columns:
        problems.append(f"no trial logged the metric {spec.metric!r}")
    return problems


def level_matches(value: Any, wanted: Any) -> bool:
    """Whether a trial's value is the claim's level: `on` / `off` (spec.switch_level) match
    a numeric parameter's non-zero / zero values and a boolean one's true / false; other
    levels as report.tables.matches."""
    switch = switch_level(wanted)
    value = plain(value)
    if switch is not None and isinstance(value, (int, float)):  # bool is an int too: True ≠ 0
        return (value != 0) == switch
    return matches(value, wanted)


def level_text(level: Any) -> str:
    """A claim level as shown: `on` / `off` for switch levels, else as in the tables."""
    switch = switch_level(level)
    return order.display(level) if switch is None else ("on" if switch else "off")


def _where_mask(where: dict[str, Level], trials: pd.DataFrame) -> pd.Series:
    mask = pd.Series(True, index=trials.index)
    for key, wanted in where.items():
        mask &= trials[axis_column(key)].map(lambda v, w=wanted: level_matches(v, w)).astype(bool)
    return mask


def _usable(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Finished trials with a finite value of the metric."""
    values = pd.to_numeric(frame[metric], errors="coerce").astype(float)
    return frame[(frame["status"] == "finished") & np.isfinite(values)]


def _left_out(spec: ClaimSpec, compared: list[pd.DataFrame]) -> list[str]:
    """The compared sides' trials no test could use, one line per status."""
    if not compared:
        return []
    own = pd.concat(compared)
    own = own[~own.index.duplicated()]  # side a is compared with every b
    unused = own.drop(index=_usable(own, spec.metric).index)
    notes = []
    for status, group in unused.groupby("status", sort=True):
        ids = sorted(group["trial_id"].astype(str), key=order.natural_key)
        what = f"without a finite {spec.metric}" if status == "finished" else status
        notes.append(f"{len(ids)} trial(s) {what}, not tested: {', '.join(ids)}")
    return notes


def _cells(spec: ClaimSpec, subset: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if spec.per is None:
        where = ", ".join(f"{k}={order.display(v)}" for k, v in spec.where.items())
        return [(where or "all trials", subset)]
    column = subset[axis_column(spec.per)].map(plain)
    values = order.ordered(spec.per, list(column))
    if spec.levels:
        values = [v for v in values if any(level_matches(v, w) for w in spec.levels)]
    return [(f"{spec.per}={order.display(v)}", subset[column.map(lambda x, v=v: matches(x, v))]) for v in values]


def _values(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Usable values with their seed (None when unknown) and trial id."""
    usable = _usable(frame, metric)
    seeds = usable["seed"].map(plain) if "seed" in usable else pd.Series(None, index=usable.index, dtype=object)
    return pd.DataFrame({"seed": seeds.astype(object), "value": usable[metric].astype(float),
                         "trial_id": usable["trial_id"].astype(str)}, index=usable.index)


def _level_comparisons(
    spec: ClaimSpec, cell_name: str, cell: pd.DataFrame, subset: pd.DataFrame, alpha: float,
    notes: list[str], compared: list[pd.DataFrame],
) -> list[Comparison]:
    column = axis_column(spec.axis)
    levels = cell[column].map(plain)
    others = spec.b or [v for v in order.ordered(spec.axis, list(subset[column].map(plain))) if not level_matches(v, spec.a)]
    side_a = cell[levels.map(lambda v: level_matches(v, spec.a))]
    comparisons = []
    for b in others:
        side_b = cell[levels.map(lambda v, b=b: level_matches(v, b))]
        if side_a.empty or side_b.empty:
            # the grid has no such model here (e.g. a 1-layer ladder): not a failed test
            missing = level_text(spec.a) if side_a.empty else level_text(b)
            notes.append(f"{cell_name}: no trial of {spec.axis}={missing}, {level_text(b)} not compared")
            continue
        compared += [side_a, side_b]
        comparisons.append(_compare(spec, cell_name, level_text(b), side_a, side_b, alpha, notes))
    return comparisons


def _shared_seeds(a: pd.DataFrame, b: pd.DataFrame) -> Optional[list[Any]]:
    """The seeds to pair on — on both sides, once on each; every seed or at least two — or None.

    A seed's difference a_s − b_s removes what the seed adds to both models; a seed present
    on one side only (its partner failed) is left out rather than unpairing the cell."""
    seeds_a, seeds_b = list(a["seed"]), list(b["seed"])
    if None in seeds_a + seeds_b or len(set(seeds_a)) < len(seeds_a) or len(set(seeds_b)) < len(seeds_b):
        return None  # no seeds, or a cell that pools trials of several models per seed
    shared = sorted(set(seeds_a) & set(seeds_b))
    if (shared and set(seeds_a) == set(seeds_b)) or len(shared) >= 2:
        return shared
    return None


def _partnerless_note(cell: str, b_name: str, a: pd.DataFrame, b: pd.DataFrame, shared: list[Any]) -> str:
    """'' when every seed has its pair, else which trials the paired test left out."""
    alone = pd.concat([a, b])
    alone = alone[~alone["seed"].isin(shared)]
    if alone.empty:
        return ""
    ids = sorted(zip(alone["trial_id"], alone["seed"]), key=lambda ts: order.natural_key(ts[0]))
    named = ", ".join(f"{trial} (seed {seed})" for trial, seed in ids)
    return (f"{cell} vs {b_name}: paired on the {len(shared)} seeds both sides share; "
            f"{len(ids)} trial(s) without a partner, not tested: {named}")


def _compare(
    spec: ClaimSpec, cell: str, b_name: str, side_a: pd.DataFrame, side_b: pd.DataFrame, alpha: float,
    notes: list[str],
) -> Comparison:
    a, b = _values(side_a, spec.metric), _values(side_b, spec.metric)
    empty = _empty_reason(side_a if a.empty else side_b, spec.metric)
    shared = _shared_seeds(a, b)
    if shared is not None:
        notes += [note] if (note := _partnerless_note(cell, b_name, a, b, shared)) else []
        a = a[a["seed"].isin(shared)].sort_values("seed")
        b = b[b["seed"].isin(shared)].sort_values("seed")
    paired = shared is not None
    values_a, values_b = a["value"].to_numpy(), b["value"].to_numpy()
    base = dict(cell=cell, a=level_text(spec.a), b=b_name, paired=paired, method=METHODS[(spec.test, paired)],
                n_a=len(values_a), n_b=len(values_b))
    mean_a = float(values_a.mean()) if len(values_a) else None
    mean_b = float(values_b.mean()) if len(values_b) else None
    effect = mean_a - mean_b if mean_a is not None and mean_b is not None else None
    n = min(len(values_a), len(values_b))
    short = _too_few(n, empty)
    if short:
        return Comparison(mean_a=mean_a, mean_b=mean_b, effect=effect, ci=(None, None), p=None,
                          verdict=INCONCLUSIVE, reason=short, seeds=_short_advice(n), **base)
    if paired:
        diffs = values_a - values_b
        p, ci, note = _one_sample(diffs, spec.test, alpha, "paired differences")
        floor, sds = exact_p_floor(n), (_spread(diffs),)
    else:
        p, ci, note = _two_sample(values_a, values_b, spec.test, alpha)
        floor, sds = exact_p_floor(len(values_a), len(values_b)), (_spread(values_a), _spread(values_b))
    verdict, reason = _verdict(spec, effect, p, alpha, floor if spec.test == "permutation" else 0.0, n)
    advice = _advice(spec, verdict, effect, sds, n, alpha)
    return Comparison(mean_a=mean_a, mean_b=mean_b, effect=effect, ci=ci, p=p, verdict=verdict,
                      reason=_with_note(reason, note), seeds=advice, **base)


def _threshold_comparison(spec: ClaimSpec, cell_name: str, cell: pd.DataFrame, alpha: float) -> Comparison:
    assert spec.threshold is not None
    values = _values(cell, spec.metric)["value"].to_numpy()
    mean = float(values.mean()) if len(values) else None
    effect = mean - spec.threshold if mean is not None else None
    base = dict(cell=cell_name, a=spec.metric, b=f"threshold {order.display(spec.threshold)}", paired=None,
                n_a=len(values), n_b=0, mean_a=mean, mean_b=spec.threshold, effect=effect,
                method=METHODS[(spec.test, None)])
    short = _too_few(len(values), _empty_reason(cell, spec.metric))
    if short:
        return Comparison(ci=(None, None), p=None, verdict=INCONCLUSIVE, reason=short,
                          seeds=_short_advice(len(values)), **base)
    excess = values - spec.threshold
    p, (low, high), note = _one_sample(excess, spec.test, alpha, "values − threshold")
    floor = exact_p_floor(len(values)) if spec.test == "permutation" else 0.0
    verdict, reason = _verdict(spec, effect, p, alpha, floor, len(values))
    advice = _advice(spec, verdict, effect, (_spread(excess),), len(values), alpha)
    return Comparison(ci=(low, high), p=p, verdict=verdict, reason=_with_note(reason, note), seeds=advice, **base)


def _too_few(n: int, empty: str) -> str:
    if n == 0:
        return empty
    return "one seed" if n == 1 else ""


def _empty_reason(side: pd.DataFrame, metric: str) -> str:
    """Why a side has no value: nothing finished, or finished without the metric."""
    finished = int((side["status"] == "finished").sum())
    return f"no finite {metric} ({finished} finished trial(s) without one)" if finished else "no finished trial"


def _with_note(reason: str, note: str) -> str:
    return f"{reason}; {note}" if note else reason


# --------------------------------------------------------------------------- seeds needed


def _spread(x: np.ndarray) -> float:
    """Sample sd (ddof=1), exactly 0 for a side the tests treat as without spread."""
    return 0.0 if _no_spread(x) else float(np.std(x, ddof=1))


def _advice(
    spec: ClaimSpec, verdict: str, effect: Optional[float], sds: tuple[float, ...], n: int, alpha: float
) -> SeedsAdvice:
    if verdict != INCONCLUSIVE or effect is None:
        return SeedsAdvice()
    return seeds_advice(effect, sds, n, alpha, permutation=spec.test == "permutation")


def _short_advice(n: int) -> SeedsAdvice:
    return SeedsAdvice(None, "one seed: no spread to plan from; run a second seed", "≥ 2") if n == 1 else SeedsAdvice()


# --------------------------------------------------------------------------- tests


def _no_spread(x: np.ndarray) -> bool:
    return bool(np.allclose(x, x[0], rtol=0.0, atol=1e-12))


def _one_sample(x: np.ndarray, test: str, alpha: float, what: str) -> tuple[float, tuple[float, float], str]:
    """Two-sided p that mean(x) = 0, the (1 − α) t-interval of mean(x), and a note on how p was had."""
    if _no_spread(x):
        return _steady_one_sample(x, test, what)
    result = stats.ttest_1samp(x, 0.0)
    interval = result.confidence_interval(confidence_level=1.0 - alpha)
    ci = (float(interval.low), float(interval.high))
    if test == "t":
        return float(result.pvalue), ci, ""
    exact = stats.permutation_test((x,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                   alternative="two-sided")
    return float(exact.pvalue), ci, ""


def _steady_one_sample(x: np.ndarray, test: str, what: str) -> tuple[float, tuple[float, float], str]:
    """No spread: t is ±inf (or 0/0), so p is the exact sign-flip p — only the n flips of
    all one sign reach |mean(x)|, p = 2/2ⁿ — which needs no variance to be valid."""
    n, mean = len(x), float(x.mean())
    if mean == 0.0:
        return 1.0, (0.0, 0.0), f"all {n} {what} are 0"
    p = 2.0 / 2**n
    how = "the t statistic is undefined, so p is the exact sign-flip p" if test == "t" else "exact sign-flip p"
    return p, (mean, mean), f"no spread: all {n} {what} equal {number(mean)}; {how} 2/2^{n} = {p_text(p)}"


def _two_sample(a: np.ndarray, b: np.ndarray, test: str, alpha: float) -> tuple[float, tuple[float, float], str]:
    """Two-sided p that mean(a) = mean(b), the (1 − α) Welch interval of the difference, and a note."""
    if _no_spread(a) and _no_spread(b):
        return _steady_two_sample(a, b, test)
    result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(confidence_level=1.0 - alpha)
    ci = (float(interval.low), float(interval.high))
    if test == "t":
        return float(result.pvalue), ci, ""
    exact = stats.permutation_test((a, b), lambda x, y: np.mean(x) - np.mean(y), permutation_type="independent",
                                   n_resamples=np.inf, alternative="two-sided")
    return float(exact.pvalue), ci, ""


def _steady_two_sample(a: np.ndarray, b: np.ndarray, test: str) -> tuple[float, tuple[float, float], str]:
    """Each side one value: Welch is undefined; the exact relabelling p is 1/C(n_a + n_b, n_a)
    (2/C with equal sides, whose swap reaches −diff too)."""
    diff = float(a.mean() - b.mean())
    if diff == 0.0:
        return 1.0, (0.0, 0.0), "both sides hold one and the same value"
    n_a, n_b = len(a), len(b)
    count = 2 if n_a == n_b else 1
    p = count / math.comb(n_a + n_b, n_a)
    how = "Welch's t is undefined, so p is the exact permutation p" if test == "t" else "exact permutation p"
    return p, (diff, diff), (f"no spread: each side holds one value ({number(float(a[0]))} vs {number(float(b[0]))}); "
                             f"{how} {count}/C({n_a + n_b}, {n_a}) = {p_text(p)}")


def _verdict(spec: ClaimSpec, effect: Optional[float], p: float, alpha: float, floor: float, n: int) -> tuple[str, str]:
    if floor >= alpha:
        return INCONCLUSIVE, f"n={n}: the exact test's smallest attainable p is {floor:.3g} ≥ α={alpha:g}"
    if p >= alpha or effect is None or effect == 0.0:
        return INCONCLUSIVE, f"p={p_text(p)} ≥ α={alpha:g}"
    if (effect > 0) == (spec.direction == "greater"):
        return HOLDS, f"p={p_text(p)} < α={alpha:g}"
    return CONTRADICTED, f"p={p_text(p)} < α={alpha:g}, effect has the opposite sign"


def holm(ps: list[Optional[float]]) -> list[Optional[float]]:
    """Holm step-down adjusted p of each p (None stays None and is not counted)."""
    tested = [(k, p) for k, p in enumerate(ps) if p is not None]
    adjusted: list[Optional[float]] = [None] * len(ps)
    running = 0.0
    m = len(tested)
    for rank, (k, p) in enumerate(sorted(tested, key=lambda kp: kp[1])):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[k] = running
    return adjusted


def _with_holm(comparisons: list[Comparison]) -> list[Comparison]:
    """Holm step-down adjusted p over a claim's tested comparisons."""
    adjusted = holm([c.p for c in comparisons])
    return [replace(c, p_holm=p) for c, p in zip(comparisons, adjusted)]


def _sign(spec: ClaimSpec, c: Comparison) -> int:
    """+1: the effect has the claimed sign; -1: the opposite one; 0: none (or no effect)."""
    if c.effect is None or c.effect == 0.0 or not math.isfinite(c.effect):
        return 0
    return 1 if (c.effect > 0) == (spec.direction == "greater") else -1


def claim_p(spec: ClaimSpec, comparisons: list[Comparison]) -> Optional[float]:
    """The p a claim's verdict is reached at (module docstring): < α exactly when `_combine`
    decides it; None when no comparison was tested."""
    tested = [c for c in comparisons if c.p is not None]
    if not tested:
        return None
    every = len(tested) == len(comparisons)
    claimed = [c for c in tested if _sign(spec, c) > 0]
    opposite = [c for c in tested if _sign(spec, c) < 0]
    if spec.combine == "all":  # holds: intersection-union; contradicted: Holm within the claim
        holds = max(c.p for c in claimed) if every and len(claimed) == len(comparisons) else None
        against = min(c.p_holm for c in opposite) if opposite else None
    else:  # any: holds after Holm within the claim; contradicted: intersection-union
        holds = min(c.p_holm for c in claimed) if claimed else None
        against = max(c.p for c in opposite) if every and len(opposite) == len(comparisons) else None
    found = [p for p in (holds, against) if p is not None]
    return min(found) if found else 1.0


def _combine(spec: ClaimSpec, comparisons: list[Comparison], alpha: float) -> tuple[str, str]:
    m = len(comparisons)
    if m == 0:
        return INCONCLUSIVE, "nothing to compare: no cell holds trials of both sides"
    untested = [c.reason for c in comparisons if c.p is None]
    if len(untested) == m:
        kinds = ", ".join(f"{reason} in {untested.count(reason)} of {m}" for reason in dict.fromkeys(untested))
        return INCONCLUSIVE, f"no comparison could be tested ({kinds})"
    holding = [c for c in comparisons if c.verdict == HOLDS]
    against = [c for c in comparisons if c.verdict == CONTRADICTED]
    holm_for = [c for c in holding if c.p_holm is not None and c.p_holm < alpha]
    holm_against = [c for c in against if c.p_holm is not None and c.p_holm < alpha]
    if spec.combine == "all":
        rule = "all: holds when every comparison holds at α; contradicted when one does not after Holm"
        if holm_against:
            return CONTRADICTED, f"{len(holm_against)} of {m} contradicted after Holm ({rule})"
        if len(holding) == m:
            return HOLDS, f"{m} of {m} hold ({rule})"
        return INCONCLUSIVE, f"{len(holding)} of {m} hold, {len(against)} contradicted before Holm ({rule})"
    rule = "any: holds when one comparison holds after Holm; contradicted when every one is contradicted at α"
    if holm_for:
        return HOLDS, f"{len(holm_for)} of {m} hold after Holm ({rule})"
    if len(against) == m:
        return CONTRADICTED, f"{m} of {m} contradicted ({rule})"
    return INCONCLUSIVE, f"{len(holding)} of {m} hold before Holm, {len(against)} contradicted ({rule})"


def p_text(p: Optional[float]) -> str:
    if p is None:
        return "—"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


# --------------------------------------------------------------------------- output


def claims_table(results: list[ClaimResult]) -> pa.Table:
    """claims.parquet: one row per claim × cell (× level of b); fixed schema, claim order."""
    rows: dict[str, list[Any]] = {name: [] for name in _SCHEMA.names}
    for result in results:
        spec = result.spec
        for c in result.comparisons:
            values = {
                "claim": spec.name, "statement": spec.statement, "source": spec.source, "metric": spec.metric,
                "cell": c.cell, "a": c.a, "b": c.b, "direction": spec.direction, "test": spec.test,
                "method": c.method, "paired": c.paired, "n_a": c.n_a, "n_b": c.n_b, "n": c.n,
                "mean_a": c.mean_a, "mean_b": c.mean_b, "effect": c.effect, "ci_low": c.ci[0],
                "ci_high": c.ci[1], "confidence": 1.0 - result.alpha, "p": c.p, "p_holm": c.p_holm,
                "alpha": result.alpha, "verdict": c.verdict, "reason": c.reason,
                "seeds_needed": c.seeds.needed, "seeds_advice": c.seeds.text,
                "claim_verdict": result.verdict, "combine": spec.combine,
                "claim_p": result.p, "claim_p_study": result.p_study, "claim_verdict_study": result.study_verdict,
            }
            for name in _SCHEMA.names:
                rows[name].append(values[name])
    return pa.table(rows, schema=_SCHEMA)


def number(value: Optional[float]) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:+.2f}" if abs(value) < 1000 else f"{value:+.1f}"


def ci_text(c: Comparison) -> str:
    return "—" if c.ci[0] is None else f"[{number(c.ci[0])}, {number(c.ci[1])}]"


def n_text(c: Comparison) -> str:
    if c.paired is None:
        return f"n={c.n_a}"
    return f"paired n={c.n_a}" if c.paired else f"n={c.n_a} vs {c.n_b}"


def comparison_line(c: Comparison) -> str:
    """'latent_dims=64-32  vs VAE+BN  +1.02 [+0.61, +1.43]  paired n=2  p=0.011  holds (p=0.011 < α=0.05)',
    and for an inconclusive one what more seeds would do."""
    line = (f"{c.cell}  vs {c.b}  effect {number(c.effect)} {ci_text(c)}  {n_text(c)}  p={p_text(c.p)}  "
            f"{c.verdict} ({c.reason})")
    return f"{line}; seeds: {c.seeds.text}" if c.seeds.text else line


def verdict_counts(results: list[ClaimResult], study: bool = False) -> str:
    """'2 holds, 1 contradicted, 3 inconclusive', per claim or across the study."""
    verdicts = [r.study_verdict if study else r.verdict for r in results]
    return ", ".join(f"{verdicts.count(v)} {v}" for v in (HOLDS, CONTRADICTED, INCONCLUSIVE))


def headline(results: list[ClaimResult]) -> str:
    """'6 claims tested at α = 0.05: 6 holds, …; with Holm across the 6 claims: 4 holds, …'."""
    alpha = results[0].alpha
    counted = results[0].study_claims
    return (f"{len(results)} claims tested at α = {alpha:g}, each on its own: {verdict_counts(results)}; "
            f"with Holm across the {counted} tested claim{'' if counted == 1 else 's'}: "
            f"{verdict_counts(results, study=True)}")


def study_text(result: ClaimResult) -> str:
    """'holds (Holm-adjusted p = 0.003 across 6 claims)', or why there is none."""
    if result.p_study is None:
        return "not tested, not counted"
    relation = "<" if result.p_study < result.alpha else "≥"
    return (f"{result.study_verdict} (Holm-adjusted p = {p_text(result.p_study)} {relation} α={result.alpha:g} "
            f"across {result.study_claims} claims; claim p = {p_text(result.p)})")


def format_claims(results: list[ClaimResult]) -> list[str]:
    """Plain-text verdicts (the `vaelab claims` output)."""
    lines: list[str] = [headline(results)] if results else []
    for result in results:
        spec = result.spec
        lines.append(f"[{result.verdict}] {spec.name}: {spec.statement}")
        lines.append(f"    source: {spec.source}; tested: {result.side_text()}; {result.why}")
        lines.append(f"    across the study: {study_text(result)}")
        if result.methods():
            lines.append(f"    test: {result.methods()}; CI = {1 - result.alpha:.0%} t-interval of the effect")
        lines += [f"    {comparison_line(c)}" for c in result.comparisons]
        lines += [f"    left out: {note}" for note in result.left_out]
    return lines
