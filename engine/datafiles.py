"""Datasets read from files: the data directory, IDX (MNIST) and CIFAR-10 readers, the official checksums.

Nothing here downloads: missing files are an error that names the command that fetches them
(`python -m engine download DATASET`, engine/download.py).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from engine.catalog import DATASETS

ENV_DATA_DIR = "ARENA_DATA_DIR"
ENV_VERIFY = "ARENA_DATA_VERIFY"

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# CIFAR-10's binary version: records of a label byte and 32x32x3 pixels, nothing to unpickle. Its
# published MD5 is of the archive alone, so runs read the batches from the verified archive in memory.
CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-bin"
CIFAR_TRAIN = tuple(f"{CIFAR_FOLDER}/data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = f"{CIFAR_FOLDER}/test_batch.bin"
CIFAR_PYTHON_FOLDER = "cifar-10-batches-py"  # the pickled version, which Arena no longer reads
CIFAR_RECORD_BYTES = 1 + 32 * 32 * 3
CIFAR_BATCH_RECORDS = 10_000

# The MD5s the datasets are published with (on the datasets' own pages; torchvision lists MNIST's too),
# keyed by path inside the dataset's directory. MNIST's are of the .gz files as distributed, CIFAR-10's
# of the binary version's archive.
OFFICIAL_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {
        CIFAR_ARCHIVE: "c32a1d4ab5d03f1284b67883e8d87530",
    },
}
FILE_DATASETS = tuple(OFFICIAL_MD5)
VERIFIED = "verified against the official MD5s"
NOT_VERIFIED = f"not verified ({ENV_VERIFY}=0)"
OFFICIAL_SPLIT = "official train/test split (the seed does not change it)"

# IDX type codes (third byte of the magic number) -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataFileError(ValueError):
    """A dataset's files are missing, damaged, unverifiable or not what they claim to be; the message says which."""


@dataclass(frozen=True)
class RecordFile:
    """Fixed-length records in one uncompressed file: record i's `length` bytes start at header + i * stride + offset."""

    path: str
    header: int
    stride: int
    offset: int
    length: int


@dataclass(frozen=True)
class TrainingRecords:
    """The training split's official bytes as a framework's own input pipeline reads them (engine/pipeline.py)."""

    images: RecordFile  # uint8 pixels per record
    labels: RecordFile  # one uint8 label per record
    count: int
    channels_first: bool  # CIFAR-10's records hold a channel's 1024 pixels after another (CHW)


@dataclass(frozen=True)
class FileArrays:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    info: dict
    records: Optional[TrainingRecords] = None


def data_dir() -> Path:
    """Root of the file datasets: ARENA_DATA_DIR, default $ARENA_HOME/data; each dataset in its own subdirectory."""
    configured = os.environ.get(ENV_DATA_DIR)
    if configured:
        return Path(configured).expanduser()
    from db.session import arena_home  # only here: reading files must not need the database stack

    return arena_home() / "data"


def verification_enabled() -> bool:
    """Whether files must match the official MD5s (ARENA_DATA_VERIFY, default 1)."""
    value = os.environ.get(ENV_VERIFY, "1").strip()
    if value not in ("0", "1"):
        raise DataFileError(f"{ENV_VERIFY}={value!r}: expected 1 (verify, the default) or 0 (do not verify)")
    return value == "1"


def md5_of(path: Path) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read(name: str, records: bool = False) -> FileArrays:
    """Read a file dataset from the data directory: official split, images NHWC float32 in [0, 1].

    records=True also keeps the training split's records as uncompressed files, for the native input
    pipelines to read record by record (FileArrays.records): the official bytes, decompressed once into
    the dataset's records/ directory under their content digest, and read from there afterwards.
    """
    if name not in FILE_DATASETS:
        raise ValueError(f"unknown file dataset {name!r}; expected one of {', '.join(FILE_DATASETS)}")
    directory = data_dir() / name
    verify = verification_enabled()
    content = _Content()
    raw: dict[str, bytes] = {}
    if name == "cifar10":
        x_train, y_train, x_test, y_test = _read_cifar(directory, verify, content, raw)
    else:
        x_train, y_train, x_test, y_test = _read_mnist(name, directory, verify, content, raw)
    info = {
        "data_dir": str(directory),
        "data_sha256": content.hexdigest(),
        "data_checksums": VERIFIED if verify else NOT_VERIFIED,
        "data_split": OFFICIAL_SPLIT,
        "train_size": len(y_train),
        "test_size": len(y_test),
    }
    kept = _training_records(name, directory / RECORDS_FOLDER / content.hexdigest()[:16], raw, len(y_train)) \
        if records else None
    return FileArrays(x_train, y_train, x_test, y_test, info, kept)


