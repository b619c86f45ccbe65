"""The MLflow tags vaelab writes and reads: names, run roles and trial statuses.

One vocabulary for every side: runs.py, the runner and the trial write these, queries.py and
bulk.py search by them, read.py and report/ read them back; no other module spells a tag
name (tests/test_architecture.py). See docs/ARCHITECTURE.md ("MLflow conventions").
Imports nothing.
"""

ROLE_STUDY = "study"
ROLE_TRIAL = "trial"
# vaelab.status values of a child run; `stopped` = ended early by a Tune scheduler (ASHA).
STATUSES = ("running", "finished", "failed", "diverged", "stopped")

# Both kinds of run: the study parent and each trial member.
TAG_ROLE = "vaelab.role"
TAG_STUDY = "vaelab.study"
TAG_STATUS = "vaelab.status"
TAG_RUN_NAME = "vaelab.run_name"
TAG_PARENT = "mlflow.parentRunId"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # the UI's view: training runs, not GenAI traces

# The study's parent run: provenance, and what the run planned and ended with.
TAG_GIT_SHA = "vaelab.git_sha"  # of the vaelab code that ran
TAG_STUDY_GIT_SHA = "vaelab.study_git_sha"  # of the repository holding the study file
TAG_SPEC_HASH = "vaelab.spec_hash"
TAG_BUDGET = "vaelab.budget"
TAG_VERSIONS = "vaelab.versions"  # "torch=... ray=... mlflow=..." in one tag
TAG_VERSION_PREFIX = "vaelab.version."  # + library name: one tag per library
TAG_HOST = "vaelab.host"  # where the driver ran
TAG_STORAGE = "vaelab.storage"  # Tune's experiment path, credentials redacted
TAG_SEARCH = "vaelab.search"  # grid | optuna
TAG_TRIALS_PLANNED = "vaelab.trials_planned"  # trial members the study expands to
TAG_COHORTS_PLANNED = "vaelab.cohorts_planned"  # Tune trials that train them
TAG_TRIALS_ENDED_PREFIX = "vaelab.trials_"  # + a trial status: how many ended so, when the run ends

# Each trial member's run.
TAG_TRIAL_ID = "vaelab.trial_id"
TAG_TRIAL_KEY = "vaelab.trial_key"
TAG_VARIANT = "vaelab.variant"
TAG_NODE = "vaelab.node"  # hostname/ip
TAG_RAY_NODE = "vaelab.ray_node_id"  # the Ray node the trial last ran on
TAG_CPU_THREADS = "vaelab.cpu_threads"  # torch threads the trial's last attempt trained with
TAG_COHORT = "vaelab.cohort"
TAG_ATTEMPT = "vaelab.attempt"  # 1 on the first start, +1 each time a retry/restore reopens the run
TAG_RESUMED_FROM_EPOCH = "vaelab.resumed_from_epoch"  # the checkpoint epoch a retried attempt started from
TAG_RELOGGED_EPOCHS_SKIPPED = "vaelab.relogged_epochs_skipped"  # "A-B": epochs the lost attempt logged, retrained unlogged
TAG_DIVERGED_EPOCH = "vaelab.diverged_epoch"
TAG_ERROR = "vaelab.error"  # why a trial failed, in one line


def trial_status(tag: str | None, mlflow_status: str) -> str:
    """finished / diverged / failed / stopped / running, from the vaelab.status tag and MLflow.

    A terminal tag wins (an unknown one is kept as written, so it is shown, not hidden);
    otherwise a run MLflow marks FAILED or KILLED has failed (a worker that died before it
    could tag), FINISHED is finished, anything else is still running.
    """
    tag = (tag or "").strip().lower()
    if tag and tag != "running":
        return tag
    if mlflow_status in ("FAILED", "KILLED"):
        return "failed"
    if mlflow_status == "FINISHED":
        return "finished"
    return "running"
