"""Search spaces and studies: validation messages, expansion, budgets, hashing.

Malformed specs are written into a temporary checkout layout (ablations/ and
search_spaces/ under tmp_path, which becomes the working directory) so messages show
the same relative file names a user would see.
"""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import yaml

from vaelab.config import COHORT_VARYING, trial_config
from vaelab.errors import SpecError, SpecErrors, VaelabError
from vaelab.studies import (
    expand_trials,
    group_cohorts,
    load_search_space,
    load_study,
    missing_init_from,
    resolved_yaml,
    spec_hash,
    trial_from_point,
    tune_search_space,
    validate_file,
)

REPO = Path(__file__).resolve().parents[1]
STUDY_FILES = sorted((REPO / "ablations").glob("*.yaml"))
SPACE_FILES = sorted((REPO / "search_spaces").glob("*.yaml"))

SPACE: dict[str, Any] = {
    "name": "tiny",
    "description": "four variants x 1-3 layers on digits",
    "fixed": {"dataset": "digits", "latent_dims": "32-16-8", "hidden_dims": "128-64-32", "epochs": 2000},
    "axes": {
        "variant": {
            "grid": [
                {"label": "VAE", "inference": "vae", "batch_norm": False, "warmup_epochs": 0},
                {"label": "VAE+BN", "inference": "vae", "batch_norm": True, "warmup_epochs": 0},
                {"label": "VAE+BN+WU", "inference": "vae", "batch_norm": True, "warmup_epochs": 200},
                {"label": "LVAE+BN+WU", "inference": "lvae", "batch_norm": True, "warmup_epochs": 200},
            ]
        },
        "depth": {"grid": [1, 2, 3]},
    },
    "exclude": [{"inference": "lvae", "depth": 1}],
}
STUDY: dict[str, Any] = {
    "name": "tiny",
    "description": "test study",
    "search_space": "../search_spaces/tiny.yaml",
    "budgets": {
        "smoke": {"epochs": 5, "eval_iw": 10, "eval_every": 1, "warmup_fraction": 0.2},
        "paper": {"epochs": 2000, "eval_iw": 5000},
    },
    "default_budget": "smoke",
    "seeds": [0],
    "search": {"mode": "grid"},
    "resources": {"cpu": 1, "gpu": 0},
    "report": {
        "tables": [
            {"name": "ll", "rows": "latent_dims", "columns": "variant", "value": "test_ll_iw"},
            {"name": "au", "rows": "layer", "columns": "variant", "value": "active_units_layer", "where": {"depth": 3}},
        ],
        "figures": ["ll_vs_depth", "curves"],
    },
}
STUDY_FILE = "ablations/tiny.yaml"
SPACE_FILE = "search_spaces/tiny.yaml"


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "ablations").mkdir()
    (tmp_path / "search_spaces").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(study: Any = None, space: Any = None) -> Path:
    """Write the study and its search space (dicts are dumped, strings written as-is)."""
    for name, content in ((SPACE_FILE, space if space is not None else SPACE), (STUDY_FILE, study if study is not None else STUDY)):
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        Path(name).write_text(text)
    return Path(STUDY_FILE)


def edit(study_edit: Optional[Callable[[dict], Any]] = None, space_edit: Optional[Callable[[dict], Any]] = None) -> Path:
    study, space = copy.deepcopy(STUDY), copy.deepcopy(SPACE)
    if study_edit:
        study_edit(study)
    if space_edit:
        space_edit(space)
    return write(study, space)


def errors_of(path: Path, budget: Optional[str] = None) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_study(path, budget)
    err = info.value
    return err.lines() if isinstance(err, SpecErrors) else [str(err)]


# ---------------------------------------------------------------------------------
# Malformed specs: (id, study edit, space edit, file, key path, value, message part)


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """An edit that sets a dotted path (list indices as [i]) in a spec dict."""

    def apply(spec: dict) -> None:
        keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
        node = spec
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return apply


def _delete(path: str) -> Callable[[dict], None]:
    def apply(spec: dict) -> None:
        keys = path.split(".")
        node = spec
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return apply


def _random_lr(bounds: list[Any], kind: str = "uniform") -> Callable[[dict], None]:
    def apply(space: dict) -> None:
        space["axes"]["lr"] = {kind: bounds}

    return apply


