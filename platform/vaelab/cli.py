"""The `vaelab` command line: run, resume, validate, ls, query, train, schema, report, claims,
server, data.

Every command imports what it needs when it runs (torch, ray and mlflow are slow to
import), so `vaelab validate` and `vaelab --help` start in a fraction of a second.
A mistake the user can fix (a bad study, a missing dataset, an unreachable tracking
server, a bad --set) prints one clean message to stderr and exits with status 2.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, NoReturn, Optional

import typer
import yaml

from vaelab.errors import VaelabError

app = typer.Typer(
    name="vaelab",
    help="Hyperparameter and ablation studies of deep hierarchical VAEs on Ray Tune + MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: Rich markup would eat the "[default: ...]" of help strings
)
data_app = typer.Typer(help="Datasets: fetch and list.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")

USER_ERROR = 2


@app.callback()
def _quiet_libraries() -> None:
    """MLflow logs every database migration and connection at INFO: not news to a user.
    (MLflow sets its level from MLFLOW_LOGGING_LEVEL when imported, here and in trials.)"""
    import logging

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow URI [default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db]")
StorageOpt = typer.Option(None, "--storage", help="Ray Tune storage: a path or s3://... [default: ./ray_results]")


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


# --------------------------------------------------------------------------- errors


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(USER_ERROR)


@contextmanager
def user_errors() -> Iterator[None]:
    """User-fixable errors (every `VaelabError`) -> one line on stderr, exit 2; bugs keep
    their traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)
    except VaelabError as err:
        fail(str(err))


def _tracking_uri(uri: Optional[str]) -> str:
    from vaelab.tracking.uri import resolve_tracking_uri

    return resolve_tracking_uri(uri)


# --------------------------------------------------------------------------- --set


# `--set a=1 b=2`: click gives an option one value, so the pairs after the first arrive
# as extra arguments (Helm and Hydra users type several pairs after one --set).
EXTRA_PAIRS = {"allow_extra_args": True, "ignore_unknown_options": True}


