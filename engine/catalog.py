"""What Arena can train: models, datasets and run settings, described without importing a framework.

The backends implement every model listed here; the spec, the CLI and the Launch page read
this catalog to validate choices and pick sensible defaults.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Optional

FRAMEWORKS: tuple[str, ...] = ("torch", "tensorflow")
FRAMEWORK_LABELS: dict[str, str] = {"torch": "PyTorch", "tensorflow": "TensorFlow"}
# The package each framework's backend imports (in the runner, never here).
FRAMEWORK_MODULES: dict[str, str] = {"torch": "torch", "tensorflow": "tensorflow"}
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam")

# Execution modes per framework. The first is the default: each framework's usual way to run a
# training step you write yourself (PyTorch eager; TensorFlow a tf.function, as Keras's fit does).
MODES: dict[str, tuple[str, ...]] = {
    "torch": ("eager", "compiled"),
    "tensorflow": ("graph", "eager", "xla", "fit"),
}
MODE_LABELS: dict[str, str] = {
    "eager": "eager",
    "compiled": "torch.compile",
    "graph": "tf.function (graph)",
    "xla": "tf.function + XLA (jit_compile)",
    "fit": "Keras model.fit",
}
# Modes that need the native input pipeline: model.fit trains over a tf.data dataset.
NATIVE_PIPELINE_MODES: tuple[str, ...] = ("fit",)
# Where batches come from. "arrays": one numpy pipeline feeds both frameworks the same device arrays
# (the step compared alone). "native": each framework's own loader, PyTorch's DataLoader against tf.data.
PIPELINES: tuple[str, ...] = ("arrays", "native")
MAX_LOADER_WORKERS = 16
PRECISIONS: tuple[str, ...] = ("fp32", "mixed")
# channels_last is the default for both: the one layout both frameworks run on every device
# (TensorFlow's CPU convolutions are NHWC-only), so the default comparison is like for like.
LAYOUTS: tuple[str, ...] = ("channels_last", "channels_first")

SYNTHETIC_DEFAULT_SIZE = 4096  # training samples; the test split is a quarter of it
SYNTHETIC_TEXT_VOCAB = 64  # token ids 0..63; the rule lives in tokens 1..num_classes


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: str  # "classification" | "regression"
    input_shape: tuple[int, ...]  # default shape; synthetic datasets take one from the spec
    num_outputs: int
    train_size: int
    test_size: int
    description: str
    kind: str = "bundled"  # "bundled" | "generated" | "synthetic" | "file"
    modality: str = "image"  # "image" | "sequence" | "scalar"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    datasets: tuple[str, ...]
    # Defaults that reach the quality bar on the bundled data (see README): the Launch form and
    # the CLI start from these, so a first run is a meaningful one.
    defaults: dict = field(default_factory=dict)
    conv: bool = False  # has convolutions: the data layout setting applies
    # Input shape used for synthetic data when the spec names none.
    synthetic_shape: Optional[str] = None


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        name="digits", task="classification", input_shape=(8, 8, 1), num_outputs=10,
        train_size=1437, test_size=360,  # 1,797 images, stratified 80/20 split
        description="scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)",
    ),
    "powerlaw": DatasetInfo(
        name="powerlaw", task="regression", input_shape=(1,), num_outputs=1,
        train_size=800, test_size=200,
        description="samples of f(x) = x^phi on (0, 1]; the model learns phi",
        kind="generated", modality="scalar",
    ),
    "synthetic_images": DatasetInfo(
        name="synthetic_images", task="classification", input_shape=(32, 32, 3), num_outputs=10,
        train_size=SYNTHETIC_DEFAULT_SIZE, test_size=SYNTHETIC_DEFAULT_SIZE // 4,
        description="generated images of a declared shape: one noisy template per class (learnable)",
        kind="synthetic",
    ),
    "synthetic_text": DatasetInfo(
        name="synthetic_text", task="classification", input_shape=(32,), num_outputs=10,
        train_size=SYNTHETIC_DEFAULT_SIZE, test_size=SYNTHETIC_DEFAULT_SIZE // 4,
        description="generated token sequences; the class is the marker token that occurs most often",
        kind="synthetic", modality="sequence",
    ),
    "mnist": DatasetInfo(
        name="mnist", task="classification", input_shape=(28, 28, 1), num_outputs=10,
        train_size=60000, test_size=10000,
        description="MNIST handwritten digits, 28x28 (IDX files in the data directory)",
        kind="file",
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist", task="classification", input_shape=(28, 28, 1), num_outputs=10,
        train_size=60000, test_size=10000,
        description="Fashion-MNIST clothing images, 28x28 (IDX files in the data directory)",
        kind="file",
    ),
    "cifar10": DatasetInfo(
        name="cifar10", task="classification", input_shape=(32, 32, 3), num_outputs=10,
        train_size=50000, test_size=10000,
        description="CIFAR-10 colour images, 32x32 (the binary version in the data directory)",
        kind="file",
    ),
}

_IMAGE_SETS = ("digits", "mnist", "fashion_mnist", "cifar10", "synthetic_images")
_ADAM = {"epochs": 20, "batch_size": 32, "lr": 1e-3, "optimizer": "adam"}

MODELS: dict[str, ModelInfo] = {
    "mlp": ModelInfo(
        name="mlp", description="multi-layer perceptron: flatten - dense 128 - dense N, ReLU",
        datasets=_IMAGE_SETS, defaults=dict(_ADAM, target_accuracy=0.95), synthetic_shape="28x28x1",
    ),
    "cnn": ModelInfo(
        name="cnn", description="conv3x3(32) - conv3x3(64) - maxpool 2x2 - dense 128 - dense N",
        datasets=_IMAGE_SETS, defaults=dict(_ADAM, target_accuracy=0.95), conv=True,
        synthetic_shape="28x28x1",
    ),
    "mnist_cnn": ModelInfo(
        name="mnist_cnn",
        description="the PyTorch examples' MNIST network: conv 32 - conv 64 - maxpool - dropout 0.25 - "
                    "dense 128 - dropout 0.5 - dense 10 (1,199,882 parameters on 28x28x1)",
        datasets=_IMAGE_SETS, defaults=dict(_ADAM, epochs=10, batch_size=64, target_accuracy=0.95), conv=True,
        synthetic_shape="28x28x1",
    ),
    "resnet": ModelInfo(
        name="resnet",
        description="ResNet-20 for CIFAR: conv 16, 3 stages x 3 basic blocks (16/32/64), batch norm, "
                    "parameter-free shortcuts, global average pool, dense N",
        datasets=_IMAGE_SETS, defaults=dict(_ADAM, epochs=10, batch_size=64, target_accuracy=0.9), conv=True,
        synthetic_shape="32x32x3",
    ),
    "lstm": ModelInfo(
        name="lstm", description="embedding 32 - LSTM 64 - dense N: a sequence classifier",
        datasets=("synthetic_text",), defaults=dict(_ADAM, epochs=10, batch_size=64, target_accuracy=0.9),
        synthetic_shape="32",
    ),
    "transformer": ModelInfo(
        name="transformer",
        description="tiny encoder-only classifier: embedding 32 + sinusoidal positions, 2 post-norm layers "
                    "(2 heads, feed-forward 64), mean pool, dense N",
        datasets=("synthetic_text",), defaults=dict(_ADAM, epochs=10, batch_size=64, target_accuracy=0.9),
        synthetic_shape="32",
    ),
    "powerlaw": ModelInfo(
        name="powerlaw", description="one scalar parameter phi: y = x^phi",
        datasets=("powerlaw",),
        # Adam moves phi by about lr per step; 0.05 covers the 1.0 -> phi_true gap in a few
        # hundred steps and still settles to within 1e-3.
        defaults={"epochs": 20, "batch_size": 32, "lr": 0.05, "optimizer": "adam"},
    ),
}

# Parameter counts the README quotes; tests check both frameworks build exactly these.
EXPECTED_PARAM_COUNTS: dict[tuple[str, str], int] = {
    ("mlp", "digits"): 9_610,
    ("cnn", "digits"): 151_306,
    ("mnist_cnn", "mnist"): 1_199_882,
    ("resnet", "cifar10"): 269_722,
    ("lstm", "synthetic_text"): 27_530,
    ("transformer", "synthetic_text"): 19_466,
    ("powerlaw", "powerlaw"): 1,
}


def framework_label(framework: str) -> str:
    """Human name of a framework id ("torch" -> "PyTorch")."""
    return FRAMEWORK_LABELS.get(framework, framework)


def default_mode(framework: str) -> str:
    """The mode a run of this framework gets when the spec names none."""
    return MODES[framework][0]


def framework_installed(framework: str) -> bool:
    """Whether this Python can import the framework, found without importing it (that takes seconds)."""
    try:
        return importlib.util.find_spec(FRAMEWORK_MODULES[framework]) is not None
    except (ImportError, ValueError):  # a broken install; find_spec raises rather than answer
        return False
