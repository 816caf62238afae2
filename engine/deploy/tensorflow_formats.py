"""Export a Keras model (TensorFlow backend) as a SavedModel, LiteRT flatbuffers (fp32 and int8) and ONNX.

The mirror image of torch_formats.py, same function order; runs in a process that imports TensorFlow only.
Every artifact takes one input named "inputs" with a free batch dimension, in to_input's layout (images
NHWC float32, tokens (N, T) int32, powerlaw (N, 1) float32), and returns one output named "logits".
The SavedModel serves them as its "serving_default" signature (what TF Serving loads); the LiteRT files
keep that signature; the ONNX graph names its batch dimension "batch".
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import weakref
from importlib import metadata
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from engine.backends import tensorflow_models
from engine.deploy import formats
from engine.deploy.formats import NotExportable
from engine.weights import input_kind

FORMATS: tuple[str, ...] = formats.names("tensorflow")
INPUT_NAME = "inputs"
OUTPUT_NAME = "logits"
SIGNATURE = "serving_default"
# The newest opset tf2onnx 1.17 knows (its default is 15); ONNX Runtime runs it.
ONNX_OPSET = 18
# What the TFLite converter says when a graph needs TensorFlow kernels outside LiteRT's builtins (the
# TensorList ops of a while loop, ops with no TFLite kernel); its error codes read UNKNOWN for these.
_NEEDS_TF_KERNELS = ("Select TF ops", "flex op", "custom op")
_SAVED_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {key: TemporaryDirectory}


def build(model: str, input_shape: tuple[int, ...], num_outputs: int, weights: dict[str, np.ndarray]) -> keras.Model:
    """The trained model in inference mode, fp32, on the CPU, from canonical weights (every call passes training=False)."""
    policy = keras.config.dtype_policy().name
    if policy != "float32":
        raise ValueError(f"keras dtype policy {policy!r}: deployment exports the fp32 model, set float32 first")
    with tf.device("/CPU:0"):
        module = tensorflow_models.build_model(model, tuple(input_shape), num_outputs, data_format="channels_last")
        tensorflow_models.load_canonical(module, model, weights)
    return module


def to_input(model: str, x: np.ndarray) -> np.ndarray:
    """Canonical host arrays -> the artifacts' input: images NHWC float32, token ids int32 (as keras.Input declares)."""
    dtype = np.int32 if input_kind(model) == "tokens" else np.float32
    return np.ascontiguousarray(x, dtype=dtype)


