"""Load a SavedModel's "serving_default" signature (what TF Serving loads) with TensorFlow, and nothing else.

Imported only in the process that measures a SavedModel: it imports TensorFlow at the top.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

FORMATS = ("savedmodel",)
SIGNATURE = "serving_default"


def load(fmt: str, path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """predict(x) -> float32 logits through the serving signature; intra-op threads = threads, inter-op 1."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one TensorFlow's runtime loads: expected one of {', '.join(FORMATS)}")
    _set_threads(threads)
    loaded = tf.saved_model.load(str(path))
    if SIGNATURE not in loaded.signatures:
        raise ValueError(f"{path} has no {SIGNATURE!r} signature: it has {sorted(loaded.signatures)}")
    signature = loaded.signatures[SIGNATURE]
    (input_name, spec), = signature.structured_input_signature[1].items()
    (output_name,) = signature.structured_outputs

    def predict(x: np.ndarray) -> np.ndarray:
        outputs = signature(**{input_name: tf.convert_to_tensor(x, dtype=spec.dtype)})
        return outputs[output_name].numpy()

    predict.saved_model = loaded  # a signature holds only weak references to the variables: keep their owner
    return predict


def _set_threads(threads: int) -> None:
    """Thread pools are fixed when TensorFlow runs its first op: set them before, or say why it is too late."""
    if threads < 1:
        raise ValueError(f"threads={threads}: expected at least 1")
    if (tf.config.threading.get_intra_op_parallelism_threads() == threads
            and tf.config.threading.get_inter_op_parallelism_threads() == 1):
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError as error:
        raise RuntimeError(f"threads={threads}: TensorFlow already ran an op in this process with other thread "
                           f"pools; load a SavedModel in a fresh process") from error