def _random_mode(study: dict) -> None:
    study["search"] = {"mode": "random", "num_samples": 3}


BAD_SPECS = [
    ("depth_out_of_range", None, _set("axes.depth.grid", [1, 2, 7]), SPACE_FILE, "axes.depth.grid[2]", "7", "depth must be in 1..5"),
    ("rho_out_of_range", None, _set("fixed.rho", 1.5), SPACE_FILE, "fixed.rho", "1.5", "rho must be in [0, 1]"),
    ("negative_warmup", None, _set("axes.variant.grid[2].warmup_epochs", -5), SPACE_FILE, "axes.variant.grid[2].warmup_epochs", "-5", "warmup_epochs must be >= 0"),
    ("unknown_axis_kind", None, _set("axes.depth", {"range": [1, 3]}), SPACE_FILE, "axes.depth.range", "[1, 3]", "unknown axis kind 'range'"),
    ("two_axis_kinds", None, _set("axes.depth", {"grid": [1], "choice": [2]}), SPACE_FILE, "axes.depth", "{grid: [1], choice: [2]}", "exactly one of grid, choice"),
    ("uniform_lo_ge_hi", _random_mode, _random_lr([0.01, 0.001]), SPACE_FILE, "axes.lr.uniform", "[0.01, 0.001]", "needs lo < hi"),
    ("loguniform_lo_zero", _random_mode, _random_lr([0, 0.01], "loguniform"), SPACE_FILE, "axes.lr.loguniform[0]", "0", "loguniform needs lo > 0"),
    ("uniform_on_int", _random_mode, _set("axes.depth", {"uniform": [1, 3]}), SPACE_FILE, "axes.depth.uniform", "[1, 3]", "depth takes integers"),
    ("unknown_fixed_param", None, _set("fixed.dpeth", 3), SPACE_FILE, "fixed.dpeth", "3", "unknown trial parameter 'dpeth' (did you mean 'depth'?)"),
    ("unknown_variant_param", None, _set("axes.variant.grid[0].infernce", "vae"), SPACE_FILE, "axes.variant.grid[0].infernce", "vae", "unknown trial parameter 'infernce'"),
    ("unknown_exclude_param", None, _set("exclude[0].dept", 1), SPACE_FILE, "exclude[0].dept", "dept", "unknown trial parameter 'dept'"),
    ("unknown_exclude_label", None, _set("exclude", [{"label": "LADDER"}]), SPACE_FILE, "exclude[0].label", "LADDER", "no variant labelled 'LADDER'"),
    ("unknown_budget_param", _set("budgets.smoke.epoch", 3), None, STUDY_FILE, "budgets.smoke.epoch", "3", "did you mean 'epochs'?"),
    ("seed_as_param", None, _set("fixed.seed", 3), SPACE_FILE, "fixed.seed", "3", "seeds are set by the study's `seeds:`"),
    ("wrong_type_bool", None, _set("fixed.batch_norm", "maybe"), SPACE_FILE, "fixed.batch_norm", "maybe", "valid boolean"),
    ("bool_for_int", None, _set("fixed.epochs", True), SPACE_FILE, "fixed.epochs", "true", "takes a number, not a boolean"),
    ("impossible_combination", None, _set("exclude", []), SPACE_FILE, "axes.variant.grid[3].inference + axes.depth.grid[0]", "{inference: lvae, depth: 1}", "needs depth >= 2"),
    ("empty_after_exclude", None, _set("exclude", [{"inference": "vae"}, {"inference": "lvae"}]), SPACE_FILE, "exclude", "[{inference: vae}, {inference: lvae}]", "every combination is excluded"),
    ("missing_space_file", _set("search_space", "../search_spaces/nope.yaml"), None, STUDY_FILE, "search_space", "../search_spaces/nope.yaml", "search-space file not found: search_spaces/nope.yaml"),
    ("unknown_top_key", _set("budget", "smoke"), None, STUDY_FILE, "budget", "smoke", "unknown key 'budget'"),
    ("unknown_search_key", _set("search.metrc", "test_elbo"), None, STUDY_FILE, "search.metrc", "test_elbo", "unknown key 'metrc' (did you mean 'metric'?)"),
    ("seeds_wrong_type", _set("seeds", "zero"), None, STUDY_FILE, "seeds", "zero", "valid list"),
    ("negative_seed", _set("seeds", [-1]), None, STUDY_FILE, "seeds[0]", "-1", "every value of seeds must be >= 0"),
    ("unknown_default_budget", _set("default_budget", "huge"), None, STUDY_FILE, "default_budget", "huge", "unknown budget"),
    ("warmup_fraction_range", _set("budgets.smoke.warmup_fraction", 1.5), None, STUDY_FILE, "budgets.smoke.warmup_fraction", "1.5", "warmup_fraction must be in (0, 1]"),
    ("warmup_fraction_and_epochs", _set("budgets.smoke.warmup_epochs", 3), None, STUDY_FILE, "budgets.smoke.warmup_fraction", "0.2", "not both"),
    ("num_samples_in_grid", _set("budgets.smoke.num_samples", 4), None, STUDY_FILE, "budgets.smoke.num_samples", "4", "applies to search.mode random/optuna"),
    ("grid_with_sampled_axis", None, _random_lr([0.001, 0.01], "loguniform"), SPACE_FILE, "axes.lr", "{loguniform: [0.001, 0.01]}", "mode grid cannot expand a loguniform axis"),
    ("random_with_grid_only", _random_mode, None, STUDY_FILE, "search.mode", "random", "needs at least one choice/uniform/loguniform/randint axis"),
    ("optuna_without_metric", _set("search", {"mode": "optuna", "num_samples": 4}), _set("axes", {"lr": {"loguniform": [0.0001, 0.01]}}), STUDY_FILE, "search.metric", "(missing)", "mode optuna needs a metric"),
    ("optuna_with_grid_axis", _set("search", {"mode": "optuna", "num_samples": 4, "metric": "test_elbo", "direction": "max"}), _random_lr([0.0001, 0.01], "loguniform"), SPACE_FILE, "axes.depth", "{grid: [1, 2, 3]}", "mode optuna samples every axis"),
    ("asha_final_metric", _set("search", {"mode": "grid", "metric": "test_ll_iw", "direction": "max", "scheduler": {"type": "asha", "grace_period": 1}}), None, STUDY_FILE, "search.metric", "test_ll_iw", "only computed on the last epoch"),
    ("asha_grace_too_long", _set("search", {"mode": "grid", "metric": "test_elbo", "direction": "max", "scheduler": {"type": "asha", "grace_period": 50}}), None, STUDY_FILE, "search.scheduler.grace_period", "50", "longer than the shortest trial (5 epochs"),
    ("gpu_fraction_above_one", _set("resources", {"cpu": 1, "gpu": 1.5}), None, STUDY_FILE, "resources", "{cpu: 1, gpu: 1.5}", "a fraction below 1 or a whole number"),
    ("negative_cpu", _set("resources", {"cpu": -1}), None, STUDY_FILE, "resources.cpu", "-1", "cpu must be > 0"),
    ("cohort_size_zero", _set("cohort", {"size": 0}), None, STUDY_FILE, "cohort.size", "0", "size must be >= 1"),
    ("report_unknown_param", _set("report.tables[0].rows", "dpth"), None, STUDY_FILE, "report.tables[0].rows", "dpth", "unknown table dimension (did you mean 'depth'?)"),
    ("report_unknown_metric", _set("report.tables[0].value", "test_ll"), None, STUDY_FILE, "report.tables[0].value", "test_ll", "unknown metric 'test_ll'"),
    ("report_layer_out_of_range", _set("report.tables[0].value", "kl_layer_4"), None, STUDY_FILE, "report.tables[0].value", "kl_layer_4", "layer 4 does not exist"),
    ("report_where_matches_nothing", _set("report.tables[1].where", {"depth": 4}), None, STUDY_FILE, "report.tables[1].where", "{depth: 4}", "matches no trial"),
    ("report_order_typo", _set("report.tables[0].column_order", ["VAE", "LVAE"]), None, STUDY_FILE, "report.tables[0].column_order[1]", "LVAE", "no trial has variant=LVAE"),
    ("report_unknown_paper", _set("report.tables[0].paper", {"source": "lvae-icml", "table": "table9", "dataset": "mnist", "metric": "test_ll_iw5000"}), None, STUDY_FILE, "report.tables[0].paper", "table: table9", "no row of paper_results.csv matches"),
    ("report_unknown_figure", _set("report.figures", ["ll_vs_depth", "heatmap"]), None, STUDY_FILE, "report.figures[1]", "heatmap", "Input should be"),
    ("bundle_named_like_a_param", None, _set("axes.depth", {"grid": [{"depth": 1}, {"depth": 2}]}), SPACE_FILE, "axes.depth", "depth", "needs a name that is not a trial param"),
    ("bad_study_name", _set("name", "my study!"), None, STUDY_FILE, "name", "my study!", "MLflow experiment"),
]


