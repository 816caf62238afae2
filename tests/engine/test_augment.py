"""engine/augment.py, and its PyTorch and TensorFlow implementations: one definition, the same images.

The numpy reference is tested here; each framework runs in a process of its own (as in
test_models.py: torch and tensorflow never share one), started at once, on fixed images and draws
written to a directory, and returns its outputs for this process to compare with the reference.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from engine import child_env
from engine.augment import (AUGMENTATIONS, NOISE_STD, Draws, apply_numpy, augment_batch_numpy, crop_padding,
                            describe, draw_numpy, parse_augment, sample_rng)
from engine.catalog import FRAMEWORKS
from tests.conftest import REPO_ROOT

ALL = AUGMENTATIONS


def _digit() -> np.ndarray:
    """A '2' from sklearn's digits, 8x8x1 in [0, 1]: neither mirror- nor shift-symmetric."""
    return (load_digits().images[2] / 16.0).astype(np.float32)[..., np.newaxis]


def _colour() -> np.ndarray:
    """A 32x32x3 image in [0, 1) with a left-to-right ramp, so a flip or a shift shows everywhere."""
    ramp = np.linspace(0.0, 0.5, 32, dtype=np.float32)[np.newaxis, :, np.newaxis]
    return (0.5 * np.random.default_rng(4).random((32, 32, 3), dtype=np.float32) + ramp).astype(np.float32)


IMAGES = {"digits": _digit(), "colour": _colour()}


def _equivalence_cases() -> dict[str, tuple[str, tuple[str, ...], Draws]]:
    """name -> (image, augment, draws): each augmentation alone and all three, crop offsets at 0 and 2P."""
    cases = {}
    for key, image in IMAGES.items():
        padding = crop_padding(image.shape[0])
        noise = np.random.default_rng([5, image.shape[0]]).standard_normal(image.shape, dtype=np.float32)
        offsets = [(0, 0), (2 * padding, 2 * padding), (0, 2 * padding), (2 * padding, 0), (1, padding + 1)]
        neutral = (padding, padding)
        for offset in offsets:
            cases[f"{key}-crop-{offset[0]},{offset[1]}"] = (key, ("crop",), Draws(offset, False, None))
        for flip in (True, False):
            cases[f"{key}-flip-{flip}"] = (key, ("flip",), Draws(neutral, flip, None))
        cases[f"{key}-noise"] = (key, ("noise",), Draws(neutral, False, noise))
        for offset in offsets:
            for flip in (True, False):
                cases[f"{key}-all-{offset[0]},{offset[1]}-{flip}"] = (key, ALL, Draws(offset, flip, noise))
    return cases


CASES = _equivalence_cases()
# Seeded, per-sample paths: a batch of samples under their dataset indices.
SEED, EPOCH = 7, 1
BATCH = np.stack([_colour(), _colour()[::-1], _colour().transpose(1, 0, 2), 1.0 - _colour(), _colour()[:, ::-1],
                  np.roll(_colour(), 5, axis=0)])
INDICES = [0, 5, 9, 12, 40, 41]
STATISTICS_INDICES = 400  # samples whose draws are counted: offsets must cover [0, 2P], flips about half

