"""File datasets: IDX and CIFAR-10 files in their real formats, checksums, and what happens when they are wrong."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from engine.data import load
from engine.datafiles import (
    CIFAR_ARCHIVE, CIFAR_FOLDER, CIFAR_PYTHON_FOLDER, NOT_VERIFIED, OFFICIAL_MD5, VERIFIED, DataFileError, data_dir,
    missing,
)


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


CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def cifar_batch_bytes(images: np.ndarray, labels) -> bytes:
    """A CIFAR-10 binary batch: per image a label byte, then its 3072 pixels (1024 red, green, blue, row-major)."""
    return np.column_stack([np.asarray(labels, dtype=np.uint8), images.astype(np.uint8)]).tobytes()


def make_tar_gz(path: Path, files: dict[str, bytes], symlinks: Optional[dict[str, str]] = None) -> None:
    """A .tar.gz of regular files (and symlinks), written the way tar writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, link in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)


def write_cifar(directory: Path, per_batch: int = 3, packed: bool = True, seed: int = 0) -> dict:
    """CIFAR-10's binary version with small batches, as cifar-10-binary.tar.gz (packed) or its unpacked
    cifar-10-batches-bin/; returns (images (N, 3072), labels) by batch name."""
    rng = np.random.default_rng(seed)
    batches, files = {}, {}
    for name in CIFAR_BATCHES:
        images = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        files[f"{CIFAR_FOLDER}/{name}.bin"] = cifar_batch_bytes(images, labels)
        batches[name] = (images, labels)
    files[f"{CIFAR_FOLDER}/batches.meta.txt"] = b"\n".join([b"airplane", b"automobile", b"bird", b"cat", b"deer",
                                                          b"dog", b"frog", b"horse", b"ship", b"truck", b""])
    if packed:
        make_tar_gz(directory / CIFAR_ARCHIVE, {**files, f"{CIFAR_FOLDER}/readme.html": b"<p>not needed</p>"})
    else:
        for name, data in files.items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_bytes(data)
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


@pytest.mark.parametrize("packed", [True, False], ids=["archive", "unpacked"])
def test_cifar_batches_load_as_nhwc_with_the_official_split(data_root, packed):
    batches = write_cifar(data_root / "cifar10", packed=packed)
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


def test_cifar_read_from_the_archive_or_unpacked_has_one_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_DATA_VERIFY", "0")
    digests = []
    for packed in (True, False):
        monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path / str(packed)))
        write_cifar(tmp_path / str(packed) / "cifar10", packed=packed)
        digests.append(load("cifar10", seed=0).info["data_sha256"])
    assert digests[0] == digests[1]


def test_missing_cifar_batches_are_named(data_root):
    with pytest.raises(DataFileError, match=r"cifar10: missing cifar-10-binary.tar.gz \(or its unpacked "
                                            r"cifar-10-batches-bin/.*python -m engine download cifar10"):
        load("cifar10", seed=0)


def test_cifar_archive_is_verified_against_the_published_md5(data_root, monkeypatch):
    monkeypatch.setenv("ARENA_DATA_VERIFY", "1")
    write_cifar(data_root / "cifar10")
    archive = data_root / "cifar10" / CIFAR_ARCHIVE
    actual = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(DataFileError, match=rf"{CIFAR_ARCHIVE}: MD5 {actual} does not match the official "
                                            r"c32a1d4ab5d03f1284b67883e8d87530"):
        load("cifar10", seed=0)
    monkeypatch.setitem(OFFICIAL_MD5["cifar10"], CIFAR_ARCHIVE, actual)  # stand-in: only the real file has it
    assert load("cifar10", seed=0).info["data_checksums"] == VERIFIED


