"""Trial artifacts as local files, fetched only when asked for and at most once.

A report needs `unit_kl.json` of every trial (units.parquet) but `latents.npz` and
`prior_samples.npz` of one trial per variant (the figures), so nothing is fetched up front.

- A run whose artifact root is a local folder (a SQLite store's `mlartifacts/`, file://…)
  is read in place: no MLflow call, no copy.
- Any other root (a tracking server's `mlflow-artifacts:/…`, s3://…) is downloaded by
  artifact URI, without the per-download `get_run` of the client, into
  cache_dir/<run id>/. A run that has ended is downloaded once: a marker with its end time
  lets later reports reuse the files.

Artifacts may sit at the run's root or one folder below it (root wins).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional
from urllib.parse import unquote, urlsplit

_CACHE_MARKER = ".vaelab-complete.json"


@dataclass(frozen=True)
class ArtifactRoot:
    """Where one run's artifacts live, and whether the run can still change them."""

    run_id: str
    artifact_uri: str
    end_time_ms: Optional[int]
    ended: bool


def local_root(artifact_uri: str) -> Optional[Path]:
    """The local folder of a file:// (or plain path) artifact URI, else None."""
    parts = urlsplit(artifact_uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "" and artifact_uri:
        return Path(artifact_uri)
    return None


class ArtifactFiles:
    """run id + artifact name -> a local file (None when the run has no such artifact)."""

    def __init__(self, tracking_uri: str, roots: Iterable[ArtifactRoot], cache_dir: Path) -> None:
        self._tracking_uri = tracking_uri
        self._roots = {r.run_id: r for r in roots}
        self._cache_dir = Path(cache_dir)
        self._found: dict[tuple[str, str], Optional[Path]] = {}
        self._lock = threading.Lock()

    def path(self, run_id: str, name: str) -> Optional[Path]:
        key = (run_id, name)
        with self._lock:
            if key in self._found:
                return self._found[key]
        root = self._roots.get(run_id)
        found = None if root is None else self._fetch(root, name)
        with self._lock:
            self._found[key] = found
        return found

    def paths(self, run_ids: Iterable[str], name: str, workers: int = 8) -> dict[str, Path]:
        """`name` of each run that has it; remote downloads run on a thread pool."""
        run_ids = list(run_ids)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            found = pool.map(lambda r: self.path(r, name), run_ids)
            return {r: p for r, p in zip(run_ids, found) if p is not None}

    def _fetch(self, root: ArtifactRoot, name: str) -> Optional[Path]:
        local = local_root(root.artifact_uri)
        if local is not None:
            return _in_folder(local, name)
        return self._download(root, name)

    # ----------------------------------------------------------------- remote

    def _download(self, root: ArtifactRoot, name: str) -> Optional[Path]:
        dest = self._cache_dir / root.run_id
        known, cached = _cached(dest, root, name)
        if known:
            return cached
        target = self._download_file(root, name, dest)
        if root.ended:
            with self._lock:  # one marker per run, shared by the names fetched in parallel
                _mark(dest, root, name, target is not None)
        return target

    def _download_file(self, root: ArtifactRoot, name: str, dest: Path) -> Optional[Path]:
        """Download `name` from the run's root (else one folder down) into dest; None if absent.

        Asked by artifact URI: the client's by-run-id calls would add a `get_run` each."""
        import mlflow.artifacts

        base = root.artifact_uri.rstrip("/")
        proxied = self._proxied_get(base, name, dest)
        if proxied is not None:
            return proxied
        for remote in self._candidates(base, name):
            tmp = dest / f".remote-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                got = Path(mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{base}/{remote}", dst_path=str(tmp), tracking_uri=self._tracking_uri))
            except Exception as err:  # noqa: BLE001 - each artifact repository says "missing" its own way
                if _missing(err):
                    continue
                raise
            target = dest / name
            os.replace(got, target)
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        return None

    def _proxied_get(self, base: str, name: str, dest: Path) -> Optional[Path]:
        """A file under a tracking server's own artifact root (`mlflow-artifacts:/…`) in one
        GET to that server: MLflow's generic download lists the path first and builds a
        repository a call, twice the requests and most of a 10,000-trial report's CPU.
        None when the root is not the server's or the file is not at its root."""
        parts = urlsplit(base)
        if parts.scheme != "mlflow-artifacts" or parts.netloc:
            return None
        from mlflow.utils.rest_utils import http_request

        creds = self._server_creds()
        if creds is None:
            return None
        endpoint = f"/api/2.0/mlflow-artifacts/artifacts/{parts.path.strip('/')}/{name}"
        response = http_request(creds, endpoint, "GET")
        if response.status_code != 200:
            return None  # absent at the root (or refused): the generic path decides
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / f".{name}.part"
        tmp.write_bytes(response.content)
        target = dest / name
        os.replace(tmp, target)
        return target

    def _server_creds(self) -> Any:
        """The tracking server's REST credentials, made once (None for other stores)."""
        with self._lock:
            if not hasattr(self, "_creds"):
                from vaelab.tracking.bulk import host_creds
                from vaelab.tracking.connection import client_for

                self._creds = host_creds(client_for(self._tracking_uri))
            return self._creds

    def _candidates(self, base: str, name: str) -> Iterator[str]:
        """`name` at the root first; only when it is not there, a listing for one folder down."""
        yield name
        import mlflow.artifacts

        for info in mlflow.artifacts.list_artifacts(artifact_uri=base, tracking_uri=self._tracking_uri) or []:
            if info.is_dir:
                for inner in mlflow.artifacts.list_artifacts(artifact_uri=f"{base}/{info.path}",
                                                             tracking_uri=self._tracking_uri) or []:
                    if not inner.is_dir and inner.path.rsplit("/", 1)[-1] == name:
                        yield inner.path


def _missing(err: BaseException) -> bool:
    """Whether a download failed because the artifact does not exist (not a transient fault)."""
    code = getattr(err, "error_code", "") or ""
    text = str(err).lower()
    return (isinstance(err, FileNotFoundError) or code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")
            or "404" in text or "not found" in text or "no such file" in text or "does not exist" in text)


def _in_folder(folder: Path, name: str) -> Optional[Path]:
    direct = folder / name
    if direct.is_file():
        return direct
    below = sorted(p for p in folder.glob(f"*/{name}") if p.is_file())
    return below[0] if below else None


def _marker_path(dest: Path) -> Path:
    return dest / _CACHE_MARKER


def _cached(dest: Path, root: ArtifactRoot, name: str) -> tuple[bool, Optional[Path]]:
    """(known, file): known is False when the artifact must be fetched; file is None when
    the ended run is known not to have it."""
    marker = _marker_path(dest)
    if not root.ended or not marker.is_file():
        return False, None
    saved = json.loads(marker.read_text(encoding="utf-8"))
    if saved.get("end_time_ms") != root.end_time_ms or name not in saved.get("names", {}):
        return False, None
    if not saved["names"][name]:
        return True, None
    path = dest / name
    return (True, path) if path.is_file() else (False, None)


def _mark(dest: Path, root: ArtifactRoot, name: str, present: bool) -> None:
    marker = _marker_path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    saved = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
    if saved.get("end_time_ms") != root.end_time_ms:
        saved = {"end_time_ms": root.end_time_ms, "names": {}}
    saved["names"][name] = present
    tmp = dest / f".{_CACHE_MARKER}.tmp"
    tmp.write_text(json.dumps(saved), encoding="utf-8")
    os.replace(tmp, marker)