# One framework's side: reads DIR/cases.json and DIR/inputs.npz, writes DIR/<framework>.npz.
_PROBE = r"""
import json, sys
from pathlib import Path
import numpy as np
framework, directory = sys.argv[1], Path(sys.argv[2])
cases = json.loads((directory / "cases.json").read_text())
inputs = dict(np.load(directory / "inputs.npz"))
seed, epoch, indices, batch = int(inputs["seed"]), int(inputs["epoch"]), [int(i) for i in inputs["indices"]], inputs["batch"]
ALL = ("crop", "flip", "noise")
out = {}

if framework == "torch":
    import torch
    from engine.backends import torch_augment as impl

    def apply(image, offset, flip, noise):
        return impl.apply(torch.from_numpy(image), tuple(offset), flip,
                          None if noise is None else torch.from_numpy(noise)).numpy()

    def draws(augment, shape, index, epoch=epoch):
        offset, flip, noise = impl.SampleAugmenter(augment, shape, seed).draws(epoch, index)
        return offset, flip, None if noise is None else noise.numpy()

    def offsets_and_flips(shape, count):
        augmenter = impl.SampleAugmenter(("crop", "flip"), shape, seed)
        picked = [augmenter.draws(epoch, index) for index in range(count)]
        return np.array([d[0] for d in picked]), np.array([d[1] for d in picked])

    class Samples(torch.utils.data.Dataset):
        # What a training Dataset does: __getitem__ augments one sample, in whichever worker.
        def __init__(self):
            self.augmenter = impl.SampleAugmenter(ALL, batch.shape[1:], seed)
        def __len__(self):
            return len(batch)
        def __getitem__(self, k):
            return self.augmenter(torch.from_numpy(batch[k]), epoch, indices[k])

    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(Samples(), batch_size=4, num_workers=workers)
        out[f"loader/{workers}"] = torch.cat(list(loader)).numpy()
else:
    import tensorflow as tf
    from engine.backends import tensorflow_augment as impl

    def apply(image, offset, flip, noise):
        return impl.apply(tf.constant(image), tuple(offset), flip, None if noise is None else tf.constant(noise)).numpy()

    graph_apply = tf.function(impl.apply)

    def draws(augment, shape, index, epoch=epoch):
        offset, flip, noise = impl.sample_draws(augment, shape, seed)(epoch, index)
        offset = tuple(int(v) for v in offset)  # a tensor when crop is on, ints when off
        return offset, bool(flip), None if noise is None else noise.numpy()

    def offsets_and_flips(shape, count):
        traced = tf.function(impl.sample_draws(("crop", "flip"), shape, seed))
        picked = [traced(tf.constant(epoch, tf.int64), tf.constant(index, tf.int64)) for index in range(count)]
        return np.array([d[0].numpy() for d in picked]), np.array([bool(d[1]) for d in picked])

    # The draws as tensors, inside a traced graph: the path Dataset.map takes.
    for name, case in cases.items():
        image = tf.constant(inputs[f"image/{case['image']}"])
        noise = inputs.get(f"noise/{name}")
        out[f"graph/{name}"] = graph_apply(image, tf.constant(case["offset"]), tf.constant(case["flip"]),
                                           None if noise is None else tf.constant(noise)).numpy()
    # Sequential map, the epoch a dataset element too: the same images as augmented_samples' parallel map.
    augmenter = impl.sample_augmenter(ALL, batch.shape[1:], seed)
    dataset = tf.data.Dataset.from_tensor_slices((batch, np.array(indices, np.int64), np.full(len(batch), epoch)))
    out["sequential_map"] = np.stack([x.numpy() for x in dataset.map(lambda x, i, e: augmenter(x, e, i))])

for name, case in cases.items():
    noise = inputs.get(f"noise/{name}")
    out[f"apply/{name}"] = apply(inputs[f"image/{case['image']}"], case["offset"], case["flip"], noise)

samples = impl.augmented_samples
out["seeded/all"] = samples(batch, seed, epoch, indices, ALL)
out["seeded/again"] = samples(batch, seed, epoch, indices, ALL)
out["seeded/next_epoch"] = samples(batch, seed, epoch + 1, indices, ALL)
out["seeded/other_indices"] = samples(batch, seed, epoch, [i + 100 for i in indices], ALL)
out["seeded/alone"] = samples(batch[3:4], seed, epoch, indices[3:4], ALL)
out["seeded/off"] = samples(batch, seed, epoch, indices, "none")
out["seeded/noise"] = samples(batch, seed, epoch, indices, ("noise",))
for k, index in enumerate(indices):
    offset, flip, noise = draws(ALL, batch.shape[1:], index)
    out[f"draws/{k}/offset"], out[f"draws/{k}/flip"], out[f"draws/{k}/noise"] = np.array(offset), np.array(flip), noise
    offset, flip, _ = draws(("crop", "flip"), batch.shape[1:], index)
    out[f"draws_without_noise/{k}/offset"], out[f"draws_without_noise/{k}/flip"] = np.array(offset), np.array(flip)
for key in ("digits", "colour"):
    offsets, flips = offsets_and_flips(inputs[f"image/{key}"].shape, int(inputs["statistics_indices"]))
    out[f"statistics/{key}/offsets"], out[f"statistics/{key}/flips"] = offsets, flips
np.savez(directory / f"{framework}.npz", **out)
print("ok")
"""


