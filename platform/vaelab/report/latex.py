"""tables.tex: the claims and ablation tables as booktabs LaTeX, ready to `\\input`.

The including document needs `\\usepackage{booktabs}` (and `amssymb` for none of it:
only `$\\pm$` and `\\mathbf`). Layout follows the papers' tables: one row per row value,
one column per column value; a column with published numbers gets a second sub-column
"paper" beside "ours". Cells are mean ± std over seeds of finished trials, the best
mean of a row in bold; a cell whose n differs from the table's usual n carries it as a
superscript. Text is escaped, so labels such as VAE+BN+WU or kl_layer_4 are safe.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Optional

from vaelab.report import order
from vaelab.report.claims import ClaimResult, Comparison, number, p_text
from vaelab.report.tables import TOTAL, Cell, TableResult

_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
_SPECIAL_RE = re.compile("|".join(re.escape(k) for k in _SPECIAL))
_SYMBOLS = {">": r"$>$", "<": r"$<$", "|": r"$|$", "ρ": r"$\rho$", "α": r"$\alpha$", "≥": r"$\geq$", "≤": r"$\leq$", "±": r"$\pm$", "−": "-",
            "—": "---", "§": r"\S{}", "‖": r"$\|$", "·": r"$\cdot$", "→": r"$\to$", "×": r"$\times$"}


def escape(text: Any) -> str:
    """Plain text -> LaTeX text (special characters escaped, a few symbols in math)."""
    out = _SPECIAL_RE.sub(lambda m: _SPECIAL[m.group(0)], str(text))
    for symbol, latex in _SYMBOLS.items():
        out = out.replace(symbol, latex)
    return out


def render_latex(study: str, claims: list[ClaimResult], tables: list[TableResult]) -> str:
    parts = [
        f"% tables.tex of study {study}, written by `vaelab report` (regenerated from MLflow).",
        "% \\input{tables.tex} in a document that loads booktabs.",
        "",
    ]
    if claims:
        parts += claims_latex(study, claims) + [""]
    for table in tables:
        if table.rows and table.columns:
            parts += table_latex(study, table) + [""]
    return "\n".join(parts).rstrip() + "\n"


# --------------------------------------------------------------------------- ablation tables


def table_latex(study: str, table: TableResult) -> list[str]:
    with_paper = [c for c in table.columns if any(_has_paper(table.cell(r, c)) for r in table.rows)]
    usual_n = _usual_n(table)
    spec = "l" + "".join("rr" if c in with_paper else "r" for c in table.columns)
    corner = "layer" if table.spec.rows == "layer" else table.spec.rows
    head = [escape(corner)]
    rule = []
    start = 2
    for column in table.columns:
        width = 2 if column in with_paper else 1
        head.append(f"\\multicolumn{{{width}}}{{c}}{{{escape(order.display(column))}}}" if width == 2 else escape(order.display(column)))
        if width == 2:
            rule.append(f"\\cmidrule(lr){{{start}-{start + 1}}}")
        start += width
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{escape(table.title)}. {escape(_caption(table, usual_n))}}}",
        f"\\label{{tab:{_label(study)}-{_label(table.spec.name)}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(head) + " \\\\",
    ]
    if with_paper:
        lines.append(" ".join(rule))
        sub = [""] + [x for c in table.columns for x in (("ours", "paper") if c in with_paper else ("ours",))]
        lines.append(" & ".join(sub) + " \\\\")
    lines.append("\\midrule")
    for row in table.rows:
        if row == TOTAL:
            lines.append("\\midrule")
        cells = [("total" if row == TOTAL else escape(order.display(row)))]
        for column in table.columns:
            cell = table.cell(row, column)
            cells.append(_ours(cell, (row, column) in table.best, usual_n))
            if column in with_paper:
                cells.append(_paper(cell))
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return lines


def _has_paper(cell: Optional[Cell]) -> bool:
    return cell is not None and cell.paper is not None


def _usual_n(table: TableResult) -> int:
    counts = Counter(cell.n for cell in table.cells.values() if cell.n)
    return counts.most_common(1)[0][0] if counts else 0


def _caption(table: TableResult, usual_n: int) -> str:
    spec = table.spec
    value = f"{spec.value}_i" if spec.rows == "layer" else spec.value
    text = f"{value}, mean ± std over {usual_n} seed{'s' if usual_n != 1 else ''} of finished trials"
    text += f"; bold: best per row ({spec.better} is better)"
    if spec.where:
        text += "; " + ", ".join(f"{k} = {order.display(v)}" for k, v in spec.where.items())
    if spec.paper is not None:
        text += f"; paper: {spec.paper.source} {spec.paper.table}"
    return text + "."


def _ours(cell: Optional[Cell], best: bool, usual_n: int) -> str:
    if cell is None or cell.mean is None:
        return "---"
    body = _num(cell.mean) if cell.std is None else f"{_num(cell.mean)} \\pm {_num(cell.std)}"
    body = f"\\mathbf{{{body}}}" if best else body
    sup = f"^{{n={cell.n}}}" if cell.n != usual_n else ""
    return f"${body}{sup}$"


def _paper(cell: Optional[Cell]) -> str:
    return f"${cell.paper:g}$" if cell is not None and cell.paper is not None else ""


def _num(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.2f}"


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


# --------------------------------------------------------------------------- claims


def claims_latex(study: str, claims: list[ClaimResult]) -> list[str]:
    alpha = claims[0].alpha
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{Claims of the papers tested on study {escape(study)} at $\\alpha = {alpha:g}$: effect = difference "
        f"of means (a $-$ b, or value $-$ threshold) with its {1 - alpha:.0%} t-interval; p two-sided, paired by seed "
        "where both sides share seeds; verdict per comparison, then per claim.}".replace("%", r"\%"),
        f"\\label{{tab:{_label(study)}-claims}}",
        "\\begin{tabular}{llrlrrl}",
        "\\toprule",
        "claim & cell & effect & CI & n & p & verdict \\\\",
        "\\midrule",
    ]
    for k, result in enumerate(claims):
        if k:
            lines.append("\\midrule")
        title = f"\\multicolumn{{7}}{{@{{}}p{{0.95\\textwidth}}@{{}}}}{{\\textbf{{{escape(result.spec.name)}}} ({escape(result.verdict)}): " \
                f"{escape(result.spec.statement)} --- {escape(result.spec.source)}}} \\\\"
        lines.append(title)
        for c in result.comparisons:
            lines.append(_claim_row(c))
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return lines


def _claim_row(c: Comparison) -> str:
    vs = f"vs {c.b}" if c.paired is not None else c.b
    ci = "---" if c.ci[0] is None else f"$[{number(c.ci[0])}, {number(c.ci[1])}]$"
    n = f"{c.n_a}" if c.paired is None else (f"{c.n_a} pairs" if c.paired else f"{c.n_a}/{c.n_b}")
    p = "---" if c.p is None else p_text(c.p)
    effect = "---" if c.effect is None or not math.isfinite(c.effect) else f"${number(c.effect)}$"
    return " & ".join(["", escape(f"{c.cell} {vs}"), effect, ci, n, p, escape(c.verdict)]) + " \\\\"
