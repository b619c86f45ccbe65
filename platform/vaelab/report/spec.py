"""The `report:` section of a study: which tables and figures its report holds.

Imports only pydantic, so the study schema (studies/) and the report generator (report/)
share one definition without the report importing torch or ray.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FigureName = Literal[
    "ll_vs_depth",  # ICML Fig 3: test log-likelihood vs number of latent layers, per variant
    "unit_kl_heatmaps",  # ICML Fig 5: per-unit KL over epochs, one panel per layer
    "active_units",  # ICML Table 2 as bars: active units per layer per variant
    "kl_std_normal",  # ICML Fig 6a: KL(q(z_i|.)||N(0,I)) per layer
    "latent_pca",  # ICML Fig 7: PCA of posterior means per layer, coloured by label
    "prior_samples",  # ICML Fig 6b: samples with the prior injected at each layer
    "kl_vs_rho",  # Hermite VAE Fig 1: top-layer KL vs rho (phase transition)
    "curves",  # training curves (test_elbo, kl_total, beta) per variant
]


class PaperRef(BaseModel):
    """Which rows of paper_results.csv sit beside this table's cells.

    A cell (row value, column value) is matched on the csv's `variant` and
    `latent_dims` columns; for per-layer tables on `metric` = f"{metric}_{layer}".
    """

    model_config = ConfigDict(extra="forbid")
    source: str  # e.g. lvae-icml
    table: str  # e.g. table1
    dataset: str  # e.g. mnist
    metric: str  # e.g. test_ll_iw5000, or active_units_layer (per-layer tables)
    finetune: str = "none"
    # the study's variant label -> the paper's, where they differ (e.g. the ICML tables
    # call the ladder model LADDER+BN+WU, the NIPS tables LVAE+BN+WU)
    variant_map: dict[str, str] = Field(default_factory=dict)


class TableSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    title: str = ""
    # `rows`/`columns`: a trial param (latent_dims, depth, rho, ...), `variant` (the
    # variant label tag) or, for rows only, `layer` (then `value` is a per-layer metric
    # prefix such as active_units_layer and rows are layers 1..L plus a total).
    rows: str
    columns: str
    value: str  # a final metric name, e.g. test_ll_iw
    aggregate: Literal["mean_std"] = "mean_std"  # over seeds, with n
    better: Literal["higher", "lower"] = "higher"
    where: dict[str, str | int | float | bool] = Field(default_factory=dict)  # param filter
    paper: Optional[PaperRef] = None
    # explicit order (values as shown: '64-32', 'VAE+BN', 0.8, 5, true); unnamed values follow
    row_order: list[str | int | float | bool] = Field(default_factory=list)
    column_order: list[str | int | float | bool] = Field(default_factory=list)


Level = str | int | float | bool  # a value of a param or a variant label, as written
SWITCHES = {"on": True, "off": False}  # claim levels that survive budgets (switch_level)


def switch_level(level: object) -> Optional[bool]:
    """True for a claim level `on`, False for `off`, None for any other level.

    A budget rescales a schedule's length (warmup_epochs by warmup_fraction, or to its own
    value) but never turns it on or off: `on` names every trial whose parameter is
    non-zero (true for a boolean one), `off` every trial where it is 0 (false), in every
    budget. YAML reads a bare on / off as a boolean; quoted "on" / "off" mean the same."""
    if isinstance(level, bool):
        return level
    return SWITCHES.get(level) if isinstance(level, str) else None


def exact_p_floor(n_a: int, n_b: Optional[int] = None) -> float:
    """The smallest two-sided p the exact permutation test of a claim cell can give:
    2/2ⁿ over the n sign flips of paired differences or of values − threshold (`n_b`
    None), 2/C(n_a + n_b, n_a) over the relabellings of two unpaired sides. With too few
    seeds it is at or above α, and no data can make the cell hold (report/claims.py)."""
    if n_b is None:
        return 2.0 / 2**n_a
    return 2.0 / math.comb(n_a + n_b, n_a)


class ClaimSpec(BaseModel):
    """A paper's claim as a comparison the study's grid can answer (report/claims.py).

    Two forms:
    - compare: on `metric`, level `a` of `axis` is greater (or less, `direction`) than
      each level in `b` (empty: every other level of `axis`), e.g. a = VAE+BN+WU,
      b = [VAE+BN]; "a has the most" is `b: []`.
    - threshold: `metric` is greater (less) than `threshold`.
    `per` splits the trials into cells (one test per value, e.g. latent_dims or rho),
    `levels` keeps only some of those values, `where` filters trials first. `combine`
    says how the cells' tests make one verdict (see claims.py).
    Levels of a numeric parameter may be `on` / `off` (non-zero / zero, `switch_level`):
    `axis: warmup_epochs, a: on, b: [off]` holds in every budget, where `a: 200` names
    the paper budget's warm-up length only.
    """

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    statement: str  # the claim in words, e.g. "VAE+BN+WU > VAE+BN on test_ll_iw at every depth"
    source: str  # where the paper says it, e.g. "ICML 2016 §4, Fig 3c"
    metric: str  # a final metric: test_ll_iw, active_units, kl_layer_4, ...
    axis: str = "variant"  # compare form: the dimension a and b are levels of
    a: Optional[Level] = None
    b: list[Level] = Field(default_factory=list)
    threshold: Optional[float] = None
    direction: Literal["greater", "less"] = "greater"
    per: Optional[str] = None
    levels: list[Level] = Field(default_factory=list)
    where: dict[str, Level] = Field(default_factory=dict)
    combine: Literal["all", "any"] = "all"
    # t: paired t-test (Welch / one-sample t when unpaired); permutation: exact
    # permutation test (sign flips when paired). Both from scipy.stats.
    test: Literal["t", "permutation"] = "t"

    @field_validator("b", mode="before")
    @classmethod
    def _one_level_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, (str, int, float, bool)) else value

    @model_validator(mode="after")
    def _one_form(self) -> "ClaimSpec":
        if (self.a is None) == (self.threshold is None):
            raise ValueError("a claim needs either `a` (compare levels of `axis`) or `threshold`, not both")
        if self.threshold is not None and self.b:
            raise ValueError("`b` belongs to the compare form; a threshold claim has none")
        if self.levels and self.per is None:
            raise ValueError("`levels` needs `per` (the param whose values they are)")
        return self


class ReportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.05, gt=0.0, lt=0.5)  # the level claims are tested at
    claims: list[ClaimSpec] = Field(default_factory=list)
    tables: list[TableSpec] = Field(default_factory=list)
    figures: list[FigureName] = Field(default_factory=list)  # empty: every figure the data allows
    notes: str = ""  # free text shown at the top of the report (budget caveats etc.)
