"""The study-file schema lives in the repo and cannot drift: docs/study-schema.md and
docs/study.schema.json equal what the models generate (the `report:` section included),
every bundled study passes the JSON Schema, and `vaelab validate` says how many trials each
budget has, which are identical, and how to write an axis.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from vaelab.cli import app
from vaelab.config import TrialConfig
from vaelab.studies import reference

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_committed_reference_and_json_schema_are_up_to_date() -> None:
    """Regenerate with `vaelab schema --out docs/study.schema.json` and
    `vaelab schema --format markdown --out docs/study-schema.md`."""
    assert (REPO / "docs" / "study.schema.json").read_text() == reference.json_schema_text()
    assert (REPO / "docs" / "study-schema.md").read_text() == reference.markdown_reference()
    assert reference.missing_meanings() == []


def test_reference_lists_every_trial_parameter_with_its_default() -> None:
    text = reference.markdown_reference()
    for name in TrialConfig.model_fields:
        assert f"| `{name}` |" in text, name
    assert "| `depth` | int | 5 | >= 1, <= 5 |" in text
    assert all(f"| `{kind}` |" in text for kind in ("grid", "choice", "uniform", "loguniform", "randint"))


def test_reference_has_every_report_key_with_an_example_and_every_figure() -> None:
    from vaelab.report.spec import ClaimSpec, PaperRef, ReportSpec, TableSpec

    text = reference.markdown_reference()
    section = text[text.index("## The report section"):]
    parts = {part.split("\n", 1)[0]: part for part in section.split("### ")[1:]}
    for title, model in (("report", ReportSpec), ("report.tables[]", TableSpec),
                         ("report.tables.paper", PaperRef), ("report.claims[]", ClaimSpec)):
        for key in model.model_fields:
            row = next(line for line in parts[title].splitlines() if line.startswith(f"| `{key}` |"))
            assert row.rstrip(" |").endswith("`") and f"`{key}: " in row, row  # the example sets that key
    assert "| `kl_vs_rho` |" in section and "```yaml\nreport:\n" in section
    assert "platform/vaelab/report/spec.py" not in text


def test_every_bundled_study_passes_the_json_schema_and_a_typo_does_not() -> None:
    validator = jsonschema.Draft202012Validator(json.loads((REPO / "docs" / "study.schema.json").read_text()))
    studies = sorted((REPO / "ablations").glob("*.yaml"))
    assert studies
    for path in studies:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], (path.name, errors)
    bad = {"name": "x", "search_space": {"fixed": {"depht": 3}, "axes": {"rho": {"grd": [1]}}},
           "budgets": {"smoke": {"epochs": 0}}}
    messages = " ".join(e.message for e in validator.iter_errors(bad))
    assert "depht" in messages and "grd" in messages and "0 is less than the minimum of 1" in messages


def test_vaelab_schema_prints_both_forms(tmp_path: Path) -> None:
    printed = runner.invoke(app, ["schema"])
    assert printed.exit_code == 0 and json.loads(printed.stdout)["title"] == "vaelab study"
    written = runner.invoke(app, ["schema", "--format", "markdown", "--out", str(tmp_path / "ref.md")])
    assert written.exit_code == 0 and (tmp_path / "ref.md").read_text().startswith("# Study file reference")


def test_validate_counts_trials_per_budget_and_warns_of_identical_trials(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("""name: sweep
search_space:
  fixed: {dataset: digits, latent_dims: 8-4-2, hidden_dims: 32-16-8}
  axes:
    depth: {grid: [1, 2, 3]}
    rho: {grid: [0.5, 0.8, 1.0]}
budgets:
  smoke: {epochs: 2}
  short: {epochs: 20}
default_budget: smoke
""")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "budget smoke: 9 trials, 2 epochs — only 7 distinct" in result.output
    assert "budget short: 9 trials, 20 epochs — only 7 distinct" in result.output
    assert ("identical trials (rho: OU smoothing has no intermediate conditional at depth 1): "
            "depth=1,rho=0.5,seed=0 = depth=1,rho=0.8,seed=0 = depth=1,rho=1,seed=0") in result.output
    assert "trials (smoke): depth=1,rho=0.5,seed=0, depth=1,rho=0.8,seed=0, depth=1,rho=1,seed=0, … (6 more)" in result.output


def test_a_tiny_study_needs_no_budgets_and_a_bare_list_axis_is_explained(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("name: tiny\nsearch_space:\n  fixed: {dataset: digits, epochs: 2}\n  axes:\n    depth: [1, 2]\n")
    result = runner.invoke(app, ["validate", str(tiny)])
    assert result.exit_code == 2
    assert "search_space.axes.depth: [1, 2] — an axis names its kind: write {grid: [1, 2]}" in result.output
    assert "budgets" not in result.output
    tiny.write_text("name: tiny\nsearch_space:\n  fixed: {dataset: digits, epochs: 2}\n  axes:\n    depth: {grid: [1, 2]}\n")
    fixed = runner.invoke(app, ["validate", str(tiny)])
    assert fixed.exit_code == 0, fixed.output
    assert "budget default: 2 trials, 2 epochs" in fixed.output


@pytest.mark.parametrize("name", ["smoke.yaml", "hvae_phase_transition.yaml"])
def test_validate_previews_the_bundled_studies(name: str) -> None:
    result = runner.invoke(app, ["validate", str(REPO / "ablations" / name)])
    assert result.exit_code == 0, result.output
    assert "  budget smoke:" in result.output and "trials (" in result.output
