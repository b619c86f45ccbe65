"""The dataset layer on real files written here (IDX, chardata.mat, norb.npz, smallNORB)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import typing
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from vaelab import config, data

SHARED_MNIST = Path(__file__).parents[2] / "shared/data/mnist"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
IDX_NAMES = data._IDX_NAMES


# ----------------------------------------------------------------------------- file writers
def write_idx(path: Path, array: np.ndarray) -> bytes:
    """LeCun's IDX format; gzipped when `path` ends in .gz. Returns the uncompressed bytes."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    array = np.asarray(array)
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(
        d.to_bytes(4, "big") for d in array.shape
    )
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return raw


def make_mnist(directory: Path, gz: bool = True, n_train: int = 7, n_test: int = 5, seed: int = 0):
    """Four small IDX files; returns (arrays written, {name: md5 of the uncompressed bytes})."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        IDX_NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        IDX_NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        IDX_NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        IDX_NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    md5s = {}
    for name, array in arrays.items():
        raw = write_idx(directory / (name + (".gz" if gz else "")), array)
        md5s[name] = hashlib.md5(raw).hexdigest()
    return arrays, md5s


def write_norb_matrix(path: Path, array: np.ndarray) -> None:
    """The official smallNORB binary-matrix format (little-endian, >= 3 dims stored)."""
    magic = {np.dtype(np.uint8): 0x1E3D4C55, np.dtype("<i4"): 0x1E3D4C54}[array.dtype]
    dims = list(array.shape) + [1] * max(0, 3 - array.ndim)
    header = np.array([magic, array.ndim, *dims], "<i4").tobytes()
    path.write_bytes(gzip.compress(header + array.tobytes()))


# ----------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays, _ = make_mnist(tmp_path, gz=gz)
    got = data.load_arrays("mnist", tmp_path)
    np.testing.assert_array_equal(got.train_x, arrays[IDX_NAMES[0]].reshape(7, 784) / np.float32(255))
    np.testing.assert_array_equal(got.train_y, arrays[IDX_NAMES[1]])
    np.testing.assert_array_equal(got.test_x * 255, arrays[IDX_NAMES[2]].reshape(5, 784))
    assert got.train_x.dtype == np.float32 and got.train_y.dtype == np.int64
    assert got.test_x.shape == (5, 784) and 0 <= got.test_x.min() and got.test_x.max() <= 1


def test_read_idx_other_types(tmp_path: Path) -> None:
    ints = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    write_idx(tmp_path / "a.idx", ints)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.idx"), ints)


def test_missing_file_names_file_url_and_fetch_command(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.MissingDataError) as err:
        data.load_dataset("mnist", str(tmp_path), torch.device("cpu"))
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(tmp_path.resolve() / "t10k-labels-idx1-ubyte") in message
    assert "train-images" not in message  # only what is missing
    assert f"vaelab data fetch mnist --dest {tmp_path.resolve()}" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz" in message


def test_norb_missing_explains_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(data.MissingDataError, match="norb.npz") as err:
        data.load_arrays("norb", tmp_path)
    assert "build_norb" in str(err.value) and data.NORB_URL in str(err.value)


def test_truncated_idx(tmp_path: Path) -> None:
    make_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte: truncated or corrupt"):
        data.load_arrays("mnist", tmp_path)


def test_bad_magic_and_broken_gzip(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(b"\x12\x34\x56\x78" + bytes(20)))
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte.gz: not an IDX file"):
        data.load_arrays("mnist", tmp_path)
    labels.write_bytes(gzip.compress(b"\x00" * 1000)[:20])
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte.gz: corrupt or truncated gzip"):
        data.load_arrays("mnist", tmp_path)


def test_labels_must_match_images(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(data.DataError, match=r"labels of shape \(3,\) for 7 images"):
        data.load_arrays("mnist", tmp_path)


def test_checksum_mismatch_names_file_and_both_hashes(tmp_path: Path) -> None:
    _, md5s = make_mnist(tmp_path, gz=False)
    with pytest.raises(data.DataError) as err:
        data.verify("mnist", tmp_path)
    message = str(err.value)
    assert str(tmp_path.resolve() / "train-images-idx3-ubyte") in message
    assert "6bbc9ace898e44ae57da46a324031adb" in message and md5s[IDX_NAMES[0]] in message


def test_verify_reports_unverified_and_missing(tmp_path: Path) -> None:
    (tmp_path / "chardata.mat").write_bytes(b"no checksum of chardata.mat is published")
    assert data.verify("omniglot", tmp_path) == {str(tmp_path.resolve() / "chardata.mat"): "unverified"}
    assert data.verify("norb", tmp_path) == {str(tmp_path.resolve() / "norb.npz"): "missing"}


# ----------------------------------------------------------------------------- other formats
def test_omniglot_burda_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train_imgs, test_imgs = rng.random((6, 28, 28)), rng.random((4, 28, 28))
    train_lab, test_lab = np.array([0, 3, 49, 7, 7, 1]), np.array([2, 0, 49, 5])

    def columns(imgs: np.ndarray) -> np.ndarray:  # (784, N), each image column-major
        return np.stack([img.flatten(order="F") for img in imgs], axis=1)

    scipy.io.savemat(tmp_path / "chardata.mat", {
        "data": columns(train_imgs), "testdata": columns(test_imgs),
        "target": np.eye(50)[:, train_lab], "testtarget": np.eye(50)[:, test_lab],
    })
    got = data.load_arrays("omniglot", tmp_path)
    assert got.train_x.shape == (6, 784) and got.test_x.shape == (4, 784)
    np.testing.assert_allclose(got.train_x.reshape(-1, 28, 28), train_imgs, rtol=1e-6)
    np.testing.assert_array_equal(got.train_y, train_lab)
    np.testing.assert_array_equal(got.test_y, test_lab)


def test_omniglot_corrupt(tmp_path: Path) -> None:
    (tmp_path / "chardata.mat").write_bytes(b"MATLAB 5.0 nonsense" * 3)
    with pytest.raises(data.DataError, match="chardata.mat: not a readable MATLAB file"):
        data.load_arrays("omniglot", tmp_path)


def test_norb_npz_uint8_and_float(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (5, 32, 32), dtype=np.uint8)
    np.savez(tmp_path / "norb.npz", train_x=x8, train_y=np.arange(5), test_x=x8[:2] / 255.0, test_y=[4, 4])
    ds = data.load_dataset("norb", tmp_path, "cpu")
    assert ds.likelihood == "gaussian" and ds.image_shape == (32, 32)
    assert ds.train_x.shape == (5, 1024) and ds.test_x.shape == (2, 1024)
    torch.testing.assert_close(ds.test_x, ds.train_x[:2])  # gaussian: test set not binarized
    np.savez(tmp_path / "norb.npz", train_x=x8 * 1.0, train_y=np.arange(5), test_x=x8[:2], test_y=[4, 4])
    with pytest.raises(data.DataError, match=r"must lie in \[0, 1\]"):
        data.load_arrays("norb", tmp_path)


def test_build_norb_from_official_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pairs = np.zeros((3, 2, 96, 96), np.uint8)
    pairs[:, 0, :3, :3] = 90  # top-left 3x3 block of the first camera -> pixel (0, 0) = 90
    pairs[:, 1] = 255  # the second camera is dropped
    for split, tag in (("training", "46789"), ("testing", "01235")):
        stem = src / f"smallnorb-5x{tag}x9x18x6x2x96x96-{split}"
        write_norb_matrix(Path(f"{stem}-dat.mat.gz"), pairs)
        write_norb_matrix(Path(f"{stem}-cat.mat.gz"), np.array([0, 4, 2], "<i4"))
    data.build_norb(src, tmp_path / "out")
    got = data.load_arrays("norb", tmp_path / "out")
    assert got.train_x.shape == (3, 1024) and got.test_y.tolist() == [0, 4, 2]
    assert got.train_x[0, 0] == pytest.approx(90 / 255) and got.train_x[:, 1:].max() == 0


def test_digits_offline_and_deterministic() -> None:
    ds = data.load_dataset("digits", None, "cpu")
    assert ds.train_x.shape == (1500, 64) and ds.test_x.shape == (297, 64) and ds.image_shape == (8, 8)
    assert 0.0 <= float(ds.train_x.min()) and float(ds.train_x.max()) == 1.0
    data._read_cached.cache_clear()
    again = data.load_arrays("digits")
    torch.testing.assert_close(ds.train_x, torch.from_numpy(np.array(again.train_x)))
    assert set(np.unique(again.test_y)) == set(range(10))  # a shuffled split, not the file's tail


# ----------------------------------------------------------------------------- device dataset
def test_train_subset_is_fixed(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=50)
    full = data.load_dataset("mnist", tmp_path, "cpu")
    a = data.load_dataset("mnist", tmp_path, "cpu", train_subset=10)
    b = data.load_dataset("mnist", tmp_path, "cpu", train_subset=10)
    assert a.train_x.shape == (10, 784)
    torch.testing.assert_close(a.train_x, b.train_x)
    keep = torch.from_numpy(data.subset_indices(50, 10))
    torch.testing.assert_close(a.train_y, full.train_y[keep])
    assert data.load_dataset("mnist", tmp_path, "cpu", train_subset=500).train_x.shape == (50, 784)


def test_test_set_binarized_once_by_seed(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_test=40)
    a, b = (data.load_dataset("mnist", tmp_path, "cpu") for _ in range(2))
    c = data.load_dataset("mnist", tmp_path, "cpu", test_binarize_seed=99)
    assert set(a.test_x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a.test_x, b.test_x) and not torch.equal(a.test_x, c.test_x)
    assert not torch.equal(a.train_x, a.train_x.round())  # training data stays grey


def test_device_dataset_is_built_once_per_request_and_rebuilt_when_its_files_change(tmp_path: Path) -> None:
    """A trial process runs trial after trial: the same request gets the same tensors, any
    other request (subset, seed, likelihood, a replaced file) gets its own."""
    make_mnist(tmp_path, n_train=20, seed=0)
    first = data.load_dataset("mnist", tmp_path, "cpu", train_subset=10)
    assert data.load_dataset("mnist", tmp_path, "cpu", train_subset=10) is first
    assert data.load_dataset("mnist", tmp_path, torch.device("cpu"), train_subset=10) is first
    for other in ({"train_subset": 5}, {"test_binarize_seed": 7}, {"likelihood": "gaussian"}):
        assert data.load_dataset("mnist", tmp_path, "cpu", **{"train_subset": 10, **other}) is not first
    arrays, _ = make_mnist(tmp_path, n_train=20, seed=1)  # same names, new content
    os.utime(tmp_path / "train-images-idx3-ubyte.gz", ns=(1, 1))  # a new stamp even within one tick
    again = data.load_dataset("mnist", tmp_path, "cpu", train_subset=10)
    expected = arrays["train-images-idx3-ubyte"].reshape(20, -1).astype(np.float32) / 255.0
    torch.testing.assert_close(again.train_x, torch.from_numpy(expected[data.subset_indices(20, 10)]))


def test_binarize_fresh_samples_with_mean_x() -> None:
    x = torch.full((200, 500), 0.3)
    g = torch.Generator().manual_seed(0)
    s1, s2 = data.binarize(x, g), data.binarize(x, g)
    assert not torch.equal(s1, s2) and s1.dtype == torch.float32
    assert float(s1.mean()) == pytest.approx(0.3, abs=0.01)
    assert data.binarize(torch.zeros(10)).sum() == 0 and data.binarize(torch.ones(10)).sum() == 10


def test_cache_rereads_a_replaced_file(tmp_path: Path) -> None:
    make_mnist(tmp_path, seed=0)
    first = data.load_arrays("mnist", tmp_path)
    assert data.load_arrays("mnist", tmp_path) is first and not first.train_x.flags.writeable
    arrays, _ = make_mnist(tmp_path, seed=1, n_train=9)
    os.utime(tmp_path / "train-images-idx3-ubyte.gz", ns=(1, 1))  # a different mtime, whatever the clock
    assert data.load_arrays("mnist", tmp_path).train_x.shape == (9, 784)


def test_dataset_for_config() -> None:
    ds = data.dataset_for(config.TrialConfig(dataset="digits", train_subset=100, likelihood="gaussian"), "cpu")
    assert ds.train_x.shape == (100, 64) and ds.likelihood == "gaussian"
    assert not torch.equal(ds.test_x, ds.test_x.round())  # gaussian: raw test set


# ----------------------------------------------------------------------------- registry, directories
def test_registry_matches_config() -> None:
    assert set(data.DATASETS) == set(typing.get_args(config.Dataset))
    assert data.DATASETS["norb"].activation == "tanh" and data.DATASETS["mnist"].activation == "leaky_relu"
    rows = {row["name"]: row for row in data.list_datasets()}
    assert rows["digits"]["status"] == "bundled" and rows["omniglot"]["n_train"] == 24345


def test_directory_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.resolve_dir("mnist") == tmp_path / "home/.vaelab/data/mnist"
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "root"))
    assert data.resolve_dir("mnist") == tmp_path / "root/mnist"
    make_mnist(tmp_path / "flat")
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "flat"))  # pointing straight at the files
    assert data.resolve_dir("mnist") == tmp_path / "flat"
    assert data.load_dataset("mnist", None, "cpu").train_x.shape == (7, 784)
    assert data.resolve_dir("mnist", tmp_path / "other") == tmp_path / "other"  # argument wins
    make_mnist(tmp_path / "parent/mnist")
    assert data.resolve_dir("mnist", tmp_path / "parent") == tmp_path / "parent/mnist"
    rows = {row["name"]: row for row in data.list_datasets()}
    assert rows["mnist"]["status"] == "found" and rows["omniglot"]["status"] == "missing"


# ----------------------------------------------------------------------------- fetch
@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file:// mirror of small MNIST-like files; the registry's mnist md5s point at them."""
    _, md5s = make_mnist(tmp_path / "mirror")
    files = tuple(dataclasses.replace(f, md5=md5s[f.name]) for f in data.DATASETS["mnist"].files)
    monkeypatch.setitem(data.DATASETS, "mnist", dataclasses.replace(data.DATASETS["mnist"], files=files))
    return tmp_path / "mirror"


