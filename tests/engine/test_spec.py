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
        ("dataset", "synthetic_text", r"dataset='synthetic_text': model 'mlp' trains on"),
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
        ("mode", "xla", r"mode='xla': torch runs in eager, compiled"),
        ("mode", "fast", r"mode='fast'"),
        ("precision", "fp8", r"precision='fp8': expected one of fp32, mixed"),
        ("layout", "nchw", r"layout='nchw': expected one of channels_last, channels_first"),
        ("tf32", "yes", r"tf32='yes': expected true or false"),
        ("deterministic", 1, r"deterministic=1: expected true or false"),
        ("same_init", None, r"same_init=None: expected true or false"),
        ("warmup_steps", -1, r"warmup_steps=-1: must be >= 0"),
        ("target_accuracy", 1.5, r"target_accuracy=1.5: must be a fraction"),
        ("target_accuracy", -0.5, r"target_accuracy=-0.5: must be > 0"),
        ("inference_iters", -5, r"inference_iters=-5"),
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


def test_mode_defaults_to_each_frameworks_usual_one_and_is_stored():
    assert RunSpec(**GOOD).mode == "eager"
    spec = RunSpec("tensorflow", "mlp", "digits")
    assert spec.mode == "graph" and spec.to_dict()["mode"] == "graph"
    assert RunSpec("tensorflow", "mlp", "digits", mode="xla").mode == "xla"


def test_old_stored_specs_without_new_fields_still_load():
    old = dict(framework="tensorflow", model="cnn", dataset="digits", epochs=3, batch_size=32, lr=1e-3,
               optimizer="adam", seed=1, device="auto", max_steps_per_epoch=None, noise=0.0)
    spec = RunSpec.from_dict(old)
    assert (spec.mode, spec.precision, spec.layout, spec.same_init) == ("graph", "fp32", "channels_last", True)


@pytest.mark.parametrize(
    "dataset, model, shape, message",
    [
        ("synthetic_images", "resnet", "32x32", r"synthetic_shape='32x32': expected '32x32x3'"),
        ("synthetic_images", "resnet", "2x2x3", r"synthetic_shape='2x2x3': images must be at least 4x4"),
        ("synthetic_images", "cnn", "99999x9x3", r"synthetic_shape='99999x9x3': each size must be in"),
        ("synthetic_text", "lstm", "32x32x3", r"synthetic_shape='32x32x3': expected '64' \(sequence length\)"),
        ("synthetic_images", "mlp", 28, r"synthetic_shape=28: expected text"),
    ],
)
def test_bad_synthetic_shapes_are_named(dataset, model, shape, message):
    with pytest.raises(SpecError, match=message):
        RunSpec("torch", model, dataset, synthetic_shape=shape)


def test_synthetic_shape_defaults_per_model_and_sets_the_input_shape():
    assert RunSpec("torch", "resnet", "synthetic_images").input_shape() == (32, 32, 3)
    assert RunSpec("torch", "mnist_cnn", "synthetic_images").input_shape() == (28, 28, 1)
    text = RunSpec("torch", "transformer", "synthetic_text", synthetic_shape="16", synthetic_classes=4,
                   synthetic_size=256)
    assert (text.input_shape(), text.num_outputs(), text.train_size()) == ((16,), 4, 256)
    with pytest.raises(SpecError, match=r"batch_size=512: larger than the synthetic_text training set \(256"):
        RunSpec("torch", "lstm", "synthetic_text", synthetic_size=256, batch_size=512)
    with pytest.raises(SpecError, match=r"synthetic_classes=40: synthetic_text has room for at most 16"):
        RunSpec("torch", "lstm", "synthetic_text", synthetic_classes=40)


def test_regression_has_no_target_accuracy():
    with pytest.raises(SpecError, match=r"target_accuracy=0.9: powerlaw is a regression task"):
        RunSpec("torch", "powerlaw", "powerlaw", target_accuracy=0.9)


def test_target_accuracy_zero_switches_the_model_default_off():
    assert RunSpec.with_model_defaults("torch", "mlp", "digits").target_accuracy == 0.95
    assert RunSpec.with_model_defaults("torch", "mlp", "digits", target_accuracy=0).target_accuracy is None


def test_tf_strategy_mirrored_is_for_tensorflow_with_several_workers_and_named_otherwise():
    mirrored = RunSpec("tensorflow", "mlp", "digits", workers=2, tf_strategy="mirrored")
    assert RunSpec.from_dict(mirrored.to_dict()) == mirrored
    assert RunSpec("torch", "mlp", "digits", workers=2).tf_strategy == "multi_worker"  # the default, ignored by torch
    with pytest.raises(SpecError, match=r"tf_strategy='mirrored': MirroredStrategy is TensorFlow's; torch"):
        RunSpec("torch", "mlp", "digits", workers=2, tf_strategy="mirrored")
    with pytest.raises(SpecError, match=r"tf_strategy='mirrored': MirroredStrategy spreads a run over several"):
        RunSpec("tensorflow", "mlp", "digits", tf_strategy="mirrored")
    with pytest.raises(SpecError, match=r"tf_strategy='ring': expected one of multi_worker, mirrored"):
        RunSpec("tensorflow", "mlp", "digits", workers=2, tf_strategy="ring")
    with pytest.raises(SpecError, match=r"mode='xla': one XLA-compiled step cannot reach"):
        RunSpec("tensorflow", "mlp", "digits", workers=2, mode="xla", tf_strategy="mirrored")
