"""tables.tex: the claims and ablation tables as booktabs LaTeX, ready to `\\input`.

The including document needs `\\usepackage{booktabs}` (math: only `$\\pm$`, `\\mathbf`,
`\\mathcal`). Layout follows the papers' tables: one row per row value, one column per
column value under a spanning label of the column axis; a column with published numbers
gets a second sub-column "paper" beside "ours". Cells are mean ± std over seeds of
finished trials, the best mean of a row in bold; a cell whose n differs from the table's
usual n carries it as a superscript. Counts (active units) print as integers, as the
papers print them.

Captions are written as a paper would: metrics, axes and paper sources in words
("test log-likelihood $\\mathcal{L}_{1000}$", "Sønderby et al. (ICML 2016), Table 1"),
bounds written L_K in titles as $\\mathcal{L}_K$, an axis's numbers in one format
($10^{-8}$ beside $10^{-4}$). Other text is escaped, so labels such as VAE+BN+WU are safe.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Optional

from vaelab.report import order
from vaelab.report.claims import ClaimResult, Comparison, number, p_text
from vaelab.report.spec import PaperRef
from vaelab.report.tables import BOUND, IW_METRIC, TOTAL, Cell, TableResult, axis_texts

_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
_SPECIAL_RE = re.compile("|".join(re.escape(k) for k in _SPECIAL))
_SYMBOLS = {">": r"$>$", "<": r"$<$", "|": r"$|$", "ρ": r"$\rho$", "α": r"$\alpha$", "≥": r"$\geq$", "≤": r"$\leq$", "±": r"$\pm$", "−": "-",
            "—": "---", "§": r"\S{}", "‖": r"$\|$", "·": r"$\cdot$", "→": r"$\to$", "×": r"$\times$"}
_SCIENTIFIC = re.compile(r"^(-?\d+(?:\.\d+)?)e([+-]\d+)$")

# what a paper writes for the metrics a trial logs; per-layer families take the layer
_METRIC_WORDS = {
    "test_elbo": r"test ELBO $\mathcal{L}_1$",
    "train_elbo": r"training ELBO $\mathcal{L}_1$",
    "kl_total": "total KL",
    "active_units": "active units",
    "peak_mem_mb": "peak memory (MB)",
}
_LAYER_WORDS = {
    "active_units_layer": "active units",
    "kl_layer": "KL",
    "kl_std_normal_layer": r"KL to $\mathcal{N}(0, I)$",
}
_AXIS_WORDS = {
    "variant": "model", "latent_dims": "latent units per layer", "depth": "latent layers",
    "rho": r"$\rho$", "adam_eps": r"Adam $\epsilon$",
}
# the papers of paper_results.csv by their authors and venue, in LaTeX
_PAPERS = {
    "lvae-icml": r"S\o{}nderby et al.\ (ICML 2016)",
    "lvae-nips": r"S\o{}nderby et al.\ (NIPS 2016)",
    "iwae-burda2015": r"Burda et al.\ (2015)",
    "vgp-tran2015": r"Tran et al.\ (2015)",
    "hvae-iclr": "the Hermite VAE paper (ICLR)",
}


def escape(text: Any) -> str:
    """Plain text -> LaTeX text (special characters escaped, a few symbols in math)."""
    out = _SPECIAL_RE.sub(lambda m: _SPECIAL[m.group(0)], str(text))
    for symbol, latex in _SYMBOLS.items():
        out = out.replace(symbol, latex)
    return out


def prose(text: str) -> str:
    """Escaped text whose bounds L_K, L_100 read $\\mathcal{L}_{K}$, $\\mathcal{L}_{100}$."""
    parts, last = [], 0
    for match in BOUND.finditer(text):
        parts += [escape(text[last:match.start()]), f"$\\mathcal{{L}}_{{{match.group(1)}}}$"]
        last = match.end()
    return "".join(parts) + escape(text[last:])


def metric_words(name: str, eval_iw: tuple[int, ...] = ()) -> str:
    """A metric as a paper names it: 'test log-likelihood $\\mathcal{L}_{1000}$', 'active units of layer 2'."""
    if name == IW_METRIC:
        k = str(eval_iw[0]) if len(eval_iw) == 1 else "K"
        return f"test log-likelihood $\\mathcal{{L}}_{{{k}}}$"
    if name in _METRIC_WORDS:
        return _METRIC_WORDS[name]
    if name in _LAYER_WORDS:
        return f"{_LAYER_WORDS[name]} per layer"
    family, _, layer = name.rpartition("_")
    if family in _LAYER_WORDS and layer.isdigit():
        return f"{_LAYER_WORDS[family]} of layer {layer}"
    return f"\\texttt{{{escape(name)}}}"


def axis_words(axis: str) -> str:
    return _AXIS_WORDS.get(axis, escape(axis.replace("_", " ")))


def paper_words(ref: PaperRef) -> str:
    """'Sønderby et al.\\ (ICML 2016), Table 1' (and how the paper fine-tuned, when it did)."""
    source = _PAPERS.get(ref.source) or escape(ref.source)
    table = re.sub(r"^table(\d+)$", r"Table \1", ref.table)
    text = f"{source}, {escape(table)}"
    tuned = re.fullmatch(r"annlr_mc(\d+)_iw(\d+)", ref.finetune)
    if tuned:
        text += f", fine-tuned with an annealed learning rate, {tuned.group(1)} MC and {tuned.group(2)} IW samples"
    elif ref.finetune != "none":
        text += f", fine-tuned ({escape(ref.finetune)})"
    return text


def value_texts(axis: str, values: list[Any]) -> list[str]:
    """An axis's values in LaTeX, in one format per axis: 1e-08 reads $10^{-8}$."""
    if axis == "layer":
        return ["total" if v == TOTAL else escape(order.display(v)) for v in values]
    return [_scientific(text) for text in axis_texts(values)]


