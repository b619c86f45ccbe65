"""What a study prints: the live progress line (a Tune callback), a trial's failure in one line,
the summary table of its trial runs, and where its wall time went.

Imports ray only inside `progress_callback` (tune.Callback); the rest reads plain values.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from vaelab.studies.trial import COHORT_KEY, CTX_KEY, ENDED_STATUSES, STATUS_METRIC


def progress_callback(metric: str, mode: str, total: int, interval_s: float = 5.0):
    """A tune.Callback printing one compact line: trials done/running/failed, best, ETA."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self) -> None:
            self.metric, self.mode, self.total, self.interval_s = metric, mode, total, interval_s
            self._reset()

        def _reset(self) -> None:
            self.start = time.monotonic()
            self.last_print = 0.0
            self.iters_at_start: dict[str, int] = {}
            self.last_line = ""

        def setup(self, **info: Any) -> None:
            self._reset()

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if time.monotonic() - self.last_print >= self.interval_s:
                self._print(trials)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._print(trials)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"[vaelab] {_trial_label(trial)} failed ({_error_line(trial)}); retrying from its "
                  f"last checkpoint (failure {trial.num_failures})", file=sys.stderr, flush=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"[vaelab] {_trial_label(trial)} failed for good ({_error_line(trial)}); "
                  f"details: {trial.error_file or trial.path}", file=sys.stderr, flush=True)
            self._print(trials)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self._print(trials, force=True)

        def _print(self, trials: list, force: bool = False) -> None:
            self.last_print = time.monotonic()
            line = progress_line(trials, self.metric, self.mode, self.total, self.start, self.iters_at_start)
            if line != self.last_line or force:
                print(line, file=sys.stderr, flush=True)
                self.last_line = line

    return Progress()


def _trial_label(trial: Any) -> str:
    cohort = trial.config.get(COHORT_KEY)
    if cohort:
        return "trial " + " + ".join(m["trial_key"] for m in cohort["members"])
    return f"trial {trial.trial_id}"


def _error_line(trial: Any) -> str:
    try:
        error = trial.get_pickled_error() or trial.get_error()
    except Exception:  # noqa: BLE001 - a message is all we want
        error = None
    if error is None:
        return _error_file_line(trial) or "its worker process died"
    text = str(error).strip()
    # Ray wraps the cause; its most useful line is usually the last non-empty one
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    head = next((ln for ln in lines if "actor died" in ln.lower() or "Error" in ln), lines[-1] if lines else "")
    return f"{type(error).__name__}: {head[:200]}"


def _error_file_line(trial: Any) -> str:
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def progress_line(
    trials: Sequence[Any], metric: str, mode: str, total: int, start: float, iters_at_start: dict[str, int]
) -> str:
    """`[vaelab 0:01:23] 3/8 done · 2 running · 0 failed · 1 diverged · best test_ll_iw -85.31 · ETA 0:02:10`.

    `done` counts trials that reached their end (last epoch, or diverged); a trial Tune
    ended before that (Ctrl-C, a scheduler) is `stopped`, one never started is in neither.
    ETA: the work left (in trials; a running trial counts by its share of epochs done)
    at the rate work was done so far in this session."""
    done = running = failed = diverged = stopped = 0
    work_done = 0.0  # this session, in trials
    work_left = float(max(total - len(trials), 0))  # trials not even created yet
    best: Optional[float] = None
    for trial in trials:
        result = trial.last_result or {}
        it = int(result.get("training_iteration", 0) or 0)
        first = iters_at_start.setdefault(trial.trial_id, it)
        epochs = max(_trial_epochs(trial.config), 1)
        if trial.status == "TERMINATED" and result.get(STATUS_METRIC) in ENDED_STATUSES:
            done += 1
            diverged += result.get(STATUS_METRIC) == "diverged"
            work_done += 1.0 - min(first / epochs, 1.0)
        elif trial.status == "TERMINATED":
            stopped += 1
            work_done += max(it - first, 0) / epochs
        elif trial.status == "ERROR":
            failed += 1
        else:
            running += trial.status == "RUNNING"
            work_done += max(it - first, 0) / epochs
            work_left += 1.0 - min(it / epochs, 1.0)
        value = result.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            better = best is None or (value > best if mode == "max" else value < best)
            best = value if better else best
    elapsed = time.monotonic() - start
    if work_left <= 0:
        eta = "0:00:00"
    else:
        eta = _clock(elapsed / work_done * work_left) if work_done > 0.05 else "?"
    # With cohorts a Tune trial trains several of the study's trials: say which is counted.
    unit = " cohorts" if any(_cohort_size(t.config) > 1 for t in trials) else ""
    parts = [f"{done}/{total}{unit} done", f"{running} running", f"{failed} failed"]
    if stopped:
        parts.append(f"{stopped} stopped")
    if diverged:
        parts.append(f"{diverged} diverged")
    parts.append(f"best {metric} {best:.4g}" if best is not None else f"best {metric} -")
    parts.append(f"ETA {eta}")
    return f"[vaelab {_clock(elapsed)}] " + " · ".join(parts)