def reference_outputs(module: keras.Model, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """The model's own eager fp32 outputs (training=False: dropout off, batch norm on its moving statistics)."""
    with tf.device("/CPU:0"):
        parts = [np.asarray(module(x[start:start + batch_size], training=False), dtype=np.float32)
                 for start in range(0, len(x), batch_size)]
    return np.concatenate(parts)


def export(fmt: str, module: keras.Model, model: str, example: np.ndarray, directory: Path) -> Path:
    """Write one artifact into directory and return its path; NotExportable names what the format cannot express."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of tensorflow's: expected one of {', '.join(FORMATS)}")
    path = Path(directory) / formats.get("tensorflow", fmt).file
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = tf.TensorSpec((None,) + tuple(example.shape[1:]), tf.as_dtype(example.dtype), name=INPUT_NAME)
    if fmt == "savedmodel":
        shutil.copytree(_saved_model(module, spec, unroll=False), path, dirs_exist_ok=True)
    elif fmt in ("tflite", "tflite_int8"):
        path.write_bytes(_tflite(module, model, spec, quantize=fmt == "tflite_int8"))
    else:
        _onnx(module, model, spec, path)
    return path


def _archive(module: keras.Model, spec: tf.TensorSpec):
    """An ExportArchive holding the module's variables and the serving signature, and that signature's tf.function."""
    archive = keras.export.ExportArchive()
    archive.track(module)
    serve = archive.add_endpoint(SIGNATURE, lambda inputs: {OUTPUT_NAME: module(inputs, training=False)},
                                 input_signature=[spec])
    return archive, serve


def _saved_model(module: keras.Model, spec: tf.TensorSpec, unroll: bool) -> Path:
    """A temporary SavedModel of the serving signature (unroll: LSTMs unrolled for LiteRT), written once per module,
    input and weights: writing traces and saves the whole graph (seconds for the resnet), and the SavedModel and
    both LiteRT conversions read the same one. It is deleted with the module."""
    lstms = _unrollable_lstms(module) if unroll else {}
    weights = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in module.get_weights())).hexdigest()
    key = (tuple(spec.shape), spec.dtype.name, bool(lstms), weights)
    written = _SAVED_MODELS.setdefault(module, {})
    if key not in written:
        directory = tempfile.TemporaryDirectory(prefix="arena-savedmodel-")
        _archive(_unrolled(module, lstms) if lstms else module, spec)[0].write_out(directory.name, verbose=False)
        written[key] = directory
    return Path(written[key].name)


def _tflite(module: keras.Model, model: str, spec: tf.TensorSpec, quantize: bool) -> bytes:
    """LiteRT builtins only (no SELECT_TF_OPS: ai_edge_litert's Interpreter has no Flex delegate to run them)."""
    # Keras 3's own path to LiteRT: ExportArchive -> SavedModel -> from_saved_model.
    converter = tf.lite.TFLiteConverter.from_saved_model(str(_saved_model(module, spec, unroll=True)),
                                                         signature_keys=[SIGNATURE])
    if quantize:  # no representative dataset: dynamic range (int8 weights, activations quantized per call)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return converter.convert()
    except Exception as error:  # ConverterError lives in a private module; its text says what it needs
        if not any(phrase in str(error) for phrase in _NEEDS_TF_KERNELS):
            raise
        ops = sorted(set(re.findall(r"'(tf\.\w+)'", str(error))))
        free_lstm = any(isinstance(layer, keras.layers.LSTM) and not layer.unroll
                        and id(layer) not in _unrollable_lstms(module) for layer in module.layers)
        why = ("an LSTM with a free sequence length cannot be unrolled, and its while loop keeps TensorList ops; "
               if free_lstm else "")
        raise NotExportable(
            f"{model} to {'tflite_int8' if quantize else 'tflite'}: {why}the TFLite converter needs TensorFlow "
            f"ops outside LiteRT's builtins ({', '.join(ops) or 'see the converter error'}); they take "
            f"SELECT_TF_OPS, whose Flex delegate ai_edge_litert's Interpreter does not include "
            f"(TensorFlow {tf.__version__})") from error


def _unrollable_lstms(module: keras.Model) -> dict[int, keras.layers.LSTM]:
    """The module's LSTMs that run as a loop over a known sequence length, by id."""
    return {id(layer): layer for layer in module.layers
            if isinstance(layer, keras.layers.LSTM) and not layer.unroll and layer.input.shape[1] is not None}


def _unrolled(module: keras.Model, lstms: dict[int, keras.layers.LSTM]) -> keras.Model:
    """A twin of the module with these LSTMs unrolled, sharing every other layer.

    Keras 3 runs an LSTM as a tf.while_loop over a TensorList; LiteRT's builtins cannot hold a TensorList
    whose element shape has a free batch dimension. Unrolled, the same weights make plain matmuls.
    """
    twins: dict[int, keras.layers.LSTM] = {}

    def clone(layer):
        if id(layer) not in lstms:
            return layer  # shared, weights and all
        twins[id(layer)] = keras.layers.LSTM.from_config({**layer.get_config(), "unroll": True})
        return twins[id(layer)]

    twin = keras.models.clone_model(module, clone_function=clone)
    for key, layer in lstms.items():
        twins[key].set_weights(layer.get_weights())
    return twin


def _onnx(module: keras.Model, model: str, spec: tf.TensorSpec, path: Path) -> None:
    """tf2onnx from the serving tf.function; ops it cannot map make NotExportable (it would keep them as TF ops)."""
    try:
        import onnx
        import tf2onnx
    except ImportError as error:
        try:
            installed = f"tf2onnx {metadata.version('tf2onnx')}"
        except metadata.PackageNotFoundError:
            installed = "tf2onnx (not installed)"
        raise NotExportable(f"{model} to onnx: {installed} does not import with TensorFlow {tf.__version__}: "
                            f"{error}") from error
    proto, _ = tf2onnx.convert.from_function(_archive(module, spec)[1], input_signature=[spec], opset=ONNX_OPSET)
    # from_function continues past ops it cannot convert and leaves them in the graph under their TF names.
    unmapped = sorted({node.op_type for node in proto.graph.node
                       if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)})
    if unmapped:
        raise NotExportable(f"{model} to onnx: tf2onnx {tf2onnx.__version__} (TensorFlow {tf.__version__}) has no "
                            f"ONNX conversion for {', '.join(unmapped)}")
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
