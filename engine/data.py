"""Datasets as numpy arrays: one pipeline feeds both frameworks the same data in the same order."""
from __future__ import annotations

import contextlib
import os
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from engine import datafiles
from engine.catalog import DATASETS, SYNTHETIC_DEFAULT_SIZE, SYNTHETIC_TEXT_VOCAB

if TYPE_CHECKING:
    from engine.spec import RunSpec

ENV_CACHE_DIR = "ARENA_CACHE_DIR"

# synthetic_images: smooth templates are bilinear blow-ups of a KNOTS x KNOTS random grid.
KNOTS = 6
# Every class template is 0.5 + SHARED_AMPLITUDE * (one pattern all classes share) + a class pattern whose
# amplitude shrinks as 1/sqrt(values per image): evidence adds up over pixels, so this keeps the task about
# equally hard at any declared shape (on 28x28x1 a linear model gets ~0.96, a nearest class mean ~0.86).
SHARED_AMPLITUDE = 0.2
CLASS_AMPLITUDE_AT_784 = 0.16
MAX_CLASS_AMPLITUDE = 0.35
PIXEL_NOISE = 0.4  # uniform in [-0.4, 0.4] on every value, then clipped to [0, 1]
MAX_SHIFT = 4  # pixels each way a sample's template may be moved; convolutions are meant to shrug this off


@dataclass(frozen=True)
class Dataset:
    name: str
    task: str  # "classification" | "regression"
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_outputs: int
    info: dict = field(default_factory=dict)  # recorded on the run, e.g. phi_true
    # File datasets read by a native input pipeline: the training split's records in files (engine/pipeline.py).
    records: Optional[datafiles.TrainingRecords] = None


def load(
    name: str,
    seed: int,
    noise: float = 0.0,
    *,
    shape: Optional[tuple[int, ...]] = None,
    num_classes: int = 10,
    size: Optional[int] = None,
    records: bool = False,
) -> Dataset:
    """Load a dataset by name; the split and any generated values are fixed by the seed.

    shape, num_classes and size apply to the synthetic datasets only (None = catalog defaults);
    noise applies to powerlaw only. records: a file dataset also keeps its training records in files, for
    the frameworks' own input pipelines to read (datafiles.read).
    """
    if name == "digits":
        return _digits(seed)
    if name == "powerlaw":
        return _powerlaw(seed, noise)
    if name in ("synthetic_images", "synthetic_text"):
        shape = tuple(shape) if shape is not None else DATASETS[name].input_shape
        size = SYNTHETIC_DEFAULT_SIZE if size is None else size
        _check_synthetic(name, shape, num_classes, size)
        make = _synthetic_images if name == "synthetic_images" else _synthetic_text
        return make(seed, shape, num_classes, size)
    if name in datafiles.FILE_DATASETS:
        arrays = datafiles.read(name, records=records)
        return Dataset(name=name, task="classification", x_train=arrays.x_train, y_train=arrays.y_train,
                       x_test=arrays.x_test, y_test=arrays.y_test, num_outputs=DATASETS[name].num_outputs,
                       info=arrays.info, records=arrays.records)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def load_spec(spec: "RunSpec") -> Dataset:
    """The dataset a run spec asks for: its seed, noise and (for synthetic data) shape, classes and size."""
    return load(
        spec.dataset, spec.seed, spec.noise,
        shape=spec.input_shape() if spec.synthetic() else None,
        num_classes=spec.num_outputs(), size=spec.synthetic_size, records=spec.pipeline == "native",
    )


def _digits(seed: int) -> Dataset:
    images, labels = _digits_split(seed)
    # Pixel values are integers 0..16; scale to [0, 1] and keep an NHWC image layout.
    x_train, x_test = ((part.astype(np.float32) / 16.0)[..., np.newaxis] for part in images)
    return Dataset(
        name="digits",
        task="classification",
        x_train=np.ascontiguousarray(x_train),
        y_train=labels[0],
        x_test=np.ascontiguousarray(x_test),
        y_test=labels[1],
        num_outputs=10,
    )


