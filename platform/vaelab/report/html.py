"""index.html: one self-contained page (inline CSS, figures by relative path) that opens from disk.

No external resources, no timestamps. A small script marks every figure that loaded
(`data-loaded="1"`) and puts a visible "figure not found" note under one that did not.
"""

from __future__ import annotations

from html import escape

from vaelab.report.analysis import Analysis
from vaelab.report.claims import HOLM_ACROSS, ClaimResult, Comparison, ci_text, headline, n_text, number, p_text, study_text
from vaelab.report.drivers import Drivers
from vaelab.report.power import TARGET_POWER
from vaelab.report.summary import Summary
from vaelab.report.tables import TOTAL, TableResult, axis_texts

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1300px; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; font-family: monospace; }
.notes { white-space: pre-wrap; background: #f6f8fa; padding: .6rem .9rem; border-radius: 4px; }
.warning { color: #8a4b00; }
table.ablation { border-collapse: collapse; margin: .6rem 0; font-variant-numeric: tabular-nums; }
table.ablation th, table.ablation td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }
table.ablation th { background: #f0f0f0; } table.ablation th.row { text-align: left; }
table.ablation td .counts { color: #666; font-size: .85em; }
table.ablation td .paper { color: #1a5fb4; font-size: .85em; display: block; }
table.ablation td.best strong { color: #000; }
.caption { color: #555; font-size: .9em; }
ul.table-notes li { color: #8a4b00; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: .9em; }
.missing { color: #b00; font-weight: 600; }
section.claims { border: 1px solid #ddd; border-radius: 6px; padding: .2rem 1rem 1rem; background: #fcfcfd; }
.claim h3 { font-size: 1.05rem; margin: 1.2rem 0 .3rem; }
.verdict { display: inline-block; padding: .05rem .5rem; border-radius: 3px; font-weight: 600; color: #fff; }
.verdict.holds { background: #1f7a3a; } .verdict.contradicted { background: #b3261e; }
.verdict.inconclusive { background: #7a6a00; }
table.claim-cells, table.drivers { border-collapse: collapse; margin: .4rem 0; font-variant-numeric: tabular-nums; }
table.claim-cells th, table.claim-cells td, table.drivers th, table.drivers td { border: 1px solid #ccc; padding: .2rem .5rem; text-align: right; }
table.claim-cells th, table.drivers th { background: #f0f0f0; }
table.claim-cells td.text, table.drivers td.text { text-align: left; }
.source { color: #555; font-style: italic; }
.seeds { color: #555; font-size: .85em; }
"""

_SCRIPT = """
window.addEventListener('load', function () {
  for (const img of Array.from(document.images)) {
    const ok = img.complete && img.naturalWidth > 0;
    img.dataset.loaded = ok ? '1' : '0';
    if (!ok) {
      const note = document.createElement('p');
      note.className = 'missing';
      note.textContent = 'figure not found: ' + img.getAttribute('src');
      img.after(note);
    }
  }
});
"""


def render_html(
    summary: Summary,
    tables: list[TableResult],
    figures: dict[str, str],
    skipped: dict[str, str],
    captions: dict[str, str],
    files: list[str],
    analysis: Analysis | None = None,
) -> str:
    """The whole index.html; `figures` and `files` are paths relative to the report folder."""
    body = [f"<h1>Study <code>{escape(summary.study)}</code></h1>"]
    if summary.notes:
        body.append(f'<div class="notes">{escape(summary.notes)}</div>')
    body.append(_facts(summary))
    body += [f'<p class="warning">warning: {escape(w)}</p>' for w in summary.report_warnings]
    if analysis is not None and analysis.claims:
        body.append(claims_html(analysis.claims))
    body += [table_html(t) for t in tables]
    if not tables:
        body.append("<p>The study's <code>report:</code> section names no tables.</p>")
    if analysis is not None and analysis.drivers is not None:
        body.append(drivers_html(analysis.drivers))
    body.append(_figures(figures, skipped, captions))
    body.append(_files(files))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>vaelab report: {escape(summary.study)}</title>\n<style>{_CSS}</style>\n"
        f"<script>{_SCRIPT}</script>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _facts(summary: Summary) -> str:
    items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in summary.facts())
    return f'<dl class="facts">{items}</dl>'


def table_html(table: TableResult) -> str:
    parts = [
        f'<section class="table" id="table-{escape(table.spec.name)}">',
        f"<h2>{escape(table.title)}</h2>",
        f'<p class="caption">{escape(table.caption())}</p>',
    ]
    if table.rows and table.columns:
        parts.append(_grid(table))
    if table.notes:
        parts.append('<ul class="table-notes">' + "".join(f"<li>{escape(n)}</li>" for n in table.notes) + "</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def _grid(table: TableResult) -> str:
    corner = f"{table.spec.rows} \\ {table.spec.columns}"
    head = "".join(f"<th>{escape(text)}</th>" for text in axis_texts(table.columns))
    labels = [str(r) for r in table.rows] if table.spec.rows == "layer" else axis_texts(table.rows)
    rows = []
    for row, label in zip(table.rows, labels):
        label = "total" if row == TOTAL else label
        cells = "".join(_cell(table, row, column) for column in table.columns)
        rows.append(f'<tr><th class="row">{escape(label)}</th>{cells}</tr>')
    return (
        f'<table class="ablation" data-table="{escape(table.spec.name)}">'
        f'<thead><tr><th class="row">{escape(corner)}</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _cell(table: TableResult, row: object, column: object) -> str:
    cell = table.cell(row, column)
    if cell is None:
        return "<td></td>"
    best = (row, column) in table.best
    ours = escape(cell.ours())
    ours = f"<strong>{ours}</strong>" if best else ours
    paper = f' <span class="paper">· {escape(cell.paper_text())}</span>' if cell.paper is not None else ""
    klass = ' class="best"' if best else ""
    return f'<td{klass}>{ours} <span class="counts">{escape(cell.counts())}</span>{paper}</td>'


def claims_html(claims: list[ClaimResult]) -> str:
    alpha = claims[0].alpha
    level = f"{1 - alpha:.0%}"
    parts = [
        '<section class="claims" id="claims">',
        "<h2>Claims</h2>",
        f'<p class="headline"><strong>{escape(headline(claims))}.</strong></p>',
        f'<p class="caption">Effect = difference of means (a − b, or value − threshold) with its {level} t-interval; '
        "p two-sided, paired by seed where both sides share seeds; Holm-corrected p where a claim combines several "
        f"comparisons, and {escape(HOLM_ACROSS)} Seeds: for an inconclusive comparison, how many seeds would give its "
        f"test {TARGET_POWER:.0%} power for the effect and spread observed.</p>",
    ]
    for claim in claims:
        spec = claim.spec
        methods = claim.methods()
        parts += [
            f'<div class="claim" id="claim-{escape(spec.name)}" data-verdict="{escape(claim.verdict)}" '
            f'data-study-verdict="{escape(claim.study_verdict)}">',
            f'<h3><span class="verdict {escape(claim.verdict)}">{escape(claim.verdict)}</span> {escape(spec.name)}</h3>',
            f'<p>{escape(spec.statement)} <span class="source">— {escape(spec.source)}</span></p>',
            f"<p>Tested: {escape(claim.side_text())}; {escape(claim.why)}.{' Test: ' + escape(methods) + '.' if methods else ''}</p>",
            f"<p>Across the study: {escape(study_text(claim))}.</p>",
        ]
        if claim.comparisons:
            head = "".join(f"<th>{h}</th>" for h in ("cell", "vs", "effect", f"{level} CI", "n", "p", "p (Holm)", "verdict", "seeds"))
            rows = "".join(_claim_row(c) for c in claim.comparisons)
            parts.append(f'<table class="claim-cells"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')
        if claim.left_out:
            parts.append('<ul class="table-notes">' + "".join(f"<li>left out: {escape(n)}</li>" for n in claim.left_out) + "</ul>")
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _claim_row(c: Comparison) -> str:
    seeds = f'<td title="{escape(c.seeds.text)}">{escape(c.seeds.short)}</td>'
    advice = f'<br><span class="seeds">seeds: {escape(c.seeds.text)}</span>' if c.seeds.text else ""
    return (
        f'<tr><td class="text">{escape(c.cell)}</td><td class="text">{escape(c.b)}</td><td>{escape(number(c.effect))}</td>'
        f"<td>{escape(ci_text(c))}</td><td>{escape(n_text(c))}</td><td>{escape(p_text(c.p))}</td>"
        f'<td>{escape(p_text(c.p_holm))}</td><td class="text">{escape(c.verdict)} ({escape(c.reason)}){advice}</td>'
        f"{seeds}</tr>"
    )


def drivers_html(drivers: Drivers) -> str:
    if drivers.kind == "importance":
        head = "<th>axis</th><th>importance</th>"
        rows = "".join(f'<tr><td class="text">{escape(r.axis)}</td><td>{r.importance:.3f}</td></tr>' for r in drivers.table.itertuples())
    else:
        head = "".join(f"<th>{h}</th>" for h in ("axis", "level", "n", "mean", "effect", "axis spread"))
        rows = "".join(
            f'<tr><td class="text">{escape(r.axis)}</td><td class="text">{escape(r.level)}</td><td>{r.n}</td>'
            f"<td>{r.mean:.2f}</td><td>{escape(number(r.effect))}</td><td>{r.spread:.2f}</td></tr>"
            for r in drivers.table.itertuples()
        )
    notes = "".join(f"<li>{escape(n)}</li>" for n in drivers.notes)
    return (
        f'<section class="drivers" id="drivers"><h2>{escape(drivers.title)}</h2>'
        f'<p class="caption">{escape(drivers.method)}; {drivers.n_trials} finished trials.</p>'
        f'<table class="drivers"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
        + (f'<ul class="table-notes">{notes}</ul>' if notes else "")
        + "</section>"
    )


def _figures(figures: dict[str, str], skipped: dict[str, str], captions: dict[str, str]) -> str:
    parts = ["<h2>Figures</h2>"]
    for name, path in figures.items():
        caption = captions.get(name, name)
        parts.append(
            f'<figure id="figure-{escape(name)}"><img src="{escape(path)}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    if skipped:
        items = "".join(f"<li><code>{escape(n)}</code> skipped: {escape(r)}</li>" for n, r in skipped.items())
        parts.append(f'<ul class="skipped">{items}</ul>')
    return "\n".join(parts)


def _files(files: list[str]) -> str:
    links = "".join(f'<li><a href="{escape(f)}">{escape(f)}</a></li>' for f in files)
    return f"<h2>Data</h2><ul>{links}</ul>"
