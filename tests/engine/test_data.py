"""Datasets: bundled digits, generated powerlaw, synthetic images and text, all fixed by the seed.

File datasets (mnist, fashion_mnist, cifar10) are tested in test_datafiles.py.
"""
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.data import ENV_CACHE_DIR, epoch_order, load, load_spec
from tests.conftest import REPO_ROOT


def test_digits_is_a_stratified_scaled_80_20_split():
    data = load("digits", seed=0)
    assert data.x_train.shape == (1437, 8, 8, 1) and data.x_test.shape == (360, 8, 8, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.min() >= 0.0 and data.x_train.max() == 1.0
    train_share = np.bincount(data.y_train, minlength=10) / len(data.y_train)
    test_share = np.bincount(data.y_test, minlength=10) / len(data.y_test)
    assert np.abs(train_share - test_share).max() < 0.01  # stratified: same class mix


def test_digits_split_is_fixed_by_seed():
    a, b, c = load("digits", 1), load("digits", 1), load("digits", 2)
    assert np.array_equal(a.y_test, b.y_test) and np.array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.y_test, c.y_test)


def test_powerlaw_samples_follow_x_to_the_phi():
    data = load("powerlaw", seed=3)
    phi = data.info["phi_true"]
    assert 1.5 <= phi <= 3.5
    x = np.concatenate([data.x_train, data.x_test])
    assert x.min() > 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(data.y_train, data.x_train**phi, rtol=1e-5)
    assert load("powerlaw", seed=3).info["phi_true"] == phi


def test_powerlaw_noise_is_optional():
    clean, noisy = load("powerlaw", seed=3), load("powerlaw", seed=3, noise=0.05)
    residual = noisy.y_train - clean.y_train
    assert 0.03 < residual.std() < 0.07
    assert noisy.info["noise"] == 0.05


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert np.array_equal(epoch_order(100, 0, 1), epoch_order(100, 0, 1))
    assert not np.array_equal(epoch_order(100, 0, 1), epoch_order(100, 0, 2))
    assert sorted(epoch_order(100, 5, 7)) == list(range(100))


# --- synthetic datasets ----------------------------------------------------------------------------------


def test_synthetic_images_have_the_declared_shape_and_classes_and_are_fixed_by_seed():
    data = load("synthetic_images", seed=4, shape=(12, 10, 3), num_classes=5, size=200)
    assert data.x_train.shape == (200, 12, 10, 3) and data.x_test.shape == (50, 12, 10, 3)
    assert data.x_train.dtype == np.float32 and data.x_train.flags.c_contiguous and data.x_test.flags.c_contiguous
    assert data.y_train.dtype == np.int64 and data.num_outputs == 5 and data.task == "classification"
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert np.bincount(data.y_train).tolist() == [40] * 5 and np.bincount(data.y_test).tolist() == [10] * 5
    assert data.info == {"synthetic_shape": "12x10x3", "synthetic_classes": 5, "train_size": 200, "test_size": 50}
    again, other = load("synthetic_images", 4, shape=(12, 10, 3), num_classes=5, size=200), \
        load("synthetic_images", 5, shape=(12, 10, 3), num_classes=5, size=200)
    assert np.array_equal(again.x_train, data.x_train) and np.array_equal(again.y_test, data.y_test)
    assert not np.array_equal(other.x_train, data.x_train)


def test_synthetic_defaults_come_from_the_catalog_and_the_test_split_holds_every_class():
    data = load("synthetic_images", seed=0)
    assert data.x_train.shape == (4096, 32, 32, 3) and data.x_test.shape == (1024, 32, 32, 3)
    small = load("synthetic_text", seed=0, num_classes=7, size=9)
    assert len(small.y_test) == 7 and sorted(small.y_test) == list(range(7))


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (8, 8, 1)])
def test_synthetic_images_are_learnable_but_not_trivial(shape):
    from sklearn.neighbors import NearestCentroid

    data = load("synthetic_images", seed=0, shape=shape, size=2048)
    x_train, x_test = data.x_train.reshape(2048, -1), data.x_test.reshape(512, -1)
    accuracy = NearestCentroid().fit(x_train, data.y_train).score(x_test, data.y_test)
    # Far above chance (0.1), so there is something to learn; shifted, noisy templates keep the class
    # mean alone from settling it (a small CNN gets past 0.95 on 28x28x1 within five epochs).
    assert 0.5 < accuracy < 0.95


def test_synthetic_text_label_is_the_marker_that_occurs_strictly_most_often():
    from engine.catalog import SYNTHETIC_TEXT_VOCAB

    for length, classes in [(32, 10), (4, 2), (9, 3), (200, 16)]:
        data = load("synthetic_text", seed=2, shape=(length,), num_classes=classes, size=400)
        tokens = np.concatenate([data.x_train, data.x_test])
        labels = np.concatenate([data.y_train, data.y_test])
        assert data.x_train.shape == (400, length) and data.x_train.dtype == np.int64 and data.y_train.dtype == np.int64
        assert tokens.min() >= 1 and tokens.max() < SYNTHETIC_TEXT_VOCAB  # 0 is left free for padding
        counts = np.stack([(tokens == classes_id + 1).sum(axis=1) for classes_id in range(classes)], axis=1)
        top = np.sort(counts, axis=1)
        assert np.array_equal(counts.argmax(axis=1), labels) and (top[:, -1] > top[:, -2]).all()
        assert np.bincount(data.y_train, minlength=classes).min() >= 400 // classes


