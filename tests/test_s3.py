"""The cluster path the README recommends, on a real S3-compatible server on 127.0.0.1
(moto, a process of its own, behind a relay that can go down and come back): Ray Tune's
state and checkpoints in `--storage s3://...`, MLflow artifacts through `vaelab server
--artifacts-destination s3://...`.

Default run (short): the mistakes users make with S3 (a bucket that does not exist, wrong
credentials, an endpoint that does not answer, credentials inside a URI) end before any
trial in one paragraph naming the option, exit 2; the checkpoint repair of `vaelab
resume` on s3://. `-m slow`: a worker node lost mid-study, the driver killed and the
study resumed (with checkpoints the last saved state names deleted), the S3 server
restarted mid-study, each counting every epoch in MLflow against the plan; and a sweep of
every command and everything vaelab writes for the secrets of the tracking URI and S3.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cluster_helpers import (  # noqa: E402
    RayCluster,
    S3Server,
    TrackingServer,
    free_port,
    moto_missing_reason,
    short_tmpdir,
    stop_group,
    tool_env,
)
from test_cluster import (  # noqa: E402
    client,
    epoch_steps,
    everything_logged,
    finish,
    logged_epochs,
    run_vaelab,
    start_vaelab,
    study_runs,
    write_study,
)

BUCKET = "vaelab"
pytestmark = pytest.mark.skipif(moto_missing_reason() is not None, reason=moto_missing_reason() or "")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """moto's S3 on 127.0.0.1 with one bucket; only its own access key is accepted."""
    server = S3Server(short_tmpdir("vs3-"))
    try:
        server.start()
        server.create_bucket(BUCKET)
        server.require_auth()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


def s3_env(s3: S3Server, **extra: str) -> dict[str, str]:
    return tool_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **s3.env(**extra))


def assert_refused_before_anything(result: Any, tmp_path: Path, *needles: str) -> str:
    """Exit 2, one paragraph on stderr naming what to fix, no traceback, nothing started."""
    err = result.stderr.strip()
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in err and err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (tmp_path / "mlflow.db").exists()  # refused before the tracking store was touched
    return err


# =========================================================================== default: the mistakes


def test_a_bucket_that_does_not_exist_is_refused_before_any_trial(tmp_path: Path, s3: S3Server) -> None:
    study = write_study(tmp_path, "nobucket", 2, 2)
    result = run_vaelab(["run", str(study), "--storage", "s3://no-such-bucket/ray_results",
                         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], s3_env(s3), tmp_path, timeout=120)
    err = assert_refused_before_anything(result, tmp_path, "--storage s3://no-such-bucket/ray_results",
                                         "bucket 'no-such-bucket' does not exist", s3.endpoint)
    assert s3.secret not in result.stdout + result.stderr
    print(f"\n{err}")