def _scientific(text: str) -> str:
    match = _SCIENTIFIC.match(text)
    if match is None:
        return escape(text)
    mantissa, exponent = match.group(1), int(match.group(2))
    power = f"10^{{{exponent}}}"
    return f"${power}$" if mantissa == "1" else f"${mantissa} \\times {power}$"


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
    widths = [2 if c in with_paper else 1 for c in table.columns]
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{prose(table.title)}. {_caption(table, usual_n)}}}",
        f"\\label{{tab:{_label(study)}-{_label(table.spec.name)}}}",
        f"\\begin{{tabular}}{{l{''.join('rr' if w == 2 else 'r' for w in widths)}}}",
        "\\toprule",
    ]
    lines += _head(table, widths)
    if with_paper:
        sub = [""] + [x for c in table.columns for x in (("ours", "paper") if c in with_paper else ("ours",))]
        lines.append(" & ".join(sub) + " \\\\")
    lines.append("\\midrule")
    for row, label in zip(table.rows, value_texts(_row_axis(table), table.rows)):
        if row == TOTAL:
            lines.append("\\midrule")
        cells = [label]
        for column in table.columns:
            cell = table.cell(row, column)
            cells.append(_ours(cell, (row, column) in table.best, usual_n))
            if column in with_paper:
                cells.append(_paper(cell))
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return lines


def _row_axis(table: TableResult) -> str:
    return "layer" if table.spec.rows == "layer" else table.spec.rows


def _head(table: TableResult, widths: list[int]) -> list[str]:
    """The column axis's name spanning its values, then the values (paper columns ruled)."""
    span = sum(widths)
    lines = [f" & \\multicolumn{{{span}}}{{c}}{{{axis_words(table.spec.columns)}}} \\\\",
             f"\\cmidrule(lr){{2-{span + 1}}}"]
    head, rules, start = [axis_words(_row_axis(table))], [], 2
    for text, width in zip(value_texts(table.spec.columns, table.columns), widths):
        head.append(f"\\multicolumn{{2}}{{c}}{{{text}}}" if width == 2 else text)
        if width == 2:
            rules.append(f"\\cmidrule(lr){{{start}-{start + 1}}}")
        start += width
    lines.append(" & ".join(head) + " \\\\")
    return lines + ([" ".join(rules)] if rules else [])