@pytest.mark.parametrize(
    "study_edit,space_edit,file,key_path,value,message",
    [case[1:] for case in BAD_SPECS],
    ids=[case[0] for case in BAD_SPECS],
)
def test_malformed_spec_is_rejected_with_file_key_and_value(workdir, study_edit, space_edit, file, key_path, value, message):
    path = edit(study_edit, space_edit)
    lines = errors_of(path)
    prefix = f"{file}: {key_path}: "
    hits = [line for line in lines if line.startswith(prefix) and message in line]
    assert hits, "\n".join(lines)
    assert value in hits[0][len(prefix):], hits[0]
    assert validate_file(path), "validate_file must report what load_study raises"


def test_random_mode_needs_num_samples_per_budget(workdir):
    def study_edit(study: dict) -> None:
        study["search"] = {"mode": "random"}
        study["budgets"]["smoke"]["num_samples"] = 2

    lines = validate_file(edit(study_edit, _random_lr([0.001, 0.01])))
    assert lines == [f"{STUDY_FILE}: budgets.paper: (missing) — mode random needs num_samples (in search: or in this budget) (line 11)"]


def test_inline_search_space_errors_point_into_the_study(workdir):
    space = copy.deepcopy(SPACE)
    space["axes"]["depth"]["grid"] = [0, 1]
    path = write({**STUDY, "search_space": space})
    (line,) = validate_file(path)
    assert line.startswith(f"{STUDY_FILE}: search_space.axes.depth.grid[0]: 0 — depth must be in 1..5 (line ")


