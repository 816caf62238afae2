"""Datasets: real bundled digits and generated powerlaw, fixed by the seed."""
import numpy as np

from engine.data import epoch_order, load


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