def _digits_split(seed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits split 80/20, stratified, by the seed: ((train, test) images 0..16, (train, test) labels).

    Importing scikit-learn takes 1.2 s (scipy.stats comes with it), more than a small run trains, so its
    answer is kept per seed in the cache directory, keyed by its version; a cache that cannot be read or
    written is computed again.
    """
    import importlib.metadata

    path = cache_dir() / "digits" / f"split-sklearn-{importlib.metadata.version('scikit-learn')}-seed-{seed}.npz"
    try:
        with np.load(path, allow_pickle=False) as kept:
            return (kept["x_train"], kept["x_test"]), (kept["y_train"], kept["y_test"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass  # not kept yet, or unreadable: computed again below
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.images.astype(np.uint8), bunch.target.astype(np.int64), test_size=0.2, stratify=bunch.target,
        random_state=seed,
    )
    # A unique temporary name, then an atomic rename: runs starting at once never read a half-written file.
    partial = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(partial, x_train=x_train, x_test=x_test, y_train=y_train, y_test=y_test)
        os.replace(partial, path)
    except OSError:  # a read-only or full disk: the next run computes it again
        with contextlib.suppress(OSError):
            partial.unlink()
    return (x_train, x_test), (y_train, y_test)


def cache_dir() -> Path:
    """Where Arena keeps what it derives from datasets: ARENA_CACHE_DIR, default $ARENA_HOME/cache."""
    configured = os.environ.get(ENV_CACHE_DIR)
    if configured:
        return Path(configured).expanduser()
    from db.session import arena_home  # only here: reading data must not need the database stack

    return arena_home() / "cache"


def _powerlaw(seed: int, noise: float) -> Dataset:
    info = DATASETS["powerlaw"]
    rng = np.random.default_rng(seed)
    # phi_true is drawn from the seed so that different seeds pose different problems.
    phi_true = float(np.round(rng.uniform(1.5, 3.5), 4))
    n = info.train_size + info.test_size
    # x in (0, 1]: 1 - U[0, 1) never reaches 0, where x^phi's gradient in phi (ln x) blows up.
    x = (1.0 - rng.random(n)).astype(np.float32)
    y = np.power(x, phi_true).astype(np.float32)
    if noise > 0:
        y = (y + rng.normal(0.0, noise, n)).astype(np.float32)
    x, y = x[:, np.newaxis], y[:, np.newaxis]
    cut = info.train_size
    return Dataset(
        name="powerlaw",
        task="regression",
        x_train=x[:cut],
        y_train=y[:cut],
        x_test=x[cut:],
        y_test=y[cut:],
        num_outputs=1,
        info={"phi_true": phi_true, "noise": noise},
    )


def _check_synthetic(name: str, shape: tuple, num_classes: int, size: int) -> None:
    """Validate the generator's own limits (the spec also checks memory and the model's needs)."""
    images = name == "synthetic_images"
    # Images need room for a template and its shift; sequences room for a strict majority marker.
    if len(shape) != (3 if images else 1) or not all(_is_whole(d) and d >= 1 for d in shape) or min(shape[:2]) < 4:
        expected = "(height, width, channels) with height, width >= 4" if images else "(length,) with length >= 4"
        raise ValueError(f"{name}: shape={shape!r}; expected {expected}")
    most = 1000 if images else SYNTHETIC_TEXT_VOCAB - 2  # text keeps at least one noise token id
    if not _is_whole(num_classes) or not 2 <= num_classes <= most:
        raise ValueError(f"{name}: num_classes={num_classes!r}; expected a whole number in 2..{most}")
    if not _is_whole(size) or size < num_classes:
        raise ValueError(f"{name}: size={size!r}; expected a whole number >= num_classes ({num_classes})")


def _is_whole(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _balanced_labels(rng: np.random.Generator, sizes: tuple[int, ...], num_classes: int) -> np.ndarray:
    """Labels for consecutive splits of these sizes: in each, every class n // num_classes times or once more."""
    return np.concatenate([rng.permutation(np.arange(n, dtype=np.int64) % num_classes) for n in sizes])


def _synthetic_info(shape: tuple, num_classes: int, size: int, test_size: int) -> dict:
    return {"synthetic_shape": "x".join(str(int(d)) for d in shape), "synthetic_classes": int(num_classes),
            "train_size": int(size), "test_size": int(test_size)}


def _interpolation(out: int, knots: int) -> np.ndarray:
    """(out, knots) weights that linearly interpolate `knots` values onto `out` evenly spaced points."""
    position = np.linspace(0.0, knots - 1, out)
    lower = np.minimum(np.floor(position).astype(np.int64), knots - 2)
    frac = (position - lower).astype(np.float32)
    weights = np.zeros((out, knots), np.float32)
    weights[np.arange(out), lower] = 1 - frac
    weights[np.arange(out), lower + 1] = frac
    return weights