RECORDS_FOLDER = "records"
IDX_IMAGE_HEADER, IDX_LABEL_HEADER = 16, 8  # magic and sizes of a 3-d and a 1-d IDX file


def _training_records(name: str, directory: Path, raw: dict[str, bytes], count: int) -> TrainingRecords:
    """Write (once) and describe the training split's record files; raw holds the decompressed official bytes."""
    if name == "cifar10":
        path = directory / "data_batches_1-5.bin"
        _write_once(path, lambda: b"".join(raw[member] for member in CIFAR_TRAIN))
        images = RecordFile(str(path), 0, CIFAR_RECORD_BYTES, 1, CIFAR_RECORD_BYTES - 1)
        labels = RecordFile(str(path), 0, CIFAR_RECORD_BYTES, 0, 1)
        return TrainingRecords(images, labels, count, channels_first=True)
    height, width, channels = DATASETS[name].input_shape
    image_path, label_path = directory / IDX_FILES[0], directory / IDX_FILES[1]
    _write_once(image_path, lambda: raw[IDX_FILES[0]])
    _write_once(label_path, lambda: raw[IDX_FILES[1]])
    pixels = height * width * channels
    return TrainingRecords(RecordFile(str(image_path), IDX_IMAGE_HEADER, pixels, 0, pixels),
                           RecordFile(str(label_path), IDX_LABEL_HEADER, 1, 0, 1), count, channels_first=False)


def _write_once(path: Path, content) -> None:
    """Write content() to path unless it is there: into a temporary name first, so no reader sees half a file."""
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(content())
    os.replace(temporary, path)


class _Content:
    """One SHA-256 over the (decompressed) bytes of every file read, in a fixed order, each with its name:
    two runs with the same digest trained on identical data, whether the files were gzipped or not."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, name: str, data: bytes) -> None:
        self._digest.update(f"{name}\0{len(data)}\0".encode())
        self._digest.update(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _missing_error(name: str, directory: Path, missing: list[str]) -> DataFileError:
    return DataFileError(
        f"{name}: missing {', '.join(missing)} in {directory}. Fetch them with `python -m engine download {name}`, "
        f"or copy them there by hand, or set {ENV_DATA_DIR} to a directory whose {name}/ subdirectory holds them."
        + (_python_batches_note(directory) if name == "cifar10" else "")
    )


def _python_batches_note(directory: Path) -> str:
    """What to do with the python version of CIFAR-10 that Arena used to read, when it is still there."""
    if not (directory / CIFAR_PYTHON_FOLDER).is_dir():
        return ""
    return (f" {directory / CIFAR_PYTHON_FOLDER} holds the python version, which Arena no longer reads: its batches "
            f"are pickles, and unpickling a file can run any code in it. `python -m engine download cifar10` "
            f"fetches the binary version; then delete {CIFAR_PYTHON_FOLDER}/.")


def _verified_bytes(name: str, path: Path, expected_md5: str, verify: bool) -> bytes:
    data = path.read_bytes()
    if verify:
        actual = hashlib.md5(data).hexdigest()
        if actual != expected_md5:
            raise DataFileError(
                f"{path}: MD5 {actual} does not match the official {expected_md5}. The file is damaged or not the "
                f"official one: delete it and run `python -m engine download {name}`, "
                f"or set {ENV_VERIFY}=0 to train on it anyway."
            )
    return data


def _locate_mnist(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """({IDX base name: path found, .gz preferred}, [names missing])."""
    found, missing = {}, []
    for base in IDX_FILES:
        if (directory / f"{base}.gz").is_file():  # as distributed; preferred, since its MD5 is the published one
            found[base] = directory / f"{base}.gz"
        elif (directory / base).is_file():
            found[base] = directory / base
        else:
            missing.append(f"{base}.gz (or {base})")
    return found, missing


def missing(name: str) -> list[str]:
    """Files a file dataset needs that are not in its directory (presence only: quick enough for a form)."""
    directory = data_dir() / name
    if name == "cifar10":
        archive, absent = _locate_cifar(directory)
        if archive is None and not absent and verification_enabled():
            return [f"{CIFAR_ARCHIVE} (only the unpacked {CIFAR_FOLDER}/ is there, which cannot be verified; "
                    f"or set {ENV_VERIFY}=0)"]
        return absent
    found, absent = _locate_mnist(directory)
    if verification_enabled():  # the published MD5s are of the .gz files: a plain file cannot be checked
        absent += [f"{base}.gz (only the uncompressed {path.name} is there, which cannot be verified; "
                   f"or set {ENV_VERIFY}=0)" for base, path in found.items() if path.suffix != ".gz"]
    return absent


def missing_message(name: str) -> str | None:
    """None when a file dataset's files are all there, else what is missing, where, and how to fetch it."""
    absent = missing(name)
    return str(_missing_error(name, data_dir() / name, absent)) if absent else None


