"""Datasets: readers of local files, checksums, `fetch`, and the device-resident `Dataset`.

Every reader takes a local directory; nothing here downloads unless `fetch` is called.
On-disk formats (any file may also be stored gzipped, `NAME.gz`):
- `mnist`, `fashion-mnist`: the four IDX files `train-images-idx3-ubyte`,
  `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (Debian's
  `dataset-fashion-mnist` package puts Fashion-MNIST in /usr/share/datasets/fashion-mnist).
- `omniglot`: Burda's `chardata.mat` (IWAE split, 24,345 / 8,070): `data` (784, N) and
  `testdata` (784, M) in [0, 1], column-major images; `target` / `testtarget` one-hot
  alphabets (50, N). Labels are alphabets.
- `norb`: `norb.npz` with `train_x` (N, 32, 32) and `test_x` (M, 32, 32), uint8 0..255 or
  float in [0, 1], and `train_y` / `test_y` (category 0..4). This is smallNORB (24,300 /
  24,300 stereo pairs of 96x96) reduced the usual way: the first camera of each pair,
  3x3 block means down to 32x32. Build it from the four official files
  (https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/, `*-training-dat.mat`, `*-training-cat.mat`,
  `*-testing-dat.mat`, `*-testing-cat.mat`, gzipped or not) with `build_norb(SRC, DEST)`.
- `digits`: scikit-learn's bundled 8x8 digits; needs no directory (the offline smoke set).

Directory: `data_dir` if given (or `data_dir/<name>` when only that holds the files), else
`$VAELAB_DATA_DIR/<name>` (or `$VAELAB_DATA_DIR` itself when it holds the files), else
`~/.vaelab/data/<name>`. Parsed arrays are cached in-process, keyed on path, mtime and size.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np
import scipy.io
import torch

from vaelab import config
from vaelab.errors import DataError, MissingDataError

ENV_VAR = "VAELAB_DATA_DIR"
DEFAULT_ROOT = "~/.vaelab/data"
SUBSET_SEED = 0  # `train_subset` draws the same examples for every trial
DIGITS_SPLIT_SEED, DIGITS_N_TRAIN = 0, 1500
NORB_URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"


@dataclass(frozen=True)
class DataFile:
    name: str  # name on disk, uncompressed; `name.gz` is accepted too
    remote: str  # name at the download location
    md5: Optional[str] = None  # of the uncompressed bytes: the authority when known
    remote_md5: Optional[str] = None  # of the file as served (used when `md5` is unknown)


class Arrays(NamedTuple):
    train_x: np.ndarray  # (N, D) float32 in [0, 1]
    train_y: np.ndarray  # (N,) int64
    test_x: np.ndarray  # (M, D)
    test_y: np.ndarray  # (M,)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    files: tuple[DataFile, ...]
    likelihood: str  # default p(x|z1): bernoulli | gaussian
    image_shape: tuple[int, int]
    n_train: int
    n_test: int
    base_url: Optional[str]  # None: cannot be fetched automatically
    reader: Callable[[dict[str, Path]], Arrays]
    how_to_get: str = ""

    @property
    def activation(self) -> str:
        """Leaky ReLU for binary data, tanh for Gaussian data."""
        return "leaky_relu" if self.likelihood == "bernoulli" else "tanh"


# ----------------------------------------------------------------------------- file access
def _read_bytes(path: Path, compressed: Optional[bool] = None) -> bytes:
    """The file's content, gunzipped when it is a `.gz` file."""
    raw = path.read_bytes()
    if not (path.suffix == ".gz" if compressed is None else compressed):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: corrupt or truncated gzip file ({err})") from err


def _find(directory: Path, f: DataFile) -> Optional[Path]:
    """The file as stored: plain first, then gzipped, then under its download name."""
    names = dict.fromkeys([f.name, f.name + ".gz", f.remote])  # ordered, unique
    return next((directory / n for n in names if (directory / n).is_file()), None)


def _require(info: DatasetInfo, directory: Path) -> dict[str, Path]:
    """Every file of `info` in `directory`, or one error naming all missing ones."""
    found = {f.name: _find(directory, f) for f in info.files}
    missing = [f for f in info.files if found[f.name] is None]
    if missing:
        raise MissingDataError(_missing_message(info, directory, missing))
    return found  # type: ignore[return-value]


