"""RunSpec validation: every bad value is rejected with the field and value named."""
import math

import pytest

from engine.spec import RunSpec, SpecError

GOOD = dict(framework="torch", model="mlp", dataset="digits")


def test_defaults_build_a_valid_spec():
    spec = RunSpec.with_model_defaults("tensorflow", "cnn", "digits")
    assert (spec.epochs, spec.batch_size, spec.optimizer) == (20, 32, "adam")
    assert RunSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("framework", "jax", r"framework='jax': expected one of torch, tensorflow"),
        ("model", "resnet9000", r"model='resnet9000'"),
        ("dataset", "imagenet", r"dataset='imagenet'"),
        ("dataset", "powerlaw", r"dataset='powerlaw': model 'mlp' trains on digits"),
        ("epochs", 0, r"epochs=0: must be >= 1"),
        ("epochs", -3, r"epochs=-3"),
        ("epochs", 2.5, r"epochs=2.5: expected a whole number"),
        ("batch_size", 0, r"batch_size=0"),
        ("batch_size", 1438, r"batch_size=1438: larger than the digits training set \(1437 samples\)"),
        ("lr", 0.0, r"lr=0.0: must be > 0"),
        ("lr", -1e-3, r"lr=-0.001"),
        ("lr", math.inf, r"lr=inf: must be finite"),
        ("lr", math.nan, r"lr=nan: must be finite"),
        ("optimizer", "rmsprop", r"optimizer='rmsprop'"),
        ("seed", -1, r"seed=-1"),
        ("device", "gpu", r"device='gpu': expected 'auto', 'cpu' or 'cuda:N'"),
        ("device", "cuda:x", r"device='cuda:x'"),
        ("max_steps_per_epoch", 0, r"max_steps_per_epoch=0"),
        ("noise", -0.1, r"noise=-0.1: must be >= 0"),
    ],
)
def test_bad_values_are_rejected_naming_field_and_value(field, value, message):
    with pytest.raises(SpecError, match=message) as info:
        RunSpec(**{**GOOD, field: value})
    assert info.value.field == field


def test_batch_size_limit_follows_the_dataset():
    RunSpec(framework="torch", model="powerlaw", dataset="powerlaw", batch_size=800)
    with pytest.raises(SpecError, match=r"batch_size=801: larger than the powerlaw training set \(800"):
        RunSpec(framework="torch", model="powerlaw", dataset="powerlaw", batch_size=801)


def test_unknown_stored_field_is_an_error_not_dropped():
    with pytest.raises(SpecError, match=r"colour='red': unknown spec field"):
        RunSpec.from_dict({**GOOD, "colour": "red"})


def test_spec_is_frozen():
    spec = RunSpec(**GOOD)
    with pytest.raises(AttributeError):
        spec.lr = 1.0  # type: ignore[misc]