def test_search_space_file_alone(workdir):
    write()
    assert validate_file(SPACE_FILE) == []
    bad = copy.deepcopy(SPACE)
    bad["exclude"] = []
    write(space=bad)
    (line,) = validate_file(SPACE_FILE)
    assert line.startswith(f"{SPACE_FILE}: axes.variant.grid[3].inference + axes.depth.grid[0]: {{inference: lvae, depth: 1}} — ")
    with pytest.raises(SpecErrors):
        load_search_space(SPACE_FILE)


def test_loaded_study_pickles(workdir):
    study = load_study(write(), "paper")
    again = pickle.loads(pickle.dumps(study))
    assert again.budget == "paper" and spec_hash(again) == spec_hash(study)
    assert again.source.file == STUDY_FILE


def test_at_least_eighteen_malformed_cases():
    assert len(BAD_SPECS) >= 18


def test_yaml_syntax_error_names_the_line(workdir):
    text = yaml.safe_dump(STUDY, sort_keys=False).replace("seeds:\n- 0", "seeds: [0\n")
    path = write(text)
    (line,) = validate_file(path)
    assert line.startswith(f"{STUDY_FILE}: line ")
    assert "YAML syntax error at line" in line


def test_duplicate_key_is_an_error(workdir):
    text = yaml.safe_dump(SPACE, sort_keys=False) + "fixed:\n  depth: 2\n"
    path = write(space=text)
    lines = validate_file(path)
    assert any(line.startswith(f"{SPACE_FILE}: fixed: fixed — key appears twice") for line in lines), lines


def test_file_that_is_not_a_mapping(workdir):
    path = write("- just\n- a list\n")
    assert validate_file(path) == [f"{STUDY_FILE}: (root): list — a study or search-space file is a YAML mapping of keys"]
    assert errors_of(path) == [f"{STUDY_FILE}: (root): list — a study file is a YAML mapping of keys"]


def test_unknown_budget_name_on_load(workdir):
    path = write()
    (line,) = errors_of(path, budget="huge")
    assert line.startswith(f"{STUDY_FILE}: budgets: huge — unknown budget; budgets: smoke, paper")


def test_missing_study_file(workdir):
    (line,) = validate_file("ablations/nope.yaml")
    assert "ablations/nope.yaml: (file):" in line and "file not found" in line