def set_items(items: list[str], ctx: typer.Context) -> list[str]:
    """The --set pairs, those given after one --set included; any other extra argument is an error."""
    for extra in ctx.args:
        if "=" not in extra or extra.startswith("-"):
            fail(f"unexpected argument {extra!r} (parameters are key=value pairs after --set; "
                 f"see `vaelab {ctx.info_name} --help`)")
    return [*items, *ctx.args]


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs; each value is parsed as YAML (safe loader): 3, 1.0e-3, true, null, 64-32-16."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            fail(f"--set {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            fail(f"--set {item!r}: value is not valid YAML ({err})")
        # YAML 1.1 reads on/off/yes/no as booleans; `compile=off` means the string.
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw.strip()
        values[key] = value
    return values


def build_trial_config(values: dict[str, Any]):
    """A TrialConfig from --set values; errors name the key and the value given."""
    from pydantic import ValidationError

    from vaelab.config import trial_config

    try:
        return trial_config(values)
    except ValidationError as err:
        fail("; ".join(_describe_error(e, values) for e in err.errors()))


def _describe_error(error: dict[str, Any], values: dict[str, Any]) -> str:
    loc = [str(p) for p in error.get("loc", ())]
    key = loc[0] if loc else ""
    if error.get("type") == "extra_forbidden":
        from vaelab.config import TrialConfig

        close = difflib.get_close_matches(key, list(TrialConfig.model_fields), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"--set {key}={values.get(key)!r}: unknown parameter {key!r}{hint}"
    message = error.get("msg", "invalid").removeprefix("Value error, ")
    if key in values:
        return f"--set {key}={values[key]!r}: {message}"
    return f"invalid combination: {message}"


# --------------------------------------------------------------------------- run / resume


@app.command(context_settings=EXTRA_PAIRS)
def run(
    ctx: typer.Context,
    study: Path = typer.Argument(..., help="Study YAML (ablations/*.yaml)"),
    budget: Optional[str] = typer.Option(None, "--budget", help="Budget name [default: the study's default_budget]"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: auto, ray://HOST:10001, HOST:6379 [default: local Ray]"),
    storage: Optional[str] = StorageOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    name: Optional[str] = typer.Option(None, "--name", help="Run name (Tune experiment folder) [default: STUDY-BUDGET-TIMESTAMP]"),
    shared_storage: bool = typer.Option(False, "--shared-storage", help="Assert that a local --storage path (and a SQLite tracking file) is on a filesystem every node mounts"),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Set a trial parameter for every trial, over the study's fixed, overrides and budget: --set key=value [key=value ...]; an axis's name pins that axis (--set variant=VAE+BN); a parameter the variants differ in is refused"),
    no_report: bool = typer.Option(False, "--no-report", help="Skip the report at the end"),
) -> None:
    """Expand the study, run every trial on Ray Tune, log to MLflow, write the report."""
    with user_errors():
        from vaelab.studies import load_study
        from vaelab.studies.expand import command_line_notes

        sets = parse_sets(set_items(set_, ctx))
        loaded = load_study(study, budget, overrides=sets or None)
        from vaelab.studies.runner import run_study

        result = run_study(
            loaded, budget, address=address, storage=storage, tracking_uri=tracking_uri, name=name,
            shared_storage=shared_storage, report=not no_report, echo=_echo,
            notes=command_line_notes(study, budget, sets),
        )
    _exit_for(result)


@app.command()
def resume(
    name: str = typer.Argument(..., help="The run name printed by `vaelab run` (or the start of it, e.g. the study name, when one run matches)"),
    storage: Optional[str] = StorageOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: auto, ray://HOST:10001, HOST:6379 [default: local Ray]"),
    shared_storage: bool = typer.Option(False, "--shared-storage", help="Assert that a local --storage path (and a SQLite tracking file) is on a filesystem every node mounts"),
    no_report: bool = typer.Option(False, "--no-report", help="Skip the report at the end"),
) -> None:
    """Continue an interrupted study; finished trials are not rerun."""
    with user_errors():
        from vaelab.studies.runner import resume_study

        result = resume_study(
            name, storage, tracking_uri, address=address, shared_storage=shared_storage,
            report=not no_report, echo=_echo,
        )
    _exit_for(result)


def _echo(line: str) -> None:
    typer.echo(line)


def _exit_for(result: Any) -> None:
    if result.interrupted:
        raise typer.Exit(130)
    if result.tune_errors:
        typer.echo(f"{len(result.tune_errors)} trial(s) failed after retries:", err=True)
        for line in result.tune_errors:
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(1)


# --------------------------------------------------------------------------- validate / ls


@app.command()
def validate(files: list[Path] = typer.Argument(..., help="Study or search-space YAML files")) -> None:
    """Check study / search-space files without running anything; a valid study's trial
    count per budget, identical trials and first trial keys are shown."""
    from vaelab.studies import validate_file
    from vaelab.studies.preview import study_preview

    bad = 0
    for path in files:
        with user_errors():
            errors = validate_file(path)
        if errors:
            bad += 1
            for line in errors:
                typer.echo(line, err=True)
        else:
            typer.echo(f"OK {path}")
            with user_errors():
                for line in study_preview(path):
                    typer.echo(f"  {line}")
    if bad:
        raise typer.Exit(USER_ERROR)


@app.command("ls")
def list_studies(
    tracking_uri: Optional[str] = TrackingOpt,
    ablations: Path = typer.Option(Path("ablations"), "--ablations", help="Folder of local study files"),
) -> None:
    """Studies recorded in MLflow, and the study files found locally."""
    with user_errors():
        uri = _tracking_uri(tracking_uri)
        rows = _recorded_studies(uri)
    if rows:
        typer.echo(f"studies in {_redact(uri)}:")
        # `planned` counts the study's trials; `cohorts`, where a row has it, the Tune trials that train them
        cohorts = ["cohorts"] if any(r.get("cohorts") for r in rows) else []
        typer.echo(_table(rows, ["study", "run_name", "status", "budget", "trials", "planned", *cohorts, "started"]))
    else:
        typer.echo(f"no studies recorded in {_redact(uri)}")
    local = _local_studies(ablations)
    if local:
        typer.echo(f"\nstudy files in {ablations}/:")
        typer.echo(_table(local, ["file", "name", "budgets", "search"]))


def _recorded_studies(uri: str) -> list[dict[str, Any]]:
    from vaelab.tracking.queries import list_studies
    from vaelab.tracking.uri import sqlite_path

    path = sqlite_path(uri)
    if path is not None and not path.exists():
        return []
    return list_studies(uri)


def _local_studies(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(folder.glob("*.y*ml")):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            data = None
        data = data if isinstance(data, dict) else {}
        search = data.get("search") if isinstance(data.get("search"), dict) else {}
        rows.append({
            "file": str(path),
            "name": data.get("name", "?"),
            "budgets": ",".join(data.get("budgets", {}) or {}) if isinstance(data.get("budgets"), dict) else "",
            "search": search.get("mode", "grid"),
        })
    return rows


# --------------------------------------------------------------------------- query


def _full_run_name(uri: str, study: Optional[str], given: Optional[str]) -> Optional[str]:
    """The study run `--run` means: a run's name, or a start of one that only one run has
    (as `vaelab resume`, `report` and `claims` take it). Several or none: a user error
    listing the runs."""
    if not given:
        return given
    rows = [r for r in _recorded_studies(uri) if study is None or r["study"] == study]
    names = [r["run_name"] for r in reversed(rows)]  # newest first
    if given in names or not names:
        return given
    matches = [n for n in names if n.startswith(given)]
    if len(matches) == 1:
        return matches[0]
    where = f"study {study}" if study else _redact(uri)
    if matches:
        fail(f"--run {given!r} starts several runs of {where}: {', '.join(matches)} (newest first); give more of the name")
    fail(f"--run {given!r}: no run of {where} is named so or starts so; its runs: {', '.join(names)} "
         "(newest first; `vaelab ls` lists every study's runs)")

def _newest_run(uri: str, study: str) -> Optional[str]:
    """The newest run of `study` (what report and claims read by default), said on stderr."""
    names = [r["run_name"] for r in _recorded_studies(uri) if r["study"] == study]
    if not names:
        return None
    others = f" (newest of {len(names)}; --run NAME for another, --all-runs for every run)" if len(names) > 1 else ""
    typer.echo(f"study {study}: run {names[-1]}{others}", err=True)
    return names[-1]


_QUERY_METRICS = ("test_ll_iw", "test_elbo", "train_elbo", "kl_total", "active_units", "epoch", "wall_time_s")


@app.command()
def query(
    filter_string: Optional[str] = typer.Argument(None, metavar="[FILTER]", help="MLflow search filter, e.g. \"params.inference = 'lvae' and metrics.test_elbo > -90\" (params are strings there: = != LIKE only)"),
    study: Optional[str] = typer.Option(None, "--study", help="Only this study (MLflow experiment)"),
    run_name: Optional[str] = typer.Option(None, "--run", help="Only this run of a study (a name `vaelab ls` lists, or a unique start of it)"),
    all_runs: bool = typer.Option(False, "--all-runs", help="With --study: every run of the study [default: its newest run, as report and claims]"),
    where: Optional[str] = typer.Option(None, "--where", help="Typed filter on params and final metrics, e.g. \"depth > 2 and test_ll_iw > -90\" (pandas query syntax)"),
    fmt: Format = typer.Option(Format.table, "--format", help="table | csv | json | parquet"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write to this file instead of stdout (required for parquet)"),
    tracking_uri: Optional[str] = TrackingOpt,
) -> None:
    """Trial runs matching a filter: study, run, trial_id, variant, status, params, final metrics."""
    with user_errors():
        from vaelab.tracking.queries import search_trial_runs

        uri = _tracking_uri(tracking_uri)
        run = _full_run_name(uri, study, run_name)
        if study and not run and not all_runs:
            run = _newest_run(uri, study)
        rows = search_trial_runs(uri, filter_string or "", study, run)
    frame = query_frame(rows, wide=fmt is not Format.table, where=where)
    if fmt is Format.parquet:
        if out is None:
            fail("--format parquet needs --out FILE")
        import pyarrow.parquet as pq

        from vaelab.report.parquet import rows_table

        pq.write_table(rows_table(frame.to_dict(orient="records")), out)
        typer.echo(f"{len(frame)} trial runs -> {out}", err=True)
        return
    text = _render(frame, fmt)
    if out is not None:
        out.write_text(text)
        typer.echo(f"{len(frame)} trial runs -> {out}", err=True)
    else:
        typer.echo(text, nl=not text.endswith("\n"))


def query_frame(rows: list[dict[str, Any]], wide: bool, where: Optional[str] = None):
    """One row per trial run; params typed. `wide`: every param and metric; else the
    columns that identify a trial (study, run, trial_id, its axes: the params named in its
    trial key, and those that differ between the rows) and the main final metrics.
    `where`: a pandas query over the typed columns."""
    import pandas as pd

    from vaelab.tracking.read import typed_params

    records = []
    for r in rows:
        record = {k: r[k] for k in ("study", "run_name", "trial_id", "trial_key", "variant", "status")}
        params = typed_params(r["params"])
        record.update(params)
        # trials.parquet's names: a metric named like a param (the per-epoch lr) is <name>_final
        record.update({f"{k}_final" if k in params else k: v for k, v in r["metrics"].items()})
        record["mlflow_run_id"] = r["run_id"]
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    if where and not frame.empty:
        frame = _where(frame, where)
    if frame.empty or wide:
        return frame
    params = sorted({k for r in rows for k in r["params"]})
    axes = {part.partition("=")[0] for key in frame["trial_key"] for part in str(key).split(",")}
    shown = [p for p in params if p in axes or frame[p].astype(str).nunique(dropna=False) > 1]
    metrics = [m for m in _QUERY_METRICS if m in frame.columns]
    return frame[["study", "run_name", "trial_id", "variant", "status", *shown, *metrics]]


def _where(frame, expression: str):
    """Rows of `frame` where the pandas expression holds; a bad one is a user error."""
    try:
        return frame.query(expression, engine="python")
    except Exception as err:  # noqa: BLE001 - pandas raises many kinds; all mean a bad expression
        columns = ", ".join(c for c in frame.columns if c not in ("trial_key", "mlflow_run_id"))
        fail(f"--where {expression!r}: {type(err).__name__}: {err}; columns: {columns}")


def _render(frame, fmt: Format) -> str:
    if fmt is Format.csv:
        return frame.to_csv(index=False)
    if fmt is Format.json:
        records = [{k: _json_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
        return json.dumps(records, indent=1) + "\n"
    if frame.empty:
        return "no matching trial runs"
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _json_value(value.item())
    return value


# --------------------------------------------------------------------------- train


@app.command(context_settings=EXTRA_PAIRS)
def train(
    ctx: typer.Context,
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Trial parameters: --set key=value [key=value ...] (repeatable)"),
    preset: str = typer.Option("quick", "--preset", help="quick: 10 epochs, K = 100 (about a minute); paper: the papers' 2000 epochs, K = 5000"),
    out: Optional[Path] = typer.Option(None, "--out", help="Export the model and artifacts here; a checkpoint is kept here while training"),
    resume_from: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted training from its folder (--set may change epochs)"),
) -> None:
    """Train one trial without Ray or MLflow; the last stdout line is the final metrics as JSON.

    Ctrl-C saves a checkpoint after the current epoch; `--resume DIR` continues it."""
    from vaelab import train_one

    with user_errors():
        if resume_from is not None:
            base = train_one.resume_values(resume_from)
        else:
            base = train_one.preset_values(preset)
            typer.echo(train_one.preset_line(preset), err=True)
    config = build_trial_config({**base, **parse_sets(set_items(set_, ctx))})
    with user_errors():
        final, status = train_one.train_one(config, out or resume_from, resume_from, _echo_err, _epoch_line)
    typer.echo(json.dumps({**{k: _json_value(v) for k, v in final.items()}, "status": status}))
    if status == "interrupted":
        raise typer.Exit(130)


def _echo_err(line: str) -> None:
    typer.echo(line, err=True)


def _epoch_line(epoch: int, epochs: int, m: dict[str, float], status: str) -> str:
    parts = [f"epoch {epoch}/{epochs}", f"loss {m.get('train_loss', math.nan):.4g}", f"beta {m.get('beta', 0):.3g}"]
    for key, label in (("test_elbo", "test_elbo"), ("test_ll_iw", "test_ll_iw"), ("kl_total", "kl"), ("active_units", "au")):
        if key in m:
            parts.append(f"{label} {m[key]:.4g}")
    parts.append(f"{m.get('steps_per_s', 0):.0f} steps/s")
    if status != "running":
        parts.append(status)
    return "  ".join(parts)


# --------------------------------------------------------------------------- schema


class SchemaFormat(str, Enum):
    json = "json"
    markdown = "markdown"


@app.command()
def schema(
    fmt: SchemaFormat = typer.Option(SchemaFormat.json, "--format", help="json: the JSON Schema of a study file (for YAML editors); markdown: the reference of every key and trial parameter"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write to this file instead of stdout"),
) -> None:
    """The study-file schema, generated from vaelab's models (docs/study.schema.json, docs/study-schema.md)."""
    from vaelab.studies import reference

    text = reference.json_schema_text() if fmt is SchemaFormat.json else reference.markdown_reference()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"{fmt.value} schema -> {out}", err=True)


# --------------------------------------------------------------------------- report


@app.command()
def report(
    name: str = typer.Argument(..., help="Study name (the MLflow experiment)"),
    run_name: Optional[str] = typer.Option(None, "--run", help="Which run of the study (a name `vaelab ls` lists, or a unique start of it) [default: the newest]"),
    tracking_uri: Optional[str] = TrackingOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder [default: reports/NAME/RUN]"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a folder that holds another run's report"),
) -> None:
    """Regenerate a study run's report (Parquet, tables, figures, HTML) from MLflow alone."""
    with user_errors():
        from vaelab.report.build import build_report

        uri = _tracking_uri(tracking_uri)
        result = build_report(name, uri, out, run=run_name, overwrite=overwrite)
    for warning in getattr(result, "warnings", []) or []:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"report: {getattr(result, 'out_dir', out)}")


@app.command()
def claims(
    name: str = typer.Argument(..., help="Study name (the MLflow experiment)"),
    run_name: Optional[str] = typer.Option(None, "--run", help="Which run of the study (a name `vaelab ls` lists, or a unique start of it) [default: the newest]"),
    tracking_uri: Optional[str] = TrackingOpt,
    from_dir: Optional[Path] = typer.Option(None, "--from", help="A report folder: test its trials.parquet instead of reading MLflow"),
    study_file: Optional[Path] = typer.Option(None, "--study-file", help="Take the claims from this study YAML [default: the run's stored study.yaml; with --from, ablations/NAME.yaml]"),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when a claim is contradicted (for CI)"),
) -> None:
    """Test the papers' claims of a study's `report:` section over the seeds and print the verdicts."""
    with user_errors():
        from vaelab.report.analysis import analyse, inputs_from_folder, inputs_from_mlflow, status_line
        from vaelab.report.claims import format_claims

        if from_dir is not None:
            study_file = study_file or _default_study_file(name, from_dir)
            inputs = None
            trials, origin, stored = inputs_from_folder(from_dir), str(from_dir / "trials.parquet"), {}
        else:
            inputs = inputs_from_mlflow(name, _tracking_uri(tracking_uri), run_name)
            trials, origin, stored = inputs.trials, inputs.origin, inputs.study_yaml
        spec, study_yaml, spec_origin = _claims_spec(study_file, inputs, stored)
        result = analyse(spec, trials, study_yaml)
    for warning in inputs.warnings if inputs else []:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"study {name}: trials from {origin} ({status_line(trials)}); claims from {spec_origin}; α = {spec.alpha:g}")
    if not result.claims:
        typer.echo(f"no claims in {spec_origin}: add them to the study's report.claims, or pass --study-file ablations/{name}.yaml")
    for line in format_claims(result.claims):
        typer.echo(line)
    if result.drivers is not None:
        from vaelab.report.drivers import summary_lines

        typer.echo("\n".join(summary_lines(result.drivers)))
    if strict and result.contradicted:
        typer.echo(f"{len(result.contradicted)} claim(s) contradicted: {', '.join(c.spec.name for c in result.contradicted)}", err=True)
        raise typer.Exit(1)


def _default_study_file(name: str, from_dir: Path) -> Path:
    """A report folder holds no study file: the claims of `--from` come from ablations/NAME.yaml."""
    path = Path("ablations") / f"{name}.yaml"
    if not path.is_file():
        fail(f"claims {name} --from {from_dir}: the claims come from a study file, and {path} does not exist "
             f"here; name the study's YAML with --study-file PATH, or leave out --from to test the claims "
             f"of the run's own study.yaml in MLflow")
    return path


def _claims_spec(study_file: Optional[Path], inputs: Any, stored: dict[str, Any]) -> tuple[Any, dict[str, Any], str]:
    """(report spec, study yaml for the search mode, where the claims came from)."""
    if study_file is None:
        return inputs.spec, stored, "the study run's stored study.yaml"
    from vaelab.studies import load_study

    study = load_study(study_file)  # validated: claims must name what the grid has
    search = {"mode": study.search.mode, "metric": study.search.metric}
    return study.report, {**stored, "search": search}, f"{study_file} (report.claims)"


# --------------------------------------------------------------------------- server

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@app.command()
def server(
    backend_store_uri: Optional[str] = typer.Option(
        None, "--backend-store-uri", envvar="MLFLOW_BACKEND_STORE_URI", show_envvar=True,
        help="Where runs live: postgresql://USER:PASSWORD@HOST:PORT/DB (or sqlite:///PATH). Prefer the "
             "environment variable: a password on the command line shows in `ps`."),
    artifacts_destination: str = typer.Option(
        ..., "--artifacts-destination", help="Where the server stores artifacts: a directory or s3://BUCKET/PATH"),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; other machines need the host's address"),
    port: int = typer.Option(5000, "--port"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Server worker processes [default: MLflow's]"),
    allowed_hosts: Optional[str] = typer.Option(None, "--allowed-hosts", help="Host headers accepted (MLflow's DNS-rebinding guard)"),
) -> None:
    """Run the MLflow tracking server a cluster's trials log to (execs `mlflow server`).

    Binds 127.0.0.1 unless --host says otherwise; the backend store URI (with its password)
    is handed to MLflow through the environment, never the command line."""
    with user_errors():
        argv, env = mlflow_server_command(backend_store_uri, artifacts_destination, host, port, workers,
                                          allowed_hosts)
    if host not in LOOPBACK_HOSTS:
        typer.echo(f"warning: binding {host}: the MLflow server has no authentication of its own; "
                   "allow only the cluster's machines (firewall, security group) or put it behind an "
                   "authenticating proxy", err=True)
    typer.echo(f"vaelab server: MLflow tracking server on http://{host}:{port} · backend "
               f"{_redact(backend_store_uri or '')} · artifacts {argv[argv.index('--artifacts-destination') + 1]}",
               err=True)
    os.execvpe(argv[0], argv, env)


def mlflow_server_command(
    backend_store_uri: Optional[str], artifacts_destination: str, host: str = "127.0.0.1", port: int = 5000,
    workers: Optional[int] = None, allowed_hosts: Optional[str] = None,
) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line and environment `vaelab server` execs."""
    if not backend_store_uri:
        raise VaelabError("--backend-store-uri (or MLFLOW_BACKEND_STORE_URI) is required, e.g. "
                          "postgresql://USER:PASSWORD@HOST:5432/mlflow")
    if "://" not in backend_store_uri:
        raise VaelabError(f"backend store {_redact(backend_store_uri)!r} is a plain path (MLflow's file "
                          "store, deprecated); use postgresql://... or sqlite:///PATH")
    if backend_store_uri.startswith("postgresql://") and not _importable("psycopg") and _importable("psycopg2"):
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; vaelab's dev extras ship psycopg2.
        raise VaelabError("postgresql:// selects the psycopg (3) driver, which is not installed; write "
                          "postgresql+psycopg2://... (psycopg2 is) or pip install 'psycopg[binary]'")
    if "://" not in artifacts_destination:
        artifacts_destination = str(Path(artifacts_destination).expanduser().resolve())
    argv = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
            "--artifacts-destination", artifacts_destination, "--serve-artifacts"]
    if workers:
        argv += ["--workers", str(workers)]
    if allowed_hosts:
        argv += ["--allowed-hosts", allowed_hosts]
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend_store_uri}
    # MLflow's job runner (GenAI scorers: eight more processes) has nothing to do for vaelab.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return argv, env


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --------------------------------------------------------------------------- data


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="Dataset name (see `vaelab data ls`)"),
    dest: Optional[Path] = typer.Option(None, "--dest", help="Folder [default: $VAELAB_DATA_DIR/NAME or ~/.vaelab/data/NAME]"),
) -> None:
    """Download a dataset and verify its checksums."""
    with user_errors():
        from vaelab import data

        try:
            where = data.fetch(name, dest, log=lambda line: typer.echo(line, err=True))
        except ValueError as err:  # unknown dataset name
            fail(str(err))
    typer.echo(f"{name}: {where}")


@data_app.command("ls")
def data_ls() -> None:
    """Known datasets, where they are looked for, and whether their files are there."""
    with user_errors():
        from vaelab import data

        rows = data.list_datasets()
    for row in rows:
        row["missing"] = ",".join(row.get("missing") or []) or "-"
    typer.echo(_table(rows, ["name", "status", "likelihood", "n_train", "n_test", "dir", "missing"]))


# --------------------------------------------------------------------------- helpers


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [columns] + [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _redact(uri: str) -> str:
    from vaelab.tracking.uri import redact_uri

    return redact_uri(uri)


def main() -> None:  # pragma: no cover - `python -m vaelab.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