def test_fetch_from_file_url(mirror: Path, tmp_path: Path) -> None:
    logged: list[str] = []
    dest = data.fetch("mnist", tmp_path / "dest", base_url=mirror.as_uri(), log=logged.append)
    assert sorted(p.name for p in dest.iterdir()) == sorted(n + ".gz" for n in IDX_NAMES)  # no .part left
    assert set(data.verify("mnist", dest).values()) == {"ok"} and len(logged) == 4
    assert data.load_arrays("mnist", dest).train_x.shape == (7, 784)
    data.fetch("mnist", dest, base_url=mirror.as_uri(), log=logged.append)
    assert len(logged) == 4  # verified files are kept


def test_fetch_refuses_wrong_checksum(mirror: Path, tmp_path: Path) -> None:
    write_idx(mirror / "t10k-labels-idx1-ubyte.gz", np.ones(5, np.uint8))  # not what the md5 says
    dest = tmp_path / "dest"
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.*checksum mismatch: expected md5"):
        data.fetch("mnist", dest, base_url=mirror.as_uri())
    assert not (dest / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in dest.iterdir() if p.name.endswith(".part")]


def test_fetch_errors_and_no_ops(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="could not download"):
        data.fetch("mnist", tmp_path / "d", base_url=(tmp_path / "nothing").as_uri())
    with pytest.raises(data.DataError, match="norb cannot be fetched automatically"):
        data.fetch("norb", tmp_path / "n")
    assert not (tmp_path / "n").exists()
    assert data.fetch("digits", tmp_path / "g") == tmp_path / "g"