def test_errors_are_collected_together(workdir):
    def space_edit(space: dict) -> None:
        space["fixed"]["rho"] = 2
        space["fixed"]["dpeth"] = 1
        space["axes"]["depth"]["grid"] = [0, 1]

    lines = validate_file(edit(_set("budgets.smoke.epoch", 1), space_edit))
    assert len(lines) == 4, lines
    assert {line.split(": ")[1] for line in lines} == {"fixed.rho", "fixed.dpeth", "axes.depth.grid[0]", "budgets.smoke.epoch"}


def test_error_lines_carry_yaml_line_numbers(workdir):
    path = edit(space_edit=_set("axes.depth.grid", [1, 2, 7]))
    (err,) = SpecErrors(load_errors(path)).errors
    text = Path(SPACE_FILE).read_text().splitlines()
    assert err.line is not None and text[err.line - 1].strip() == "- 7"
    assert str(err).endswith(f"(line {err.line})")


def load_errors(path: Path) -> list[SpecError]:
    with pytest.raises(SpecErrors) as info:
        load_study(path)
    return info.value.errors


def test_spec_error_format_and_pickle():
    err = SpecError("ablations/x.yaml", "axes.depth.grid[2]", 7, "depth must be in 1..5")
    assert str(err) == "ablations/x.yaml: axes.depth.grid[2]: 7 — depth must be in 1..5"
    assert isinstance(err, VaelabError)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)
    many = SpecErrors([err, err, SpecError("a.yaml", "k", "v", "m")])
    assert len(many.errors) == 2 and str(pickle.loads(pickle.dumps(many))) == str(many)


# ---------------------------------------------------------------------------------
# Shipped presets


@pytest.mark.parametrize("path", STUDY_FILES, ids=[p.stem for p in STUDY_FILES])
def test_shipped_study_validates_and_every_budget_expands(path):
    assert validate_file(path) == []
    study = load_study(path)
    assert {"smoke", "short", "paper"} <= set(study.budgets)
    # presets run on a CPU-only machine: at most one CPU per trial (lvae_table2_mnist shares
    # 2 cores between its 5 trials with cpu: 0.4), no GPU unless the user asks for one
    assert 0 < study.resources.cpu <= 1 and study.resources.gpu == 0
    for budget in study.budgets:
        trials = expand_trials(study, budget)
        assert trials, budget
        assert len({t.trial_id for t in trials}) == len(trials)
        for trial in trials:
            assert trial_config(trial.config).seed == trial.seed


@pytest.mark.parametrize("path", SPACE_FILES, ids=[p.stem for p in SPACE_FILES])
def test_shipped_search_space_validates(path):
    assert validate_file(path) == []
    assert load_search_space(path).axes


def test_paper_variants_in_lvae_presets():
    icml = load_study(REPO / "ablations/lvae_icml_mnist.yaml")
    nips = load_study(REPO / "ablations/lvae_nips_mnist.yaml")
    assert {t.variant for t in expand_trials(icml)} == {"VAE", "VAE+BN", "VAE+BN+WU", "LADDER+BN+WU"}
    assert {t.variant for t in expand_trials(nips)} == {"VAE", "VAE+BN", "VAE+BN+WU", "LVAE+BN+WU"}
    paper = expand_trials(icml, "paper")
    assert len(paper) == 19
    for trial in paper:
        cfg = trial.config
        assert (cfg["epochs"], cfg["lr"], cfg["batch_size"], cfg["eval_iw"], cfg["train_subset"]) == (2000, 1e-3, 256, 5000, 0)
        assert cfg["warmup_epochs"] == (200 if trial.variant.endswith("+WU") else 0)
        assert cfg["latent_dims"] == [64, 32, 16, 8, 4]


def test_norb_follows_icml_settings():
    norb = load_study(REPO / "ablations/lvae_norb.yaml", "paper")
    for trial in expand_trials(norb):
        cfg = trial.config
        assert (cfg["dataset"], cfg["likelihood"], cfg["activation"], cfg["lr"], cfg["epochs"]) == ("norb", "gaussian", "tanh", 2e-3, 4000)
        assert cfg["warmup_epochs"] == (1000 if trial.variant.endswith("+WU") else 0)