def test_synthetic_text_is_fixed_by_seed_and_not_a_giveaway():
    a, b, c = (load("synthetic_text", seed, shape=(32,)) for seed in (1, 1, 2))
    assert np.array_equal(a.x_train, b.x_train) and not np.array_equal(a.x_train, c.x_train)
    markers = (a.x_train >= 1) & (a.x_train <= 10)
    distinct_markers = np.array([len(np.unique(row[m])) for row, m in zip(a.x_train, markers)])
    assert (distinct_markers > 1).mean() > 0.5  # most sequences carry distractor markers to out-count
    assert a.info == {"synthetic_shape": "32", "synthetic_classes": 10, "train_size": 4096, "test_size": 1024}


@pytest.mark.parametrize("name, kwargs, match", [
    ("synthetic_images", {"shape": (2, 8, 1)}, r"shape=\(2, 8, 1\)"),
    ("synthetic_images", {"shape": (8, 8)}, r"shape=\(8, 8\)"),
    ("synthetic_text", {"shape": (3,)}, r"shape=\(3,\)"),
    ("synthetic_images", {"num_classes": 1}, r"num_classes=1"),
    ("synthetic_text", {"num_classes": 63}, r"num_classes=63; expected a whole number in 2..62"),
    ("synthetic_text", {"num_classes": 5, "size": 4}, r"size=4"),
])
def test_synthetic_arguments_out_of_range_are_errors_naming_the_value(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load(name, 0, **kwargs)


def test_load_spec_passes_shape_classes_size_and_seed():
    from engine.spec import RunSpec

    spec = RunSpec(framework="torch", model="cnn", dataset="synthetic_images", synthetic_shape="16x16x3",
                   synthetic_classes=4, synthetic_size=64, batch_size=8, seed=3)
    data = load_spec(spec)
    assert data.x_train.shape == (64, 16, 16, 3) and data.num_outputs == 4
    assert np.array_equal(data.x_test, load("synthetic_images", 3, shape=(16, 16, 3), num_classes=4, size=64).x_test)
    text = load_spec(RunSpec(framework="tensorflow", model="lstm", dataset="synthetic_text", synthetic_size=32))
    assert text.x_train.shape == (32, 32) and text.num_outputs == 10
    digits = load_spec(RunSpec(framework="torch", model="mlp", dataset="digits", seed=1))
    assert np.array_equal(digits.y_test, load("digits", 1).y_test)
    noisy = load_spec(RunSpec(framework="torch", model="powerlaw", dataset="powerlaw", seed=3, noise=0.05))
    assert noisy.info == load("powerlaw", 3, 0.05).info


DIGITS_IN_A_NEW_PROCESS = """
import sys
import numpy as np
from engine.data import load
data = load("digits", seed=3)
np.savez(sys.argv[1], x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test)
print("sklearn" in sys.modules)
"""


def digits_in_a_new_process(cache: Path, out: Path) -> bool:
    """Load digits (seed 3) in a fresh interpreter with this cache; save its arrays to out; whether it imported sklearn."""
    result = subprocess.run([sys.executable, "-c", DIGITS_IN_A_NEW_PROCESS, str(out)], cwd=REPO_ROOT,
                            env={**os.environ, ENV_CACHE_DIR: str(cache)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip() == "True"


def test_digits_split_is_kept_per_seed_and_the_next_process_reads_it_without_scikit_learn(tmp_path):
    cache = tmp_path / "cache"
    assert digits_in_a_new_process(cache, tmp_path / "first.npz")  # computed by scikit-learn, then kept
    assert [path.name for path in (cache / "digits").iterdir()] == [
        f"split-sklearn-{importlib.metadata.version('scikit-learn')}-seed-3.npz"]
    assert not digits_in_a_new_process(cache, tmp_path / "second.npz")  # read back: no scikit-learn import
    first, second = np.load(tmp_path / "first.npz"), np.load(tmp_path / "second.npz")
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert first[name].dtype == second[name].dtype and np.array_equal(first[name], second[name]), name


def test_a_damaged_kept_split_is_computed_again_and_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path))
    expected = load("digits", seed=5)
    (kept,) = (tmp_path / "digits").iterdir()
    kept.write_bytes(kept.read_bytes()[:1000])  # cut short, as a full disk would leave a file written in place
    again = load("digits", seed=5)
    assert np.array_equal(again.x_train, expected.x_train) and np.array_equal(again.y_test, expected.y_test)
    assert kept.stat().st_size > 100_000 and np.load(kept)["y_test"].shape == (360,)
    assert [path.name for path in (tmp_path / "digits").iterdir()] == [kept.name]  # no partial file left behind


def test_digits_load_where_the_cache_cannot_be_written(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache directory would go")
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "cache"))
    assert load("digits", seed=0).x_train.shape == (1437, 8, 8, 1)