@pytest.fixture(scope="module")
def frameworks(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    """Each framework's outputs on the cases and the seeded batch, from one process per framework."""
    directory = tmp_path_factory.mktemp("augment")
    (directory / "cases.json").write_text(json.dumps({
        name: {"image": key, "offset": list(draws.offset), "flip": draws.flip} for name, (key, _, draws) in CASES.items()
    }))
    np.savez(directory / "inputs.npz", seed=SEED, epoch=EPOCH, indices=np.array(INDICES), batch=BATCH,
             statistics_indices=STATISTICS_INDICES, **{f"image/{key}": image for key, image in IMAGES.items()},
             **{f"noise/{name}": draws.noise for name, (_, _, draws) in CASES.items() if draws.noise is not None})
    procs = {fw: subprocess.Popen([sys.executable, "-c", _PROBE, fw, str(directory)], cwd=REPO_ROOT, env=child_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for fw in FRAMEWORKS}
    for fw, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{fw} failed:\n{stderr[-4000:]}"
    return {fw: dict(np.load(Path(directory) / f"{fw}.npz")) for fw in FRAMEWORKS}


# The definition ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("", ()), ("none", ()), (None, ()), (" None ", ()), ([], ()),
    ("crop,flip", ("crop", "flip")), ("flip+crop", ("crop", "flip")), ("noise, crop", ("crop", "noise")),
    (["noise", "flip", "noise"], ("flip", "noise")), (("crop", "flip", "noise"), ALL), ("crop+flip+noise", ALL),
])
def test_parse_augment_keeps_the_defined_order_without_repeats(value, expected):
    assert parse_augment(value) == expected


@pytest.mark.parametrize("value, named", [
    ("blur", "'blur'"), ("crop,blur", "'blur'"), (["crop", "zoom"], "'zoom'"), ("crop,,flip", "''"),
    (["none"], "'none'"), (5, "5"), ({"crop"}, "{'crop'}"),
])
def test_parse_augment_errors_name_the_bad_value_and_the_choices(value, named):
    with pytest.raises(ValueError, match="crop, flip, noise|text or a list") as error:
        parse_augment(value)
    assert named in str(error.value)


def test_crop_padding_follows_the_height():
    assert [crop_padding(h) for h in (32, 28, 8, 4)] == [4, 3, 1, 1]


def test_describe_says_what_runs_with_its_parameters():
    assert describe("crop,flip,noise", (32, 32, 3)) == {
        "crop": "pad 4 px with zeros, random 32x32 crop", "flip": "horizontal, p=0.5", "noise": "Gaussian, std 0.05"}
    assert describe(["crop"], (8, 8, 1)) == {"crop": "pad 1 px with zeros, random 8x8 crop"}
    assert describe("none", (64,)) == {}
    with pytest.raises(ValueError, match=r"\(64,\)"):
        describe("flip", (64,))  # token sequences are not images