def test_finetune_placeholders_validate_and_are_reported_missing(tmp_path):
    study = load_study(REPO / "ablations/lvae_icml_finetune.yaml", "paper")
    trials = expand_trials(study)
    assert len(trials) == 8
    assert {(t.config["mc_samples"], t.config["iw_samples"]) for t in trials} == {(1, 1), (1, 10), (10, 1), (10, 10)}
    assert all(t.config["lr_decay"] == 0.75 and t.config["lr_decay_every"] == 200 for t in trials)
    assert len(missing_init_from(trials, tmp_path)) == 2
    # the documented per-variant override: pin the bundled axis, then set init_from
    pinned = load_study(REPO / "ablations/lvae_icml_finetune.yaml", overrides={"variant": "LADDER+BN+WU", "init_from": "/x/ladder.pt"})
    trials = expand_trials(pinned)
    assert len(trials) == 4 and {t.variant for t in trials} == {"LADDER+BN+WU"}
    assert {t.config["init_from"] for t in trials} == {"/x/ladder.pt"}
    assert trials[0].trial_key.startswith("variant=LADDER+BN+WU,")
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(resolved_yaml(pinned))
    assert [t.trial_id for t in expand_trials(load_study(resolved))] == [t.trial_id for t in trials]
    smoke = load_study(REPO / "ablations/smoke.yaml", overrides={"depth": 2})  # report filters depth 3
    assert len(expand_trials(smoke)) == 4
    with pytest.raises(SpecError, match="no variant labelled 'LADDER'"):
        load_study(REPO / "ablations/lvae_icml_finetune.yaml", overrides={"variant": "LADDER"})


def test_hvae_collapse_schedules_scale_only_where_on():
    study = load_study(REPO / "ablations/hvae_posterior_collapse.yaml", "short")
    trials = expand_trials(study)
    assert len(trials) == 22
    by_variant = {t.variant: t.config for t in trials if t.config["latent_dims"] == [40, 40, 40, 40]}
    assert (by_variant["VAE+KL"]["kl_anneal_hold_steps"], by_variant["VAE+KL"]["kl_anneal_steps"]) == (8, 390)
    assert (by_variant["VAE"]["kl_anneal_hold_steps"], by_variant["VAE"]["kl_anneal_steps"]) == (0, 0)
    assert by_variant["VAE+FB2"]["free_bits"] == 2.0 and by_variant["IWAE5"]["iw_samples"] == 5
    assert by_variant["HVAE-rho0.9+KL"]["rho"] == 0.9


# ---------------------------------------------------------------------------------
# Expansion


def test_smoke_grid_has_eleven_trials_in_a_stable_order():
    study = load_study(REPO / "ablations/smoke.yaml")
    trials = expand_trials(study, "smoke")
    assert len(trials) == 11
    assert trials[0].trial_key == "variant=VAE,depth=1,seed=0"
    assert trials[-1].trial_key == "variant=LVAE+BN+WU,depth=3,seed=0"
    assert [t.trial_key for t in trials] == [t.trial_key for t in expand_trials(load_study(REPO / "ablations/smoke.yaml"))]
    assert not [t for t in trials if t.config["inference"] == "lvae" and t.config["depth"] == 1]
    for trial in trials:
        assert trial.config["epochs"] == 30 and trial.config["eval_iw"] == 100 and trial.config["eval_every"] == 5
        assert trial.budget == "smoke" and len(trial.trial_id) == 12


def test_exclude_and_variant_labels(workdir):
    trials = expand_trials(load_study(write()))
    assert len(trials) == 11
    assert {t.variant for t in trials} == {"VAE", "VAE+BN", "VAE+BN+WU", "LVAE+BN+WU"}
    assert ("LVAE+BN+WU", 1) not in {(t.variant, t.config["depth"]) for t in trials}
    assert all(t.axes["variant"] == t.variant for t in trials)
    # exclude by label (any bundled axis) and by the bundled axis's name
    for entry in ({"label": "VAE", "depth": 2}, {"variant": "VAE", "depth": 2}):
        study = load_study(edit(space_edit=_set("exclude", [{"inference": "lvae", "depth": 1}, entry])))
        assert len(expand_trials(study)) == 10