def _read_mnist(name: str, directory: Path, verify: bool, content: _Content, raw: dict[str, bytes]):
    found, missing_files = _locate_mnist(directory)
    if missing_files:
        raise _missing_error(name, directory, missing_files)
    arrays = {}
    for base, path in found.items():
        if path.suffix == ".gz":
            data = _gunzip(_verified_bytes(name, path, OFFICIAL_MD5[name][path.name], verify), path)
        elif verify:
            raise DataFileError(
                f"{path}: uncompressed, and the official MD5s are of the .gz files as distributed, so it cannot be "
                f"verified. Put {base}.gz there (`python -m engine download {name}`), or set {ENV_VERIFY}=0."
            )
        else:
            data = path.read_bytes()
        content.add(base, data)
        raw[base] = data
        arrays[base] = parse_idx(data, path)
    height, width, _ = DATASETS[name].input_shape
    split = []
    for prefix in ("train", "t10k"):
        images, labels = arrays[f"{prefix}-images-idx3-ubyte"], arrays[f"{prefix}-labels-idx1-ubyte"]
        image_path, label_path = found[f"{prefix}-images-idx3-ubyte"], found[f"{prefix}-labels-idx1-ubyte"]
        if images.dtype != np.uint8 or images.shape[1:] != (height, width):
            raise DataFileError(f"{image_path}: holds {images.dtype} images of {images.shape[1:]}; "
                                f"expected uint8 images of {(height, width)}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataFileError(f"{label_path}: holds labels of shape {labels.shape}; "
                                f"expected one label for each of the {len(images)} images in {image_path.name}")
        split += [_to_unit_float(images[..., np.newaxis]), _checked_labels(labels, name, label_path)]
    return tuple(split)