# The numpy reference ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key", list(IMAGES))
def test_crop_moves_the_content_by_the_offset_and_brings_in_zeros(key):
    image = IMAGES[key]
    height, width, _ = image.shape
    padding = crop_padding(height)
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            out = apply_numpy(image, Draws((dy, dx), False, None), ("crop",))
            expected = np.zeros_like(image)  # output (i, j) shows image (i + dy - P, j + dx - P), or zero outside
            shift_y, shift_x = dy - padding, dx - padding
            expected[max(0, -shift_y):height - max(0, shift_y), max(0, -shift_x):width - max(0, shift_x)] = \
                image[max(0, shift_y):height - max(0, -shift_y), max(0, shift_x):width - max(0, -shift_x)]
            assert np.array_equal(out, expected), (dy, dx)
    corner = apply_numpy(image, Draws((0, 0), False, None), ("crop",))
    assert not corner[:padding].any() and not corner[:, :padding].any()  # the zero border is there
    assert np.array_equal(apply_numpy(image, Draws((padding, padding), False, None), ("crop",)), image)
    with pytest.raises(ValueError, match=rf"\[0, {2 * padding}\].*\(0, {2 * padding + 1}\)"):
        apply_numpy(image, Draws((0, 2 * padding + 1), False, None), ("crop",))


@pytest.mark.parametrize("key", list(IMAGES))
def test_flip_mirrors_left_and_right(key):
    image = IMAGES[key]
    out = apply_numpy(image, Draws((0, 0), True, None), ("flip",))
    assert np.array_equal(out, image[:, ::-1]) and not np.array_equal(out, image)
    assert np.array_equal(apply_numpy(image, Draws((0, 0), False, None), ("flip",)), image)


def test_noise_has_the_std_asked():
    image = np.random.default_rng(1).random((96, 96, 3), dtype=np.float32)
    draws = draw_numpy(np.random.default_rng(2), image.shape, "noise")
    added = apply_numpy(image, draws, "noise") - image
    assert draws.noise.dtype == np.float32 and draws.noise.shape == image.shape
    assert abs(added.std() / NOISE_STD - 1) < 0.03 and abs(added.mean()) < 0.002


def test_draws_switched_off_are_neutral_and_offsets_cover_zero_to_2p():
    rng = np.random.default_rng(0)
    off = draw_numpy(rng, (32, 32, 3), "none")
    assert off.offset == (4, 4) and off.flip is False and off.noise is None
    on = [draw_numpy(rng, (32, 32, 3), "crop,flip") for _ in range(400)]
    assert {v for d in on for v in d.offset} == set(range(9))
    assert 0.4 < np.mean([d.flip for d in on]) < 0.6
    # Noise is drawn last: switching it on or off leaves the crop and the flip as they were.
    with_noise, without = (draw_numpy(sample_rng(1, 2, 3), (32, 32, 3), a) for a in (ALL, "crop,flip"))
    assert with_noise.offset == without.offset and with_noise.flip == without.flip


def test_switched_off_is_the_identity():
    image = IMAGES["colour"]
    draws = Draws((0, 8), True, np.ones(image.shape, np.float32))
    assert np.array_equal(apply_numpy(image, draws, ()), image)
    assert augment_batch_numpy(BATCH, SEED, EPOCH, INDICES, "none") is BATCH


def test_the_batch_path_is_the_reference_per_sample_whatever_the_batch():
    x = np.concatenate([BATCH] * 5)
    indices = np.arange(len(x)) * 3 + 1
    out = augment_batch_numpy(x, SEED, EPOCH, indices, ALL)
    for k, index in enumerate(indices):
        draws = draw_numpy(sample_rng(SEED, EPOCH, index), x.shape[1:], ALL)
        assert np.array_equal(out[k], apply_numpy(x[k], draws, ALL)), k
    order = np.random.default_rng(0).permutation(len(x))  # another order, other batch sizes: the same samples
    assert np.array_equal(augment_batch_numpy(x[order], SEED, EPOCH, indices[order], ALL), out[order])
    assert np.array_equal(np.concatenate([augment_batch_numpy(x[lo:lo + 7], SEED, EPOCH, indices[lo:lo + 7], ALL)
                                          for lo in range(0, len(x), 7)]), out)
    for augment in ("crop", "flip", "noise", "crop,noise"):
        part = augment_batch_numpy(x, SEED, EPOCH, indices, augment)
        for k in (0, 7, 29):
            draws = draw_numpy(sample_rng(SEED, EPOCH, indices[k]), x.shape[1:], augment)
            assert np.array_equal(part[k], apply_numpy(x[k], draws, augment)), (augment, k)


