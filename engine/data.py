"""Datasets as numpy arrays: one pipeline feeds both frameworks the same data in the same order."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.catalog import DATASETS


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


def load(name: str, seed: int, noise: float = 0.0) -> Dataset:
    """Load a dataset by name; the split and any generated values are fixed by the seed."""
    if name == "digits":
        return _digits(seed)
    if name == "powerlaw":
        return _powerlaw(seed, noise)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # Pixel values are integers 0..16; scale to [0, 1] and keep an NHWC image layout.
    images = (bunch.images.astype(np.float32) / 16.0)[..., np.newaxis]
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=seed
    )
    return Dataset(
        name="digits",
        task="classification",
        x_train=np.ascontiguousarray(x_train),
        y_train=y_train,
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test,
        num_outputs=10,
    )


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


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Sample order for one epoch: a permutation that depends only on (seed, epoch), never on the framework."""
    return np.random.default_rng([seed, epoch]).permutation(n)
