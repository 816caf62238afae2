"""`python -m engine.backends.count FRAMEWORK`: parameter count of every model, built for real.

Runs in its own process because torch and tensorflow must not share one.
"""
import json
import sys

from engine.backends import get_backend
from engine.catalog import DATASETS, MODELS
from engine.weights import initial_weights


def count(framework: str) -> dict[str, int]:
    """{"model/dataset": parameters} as the framework builds them."""
    backend = get_backend(framework, "cpu")
    counts = {}
    for model in MODELS.values():
        for dataset in model.datasets:
            info = DATASETS[dataset]
            weights = initial_weights(model.name, info.input_shape, info.num_outputs, seed=0)
            counts[f"{model.name}/{dataset}"] = backend.build(
                model.name, info.task, weights, info.input_shape, info.num_outputs, "sgd", 0.1, 0
            )
    return counts


if __name__ == "__main__":
    print(json.dumps(count(sys.argv[1])))