def test_unpacked_cifar_cannot_be_verified_so_verification_refuses_it(data_root, monkeypatch):
    monkeypatch.setenv("ARENA_DATA_VERIFY", "1")
    write_cifar(data_root / "cifar10", packed=False)
    assert "cannot be verified" in missing("cifar10")[0]
    with pytest.raises(DataFileError, match=r"cifar-10-batches-bin: unpacked, and the official MD5 is of "
                                            r"cifar-10-binary.tar.gz"):
        load("cifar10", seed=0)


class _RunsACommand:
    """What a hostile 'batch' would hold: unpickling it with plain pickle.load runs os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_the_python_version_is_not_read_and_the_error_says_how_to_get_the_binary_one(data_root, tmp_path):
    marker = tmp_path / "pwned"
    folder = data_root / "cifar10" / CIFAR_PYTHON_FOLDER
    folder.mkdir(parents=True)
    hostile = pickle.dumps({b"data": _RunsACommand(f"touch {marker}"), b"labels": []})
    for name in CIFAR_BATCHES:
        (folder / name).write_bytes(hostile)
    with pytest.raises(DataFileError) as caught:
        load("cifar10", seed=0)
    message = str(caught.value)
    assert f"{folder} holds the python version, which Arena no longer reads" in message
    assert "unpickling a file can run any code" in message and "python -m engine download cifar10" in message
    assert not marker.exists()
    pickle.loads(hostile)  # the control: plain unpickling really would have run it
    assert marker.exists()


def test_a_pickle_renamed_as_a_binary_batch_is_refused_without_running_it(data_root, tmp_path):
    write_cifar(data_root / "cifar10", packed=False)
    marker = tmp_path / "pwned"
    hostile = pickle.dumps({b"data": _RunsACommand(f"touch {marker}"), b"labels": []})
    (data_root / "cifar10" / CIFAR_FOLDER / "data_batch_3.bin").write_bytes(hostile)
    with pytest.raises(DataFileError, match=rf"data_batch_3.bin: {len(hostile)} bytes is not a whole number of "
                                            r"3073-byte CIFAR-10 records"):
        load("cifar10", seed=0)
    assert not marker.exists()


def test_a_damaged_cifar_batch_or_archive_is_named(data_root):
    write_cifar(data_root / "cifar10", packed=False)
    folder = data_root / "cifar10" / CIFAR_FOLDER
    (folder / "test_batch.bin").write_bytes((folder / "test_batch.bin").read_bytes()[:-100])
    with pytest.raises(DataFileError, match=r"test_batch.bin: 9119 bytes is not a whole number"):
        load("cifar10", seed=0)
    (folder / "test_batch.bin").write_bytes(cifar_batch_bytes(np.zeros((2, 3072), np.uint8), [3, 12]))
    with pytest.raises(DataFileError, match=r"test_batch.bin: label 12 outside 0..9"):
        load("cifar10", seed=0)
    (data_root / "cifar10" / CIFAR_ARCHIVE).write_bytes(b"\x1f\x8b\x08\x00 cut short")  # the archive wins
    with pytest.raises(DataFileError, match=rf"{CIFAR_ARCHIVE}: not a readable .tar.gz archive"):
        load("cifar10", seed=0)


def test_an_archive_with_a_link_or_without_a_batch_is_refused(data_root):
    archive = data_root / "cifar10" / CIFAR_ARCHIVE
    batches = {f"{CIFAR_FOLDER}/{name}.bin": cifar_batch_bytes(np.zeros((1, 3072)), [0]) for name in CIFAR_BATCHES}
    make_tar_gz(archive, {k: v for k, v in batches.items() if "data_batch_1" not in k},
                symlinks={f"{CIFAR_FOLDER}/data_batch_1.bin": "/etc/passwd"})
    with pytest.raises(DataFileError, match=r"cifar-10-batches-bin/data_batch_1.bin is not one regular file"):
        load("cifar10", seed=0)
    make_tar_gz(archive, {k: v for k, v in batches.items() if "test_batch" not in k})
    with pytest.raises(DataFileError, match=r"cifar-10-batches-bin/test_batch.bin not in the archive"):
        load("cifar10", seed=0)