def _gunzip(data: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated, or corrupt
        raise DataFileError(f"{path}: not a readable gzip file ({exc})") from None


def parse_idx(data: bytes, path: Path) -> np.ndarray:
    """Array from IDX bytes: magic 0x00 0x00 TYPE NDIM, NDIM big-endian uint32 sizes, then the values."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise DataFileError(f"{path}: bad IDX magic number {data[:4].hex() or '(empty file)'}; "
                            f"expected 0000TTNN (TT a type code, NN the number of dimensions)")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(f"{path}: {len(data)} bytes, shorter than its own {header}-byte IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataFileError(f"{path}: {len(data)} bytes, but its IDX header declares shape {shape} of {dtype.name}, "
                            f"{expected} bytes; the file is truncated or damaged")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def _to_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 images -> C-contiguous float32 in [0, 1]."""
    images = np.ascontiguousarray(images).astype(np.float32)
    images /= np.float32(255)  # in place: a second full-size copy of CIFAR-10 would be 600 MB
    return images


def _checked_labels(labels, name: str, path: str | Path) -> np.ndarray:
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataFileError(f"{path}: labels are not whole numbers ({exc})") from None
    classes = DATASETS[name].num_outputs
    outside = labels[(labels < 0) | (labels >= classes)]
    if len(outside):
        raise DataFileError(f"{path}: label {outside[0]} outside 0..{classes - 1}")
    return labels


def read_cifar_batch(data: bytes, where: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels from one CIFAR-10 binary batch: N records of a label and 3072 pixels."""
    if not data or len(data) % CIFAR_RECORD_BYTES:
        raise DataFileError(f"{where}: {len(data)} bytes is not a whole number of {CIFAR_RECORD_BYTES}-byte CIFAR-10 "
                            f"records (a label byte, then 32x32x3 pixels); the file is truncated or not a binary batch")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
    # Each record's pixels are 1024 red, 1024 green, 1024 blue values (CHW): move channels last.
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, _checked_labels(records[:, 0], "cifar10", where)


def _locate_cifar(directory: Path) -> tuple[Optional[Path], list[str]]:
    """(the archive if present, [what is missing]): the archive, else all six unpacked batches."""
    if (directory / CIFAR_ARCHIVE).is_file():
        return directory / CIFAR_ARCHIVE, []
    if all((directory / name).is_file() for name in (*CIFAR_TRAIN, CIFAR_TEST)):
        return None, []
    return None, [f"{CIFAR_ARCHIVE} (or its unpacked {CIFAR_FOLDER}/ with data_batch_1.bin ... test_batch.bin)"]


def _cifar_members(data: bytes, archive: Path) -> dict[str, bytes]:
    """The six batch files inside the archive's bytes, read in one pass and never written to disk."""
    wanted, found = {*CIFAR_TRAIN, CIFAR_TEST}, {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|gz") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name not in wanted:
                    continue
                if not member.isfile() or name in found:
                    raise DataFileError(f"{archive}: {name} is not one regular file in the archive")
                if member.size > CIFAR_BATCH_RECORDS * CIFAR_RECORD_BYTES:  # read nothing bigger than a batch
                    raise DataFileError(f"{archive}: {name} holds {member.size:,} bytes, more than a batch of "
                                        f"{CIFAR_BATCH_RECORDS:,} records")
                found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataFileError(f"{archive}: not a readable .tar.gz archive ({exc})") from None
    absent = sorted(wanted - set(found))
    if absent:
        raise DataFileError(f"{archive}: {', '.join(absent)} not in the archive; it is not CIFAR-10's binary version")
    return found


def _read_cifar(directory: Path, verify: bool, content: _Content, raw: dict[str, bytes]):
    archive, absent = _locate_cifar(directory)
    if absent:
        raise _missing_error("cifar10", directory, absent)
    if archive is not None:
        files = _cifar_members(_verified_bytes("cifar10", archive, OFFICIAL_MD5["cifar10"][CIFAR_ARCHIVE], verify),
                              archive)
        where = {name: f"{archive}:{name}" for name in files}
    elif verify:
        raise DataFileError(
            f"{directory / CIFAR_FOLDER}: unpacked, and the official MD5 is of {CIFAR_ARCHIVE} as distributed, so "
            f"these files cannot be verified. Put {CIFAR_ARCHIVE} in {directory} "
            f"(`python -m engine download cifar10`), or set {ENV_VERIFY}=0."
        )
    else:
        files = {name: (directory / name).read_bytes() for name in (*CIFAR_TRAIN, CIFAR_TEST)}
        where = {name: str(directory / name) for name in files}
    parts = []
    for name in (*CIFAR_TRAIN, CIFAR_TEST):
        content.add(name, files[name])  # the batches' bytes: the same digest from the archive or unpacked
        raw[name] = files[name]
        parts.append(read_cifar_batch(files[name], where[name]))
    x_train = _to_unit_float(np.concatenate([images for images, _ in parts[:-1]]))
    y_train = np.concatenate([labels for _, labels in parts[:-1]])
    x_test, y_test = _to_unit_float(parts[-1][0]), parts[-1][1]
    return x_train, y_train, x_test, y_test