def _missing_message(info: DatasetInfo, directory: Path, missing: list[DataFile]) -> str:
    lines = [f"{info.name}: {len(missing)} file(s) missing in {directory}:"]
    for f in missing:
        source = f" <- {info.base_url}{f.remote}" if info.base_url else ""
        lines.append(f"  {directory / f.name}{source}")
    if info.base_url:
        lines.append(f"Download and verify them with:  vaelab data fetch {info.name} --dest {directory}")
    else:
        lines.append(info.how_to_get.format(dest=directory))
    lines.append(f"(or pass data_dir=DIR, or set {ENV_VAR} to a folder holding {info.name}/)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- readers
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's format: 0, 0, type code, ndim, big-endian dims, data)."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path}: truncated or corrupt: the header says shape {shape} ({expected} bytes), "
            f"the file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _idx_split(paths: dict[str, Path], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 784) float32 in [0, 1] and (N,) int64 from one images/labels pair."""
    img_path, lab_path = paths[f"{prefix}-images-idx3-ubyte"], paths[f"{prefix}-labels-idx1-ubyte"]
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise DataError(f"{img_path}: expected uint8 28x28 images, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{lab_path}: labels of shape {labels.shape} for {len(images)} images in {img_path}")
    return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels.astype(np.int64)


def read_mnist(paths: dict[str, Path]) -> Arrays:
    """MNIST or Fashion-MNIST from the four IDX files."""
    return Arrays(*_idx_split(paths, "train"), *_idx_split(paths, "t10k"))


def _unit_range(x: np.ndarray, where: Path) -> np.ndarray:
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise DataError(f"{where}: pixel values must lie in [0, 1], found [{x.min()}, {x.max()}]")
    return x.astype(np.float32)


def read_omniglot(paths: dict[str, Path]) -> Arrays:
    """Burda's chardata.mat: images stored (784, N), each column a column-major 28x28 image."""
    path = paths["chardata.mat"]
    try:
        mat = scipy.io.loadmat(io.BytesIO(_read_bytes(path)))
    except Exception as err:  # scipy raises several types for a damaged file
        raise DataError(f"{path}: not a readable MATLAB file ({err})") from err

    def split(x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
        if x_key not in mat or y_key not in mat:
            raise DataError(f"{path}: needs keys {x_key!r} and {y_key!r}, has {sorted(mat)}")
        data, target = np.asarray(mat[x_key]), np.asarray(mat[y_key])
        if data.ndim != 2 or data.shape[0] != 784 or target.shape[1:] != data.shape[1:]:
            raise DataError(f"{path}: {x_key} {data.shape}, {y_key} {target.shape}; expected (784, N), (K, N)")
        images = data.T.reshape(-1, 28, 28, order="F").reshape(-1, 784)  # (N, 784) row-major
        return _unit_range(images, path), target.argmax(axis=0).astype(np.int64)

    return Arrays(*split("data", "target"), *split("testdata", "testtarget"))


def read_norb(paths: dict[str, Path]) -> Arrays:
    """norb.npz (see the module docstring): (N, 32, 32) images -> (N, 1024) in [0, 1]."""
    path = paths["norb.npz"]
    try:
        with np.load(io.BytesIO(_read_bytes(path)), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zlib.error, EOFError) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from err

    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = arrays.get(f"{prefix}_x"), arrays.get(f"{prefix}_y")
        if x is None or y is None or x.ndim != 3 or x.shape[1:] != (32, 32) or y.shape != (len(x),):
            raise DataError(
                f"{path}: needs {prefix}_x (N, 32, 32) and {prefix}_y (N,), has "
                f"{ {k: v.shape for k, v in arrays.items()} }"
            )
        x = x.reshape(len(x), -1)
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else _unit_range(x, path)
        return x, y.astype(np.int64)

    return Arrays(*split("train"), *split("test"))


def read_digits(paths: dict[str, Path]) -> Arrays:
    """scikit-learn's 1,797 8x8 digits (0..16 -> /16), split by a fixed permutation."""
    from sklearn.datasets import load_digits  # slow import: only this dataset needs it

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(x))
    train, test = order[:DIGITS_N_TRAIN], order[DIGITS_N_TRAIN:]
    return Arrays(x[train], y[train], x[test], y[test])


_NORB_DTYPES = {0x1E3D4C55: "<u1", 0x1E3D4C54: "<i4", 0x1E3D4C51: "<f4", 0x1E3D4C53: "<f8", 0x1E3D4C56: "<i2"}


def read_norb_matrix(path: Path) -> np.ndarray:
    """One official smallNORB file (magic, ndim, max(3, ndim) little-endian int32 dims, data)."""
    raw = _read_bytes(path)
    magic, ndim = (int(v) for v in np.frombuffer(raw[:8].ljust(8, b"\0"), "<i4"))
    if magic not in _NORB_DTYPES or not 0 < ndim < 8:
        raise DataError(f"{path}: not a smallNORB binary matrix (magic {magic:#x})")
    header = 8 + 4 * max(3, ndim)
    shape = tuple(int(d) for d in np.frombuffer(raw[8:header], "<i4")[:ndim])
    dtype = np.dtype(_NORB_DTYPES[magic])
    if len(raw) != header + int(np.prod(shape)) * dtype.itemsize:
        raise DataError(f"{path}: truncated or corrupt: shape {shape} but {len(raw)} bytes")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def build_norb(src_dir: str | Path, dest_dir: str | Path) -> Path:
    """Write `dest_dir/norb.npz` from the official smallNORB files in `src_dir`."""
    src, out = Path(src_dir), Path(dest_dir)

    def load(split: str, kind: str) -> np.ndarray:
        hits = sorted(src.glob(f"smallnorb-*-{split}-{kind}.mat*"))
        if not hits:
            raise MissingDataError(f"{src}: no smallnorb-*-{split}-{kind}.mat[.gz] (from {NORB_URL})")
        return read_norb_matrix(hits[0])

    arrays = {}
    for split, name in (("training", "train"), ("testing", "test")):
        pairs = load(split, "dat")  # (N, 2, 96, 96) uint8 stereo pairs
        left = pairs[:, 0].reshape(len(pairs), 32, 3, 32, 3).astype(np.float32).mean(axis=(2, 4))
        arrays[f"{name}_x"] = np.rint(left).astype(np.uint8)  # (N, 32, 32)
        arrays[f"{name}_y"] = load(split, "cat").astype(np.int64)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "norb.npz", **arrays)
    return out / "norb.npz"


