"""tables.md: the report's header and ablation tables as GitHub-flavoured Markdown."""

from __future__ import annotations

from vaelab.report.analysis import Analysis
from vaelab.report.claims import HOLM_ACROSS, ClaimResult, ci_text, headline, n_text, number, p_text, study_text
from vaelab.report.drivers import Drivers
from vaelab.report.power import TARGET_POWER
from vaelab.report.summary import Summary
from vaelab.report.tables import TOTAL, TableResult, axis_texts


def render_markdown(
    summary: Summary,
    tables: list[TableResult],
    figures: dict[str, str],
    skipped: dict[str, str],
    analysis: Analysis | None = None,
) -> str:
    """The whole tables.md; `figures` maps name -> path relative to the report folder."""
    lines = [f"# Study `{summary.study}`", ""]
    if summary.notes:
        lines += [summary.notes, ""]
    lines += [f"- **{name}**: {_escape(value)}" for name, value in summary.facts()]
    lines.append("")
    lines += [f"> warning: {_escape(w)}" for w in summary.report_warnings]
    lines += [""] if summary.report_warnings else []
    if analysis is not None and analysis.claims:
        lines += claims_markdown(analysis.claims) + [""]
    for table in tables:
        lines += table_markdown(table) + [""]
    if not tables:
        lines += ["_The study's `report:` section names no tables._", ""]
    if analysis is not None and analysis.drivers is not None:
        lines += drivers_markdown(analysis.drivers) + [""]
    lines += _figures_markdown(figures, skipped)
    return "\n".join(lines).rstrip() + "\n"


def table_markdown(table: TableResult) -> list[str]:
    lines = [f"## {table.title}", "", f"_{_escape(table.caption())}_", ""]
    if table.rows and table.columns:
        corner = f"{table.spec.rows} \\ {table.spec.columns}"
        lines.append("| " + " | ".join([corner] + [_escape(c) for c in axis_texts(table.columns)]) + " |")
        lines.append("|" + "---|" * (len(table.columns) + 1))
        for row, label in zip(table.rows, _row_labels(table)):
            cells = [_cell(table, row, column) for column in table.columns]
            lines.append("| " + " | ".join([label] + cells) + " |")
        lines.append("")
    lines += [f"- {_escape(note)}" for note in table.notes]
    return lines


def _cell(table: TableResult, row: object, column: object) -> str:
    cell = table.cell(row, column)
    if cell is None:
        return ""
    ours = cell.ours()
    if (row, column) in table.best:
        ours = f"**{ours}**"
    text = f"{ours} {cell.counts()}"
    return _escape(" · ".join(p for p in (text, cell.paper_text()) if p))


def _row_labels(table: TableResult) -> list[str]:
    if table.spec.rows == "layer":
        return ["**total**" if row == TOTAL else str(row) for row in table.rows]
    return [_escape(text) for text in axis_texts(table.rows)]


def _figures_markdown(figures: dict[str, str], skipped: dict[str, str]) -> list[str]:
    lines = ["## Figures", ""]
    lines += [f"![{name}]({path})" for name, path in figures.items()]
    lines += [f"- {name} skipped: {_escape(reason)}" for name, reason in skipped.items()]
    return lines + [""]


def claims_markdown(claims: list[ClaimResult]) -> list[str]:
    alpha = claims[0].alpha
    lines = [
        "## Claims",
        "",
        f"**{_escape(headline(claims))}.**",
        "",
        f"_Effect = difference of means (a − b, or value − threshold) with its {1 - alpha:.0%} t-interval; p "
        "two-sided, paired by seed where both sides share seeds; Holm-corrected p where a claim combines several "
        f"comparisons, and {HOLM_ACROSS} Seeds: for an inconclusive comparison, how many seeds would give its test "
        f"{TARGET_POWER:.0%} power for the effect and spread observed._",
        "",
    ]
    for claim in claims:
        spec = claim.spec
        lines += [f"### {spec.name}: **{claim.verdict}**", "", f"{_escape(spec.statement)} — _{_escape(spec.source)}_", ""]
        lines.append(f"Tested: {_escape(claim.side_text())}; {_escape(claim.why)}.")
        lines.append(f"Across the study: {_escape(study_text(claim))}.")
        lines += [f"Test: {_escape(claim.methods())}." if claim.methods() else "", ""]
        if claim.comparisons:
            lines.append(f"| cell | vs | effect | {1 - alpha:.0%} CI | n | p | p (Holm) | verdict | seeds |")
            lines.append("|---|---|---|---|---|---|---|---|---|")
            for c in claim.comparisons:
                cells = [c.cell, c.b, number(c.effect), ci_text(c), n_text(c), p_text(c.p), p_text(c.p_holm),
                         f"{c.verdict} ({c.reason})", c.seeds.short]
                lines.append("| " + " | ".join(_escape(x) for x in cells) + " |")
            lines.append("")
            lines += [f"- seeds for {_escape(c.cell)} vs {_escape(c.b)}: {_escape(c.seeds.text)}"
                      for c in claim.comparisons if c.seeds.text]
            lines += [""] if any(c.seeds.text for c in claim.comparisons) else []
        lines += [f"- left out: {_escape(note)}" for note in claim.left_out]
        lines += [""] if claim.left_out else []
    return lines


def drivers_markdown(drivers: Drivers) -> list[str]:
    lines = [f"## {_escape(drivers.title)}", "", f"_{_escape(drivers.method)}; {drivers.n_trials} finished trials._", ""]
    if drivers.kind == "importance":
        lines += ["| axis | importance |", "|---|---|"]
        lines += [f"| {_escape(r.axis)} | {r.importance:.3f} |" for r in drivers.table.itertuples()]
    else:
        lines += ["| axis | level | n | mean | effect | axis spread |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {_escape(r.axis)} | {_escape(r.level)} | {r.n} | {r.mean:.2f} | {number(r.effect)} | {r.spread:.2f} |"
            for r in drivers.table.itertuples()
        ]
    lines.append("")
    lines += [f"- {_escape(note)}" for note in drivers.notes]
    return lines


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")
