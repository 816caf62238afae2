"""What both frameworks' format tests share: the small zoo shapes, the batch sizes, the canonical inputs."""
from __future__ import annotations

import numpy as np

from engine.catalog import SYNTHETIC_TEXT_VOCAB
from engine.weights import input_kind

# Small shapes: sklearn digits' 8x8x1 images, 16 tokens.
SHAPES = {"mlp": ((8, 8, 1), 10), "cnn": ((8, 8, 1), 10), "mnist_cnn": ((8, 8, 1), 10), "resnet": ((8, 8, 1), 10),
          "lstm": ((16,), 10), "transformer": ((16,), 10), "powerlaw": ((1,), 1)}
BATCHES = (1, 8, 32, 128, 5)  # 5: a last, partial batch
PARITY_SAMPLES = 64
# Modules a loading process may hold: each runtime process must hold its own only.
FRAMEWORKS = {"torch", "tensorflow", "keras", "onnxruntime", "ai_edge_litert"}


def inputs(model: str, samples: int = max(BATCHES)) -> np.ndarray:
    """Canonical host inputs for the model: NHWC images in [0, 1), token ids, positive scalars."""
    rng = np.random.default_rng(7)
    shape = SHAPES[model][0]
    if input_kind(model) == "tokens":
        return rng.integers(0, SYNTHETIC_TEXT_VOCAB, (samples, *shape))
    return rng.random((samples, *shape), dtype=np.float32) + (0.5 if model == "powerlaw" else 0.0)