# ----------------------------------------------------------------------------- registry
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
OMNIGLOT_URL = "https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/"
_IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_files(md5s: tuple[Optional[str], ...], remote_md5s: tuple[str, ...]) -> tuple[DataFile, ...]:
    return tuple(DataFile(n, n + ".gz", m, r) for n, m, r in zip(_IDX_NAMES, md5s, remote_md5s))


_NORB_HOW_TO = (
    f"norb cannot be fetched automatically: download the four smallNORB files (*-training-dat.mat.gz, "
    f"*-training-cat.mat.gz, *-testing-dat.mat.gz, *-testing-cat.mat.gz) from {NORB_URL} into SRC, then run\n"
    "  python -c \"from vaelab.data import build_norb; build_norb('SRC', '{dest}')\"\n"
    "(writes norb.npz: train_x/test_x (N, 32, 32) uint8, train_y/test_y (N,))"
)
_MNIST_MD5 = ("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
              "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637")  # uncompressed
_MNIST_GZ_MD5 = ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                 "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")  # as served
_FASHION_GZ_MD5 = ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                   "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")  # as served
# Uncompressed Fashion-MNIST, from Debian's dataset-fashion-mnist (upstream git 55506a9), whose .gz
# files differ from the served ones only by the stripped file name in the gzip header.
_FASHION_MD5 = ("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
                "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965")
_INFOS = (
    DatasetInfo("mnist", _idx_files(_MNIST_MD5, _MNIST_GZ_MD5), "bernoulli", (28, 28), 60000, 10000,
                MNIST_URL, read_mnist),
    DatasetInfo("fashion-mnist", _idx_files(_FASHION_MD5, _FASHION_GZ_MD5), "bernoulli", (28, 28),
                60000, 10000, FASHION_URL, read_mnist),
    # No checksum of chardata.mat is published: `fetch` checks its structure instead.
    DatasetInfo("omniglot", (DataFile("chardata.mat", "chardata.mat"),), "bernoulli", (28, 28), 24345, 8070,
                OMNIGLOT_URL, read_omniglot),
    DatasetInfo("norb", (DataFile("norb.npz", "norb.npz"),), "gaussian", (32, 32), 24300, 24300,
                None, read_norb, how_to_get=_NORB_HOW_TO),
    DatasetInfo("digits", (), "bernoulli", (8, 8), DIGITS_N_TRAIN, 1797 - DIGITS_N_TRAIN, None, read_digits),
)
DATASETS: dict[str, DatasetInfo] = {info.name: info for info in _INFOS}


