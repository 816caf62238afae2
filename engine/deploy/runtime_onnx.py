"""Load an ONNX artifact (from either framework's exporter) into ONNX Runtime; imports onnxruntime, neither framework.

Imported only in a process that measures an ONNX file, so torch's and TensorFlow's ONNX files run in
the same runtime, with the same settings, and neither framework is in the process.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime

FORMATS = ("onnx",)


def load(fmt: str, path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """Load the artifact with intra-op threads = threads (inter-op 1, sequential) and return predict(x) -> logits."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one ONNX Runtime loads: expected one of {', '.join(FORMATS)}")
    if threads < 1:
        raise ValueError(f"threads={threads}: expected at least 1")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ValueError(f"{path}: expected one input, the graph has {[i.name for i in inputs]}")
    # The names differ between exporters (torch.onnx: "input"/"logits"; tf2onnx: the Keras names): read them.
    input_name, output_name = inputs[0].name, outputs[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run([output_name], {input_name: x})[0]

    return predict
