"""The MLflow tags vaelab writes and reads: names, run roles and trial statuses.

One vocabulary for both sides (runs.py and queries.py write and search by these; read.py
reads them back), see docs/ARCHITECTURE.md ("MLflow conventions"). Imports nothing.
"""

ROLE_STUDY = "study"
ROLE_TRIAL = "trial"
# vaelab.status values of a child run; `stopped` = ended early by a Tune scheduler (ASHA).
STATUSES = ("running", "finished", "failed", "diverged", "stopped")

TAG_ROLE = "vaelab.role"
TAG_STUDY = "vaelab.study"
TAG_TRIAL_ID = "vaelab.trial_id"
TAG_TRIAL_KEY = "vaelab.trial_key"
TAG_VARIANT = "vaelab.variant"
TAG_STATUS = "vaelab.status"
TAG_NODE = "vaelab.node"
TAG_COHORT = "vaelab.cohort"
TAG_RUN_NAME = "vaelab.run_name"
TAG_PARENT = "mlflow.parentRunId"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # the UI's view: training runs, not GenAI traces
TAG_ATTEMPT = "vaelab.attempt"  # 1 on the first start, +1 each time a retry/restore reopens the run


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
