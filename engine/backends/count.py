"""`python -m engine.backends.count FRAMEWORK`: trainable parameters of every model, built for real.

Prints one JSON object {"model/dataset": parameters}, each model built on the input shape a run
spec gives it (synthetic datasets take the model's default shape). Runs in its own process
because torch and tensorflow must not share one.
"""
from __future__ import annotations

import importlib
import json
import sys

from engine.catalog import FRAMEWORKS, MODELS
from engine.spec import RunSpec


def count(framework: str) -> dict[str, int]:
    """{"model/dataset": trainable parameters} as the framework builds them."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r}: expected one of {', '.join(FRAMEWORKS)}")
    zoo = importlib.import_module(f"engine.backends.{framework}_models")
    counts, by_shape = {}, {}
    for model in MODELS.values():
        for dataset in model.datasets:
            spec = RunSpec(framework=framework, model=model.name, dataset=dataset)
            key = (model.name, spec.input_shape(), spec.num_outputs())
            if key not in by_shape:  # datasets of one shape share a build (mnist, fashion_mnist, ...)
                by_shape[key] = zoo.trainable_parameter_count(zoo.build_model(*key))
            counts[f"{model.name}/{dataset}"] = by_shape[key]
    return counts


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in FRAMEWORKS:
        print(f"usage: python -m engine.backends.count {{{','.join(FRAMEWORKS)}}}; got {argv!r}", file=sys.stderr)
        return 2
    print(json.dumps(count(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