def _synthetic_images(seed: int, shape: tuple, num_classes: int, size: int) -> Dataset:
    height, width, channels = (int(d) for d in shape)
    test_size = max(size // 4, num_classes)
    n = size + test_size
    shift = max(1, min(MAX_SHIFT, min(height, width) // 8))
    # Templates come from their own stream, so they do not depend on how many samples are drawn.
    grid = np.random.default_rng([seed, 1]).random((num_classes + 1, KNOTS, KNOTS, channels), dtype=np.float32)
    canvas = np.einsum("hi,kijc,wj->khwc", _interpolation(height + 2 * shift, KNOTS), grid - np.float32(0.5),
                       _interpolation(width + 2 * shift, KNOTS))
    canvas /= np.abs(canvas).max(axis=(1, 2, 3), keepdims=True)
    class_amplitude = min(MAX_CLASS_AMPLITUDE, CLASS_AMPLITUDE_AT_784 * (784 / (height * width * channels)) ** 0.5)
    templates = np.float32(0.5) + np.float32(SHARED_AMPLITUDE) * canvas[:1] + np.float32(class_amplitude) * canvas[1:]
    # windows[k, dy, dx] is template k moved by (dy, dx): a view; indexing it copies only the samples, NHWC.
    windows = sliding_window_view(templates, (height, width), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)

    rng = np.random.default_rng([seed, 2])
    labels = _balanced_labels(rng, (size, test_size), num_classes)
    dy, dx = rng.integers(0, 2 * shift + 1, n), rng.integers(0, 2 * shift + 1, n)
    x = windows[labels, dy, dx]
    # Uniform noise: a third of the cost of Gaussian noise to draw, and just as good at hiding the template.
    x += (rng.random(x.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(2 * PIXEL_NOISE)
    np.clip(x, 0.0, 1.0, out=x)
    return Dataset(
        name="synthetic_images", task="classification",
        x_train=x[:size], y_train=labels[:size], x_test=x[size:], y_test=labels[size:],
        num_outputs=num_classes, info=_synthetic_info(shape, num_classes, size, test_size),
    )


def _synthetic_text(seed: int, shape: tuple, num_classes: int, size: int) -> Dataset:
    (length,) = (int(d) for d in shape)
    test_size = max(size // 4, num_classes)
    n = size + test_size
    rng = np.random.default_rng([seed, 3])
    labels = _balanced_labels(rng, (size, test_size), num_classes)
    # The label's marker (token label + 1) occurs `count` times; up to two distractor markers occur at
    # most count - 1 times each, so the label is the strict majority marker by construction.
    most = max(2, min(length // 4 + 1, (length + 2) // 3))  # 3 * count - 2 markers must fit in the sequence
    count = rng.integers(2, most + 1, n)
    first = rng.integers(1, num_classes, n)  # offsets from the label: never the label itself
    second = rng.integers(1, max(2, num_classes - 1), n)
    second = np.where(second >= first, second + 1, second)  # distinct from the first distractor
    distractors = [(labels + first) % num_classes, (labels + second) % num_classes]
    distractor_counts = [rng.integers(0, count), rng.integers(0, count)]
    if num_classes == 2:  # only one other class: one distractor
        distractor_counts[1] = np.zeros(n, np.int64)

    position = np.arange(length)
    tokens = rng.integers(num_classes + 1, SYNTHETIC_TEXT_VOCAB, (n, length), dtype=np.int64)  # noise ids
    end_label = count[:, None]
    end_first = end_label + distractor_counts[0][:, None]
    end_second = end_first + distractor_counts[1][:, None]
    tokens = np.where(position < end_label, labels[:, None] + 1, tokens)
    tokens = np.where((position >= end_label) & (position < end_first), distractors[0][:, None] + 1, tokens)
    tokens = np.where((position >= end_first) & (position < end_second), distractors[1][:, None] + 1, tokens)
    # Scatter the markers: an independent random order of positions for every sequence.
    tokens = np.take_along_axis(tokens, rng.random((n, length)).argsort(axis=1), axis=1)
    return Dataset(
        name="synthetic_text", task="classification",
        x_train=tokens[:size], y_train=labels[:size], x_test=tokens[size:], y_test=labels[size:],
        num_outputs=num_classes, info=_synthetic_info(shape, num_classes, size, test_size),
    )


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Sample order for one epoch: a permutation that depends only on (seed, epoch), never on the framework."""
    return np.random.default_rng([seed, epoch]).permutation(n)
