"""tables.md: the report's header and ablation tables as GitHub-flavoured Markdown."""

from __future__ import annotations

from vaelab.report import order
from vaelab.report.summary import Summary
from vaelab.report.tables import TOTAL, TableResult


def render_markdown(
    summary: Summary, tables: list[TableResult], figures: dict[str, str], skipped: dict[str, str]
) -> str:
    """The whole tables.md; `figures` maps name -> path relative to the report folder."""
    lines = [f"# Study `{summary.study}`", ""]
    if summary.notes:
        lines += [summary.notes, ""]
    lines += [f"- **{name}**: {_escape(value)}" for name, value in summary.facts()]
    lines.append("")
    lines += [f"> warning: {_escape(w)}" for w in summary.warnings]
    lines += [""] if summary.warnings else []
    for table in tables:
        lines += table_markdown(table) + [""]
    if not tables:
        lines += ["_The study's `report:` section names no tables._", ""]
    lines += _figures_markdown(figures, skipped)
    return "\n".join(lines).rstrip() + "\n"


def table_markdown(table: TableResult) -> list[str]:
    lines = [f"## {table.title}", "", f"_{_escape(table.caption())}_", ""]
    if table.rows and table.columns:
        corner = f"{table.spec.rows} \\ {table.spec.columns}"
        lines.append("| " + " | ".join([corner] + [_escape(order.display(c)) for c in table.columns]) + " |")
        lines.append("|" + "---|" * (len(table.columns) + 1))
        for row in table.rows:
            cells = [_cell(table, row, column) for column in table.columns]
            lines.append("| " + " | ".join([_row_label(row)] + cells) + " |")
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


def _row_label(row: object) -> str:
    return "**total**" if row == TOTAL else _escape(order.display(row))


def _figures_markdown(figures: dict[str, str], skipped: dict[str, str]) -> list[str]:
    lines = ["## Figures", ""]
    lines += [f"![{name}]({path})" for name, path in figures.items()]
    lines += [f"- {name} skipped: {_escape(reason)}" for name, reason in skipped.items()]
    return lines + [""]


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")