# ----------------------------------------------------------------------------- real MNIST
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="no shared MNIST copy")
def test_real_mnist() -> None:
    ds = data.load_dataset("mnist", str(SHARED_MNIST), torch.device("cpu"))
    assert ds.train_x.shape == (60000, 784) and ds.test_x.shape == (10000, 784)
    assert ds.train_y.bincount().tolist()[:2] == [5923, 6742]
    assert set(data.verify("mnist", SHARED_MNIST).values()) == {"ok"}


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="no shared MNIST copy")
def test_fetch_real_mnist_from_file_url(tmp_path: Path) -> None:
    dest = data.fetch("mnist", tmp_path, base_url=SHARED_MNIST.as_uri())
    assert set(data.verify("mnist", dest).values()) == {"ok"}


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fetch_real_fashion_mnist_from_file_url(tmp_path: Path) -> None:
    # Debian recompressed the .gz files: they pass on the hash of their uncompressed bytes.
    dest = data.fetch("fashion-mnist", tmp_path, base_url=DEBIAN_FASHION.as_uri())
    assert set(data.verify("fashion-mnist", dest).values()) == {"ok"}
    arrays = data.load_arrays("fashion-mnist", dest)
    assert arrays.train_x.shape == (60000, 784) and arrays.test_y.shape == (10000,)