def test_seeds_are_crossed_innermost(workdir):
    trials = expand_trials(load_study(edit(_set("seeds", [0, 1, 2]))))
    assert len(trials) == 33
    assert [t.seed for t in trials[:3]] == [0, 1, 2]
    assert trials[1].trial_key == "variant=VAE,depth=1,seed=1"
    assert len({t.trial_id for t in trials}) == 33
    budget_seeds = load_study(edit(_set("budgets.paper.seeds", [5, 6])), "paper")
    assert {t.seed for t in expand_trials(budget_seeds)} == {5, 6}


def test_budget_overrides_and_warmup_fraction(workdir):
    study = load_study(write())
    smoke = {t.trial_key: t.config for t in expand_trials(study, "smoke")}
    assert smoke["variant=VAE+BN+WU,depth=2,seed=0"]["warmup_epochs"] == pytest.approx(1.0)  # 0.2 x 5
    assert smoke["variant=VAE+BN,depth=2,seed=0"]["warmup_epochs"] == 0  # WU off stays off
    assert smoke["variant=VAE,depth=1,seed=0"]["eval_iw"] == 10
    paper = {t.trial_key: t.config for t in expand_trials(study, "paper")}
    assert paper["variant=VAE+BN+WU,depth=2,seed=0"]["warmup_epochs"] == 200
    assert paper["variant=VAE+BN+WU,depth=2,seed=0"]["eval_iw"] == 5000
    # a budget's warmup_epochs also only shortens warm-up where it is on
    plain = load_study(edit(_set("budgets.smoke", {"epochs": 5, "warmup_epochs": 2})))
    configs = {t.variant: t.config["warmup_epochs"] for t in expand_trials(plain)}
    assert configs == {"VAE": 0, "VAE+BN": 0, "VAE+BN+WU": 2, "LVAE+BN+WU": 2}


def test_overrides_pin_an_axis(workdir):
    study = load_study(edit(_set("overrides", {"depth": 3, "dataset": "digits"})))
    trials = expand_trials(study)
    assert len(trials) == 4 and all(t.config["depth"] == 3 for t in trials)
    assert trials[0].trial_key == "variant=VAE,seed=0"


def _random_study(seed: int = 0, num_samples: int = 6) -> Callable[[dict], None]:
    def apply(study: dict) -> None:
        study["search"] = {"mode": "random", "num_samples": num_samples, "seed": seed}
        study["report"] = {}

    return apply


def _random_axes(space: dict) -> None:
    space["axes"] = {
        "depth": {"grid": [2, 3]},
        "lr": {"loguniform": [1.0e-4, 1.0e-2]},
        "rho": {"uniform": [0.5, 1.0]},
        "batch_size": {"choice": [64, 128, 256]},
        "ou_samples": {"randint": [2, 4]},
    }
    space["exclude"] = []


def test_random_mode_is_deterministic_and_in_range(workdir):
    first = expand_trials(load_study(edit(_random_study(7), _random_axes)))
    again = expand_trials(load_study(edit(_random_study(7), _random_axes)))
    other = expand_trials(load_study(edit(_random_study(8), _random_axes)))
    assert len(first) == 2 * 6  # grid axes crossed with the samples
    assert [t.config for t in first] == [t.config for t in again]
    assert [t.config for t in first] != [t.config for t in other]
    for trial in first:
        cfg = trial.config
        assert 1e-4 <= cfg["lr"] <= 1e-2 and 0.5 <= cfg["rho"] <= 1.0
        assert cfg["batch_size"] in (64, 128, 256) and cfg["ou_samples"] in (2, 3)
    assert first[0].trial_key == "depth=2,sample=0,seed=0"
    # the same sampled points for each grid cell
    assert [t.config["lr"] for t in first[:6]] == [t.config["lr"] for t in first[6:]]
    budget = load_study(edit(lambda s: (_random_study(7)(s), s["budgets"]["smoke"].update(num_samples=2)), _random_axes))
    assert len(expand_trials(budget)) == 4


