"""What Arena can train: models and datasets, described without importing a framework.

The backends implement every model listed here; the spec, the CLI and the Launch page read
this catalog to validate choices and pick sensible defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field

FRAMEWORKS: tuple[str, ...] = ("torch", "tensorflow")
FRAMEWORK_LABELS: dict[str, str] = {"torch": "PyTorch", "tensorflow": "TensorFlow"}
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: str  # "classification" | "regression"
    input_shape: tuple[int, ...]
    num_outputs: int
    train_size: int
    test_size: int
    description: str


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    datasets: tuple[str, ...]
    # Defaults that reach the quality bar on the bundled data (see README): the Launch form and
    # the CLI start from these, so a first run is a meaningful one.
    defaults: dict = field(default_factory=dict)


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        name="digits",
        task="classification",
        input_shape=(8, 8, 1),
        num_outputs=10,
        train_size=1437,  # 1,797 images, stratified 80/20 split
        test_size=360,
        description="scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)",
    ),
    "powerlaw": DatasetInfo(
        name="powerlaw",
        task="regression",
        input_shape=(1,),
        num_outputs=1,
        train_size=800,
        test_size=200,
        description="samples of f(x) = x^phi on (0, 1]; the model learns phi",
    ),
}

MODELS: dict[str, ModelInfo] = {
    "mlp": ModelInfo(
        name="mlp",
        description="multi-layer perceptron 64-128-10, ReLU",
        datasets=("digits",),
        defaults={"epochs": 20, "batch_size": 32, "lr": 1e-3, "optimizer": "adam"},
    ),
    "cnn": ModelInfo(
        name="cnn",
        description="conv3x3(32) - conv3x3(64) - maxpool 2x2 - dense 128 - dense 10",
        datasets=("digits",),
        defaults={"epochs": 20, "batch_size": 32, "lr": 1e-3, "optimizer": "adam"},
    ),
    "powerlaw": ModelInfo(
        name="powerlaw",
        description="one scalar parameter phi: y = x^phi",
        datasets=("powerlaw",),
        # Adam moves phi by about lr per step; 0.05 covers the 1.0 -> phi_true gap in a few
        # hundred steps and still settles to within 1e-3.
        defaults={"epochs": 20, "batch_size": 32, "lr": 0.05, "optimizer": "adam"},
    ),
}

# Parameter counts per model and input shape: the backends assert they build exactly this,
# so the two frameworks cannot drift apart silently.
EXPECTED_PARAM_COUNTS: dict[tuple[str, str], int] = {
    ("mlp", "digits"): 9_610,
    ("cnn", "digits"): 151_306,
    ("powerlaw", "powerlaw"): 1,
}


def framework_label(framework: str) -> str:
    """Human name of a framework id ("torch" -> "PyTorch")."""
    return FRAMEWORK_LABELS.get(framework, framework)
