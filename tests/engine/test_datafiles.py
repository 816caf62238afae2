"""File datasets: IDX and CIFAR-10 files in their real formats, checksums, and what happens when they are wrong."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from engine.data import load
from engine.datafiles import NOT_VERIFIED, OFFICIAL_MD5, VERIFIED, DataFileError, data_dir


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of uint8 values: magic 0x00000803-style header, big-endian sizes, then the bytes."""
    return struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(directory: Path, gz: bool = True, n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict:
    """The four MNIST files with random 28x28 images; returns the raw arrays by file name."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return arrays


class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 str (BINSTRING), as cPickle wrote the official batches: a Python 3 pickle
    would not exercise the latin1 path (str keys, array data arriving as str) the real files take."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def cifar_batch_bytes(images: np.ndarray, labels: list[int], python2: bool = False) -> bytes:
    """A CIFAR-10 python batch: a pickled dict of (N, 3072) uint8 rows (CHW) and a list of labels."""
    batch = {b"data": images, b"labels": labels, b"batch_label": b"testing batch 1 of 1"}
    if not python2:
        return pickle.dumps(batch)
    out = io.BytesIO()
    _Python2Pickler(out, protocol=2).dump(batch)
    return out.getvalue()


def write_cifar(directory: Path, per_batch: int = 3, python2: bool = False, seed: int = 0) -> dict:
    """cifar-10-batches-py/ with five small training batches and a test batch; returns (data, labels) by name."""
    rng = np.random.default_rng(seed)
    folder = directory / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        (folder / name).write_bytes(cifar_batch_bytes(images, labels, python2))
        batches[name] = (images, labels)
    return batches


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """ARENA_DATA_DIR in tmp_path, verification off (these are not the official files)."""
    root = tmp_path / "data"
    monkeypatch.setenv("ARENA_DATA_DIR", str(root))
    monkeypatch.setenv("ARENA_DATA_VERIFY", "0")
    return root


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_idx_files_load_as_nhwc_float_images_with_the_official_split(data_root, name, gz):
    raw = write_mnist(data_root / name, gz=gz)
    data = load(name, seed=0)
    assert data.x_train.shape == (6, 28, 28, 1) and data.x_test.shape == (4, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and data.x_train.flags.c_contiguous
    assert data.y_train.dtype == np.int64 and data.num_outputs == 10
    np.testing.assert_array_equal(data.x_train[..., 0] * 255, raw["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.x_test[..., 0] * 255, raw["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.y_train, raw["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.y_test, raw["t10k-labels-idx1-ubyte"])
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.info["data_dir"] == str(data_root / name)
    assert data.info["data_checksums"] == NOT_VERIFIED
    assert "seed does not change" in data.info["data_split"]
    assert all(isinstance(v, (str, int, float)) for v in data.info.values())  # merged into the run summary
    np.testing.assert_array_equal(load(name, seed=7).y_train, data.y_train)  # the seed does not move the split


def test_data_digest_is_of_the_contents_so_gzipped_and_plain_files_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_DATA_VERIFY", "0")
    digests = []
    for gz in (True, False):
        monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path / str(gz)))
        write_mnist(tmp_path / str(gz) / "mnist", gz=gz)
        digests.append(load("mnist", seed=0).info["data_sha256"])
    monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path / "other"))
    write_mnist(tmp_path / "other" / "mnist", seed=1)
    assert digests[0] == digests[1] != load("mnist", seed=0).info["data_sha256"]
    assert len(digests[0]) == 64


def test_missing_files_say_what_where_and_how_to_fetch_them(data_root):
    (data_root / "mnist").mkdir(parents=True)
    (data_root / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(1))))
    with pytest.raises(DataFileError) as caught:
        load("mnist", seed=0)
    message = str(caught.value)
    assert "mnist: missing train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "train-labels" not in message  # present, so not listed
    assert str(data_root / "mnist") in message
    assert "python -m engine download mnist" in message and "ARENA_DATA_DIR" in message


def test_missing_cifar_batches_are_named(data_root):
    with pytest.raises(DataFileError, match=r"cifar10: missing cifar-10-batches-py/data_batch_1.*"
                                            r"python -m engine download cifar10"):
        load("cifar10", seed=0)


def test_bad_idx_magic_names_the_file(data_root):
    write_mnist(data_root / "mnist")
    (data_root / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x1f\x8b\x08\x00not idx"))
    with pytest.raises(DataFileError, match=r"t10k-images-idx3-ubyte.gz: bad IDX magic number 1f8b0800"):
        load("mnist", seed=0)


def test_a_damaged_gzip_file_is_named(data_root):
    write_mnist(data_root / "mnist")
    path = data_root / "mnist" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(DataFileError, match=r"train-labels-idx1-ubyte.gz: not a readable gzip file"):
        load("mnist", seed=0)


def test_idx_size_that_disagrees_with_its_header_names_the_file(data_root):
    raw = write_mnist(data_root / "mnist", gz=False)
    truncated = idx_bytes(raw["train-images-idx3-ubyte"])[:-100]
    (data_root / "mnist" / "train-images-idx3-ubyte").write_bytes(truncated)
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte: \d+ bytes, but its IDX header declares "
                                            r"shape \(6, 28, 28\)"):
        load("mnist", seed=0)


def test_images_of_the_wrong_size_and_labels_that_do_not_match_are_refused(data_root):
    write_mnist(data_root / "mnist", gz=False)
    (data_root / "mnist" / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((4, 32, 32))))
    with pytest.raises(DataFileError, match=r"t10k-images-idx3-ubyte: holds uint8 images of \(32, 32\)"):
        load("mnist", seed=0)
    write_mnist(data_root / "mnist", gz=False)
    (data_root / "mnist" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(6, 12)))
    with pytest.raises(DataFileError, match=r"train-labels-idx1-ubyte: label 12 outside 0..9"):
        load("mnist", seed=0)


def test_checksum_mismatch_is_an_error_naming_file_and_both_digests(data_root, monkeypatch):
    monkeypatch.delenv("ARENA_DATA_VERIFY")  # the default: verify
    write_mnist(data_root / "mnist")
    path = data_root / "mnist" / "train-images-idx3-ubyte.gz"
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    with pytest.raises(DataFileError) as caught:
        load("mnist", seed=0)
    message = str(caught.value)
    assert str(path) in message and actual in message and OFFICIAL_MD5["mnist"][path.name] in message
    assert "ARENA_DATA_VERIFY=0" in message


def test_files_matching_the_expected_md5s_are_reported_verified(data_root, monkeypatch):
    monkeypatch.setenv("ARENA_DATA_VERIFY", "1")
    write_mnist(data_root / "mnist")
    for name in OFFICIAL_MD5["mnist"]:  # stand-in for the official digests, which only the real files have
        actual = hashlib.md5((data_root / "mnist" / name).read_bytes()).hexdigest()
        monkeypatch.setitem(OFFICIAL_MD5["mnist"], name, actual)
    assert load("mnist", seed=0).info["data_checksums"] == VERIFIED


def test_plain_idx_files_cannot_be_verified_so_verification_refuses_them(data_root, monkeypatch):
    monkeypatch.setenv("ARENA_DATA_VERIFY", "1")
    write_mnist(data_root / "mnist", gz=False)
    with pytest.raises(DataFileError, match=r"uncompressed, and the official MD5s are of the .gz files"):
        load("mnist", seed=0)


def test_verify_setting_other_than_0_or_1_is_an_error_naming_it(data_root, monkeypatch):
    monkeypatch.setenv("ARENA_DATA_VERIFY", "no")
    with pytest.raises(DataFileError, match=r"ARENA_DATA_VERIFY='no'"):
        load("mnist", seed=0)


def test_data_dir_defaults_to_arena_home(monkeypatch, tmp_path):
    monkeypatch.delenv("ARENA_DATA_DIR", raising=False)
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / "data"
    monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path / "elsewhere"))
    assert data_dir() == tmp_path / "elsewhere"


@pytest.mark.parametrize("python2", [False, True], ids=["python3-pickle", "python2-pickle"])
def test_cifar_batches_load_as_nhwc_with_the_official_split(data_root, python2):
    batches = write_cifar(data_root / "cifar10", python2=python2)
    data = load("cifar10", seed=0)
    assert data.x_train.shape == (15, 32, 32, 3) and data.x_test.shape == (3, 32, 32, 3)
    assert data.x_train.dtype == np.float32 and data.x_train.flags.c_contiguous and data.y_train.dtype == np.int64
    train_rows = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    # Row layout is 1024 red, then green, then blue values, each row-major: pixel (y, x) of channel c.
    for sample, y, x, c in [(0, 0, 0, 0), (4, 31, 0, 1), (14, 5, 17, 2)]:
        assert data.x_train[sample, y, x, c] * 255 == train_rows[sample, c * 1024 + y * 32 + x]
    np.testing.assert_array_equal(data.y_train, sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), []))
    np.testing.assert_array_equal(data.y_test, batches["test_batch"][1])
    np.testing.assert_array_equal(data.x_test[2, :, :, 1] * 255, batches["test_batch"][0][2, 1024:2048].reshape(32, 32))
    assert data.info["data_checksums"] == NOT_VERIFIED and len(data.info["data_sha256"]) == 64


def test_cifar_checksum_mismatch_is_an_error(data_root, monkeypatch):
    monkeypatch.setenv("ARENA_DATA_VERIFY", "1")
    write_cifar(data_root / "cifar10")
    with pytest.raises(DataFileError, match=r"data_batch_1: MD5 [0-9a-f]{32} does not match the official "
                                            r"c99cafc152244af753f735de768cd75f"):
        load("cifar10", seed=0)


class _RunsACommand:
    """What a hostile 'batch' would hold: unpickling it with plain pickle.load runs os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_cifar_batch_that_calls_os_system_is_refused_without_running_it(data_root, tmp_path):
    write_cifar(data_root / "cifar10")
    marker = tmp_path / "pwned"
    hostile = pickle.dumps({b"data": _RunsACommand(f"touch {marker}"), b"labels": []})
    (data_root / "cifar10" / "cifar-10-batches-py" / "data_batch_3").write_bytes(hostile)
    with pytest.raises(DataFileError, match=rf"data_batch_3: not a CIFAR-10 batch, unpickling stopped: "
                                            rf"refused global {os.system.__module__}\.system"):
        load("cifar10", seed=0)
    assert not marker.exists()
    pickle.loads(hostile)  # the control: plain unpickling really would have run it
    assert marker.exists()


def test_a_cifar_batch_holding_something_else_is_refused(data_root):
    write_cifar(data_root / "cifar10")
    folder = data_root / "cifar10" / "cifar-10-batches-py"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.float64), b"labels": [0, 1]}))
    with pytest.raises(DataFileError, match=r"test_batch: data is float64 array of \(2, 3072\); expected a uint8"):
        load("cifar10", seed=0)
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00")  # a pickle cut short
    with pytest.raises(DataFileError, match=r"test_batch: not a readable CIFAR-10 batch"):
        load("cifar10", seed=0)
