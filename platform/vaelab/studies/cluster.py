"""Ray itself: starting a local Ray or joining a cluster, the environment trials get, and the checks
a cluster needs (storage and tracking every node reaches, `ray job submit` paths, credentials).

Ray is imported lazily, inside functions: a local Ray must see
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before its first import so that every node binds
127.0.0.1, while a driver joining a real cluster must not. Also quiets Ray's advice that
contradicts vaelab's own messages.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from vaelab.errors import RunnerError
from vaelab.studies.storage import is_remote_storage
from vaelab.tracking.uri import has_credentials, redact_uri, resolve_tracking_uri, sqlite_path

log = logging.getLogger(__name__)

# Settings a trial needs from the driver, sent with the job's runtime_env. Credentials
# (MLFLOW_TRACKING_PASSWORD, AWS_*) are deliberately not: Ray keeps a job's runtime_env in
# its metadata. A local Ray inherits them from the driver's environment; on a cluster they
# belong in the nodes' environment (or the runtime_env of `ray job submit`).
FORWARDED_ENV = ("VAELAB_DATA_DIR", "VAELAB_TRACKING_RETRY_S", "MLFLOW_TRACKING_INSECURE_TLS",
                 "MLFLOW_S3_ENDPOINT_URL")


def connect_ray(
    address: Optional[str], tracking_uri: str, *, num_cpus: Optional[int] = None,
    num_gpus: Optional[int] = None,
) -> bool:
    """Start a local Ray in-process (address None/"local") or join a cluster.

    Returns whether this call started Ray (then the caller shuts it down). The tracking URI
    reaches every worker as MLFLOW_TRACKING_URI through the job's runtime_env, unless it
    carries credentials (see `_pass_credentialed_uri_by_environment`). A local Ray
    binds 127.0.0.1 only (every node address, and the dashboard, which is not started);
    inside `ray job submit`, settings the job's own runtime_env already carries are left
    to it (Ray refuses to merge two values of one variable).
    """
    local = address in (None, "", "local")
    if local:
        # Loopback only: set before ray is imported for the first time in this process.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        quiet_ray_hints("ray._private.authentication.authentication_token_setup")
    import ray

    keep_credentials_out_of_tune()
    if ray.is_initialized():
        return False
    env_vars = {"MLFLOW_TRACKING_URI": tracking_uri}
    # an endpoint URL with user:password@ in it stays in this process's (and the nodes') environment
    env_vars.update({k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k) and not has_credentials(os.environ[k])})
    env_vars = _without_job_env_vars(env_vars)
    if "MLFLOW_TRACKING_URI" in env_vars and has_credentials(tracking_uri):
        env_vars.pop("MLFLOW_TRACKING_URI")
        _pass_credentialed_uri_by_environment(tracking_uri, local)
    kwargs: dict[str, Any] = dict(
        include_dashboard=False,
        log_to_driver=os.environ.get("VAELAB_RAY_LOG_TO_DRIVER", "0") == "1",
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    if env_vars:
        kwargs["runtime_env"] = {"env_vars": env_vars}
    if local:
        kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count() or 1, dashboard_host="127.0.0.1")
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
    else:
        kwargs["address"] = address
    attempts = CLIENT_CONNECT_ATTEMPTS if str(address).startswith("ray://") else 1
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
            return True
        except ConnectionError as err:
            # Ray Client's proxy forks one server process per client; that fork sometimes
            # dies at birth ("Starting Ray client server failed"). A new connection gets a
            # new server.
            if attempt == attempts:
                raise
            log.warning("Ray Client connection to %s failed (%s); retrying", address, str(err).strip()[-200:])
            ray.shutdown()
            time.sleep(2.0 * attempt)
    return True


CLIENT_CONNECT_ATTEMPTS = 3

# Ray Tune copies these from the driver's environment into every trial's runtime_env, which
# each node's runtime_env_agent.log then prints in the clear. A local Ray's trials inherit
# them from the driver's process anyway; a cluster's nodes carry their own.
TUNE_PROPAGATED_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


def keep_credentials_out_of_tune() -> None:
    """Stop Ray Tune from putting the driver's AWS keys into the trials' runtime_env."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # a Ray without it copies nothing
        return
    propagated = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if isinstance(propagated, set):
        propagated.difference_update(TUNE_PROPAGATED_SECRETS)


def _pass_credentialed_uri_by_environment(tracking_uri: str, local: bool) -> None:
    """A tracking URI that carries a password never goes into Ray's runtime_env, which Ray
    keeps in its job metadata and shows on the dashboard. A local Ray's workers inherit this
    process's environment, so it is set here; on a cluster the nodes' own environment (or
    `ray job submit --runtime-env-json`, the user's explicit choice) must carry it."""
    if local:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        return
    raise RunnerError(
        f"tracking URI {redact_uri(tracking_uri)} carries credentials, which vaelab does not "
        "send through Ray's runtime_env (Ray stores it in its job metadata and shows it on the "
        "dashboard): set MLFLOW_TRACKING_URI, or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD "
        "with a URI without them, in every node's environment before `ray start`, or submit the "
        "study with `ray job submit --runtime-env-json '{\"env_vars\": {...}}' -- vaelab run ...`"
    )


JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for the driver of a submitted job


def job_runtime_env() -> Optional[dict[str, Any]]:
    """The runtime_env of the `ray job submit` this process is the driver of, else None."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError):
        return None


def _without_job_env_vars(env_vars: Mapping[str, str]) -> dict[str, str]:
    """`env_vars` less those the submitted job's runtime_env sets already (those reach the
    workers anyway). A tracking URI that differs from the job's is an error: the trials
    would log somewhere else than the driver."""
    job_env = (job_runtime_env() or {}).get("env_vars") or {}
    out = {}
    for key, value in env_vars.items():
        if key not in job_env:
            out[key] = value
        elif key == "MLFLOW_TRACKING_URI" and resolve_tracking_uri(job_env[key]) != value:
            raise RunnerError(
                f"--tracking-uri {redact_uri(value)} differs from MLFLOW_TRACKING_URI="
                f"{redact_uri(job_env[key])} in the job's runtime_env: the trials would log "
                "elsewhere; pass one of them"
            )
    return out


def check_job_paths(storage: str, tracking_uri: str) -> None:
    """Under `ray job submit --working-dir`, the driver runs in a temporary copy of that
    directory which Ray deletes: a relative --storage or SQLite path would vanish with it."""
    if not (job_runtime_env() or {}).get("working_dir"):
        return
    cwd = Path.cwd().resolve()
    for what, path in (("storage", None if is_remote_storage(storage) else Path(storage)),
                       ("SQLite tracking database", sqlite_path(tracking_uri))):
        if path is not None and (path == cwd or cwd in path.parents):
            raise RunnerError(
                f"{what} {path} lies in the job's temporary working directory (ray job submit "
                "--working-dir), which Ray deletes when the job ends: pass an absolute path every "
                "node sees (--storage /shared/ray_results --shared-storage), s3://..., or an MLflow "
                "server (--tracking-uri http://HOST:PORT)"
            )


def leave_job_working_directory() -> None:
    """The driver of `ray job submit --working-dir` runs in Ray's unpacked copy of that
    directory, and Ray 2.60 may delete it while the driver still runs (seen on the first
    job of a fresh multi-node cluster, seconds after ray.init). Every path vaelab needs is
    absolute by now; Tune and native libraries still call getcwd(), so move out first."""
    if (job_runtime_env() or {}).get("working_dir"):
        os.chdir(tempfile.gettempdir())


def shutdown_ray() -> None:
    import ray

    ray.shutdown()


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def check_cluster_storage(
    address: Optional[str], storage: str, tracking_uri: str, shared_storage: bool
) -> None:
    """On a multi-node cluster, trials on other machines must reach storage and tracking."""
    if address in (None, "", "local") or shared_storage:
        return
    remote_client = str(address).startswith("ray://")
    nodes = alive_nodes()
    if not (remote_client or nodes > 1):
        return
    where = "through Ray Client" if remote_client else f"on a {nodes}-node cluster"
    if not is_remote_storage(storage):
        raise RunnerError(
            f"storage {storage} is a local path, but trials run {where}: checkpoints written "
            "on other machines would be lost and `vaelab resume` could not find them. Pass "
            "--storage s3://BUCKET/PATH (or gs://...), or a path on a filesystem every node "
            "mounts (NFS) together with --shared-storage"
        )
    if sqlite_path(tracking_uri) is not None:
        raise RunnerError(
            f"tracking URI {redact_uri(tracking_uri)} is a SQLite file, but trials run "
            f"{where}: run an MLflow server (`mlflow server --host 127.0.0.1 ...` behind your "
            "network's access control) and pass --tracking-uri http://HOST:PORT, or pass "
            "--shared-storage if the file is on a filesystem every node mounts"
        )


class _RayHintFilter(logging.Filter):
    """Drops Ray's own advice that contradicts vaelab's: "Resume experiment with:
    Tuner.restore(...)" (vaelab prints `vaelab resume NAME`), "Trials did not complete"
    (the progress line and summary say which), and the FileNotFoundError traceback Tune
    logs when it deletes a checkpoint that is already gone (tune_state re-creates the
    ones it needs)."""

    _DROPPED = ("Resume experiment with", "Resume training with", "Trials did not complete",
                # a local Ray binds 127.0.0.1 only: its token-auth advice is about clusters
                "Token authentication is enabled for this Ray cluster",
                "Token authentication is disabled for this Ray cluster")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(text in message for text in self._DROPPED):
            return False
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, FileNotFoundError) and "deleting path" in message)


_RAY_HINT_FILTER = _RayHintFilter()


def quiet_ray_hints(*names: str) -> None:
    for name in names or ("ray.tune.tune", "ray.train._internal.storage"):
        logger = logging.getLogger(name)
        if _RAY_HINT_FILTER not in logger.filters:
            logger.addFilter(_RAY_HINT_FILTER)