def _cohort_size(config: Mapping[str, Any]) -> int:
    return len(config[COHORT_KEY]["members"]) if COHORT_KEY in config else 1


def _trial_epochs(config: Mapping[str, Any]) -> int:
    if COHORT_KEY in config:
        return int(config[COHORT_KEY]["members"][0]["config"].get("epochs", 1))
    return int(config.get(CTX_KEY, {}).get("epochs") or 1)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def summary_table(rows: Sequence[Mapping[str, Any]], metric: str, max_params: int = 6,
                  interrupted: bool = False) -> str:
    """A plain-text table: trial, variant, the params that vary, final metrics, status.

    `interrupted`: the study was stopped to be resumed; see `shown_statuses`."""
    if not rows:
        return "no trial runs recorded"
    statuses = shown_statuses(rows, interrupted)
    varying = [k for k in sorted({k for r in rows for k in r["params"]})
               if len({r["params"].get(k) for r in rows}) > 1 and k != "seed"][:max_params]
    metrics = [m for m in (metric, "test_elbo", "test_ll_iw", "active_units") if m]
    metrics = list(dict.fromkeys(metrics))
    header = ["trial", "variant", *varying, "seed", *metrics, "epochs", "status"]
    table = [header]
    for r in sorted(rows, key=lambda r: r["trial_key"]):
        cells = [r["trial_key"], r["variant"] or "-", *(_fmt_param(r["params"].get(k, "")) for k in varying),
                 r["params"].get("seed", "")]
        cells += [_fmt(r["metrics"].get(m)) for m in metrics]
        cells += [str(int(r["metrics"].get("epoch", 0) or 0)), statuses.get(id(r), r["status"])]
        table.append([str(c) for c in cells])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def shown_statuses(rows: Sequence[Mapping[str, Any]], interrupted: bool) -> dict[int, str]:
    """id(row) -> the status a stopped study's summary shows for it.

    After a Ctrl-C nothing runs, yet MLflow may say `running` for a member whose process
    was stopped before it could close its run, while the member beside it in the same
    cohort was closed as `stopped`. Both wait for `vaelab resume`: both read `interrupted`."""
    if not interrupted:
        return {}
    return {id(r): "interrupted" for r in rows if r["status"] in ("running", "stopped")}


def _fmt_param(text: str) -> str:
    """MLflow param strings; long floats shortened for the table."""
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.4g}" if "." in text or "e" in text.lower() else text


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_count(members: int, cohorts: int) -> str:
    """`11 trials`, or `16 trials in 2 cohorts` when cohorts train several trials each."""
    noun = "trial" if members == 1 else "trials"
    if members == cohorts:
        return f"{members} {noun}"
    return f"{members} {noun} in {cohorts} cohort{'' if cohorts == 1 else 's'}"


def time_line(clock: Sequence[float], rows: Sequence[Mapping[str, Any]]) -> str:
    """Where a study's wall time went: `time 0:02:03 = Ray start 9 s + trials 0:01:31 (26 s
    of it training and evaluating, summed over 4 processes; ...) + summary and report 21 s`.
    `clock`: Ray starting, Ray up, Tune done, end."""
    start, ray_up, tune_done, end = clock
    seconds = process_seconds(rows)
    trained = sum(seconds.values())
    return (f"time {_clock(end - start)} = Ray start {ray_up - start:.0f} s + trials {_clock(tune_done - ray_up)} "
            f"({trained:.0f} s of it training and evaluating, summed over {_processes(len(seconds), len(rows))}; "
            f"the rest is process start-up, data loading and MLflow) + summary and report {end - tune_done:.0f} s")


def process_seconds(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Training and evaluation seconds per process: the members of a cohort train in one
    process and each logs the cohort's clock, so a cohort counts once (its longest member:
    a diverged member stops logging early)."""
    seconds: dict[str, float] = {}
    for row in rows:
        key = row.get("cohort") or row.get("run_id") or row["trial_key"]
        value = float(row["metrics"].get("wall_time_s") or 0.0)
        seconds[key] = max(seconds.get(key, 0.0), value)
    return seconds


def _processes(count: int, rows: int) -> str:
    if count == rows:
        return f"{rows} trial{'' if rows == 1 else 's'}"
    return f"{count} cohort{'' if count == 1 else 's'} of {rows} trials"