def test_the_batch_path_is_seeded_by_seed_epoch_and_index():
    out = augment_batch_numpy(BATCH, SEED, EPOCH, INDICES, ALL)
    assert np.array_equal(augment_batch_numpy(BATCH, SEED, EPOCH, INDICES, ALL), out)
    for other in (augment_batch_numpy(BATCH, SEED, EPOCH + 1, INDICES, ALL),
                  augment_batch_numpy(BATCH, SEED + 1, EPOCH, INDICES, ALL),
                  augment_batch_numpy(BATCH, SEED, EPOCH, [i + 1 for i in INDICES], ALL)):
        assert all(not np.array_equal(a, b) for a, b in zip(other, out))
    assert augment_batch_numpy(BATCH[:0], SEED, EPOCH, [], ALL).shape == (0, 32, 32, 3)
    with pytest.raises(ValueError, match="6 images"):
        augment_batch_numpy(BATCH, SEED, EPOCH, INDICES[:5], ALL)


# PyTorch and TensorFlow against the reference ----------------------------------------------------------

@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", list(CASES))
def test_each_framework_transforms_a_fixed_image_as_numpy_does(frameworks, framework, name):
    key, augment, draws = CASES[name]
    expected = apply_numpy(IMAGES[key], draws, augment)
    paths = ["apply"] + (["graph"] if framework == "tensorflow" else [])
    for path in paths:
        got = frameworks[framework][f"{path}/{name}"]
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-6, f"{framework} {path}"
    if draws.offset != (crop_padding(IMAGES[key].shape[0]),) * 2 or draws.flip or draws.noise is not None:
        assert not np.array_equal(expected, IMAGES[key])  # not vacuous: something happened


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_each_framework_s_own_draws_give_the_reference_image(frameworks, framework):
    """The seeded per-sample path (Dataset.__getitem__, Dataset.map) equals numpy's apply on that framework's draws."""
    out = frameworks[framework]
    for k in range(len(BATCH)):
        draws = Draws(tuple(int(v) for v in out[f"draws/{k}/offset"]), bool(out[f"draws/{k}/flip"]),
                      out[f"draws/{k}/noise"])
        assert np.abs(out["seeded/all"][k] - apply_numpy(BATCH[k], draws, ALL)).max() <= 1e-6, k
        # Switching noise off leaves the crop and the flip drawn as they were.
        assert np.array_equal(out[f"draws_without_noise/{k}/offset"], out[f"draws/{k}/offset"])
        assert out[f"draws_without_noise/{k}/flip"] == out[f"draws/{k}/flip"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_each_framework_is_seeded_by_seed_epoch_and_index(frameworks, framework):
    out = frameworks[framework]
    assert np.array_equal(out["seeded/again"], out["seeded/all"])
    assert np.array_equal(out["seeded/alone"][0], out["seeded/all"][3])  # not by batch
    for other in ("seeded/next_epoch", "seeded/other_indices"):
        assert all(not np.array_equal(a, b) for a, b in zip(out[other], out["seeded/all"])), other
    assert np.array_equal(out["seeded/off"], BATCH)
    added = out["seeded/noise"] - BATCH
    assert abs(added.std() / NOISE_STD - 1) < 0.05 and abs(added.mean()) < 0.003
    if framework == "torch":  # DataLoader workers draw what the main process draws
        assert np.array_equal(out["loader/0"], out["seeded/all"]) and np.array_equal(out["loader/2"], out["seeded/all"])
    else:  # a parallel map and a sequential one, the epoch a tensor in the latter
        assert np.array_equal(out["sequential_map"], out["seeded/all"])


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("key", list(IMAGES))
def test_each_framework_draws_offsets_over_zero_to_2p_and_flips_half(frameworks, framework, key):
    padding = crop_padding(IMAGES[key].shape[0])
    offsets = frameworks[framework][f"statistics/{key}/offsets"]
    assert set(offsets.ravel().tolist()) == set(range(2 * padding + 1))
    assert 0.4 < frameworks[framework][f"statistics/{key}/flips"].mean() < 0.6
