"""Load a .tflite flatbuffer with LiteRT's interpreter (ai_edge_litert), without importing TensorFlow.

The artifacts have a free batch dimension; an interpreter is resized and allocated once per batch size
and kept, so alternating sizes (a full batch, then the last partial one) never reallocate.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from ai_edge_litert.interpreter import Interpreter

FORMATS = ("tflite", "tflite_int8")


def load(fmt: str, path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """predict(x) -> float32 logits; each batch size gets its own interpreter with num_threads=threads."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one LiteRT loads: expected one of {', '.join(FORMATS)}")
    if threads < 1:
        raise ValueError(f"threads={threads}: expected at least 1")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LiteRT model at {path}")
    interpreters: dict[int, tuple[Interpreter, int, int]] = {}

    def for_batch(size: int) -> tuple[Interpreter, int, int]:
        if size not in interpreters:
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
            if len(inputs) != 1 or len(outputs) != 1:
                raise ValueError(f"{path}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
            shape = list(inputs[0]["shape_signature"])
            # strict: only the dimension the model declares free (-1) may change.
            interpreter.resize_tensor_input(inputs[0]["index"], [size] + shape[1:], strict=True)
            interpreter.allocate_tensors()
            interpreters[size] = (interpreter, inputs[0]["index"], outputs[0]["index"])
        return interpreters[size]

    def predict(x: np.ndarray) -> np.ndarray:
        interpreter, input_index, output_index = for_batch(len(x))
        interpreter.set_tensor(input_index, x)
        interpreter.invoke()
        return interpreter.get_tensor(output_index)  # a copy: the next invoke cannot overwrite it

    return predict