def test_wrong_credentials_are_refused_before_any_trial(tmp_path: Path, s3: S3Server) -> None:
    study = write_study(tmp_path, "badkeys", 2, 2)
    wrong = "wrong-" + s3.secret[::-1]
    result = run_vaelab(["run", str(study), "--storage", f"s3://{BUCKET}/ray_results",
                         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                        s3_env(s3, AWS_SECRET_ACCESS_KEY=wrong), tmp_path, timeout=120)
    err = assert_refused_before_anything(result, tmp_path, f"--storage s3://{BUCKET}/ray_results",
                                         "refused this machine's credentials", "AWS_SECRET_ACCESS_KEY")
    assert wrong not in result.stdout + result.stderr and s3.secret not in result.stdout + result.stderr
    assert not s3.keys(BUCKET, "ray_results/")  # nothing written
    print(f"\n{err}")


def test_an_endpoint_that_does_not_answer_is_refused_before_any_trial(tmp_path: Path, s3: S3Server) -> None:
    study = write_study(tmp_path, "noendpoint", 2, 2)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    result = run_vaelab(["run", str(study), "--storage", f"s3://{BUCKET}/ray_results",
                         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                        s3_env(s3, AWS_ENDPOINT_URL=dead), tmp_path, timeout=180)
    err = assert_refused_before_anything(result, tmp_path, f"--storage s3://{BUCKET}/ray_results",
                                         f"endpoint {dead} (AWS_ENDPOINT_URL) does not answer")
    assert s3.secret not in result.stdout + result.stderr
    print(f"\n{err}")


def test_resume_makes_the_same_storage_check(tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaelab.studies import runner
    from vaelab.studies.plan import RunnerError

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RunnerError, match="bucket 'gone' does not exist"):
        runner.resume_study("some-run", "s3://gone/ray_results")


def test_credentials_inside_the_storage_uri_or_the_endpoint_are_refused_unprinted(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tune records the storage path and its filesystem's endpoint in the experiment state."""
    from vaelab.studies.plan import RunnerError
    from vaelab.studies.storage import check_storage

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RunnerError, match="carries credentials") as refused:
        check_storage(f"s3://{BUCKET}/rr?access_key={s3.key_id}&secret_key={s3.secret}")
    assert s3.secret not in str(refused.value) and "--storage" in str(refused.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://user:{s3.secret}@127.0.0.1:{s3.port}")
    with pytest.raises(RunnerError, match="AWS_ENDPOINT_URL=http://\\*\\*\\*@127.0.0.1") as refused:
        check_storage(f"s3://{BUCKET}/rr")
    assert s3.secret not in str(refused.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    check_storage(f"s3://{BUCKET}/rr")  # the good case writes and deletes one probe object
    assert not [k for k in s3.keys(BUCKET, "rr/") if ".vaelab-write-check" in k]


# =========================================================================== default: checkpoint repair on S3


def write_s3_tune_state(s3: S3Server, prefix: str, trials: dict[str, list[str]]) -> None:
    """Tune 2.x's experiment state for an S3 experiment: checkpoint paths inside the bucket
    ("bucket/prefix/trial/checkpoint_N", no leading slash) in a hex-encoded pickle."""
    trial_data = []
    for trial, checkpoints in trials.items():
        manager = {"checkpoints": [f"{BUCKET}/{prefix}/{trial}/{c}" for c in checkpoints]}
        blob = {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(manager).hex()}
        trial_data.append([json.dumps({"trial_id": trial}),
                           json.dumps({"checkpoint_manager": blob, "last_result": {}})])
    s3.client().put_object(Bucket=BUCKET, Key=f"{prefix}/experiment_state-2026-01-01_00-00-00.json",
                           Body=json.dumps({"trial_data": trial_data}).encode())


def test_resume_recreates_checkpoints_deleted_after_the_last_saved_state_on_s3(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vaelab.studies import tune_state

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    prefix = "repair/study"
    for trial, on_store in {"t0": ["checkpoint_000004", "checkpoint_000005"],  # intact
                            "t1": ["checkpoint_000006", "checkpoint_000007"],  # state names 4, 5
                            "t2": []}.items():  # nothing newer to copy: left to Tune's error
        for name in on_store:
            for file in ("checkpoint.pt", "extra/meta.json"):
                s3.client().put_object(Bucket=BUCKET, Key=f"{prefix}/{trial}/{name}/{file}",
                                       Body=f"{trial}/{name}/{file}".encode())
    write_s3_tune_state(s3, prefix, {"t0": ["checkpoint_000004", "checkpoint_000005"],
                                     "t1": ["checkpoint_000004", "checkpoint_000005"],
                                     "t2": ["checkpoint_000001"]})
    repaired = tune_state.repair_missing_checkpoints(f"s3://{BUCKET}/{prefix}")
    assert [(str(m), s.name) for m, s in repaired] == [
        (f"{BUCKET}/{prefix}/t1/checkpoint_000004", "checkpoint_000007"),
        (f"{BUCKET}/{prefix}/t1/checkpoint_000005", "checkpoint_000007")]
    for name in ("checkpoint_000004", "checkpoint_000005"):  # the newest checkpoint's content, every file
        for file in ("checkpoint.pt", "extra/meta.json"):
            assert s3.read(BUCKET, f"{prefix}/t1/{name}/{file}") == f"t1/checkpoint_000007/{file}".encode()
    assert s3.read(BUCKET, f"{prefix}/t0/checkpoint_000004/checkpoint.pt") == b"t0/checkpoint_000004/checkpoint.pt"
    assert not s3.keys(BUCKET, f"{prefix}/t2/")
    assert tune_state.repair_missing_checkpoints(f"s3://{BUCKET}/{prefix}") == []  # idempotent
