"""Matrix launch: every combination of frameworks x modes x precisions x seeds, or a named error."""
import pytest

from engine.matrix import MAX_MATRIX_RUNS, expand, parse_seeds
from engine.spec import SpecError

BASE = dict(model="mlp", dataset="digits", epochs=2, batch_size=None)


def test_modes_apply_to_the_frameworks_that_have_them():
    specs = expand(BASE, ["torch", "tensorflow"], ["eager", "compiled", "xla"], ["fp32", "mixed"], [0, 1])
    combos = {(s.framework, s.mode, s.precision, s.seed) for s in specs}
    assert len(specs) == len(combos) == (2 + 2) * 2 * 2
    assert ("torch", "compiled", "mixed", 1) in combos and ("tensorflow", "xla", "fp32", 0) in combos
    assert not any(s.framework == "tensorflow" and s.mode == "compiled" for s in specs)
    # Shared settings and model defaults reach every run.
    assert {(s.epochs, s.batch_size, s.lr) for s in specs} == {(2, 32, 1e-3)}


def test_a_mode_can_name_its_framework():
    specs = expand(BASE, ["torch", "tensorflow"], ["torch:eager", "tensorflow:graph", "xla"], ["fp32"], [0])
    assert [(s.framework, s.mode) for s in specs] == [("torch", "eager"), ("tensorflow", "graph"),
                                                      ("tensorflow", "xla")]
    with pytest.raises(SpecError, match=r"modes='torch:xla': expected framework:mode"):
        expand(BASE, ["torch"], ["torch:xla"], ["fp32"], [0])


def test_default_modes_are_each_frameworks_own():
    specs = expand(BASE, ["torch", "tensorflow"], None, ["fp32"], [0])
    assert [(s.framework, s.mode) for s in specs] == [("torch", "eager"), ("tensorflow", "graph")]


@pytest.mark.parametrize(
    "frameworks, modes, precisions, seeds, message",
    [
        (["torch"], ["xla"], ["fp32"], [0], r"modes=\['xla'\]: none is a torch mode \(eager, compiled\)"),
        (["torch"], ["turbo"], ["fp32"], [0], r"modes='turbo': expected some of"),
        (["jax"], None, ["fp32"], [0], r"frameworks='jax'"),
        ([], None, ["fp32"], [0], r"frameworks=\[\]: choose at least one"),
        (["torch"], None, ["fp4"], [0], r"precisions='fp4'"),
        (["torch"], None, ["fp32"], [1, 1], r"seeds=\[1, 1\]: a seed is listed twice"),
        (["torch", "tensorflow"], None, ["fp32", "mixed"], list(range(60)), r"matrix=240: at most 200 runs"),
    ],
)
def test_bad_matrices_are_named(frameworks, modes, precisions, seeds, message):
    with pytest.raises(SpecError, match=message):
        expand(BASE, frameworks, modes, precisions, seeds)


def test_a_bad_shared_setting_fails_before_anything_is_built():
    with pytest.raises(SpecError, match=r"epochs=0"):
        expand(dict(BASE, epochs=0), ["torch"], None, ["fp32"], [0])


@pytest.mark.parametrize("text, seeds", [("0", [0]), ("0-4", [0, 1, 2, 3, 4]), ("0, 3,7", [0, 3, 7]),
                                         ("2-3,9", [2, 3, 9])])
def test_seed_text(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text, message", [("", r"name at least one seed"), ("a-b", r"seeds='a-b'"),
                                           ("4-1", r"seeds='4-1': a range must go up"), ("1.5", r"seeds='1.5'"),
                                           ("-3", r"seeds=-3: must be in"),
                                           ("0-100000", f"more than {MAX_MATRIX_RUNS} seeds")])
def test_bad_seed_text_is_named(text, message):
    with pytest.raises(SpecError, match=message):
        parse_seeds(text)
