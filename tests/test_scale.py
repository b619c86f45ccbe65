"""A study of 5,001 trial runs is listed, queried, tested and reported completely.

MLflow pages its searches at 1,000 runs and some of its calls stop at 5,000: a read that
forgets a page loses trials without an error. The store is a real MLflow SQLite store
(tests/report_fixtures.py) whose newest study run's trials are replicated, params, tags,
metric histories and artifact files included, to 5,001 (benchmarks/scale.py), beside an
older study run that must stay out of every answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from report_fixtures import STUDY, make_study

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from scale import build_store  # noqa: E402 - the benchmark's own store builder

N = 5001
pytestmark = pytest.mark.slow


def vaelab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(Path(sys.executable).with_name("vaelab")), *args], cwd=cwd,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, int]]:
    root = tmp_path_factory.mktemp("scale")
    fixture = make_study(root / "base")
    store = build_store(root / "base", N, root / "big")
    base_trials = len(fixture.plans)
    return store, f"sqlite:///{store / 'mlflow.db'}", {"base_trials": base_trials}


def test_ls_counts_every_trial_run(big_store) -> None:
    store, uri, _ = big_store
    out = vaelab("ls", "--tracking-uri", uri, "--ablations", str(store), cwd=store).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith(STUDY)]
    assert sorted(int(r[4]) for r in rows) == [1, N], out  # the older study run keeps its one trial


def test_query_returns_every_trial_run_of_the_newest_run(big_store) -> None:
    store, uri, _ = big_store
    result = vaelab("query", "--study", STUDY, "--format", "json", "--tracking-uri", uri, cwd=store)
    records = json.loads(result.stdout)
    assert len(records) == N and len({r["mlflow_run_id"] for r in records}) == N
    filtered = vaelab("query", "--study", STUDY, "params.depth = '5'", "--format", "json", "--tracking-uri", uri,
                      cwd=store)
    assert len(json.loads(filtered.stdout)) == sum(r["depth"] == 5 for r in records)


def test_report_and_claims_hold_every_trial(big_store) -> None:
    store, uri, sizes = big_store
    vaelab("report", STUDY, "--tracking-uri", uri, "--out", str(store / "report"), cwd=store)
    trials = pq.read_table(store / "report" / "trials.parquet").to_pandas()
    curves = pq.read_table(store / "report" / "curves.parquet").to_pandas()
    units = pq.read_table(store / "report" / "units.parquet").to_pandas()
    assert len(trials) == N and trials["trial_id"].is_unique
    # every replica carries its original's whole history and unit KL: counts scale exactly
    per_trial_curves = curves.groupby("trial_id").size()
    assert set(per_trial_curves.index) <= set(trials["trial_id"]) and per_trial_curves.sum() == len(curves)
    replicas = trials["trial_id"].str.rsplit("~", n=1).str[0]
    by_original = pd.Series(per_trial_curves.reindex(trials["trial_id"]).fillna(0).to_numpy(), index=replicas)
    assert (by_original.groupby(level=0).nunique() == 1).all()  # each replica like its original
    assert units["trial_id"].nunique() == trials.loc[trials["status"] != "failed", "trial_id"].nunique()
    assert replicas.nunique() == sizes["base_trials"]
    claims = vaelab("claims", STUDY, "--tracking-uri", uri, cwd=store)
    assert f"{N} trials" in claims.stdout, claims.stdout
