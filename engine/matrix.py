"""Matrix launch: frameworks x modes x precisions x seeds from one set of settings, as one group."""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Optional, Sequence

from engine.catalog import FRAMEWORKS, MODES, PRECISIONS, framework_installed, framework_label
from engine.spec import TF_STRATEGIES, RunSpec, SpecError

MAX_MATRIX_RUNS = 200  # a typo like 1000 seeds should be an error, not a day of queued work


def expand(
    base: dict[str, Any],
    frameworks: Sequence[str],
    modes: Optional[Sequence[str]] = None,
    precisions: Sequence[str] = ("fp32",),
    seeds: Sequence[int] = (0,),
) -> list[RunSpec]:
    """Every combination as a validated spec, framework-major; modes apply to the frameworks that have them.

    base holds the shared settings (model, dataset, hyper-parameters, ...); None values take the
    model's defaults. modes=None gives each framework its default mode.
    """
    frameworks = _distinct("frameworks", frameworks, FRAMEWORKS)
    check_installed(frameworks)
    precisions = _distinct("precisions", precisions, PRECISIONS)
    if not seeds:
        raise SpecError("seeds", list(seeds), "name at least one seed")
    if len(set(seeds)) != len(seeds):
        raise SpecError("seeds", list(seeds), "a seed is listed twice")
    if modes is not None:
        known = sorted({m for fw in FRAMEWORKS for m in MODES[fw]})
        for mode in modes:
            framework, _, name = mode.rpartition(":")
            if framework and (framework not in FRAMEWORKS or name not in MODES[framework]):
                raise SpecError("modes", mode, f"expected framework:mode, like torch:{MODES['torch'][0]}")
            if name not in known:
                raise SpecError("modes", mode, f"expected some of {', '.join(known)}")
    modes_per_framework = {}
    for framework in frameworks:
        chosen = [None] if modes is None else [
            m for m in MODES[framework] if m in modes or f"{framework}:{m}" in modes]
        if not chosen:
            raise SpecError("modes", list(modes or []),
                            f"none is a {framework} mode ({', '.join(MODES[framework])})")
        modes_per_framework[framework] = chosen
    total = sum(len(m) for m in modes_per_framework.values()) * len(precisions) * len(seeds)
    if total > MAX_MATRIX_RUNS:
        raise SpecError("matrix", total, f"at most {MAX_MATRIX_RUNS} runs at once")
    shared = dict(base)
    framework_free = {k: v for k, v in shared.items() if k not in ("framework", "mode", "precision", "seed")}
    model, dataset = framework_free.pop("model"), framework_free.pop("dataset")
    specs = []
    for framework in frameworks:
        for mode in modes_per_framework[framework]:
            for precision in precisions:
                for seed in seeds:
                    specs.append(RunSpec.with_model_defaults(
                        framework, model, dataset, mode=mode, precision=precision, seed=seed, **framework_free
                    ))
    return specs


def with_tf_strategy(specs: Sequence[RunSpec], strategy: Optional[str]) -> list[RunSpec]:
    """The specs with TensorFlow's multi-worker strategy set where it applies (TensorFlow, 2 or more workers), so a
    matrix of both frameworks or of 1, 2, 4 workers can ask for it; where it applies nowhere, an error."""
    if strategy is None:
        return list(specs)
    if strategy not in TF_STRATEGIES:
        raise SpecError("tf_strategy", strategy, f"expected one of {', '.join(TF_STRATEGIES)}")
    applies = [spec.framework == "tensorflow" and spec.workers > 1 for spec in specs]
    if strategy != TF_STRATEGIES[0] and not any(applies):
        raise SpecError("tf_strategy", strategy, "applies to TensorFlow runs of 2 or more workers; none is asked for")
    return [dataclasses.replace(spec, tf_strategy=strategy) if apply else spec for spec, apply in zip(specs, applies)]


def check_installed(frameworks: Sequence[str]) -> None:
    """Raise SpecError naming a framework this Python cannot import: its runs would fail in the runner."""
    for framework in frameworks:
        if not framework_installed(framework):
            raise SpecError("framework", framework,
                            f"{framework_label(framework)} is not installed in this Python ({sys.executable}); "
                            f"install it with `pip install -r requirements.txt`, or choose another framework")


def parse_seeds(text: str) -> list[int]:
    """'0-4' or '0, 3, 7' or '5' -> seeds; raises SpecError naming the bad part."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        low_text, _, high_text = part.partition("-") if "-" in part[1:] else (part, "", part)
        try:
            low, high = int(low_text), int(high_text)
        except ValueError:
            raise SpecError("seeds", part, "expected whole numbers like '0-4' or '0, 3, 7'") from None
        if high < low:
            raise SpecError("seeds", part, "a range must go up, like 0-4")
        seeds.extend(range(low, min(high, low + MAX_MATRIX_RUNS) + 1))
        if len(seeds) > MAX_MATRIX_RUNS:
            raise SpecError("seeds", text, f"more than {MAX_MATRIX_RUNS} seeds")
    if not seeds:
        raise SpecError("seeds", text, "name at least one seed, like '0' or '0-4'")
    for seed in seeds:
        if seed < 0 or seed > 2**31 - 1:
            raise SpecError("seeds", seed, "must be in 0..2147483647")
    return seeds


def _distinct(name: str, values: Sequence[str], choices: Sequence[str]) -> list[str]:
    values = list(values)
    if not values:
        raise SpecError(name, values, f"choose at least one of {', '.join(choices)}")
    for value in values:
        if value not in choices:
            raise SpecError(name, value, f"expected one of {', '.join(choices)}")
    return list(dict.fromkeys(values))