def get_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def _holds_files(info: DatasetInfo, directory: Path) -> bool:
    return any(_find(directory, f) for f in info.files)


def resolve_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """Where `name`'s files are looked for (absolute; see the module docstring for the order)."""
    info = get_info(name)
    if data_dir:
        base = Path(data_dir).expanduser()
        nested = not _holds_files(info, base) and _holds_files(info, base / name)
        return (base / name if nested else base).resolve()
    if os.environ.get(ENV_VAR):
        base = Path(os.environ[ENV_VAR]).expanduser()
        return (base if _holds_files(info, base) else base / name).resolve()
    return (Path(DEFAULT_ROOT).expanduser() / name).resolve()


# ----------------------------------------------------------------------------- checksums and fetch
def _check_file(path: Path, f: DataFile, compressed: bool, hint: str) -> str:
    """'ok' when a published hash matches, 'unverified' when none applies; DataError otherwise.

    The hash of the file as served only applies to the same form (a `.gz` as downloaded); the
    hash of the uncompressed bytes holds however the file was (re)compressed here.
    """
    checks: list[tuple[str, Callable[[], bytes]]] = []
    if f.remote_md5 and compressed == f.remote.endswith(".gz"):
        checks.append((f.remote_md5, path.read_bytes))
    if f.md5:
        checks.append((f.md5, lambda: _read_bytes(path, compressed)))
    mismatches = []
    for expected, content in checks:
        actual = hashlib.md5(content(), usedforsecurity=False).hexdigest()
        if actual == expected:
            return "ok"
        mismatches.append(f"expected md5 {expected}, got {actual}")
    if not checks:
        return "unverified"
    raise DataError(f"{path}: checksum mismatch: {'; '.join(mismatches)}. {hint}")


def verify(name: str, directory: str | Path | None = None) -> dict[str, str]:
    """Checksum every present file: {path: 'ok' | 'unverified' | 'missing'}; DataError on a mismatch."""
    info, where = get_info(name), resolve_dir(name, directory)
    hint = f"Delete it and run `vaelab data fetch {name} --dest {where}`."
    result = {}
    for f in info.files:
        path = _find(where, f)
        if path is None:
            result[str(where / f.name)] = "missing"
        else:
            result[str(path)] = _check_file(path, f, path.suffix == ".gz", hint)
    return result


def _download(url: str, target: Path, f: DataFile) -> None:
    """Download to a temporary file beside `target`, verify, then rename (atomic)."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        _check_file(tmp, f, f.remote.endswith(".gz"), f"Downloaded from {url}; nothing was kept.")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as err:
        raise DataError(f"could not download {url} to {target}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    name: str,
    dest: str | Path | None = None,
    base_url: Optional[str] = None,
    log: Optional[Callable[[str], None]] = None,
) -> Path:
    """Download `name` into `dest` (default: the resolved directory), verified; returns the folder.

    `base_url` replaces the canonical location (a mirror, or `file://` in tests). Files already
    present that pass their checksum are kept.
    """
    info = get_info(name)
    where = Path(dest).expanduser().resolve() if dest else resolve_dir(name)
    if not info.files:
        return where  # bundled with scikit-learn
    source = base_url or info.base_url
    if source is None:
        raise DataError(info.how_to_get.format(dest=where))
    source = source if source.endswith("/") else source + "/"
    where.mkdir(parents=True, exist_ok=True)
    for f in info.files:
        present = _find(where, f)
        try:
            if present:
                _check_file(present, f, present.suffix == ".gz", "")
                continue  # verified, or no checksum to verify against
        except DataError:
            present.unlink()  # a bad copy: replace it
        if log:
            log(f"{name}: downloading {source}{f.remote}")
        _download(source + f.remote, where / f.remote, f)
    load_arrays(name, where)  # a structural check, the only one for files without a checksum
    return where


def list_datasets() -> list[dict]:
    """One row per dataset for `vaelab data ls`, looked up at the resolved directory."""
    rows = []
    for name, info in DATASETS.items():
        where = resolve_dir(name) if info.files else None
        missing = [f.name for f in info.files if where is None or _find(where, f) is None]
        status = "bundled" if not info.files else ("missing" if missing else "found")
        rows.append(dict(name=name, status=status, dir=str(where or ""), missing=missing,
                         n_train=info.n_train, n_test=info.n_test, likelihood=info.likelihood,
                         image_shape=info.image_shape, url=info.base_url or ""))
    return rows


# ----------------------------------------------------------------------------- loading
@functools.lru_cache(maxsize=4)
def _read_cached(name: str, stamp: tuple[tuple[str, str, int, int], ...]) -> Arrays:
    # `stamp` (file name, path, mtime_ns, size) is the cache key: a replaced file is reread.
    arrays = DATASETS[name].reader({key: Path(path) for key, path, _, _ in stamp})
    for array in arrays:
        array.setflags(write=False)  # shared by every caller in this process
    return arrays


def _stamp(name: str, data_dir: str | Path | None) -> tuple[tuple[str, str, int, int], ...]:
    """(file name, path, mtime_ns, size) of every file of `name`: () for a bundled set."""
    info = get_info(name)
    paths = _require(info, resolve_dir(name, data_dir)) if info.files else {}
    return tuple((key, str(p), p.stat().st_mtime_ns, p.stat().st_size) for key, p in paths.items())


def load_arrays(name: str, data_dir: str | Path | None = None) -> Arrays:
    """The parsed numpy arrays of `name` (cached, read-only)."""
    return _read_cached(name, _stamp(name, data_dir))


@dataclass
class Dataset:
    name: str
    likelihood: str
    image_shape: tuple[int, int]
    train_x: torch.Tensor  # (N, D) float32 in [0, 1], on the device
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor  # (M, D): binarized once with a fixed seed for bernoulli data; raw for gaussian
    test_y: torch.Tensor  # (M,)

    @property
    def input_dim(self) -> int:
        return self.train_x.shape[1]

    def to(self, device: torch.device) -> "Dataset":
        """The same data resident on `device` (a no-op when it is there already)."""
        return dataclasses.replace(self, **{k: getattr(self, k).to(device)
                                            for k in ("train_x", "train_y", "test_x", "test_y")})


def binarize(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A fresh Bernoulli sample with probabilities `x`, on x's device (dynamic binarization)."""
    return (torch.rand(x.shape, generator=generator, device=x.device) < x).float()