def _has_paper(cell: Optional[Cell]) -> bool:
    return cell is not None and cell.paper is not None


def _usual_n(table: TableResult) -> int:
    counts = Counter(cell.n for cell in table.cells.values() if cell.n)
    return counts.most_common(1)[0][0] if counts else 0


def _caption(table: TableResult, usual_n: int) -> str:
    spec = table.spec
    text = (f"{metric_words(spec.value, table.eval_iw)}, mean $\\pm$ std over {usual_n} "
            f"seed{'s' if usual_n != 1 else ''} of finished trials; bold: best per row ({spec.better} is better)")
    if spec.where:
        text += "; " + ", ".join(f"{axis_words(k)} = {value_texts(k, [v])[0]}" for k, v in spec.where.items())
    if spec.paper is not None:
        text += f"; paper: {paper_words(spec.paper)}"
    return text + "."


def _ours(cell: Optional[Cell], best: bool, usual_n: int) -> str:
    if cell is None or cell.mean is None:
        return "---"
    shown = cell.ours()  # '15', '-85.10 ± 0.30': the same digits as tables.md
    body = shown.replace(" ± ", " \\pm ")
    body = f"\\mathbf{{{body}}}" if best else body
    sup = f"^{{n={cell.n}}}" if cell.n != usual_n else ""
    return f"${body}{sup}$"


def _paper(cell: Optional[Cell]) -> str:
    return f"${cell.paper:g}$" if cell is not None and cell.paper is not None else ""


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


# --------------------------------------------------------------------------- claims


def claims_latex(study: str, claims: list[ClaimResult]) -> list[str]:
    alpha = claims[0].alpha
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{Claims tested on study {escape(study)} at $\\alpha = {alpha:g}$: effect = difference "
        f"of means (a $-$ b, or value $-$ threshold) with its {1 - alpha:.0%} t-interval; p two-sided, paired by seed "
        "where both sides share seeds; verdict per comparison, then per claim, then per claim with Holm across "
        f"the study's {claims[0].study_claims} tested claims.}}".replace("%", r"\%"),
        f"\\label{{tab:{_label(study)}-claims}}",
        "\\begin{tabular}{llrlrrl}",
        "\\toprule",
        "claim & cell & effect & CI & n & p & verdict \\\\",
        "\\midrule",
    ]
    for k, result in enumerate(claims):
        if k:
            lines.append("\\midrule")
        across = f"; across the study: {result.study_verdict}, Holm p = {p_text(result.p_study)}" \
            if result.p_study is not None else ""
        title = f"\\multicolumn{{7}}{{@{{}}p{{0.95\\textwidth}}@{{}}}}{{\\textbf{{{escape(result.spec.name)}}} ({escape(result.verdict + across)}): " \
                f"{prose(result.spec.statement)} --- {prose(result.spec.source)}}} \\\\"
        lines.append(title)
        for c in result.comparisons:
            lines.append(_claim_row(c))
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return lines


def _claim_row(c: Comparison) -> str:
    vs = f"vs {c.b}" if c.paired is not None else c.b
    ci = "---" if c.ci[0] is None else f"$[{number(c.ci[0])}, {number(c.ci[1])}]$"
    pairs = f"{c.n_a} pair{'s' if c.n_a != 1 else ''}"
    n = f"{c.n_a}" if c.paired is None else (pairs if c.paired else f"{c.n_a}/{c.n_b}")
    p = "---" if c.p is None else p_text(c.p)
    effect = "---" if c.effect is None or not math.isfinite(c.effect) else f"${number(c.effect)}$"
    return " & ".join(["", escape(f"{c.cell} {vs}"), effect, ci, n, p, escape(c.verdict)]) + " \\\\"