def test_optuna_search_space_and_points(workdir):
    def study_edit(study: dict) -> None:
        study["search"] = {"mode": "optuna", "num_samples": 5, "metric": "test_elbo", "direction": "max"}
        study["report"] = {}

    def space_edit(space: dict) -> None:
        space["axes"] = {"lr": {"loguniform": [1.0e-4, 1.0e-2]}, "depth": {"randint": [1, 4]}, "inference": {"choice": ["vae", "lvae"]}}
        space["exclude"] = [{"inference": "lvae", "depth": 1}]

    study = load_study(edit(study_edit, space_edit))
    assert tune_search_space(study) == {"lr": ("loguniform", 1e-4, 1e-2), "depth": ("randint", 1, 4), "inference": ("choice", ["vae", "lvae"])}
    trial = trial_from_point(study, {"lr": 0.001, "depth": 3, "inference": "lvae"})
    assert trial.config["lr"] == 0.001 and trial.config["epochs"] == 5 and trial.seed == 0
    with pytest.raises(SpecError, match="excluded"):
        trial_from_point(study, {"lr": 0.001, "depth": 1, "inference": "lvae"})
    with pytest.raises(SpecError):
        expand_trials(study)


def test_group_cohorts_by_shared_architecture():
    study = load_study(REPO / "ablations/hvae_phase_transition.yaml", "short")
    trials = expand_trials(study)
    cohorts = group_cohorts(trials, study.cohort_size)
    assert [len(c) for c in cohorts] == [9] * 6
    for cohort in cohorts:
        shared = [{k: v for k, v in t.config.items() if k not in COHORT_VARYING} for t in cohort]
        assert all(s == shared[0] for s in shared)
        assert len({t.config["rho"] for t in cohort}) == 9
    assert [len(c) for c in group_cohorts(trials[:9], 4)] == [4, 4, 1]
    assert [len(c) for c in group_cohorts(trials, 1)] == [1] * 54
    flat = [t.trial_key for c in cohorts for t in c]
    assert sorted(flat) == sorted(t.trial_key for t in trials)


def test_group_cohorts_keeps_architectures_apart(workdir):
    trials = expand_trials(load_study(edit(_set("seeds", [0, 1]))))
    cohorts = group_cohorts(trials, 8)
    # VAE+BN and VAE+BN+WU differ only in warmup_epochs (cohort-varying): same cohort
    assert len(cohorts) == 3 * 3 - 1  # (VAE | VAE+BN(+WU) | LVAE) x depth, minus LVAE depth 1
    mixed = [c for c in cohorts if {t.variant for t in c} == {"VAE+BN", "VAE+BN+WU"}]
    assert len(mixed) == 3 and all(len(c) == 4 for c in mixed)


# ---------------------------------------------------------------------------------
# Hashing and the resolved study


def test_spec_hash_is_stable_and_sensitive(workdir):
    path = write()
    first = spec_hash(load_study(path))
    assert first == spec_hash(load_study(path))
    reordered = dict(reversed(list(STUDY.items())))
    assert spec_hash(load_study(write(reordered))) == first
    assert spec_hash(load_study(write(), "paper")) != first
    assert spec_hash(load_study(edit(space_edit=_set("fixed.epochs", 1000)))) != first
    # spelling of a value does not matter ('32-16-8' vs a list, 1e-3 vs 0.001)
    assert spec_hash(load_study(edit(space_edit=_set("fixed.latent_dims", [32, 16, 8])))) == first


@pytest.mark.parametrize("source", ["tiny", "smoke", "hvae_posterior_collapse", "lvae_icml_finetune"])
def test_resolved_yaml_round_trips(workdir, source):
    path = write() if source == "tiny" else REPO / "ablations" / f"{source}.yaml"
    study = load_study(path, "paper")
    text = resolved_yaml(study)
    copy_path = workdir / "resolved.yaml"
    copy_path.write_text(text)
    again = load_study(copy_path)
    assert again.budget == "paper"
    assert spec_hash(again) == spec_hash(study)
    assert resolved_yaml(again) == text
    assert [(t.trial_id, t.config) for t in expand_trials(again)] == [(t.trial_id, t.config) for t in expand_trials(study)]


def test_trial_ids_depend_on_study_and_config(workdir):
    base = {t.trial_key: t.trial_id for t in expand_trials(load_study(write()))}
    renamed = {t.trial_key: t.trial_id for t in expand_trials(load_study(edit(_set("name", "tiny2"))))}
    assert base.keys() == renamed.keys() and not set(base.values()) & set(renamed.values())


def test_studies_package_does_not_import_ray():
    code = "import sys, vaelab.studies; sys.exit('ray' in sys.modules or 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO / "platform"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