def subset_indices(n: int, size: int) -> Optional[np.ndarray]:
    """The fixed training subset of `size` examples (sorted), or None for all `n` (size 0 or >= n)."""
    if size < 0:
        raise ValueError(f"train_subset must be >= 0, got {size}")
    if size == 0 or size >= n:
        return None
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(n)[:size])


def load_dataset(
    name: str,
    data_dir: str | Path | None,
    device: torch.device | str,
    train_subset: int = 0,
    test_binarize_seed: int = 1234,
    likelihood: Optional[str] = None,
) -> Dataset:
    """`name` resident on `device`. `likelihood` None: the dataset's default.

    The last one built is kept for the next call that asks the same (a trial process runs
    trial after trial): shared, so callers must not modify its tensors in place."""
    stamp = _stamp(name, data_dir)
    key = (name, stamp, str(torch.device(device)), train_subset, test_binarize_seed,
           likelihood or get_info(name).likelihood)
    if key not in _LAST_DATASET:
        _LAST_DATASET.clear()  # one at a time: a trial on other data frees the device memory
        _LAST_DATASET[key] = _build_dataset(name, _read_cached(name, stamp), *key[2:])
    return _LAST_DATASET[key]


_LAST_DATASET: dict[tuple, Dataset] = {}


def _build_dataset(
    name: str, arrays: Arrays, device: str, train_subset: int, test_binarize_seed: int, likelihood: str
) -> Dataset:
    info = get_info(name)
    keep = subset_indices(len(arrays.train_x), train_subset)
    train_x, train_y = arrays.train_x, arrays.train_y
    if keep is not None:
        train_x, train_y = train_x[keep], train_y[keep]
    test_x = torch.tensor(arrays.test_x)
    if likelihood == "bernoulli":  # on the CPU, so every device sees the same test set
        test_x = binarize(test_x, torch.Generator().manual_seed(test_binarize_seed))
    return Dataset(
        name=name,
        likelihood=likelihood,
        image_shape=info.image_shape,
        train_x=torch.tensor(train_x, device=device),
        train_y=torch.tensor(train_y, device=device),
        test_x=test_x.to(device),
        test_y=torch.tensor(arrays.test_y, device=device),
    )


def dataset_for(cfg: config.TrialConfig, device: torch.device | str) -> Dataset:
    """The dataset a trial configuration asks for."""
    return load_dataset(cfg.dataset, cfg.data_dir, device, cfg.train_subset, likelihood=cfg.likelihood)
