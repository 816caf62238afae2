"""`python -m engine.backends.layers_worker --framework F --model M --input-shape S --classes K`: layer tables.

Builds each model in one framework and prints, as the last line of stdout, a JSON list with one
table per --model (repeat --model, --input-shape and --classes together to batch several models
into one start-up; importing the framework is most of the time). A table is
{"framework", "framework_version", "model", "input_shape", "num_outputs", "layout", "rows",
"total_params", "total_non_trainable"}; a row is {"layer", "type", "output_shape" (batch
dimension None), "params" (trainable), "non_trainable"}. One framework per process:
engine/architecture.py starts one of these for each.

PyTorch rows come from forward hooks on a dummy batch, in the order the layers run; Keras rows
are model.layers in graph order. Shapes are each framework's own: PyTorch images are NCHW,
Keras's NHWC ("layout" says which).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

import numpy as np

from engine.catalog import FRAMEWORKS
from engine.weights import input_kind

DUMMY_BATCH = 2  # not 1: batch norm in training mode needs more than one value per channel


def _shape(dims: Any) -> list[Optional[int]]:
    """Output dimensions with the batch dimension as None, as Keras reports it."""
    dims = [None if d is None else int(d) for d in dims]
    return [None] + dims[1:] if dims and dims[0] == DUMMY_BATCH else dims


def _row(name: str, layer: Any, output_shape: Optional[list], params: int, non_trainable: int) -> dict:
    return {"layer": name, "type": type(layer).__name__, "output_shape": output_shape,
            "params": int(params), "non_trainable": int(non_trainable)}


def _torch_tables():
    import torch

    from engine.backends import torch_models

    def units(module: torch.nn.Module, prefix: str = ""):
        # A module with parameters of its own is one layer with everything under it
        # (MultiheadAttention owns in_proj and holds out_proj as a child); others are containers.
        if not list(module.children()) or any(True for _ in module.parameters(recurse=False)):
            yield prefix, module
            return
        for name, child in module.named_children():
            yield from units(child, f"{prefix}.{name}" if prefix else name)

    def first_shape(output: Any) -> Optional[list]:
        # LSTM returns (output, (h, c)) and attention (output, weights): the first tensor is the output.
        if isinstance(output, torch.Tensor):
            return _shape(output.shape)
        if isinstance(output, (tuple, list)):
            return next(filter(None, map(first_shape, output)), None)
        return None

    def dummy(model: str, input_shape: tuple[int, ...]) -> torch.Tensor:
        kind = input_kind(model)
        if kind == "image":  # NCHW, as the torch backend feeds images
            height, width, channels = input_shape
            return torch.zeros(DUMMY_BATCH, channels, height, width)
        if kind == "tokens":
            return torch.zeros((DUMMY_BATCH,) + tuple(input_shape), dtype=torch.int64)
        return torch.ones((DUMMY_BATCH,) + tuple(input_shape))

    def table(model: str, input_shape: tuple[int, ...], num_outputs: int) -> dict:
        torch.manual_seed(0)
        module = torch_models.build_model(model, input_shape, num_outputs)
        layers = [(name or model, unit) for name, unit in units(module)]
        shapes: dict[str, Optional[list]] = {}  # in the order the layers first run

        def recorder(name: str):
            def record(_module, _args, output) -> None:  # returning a value would replace the output
                shapes.setdefault(name, first_shape(output))
            return record

        handles = [unit.register_forward_hook(recorder(name)) for name, unit in layers]
        # Training mode: in eval mode without autograd nn.TransformerEncoderLayer takes a fused
        # fast path that never calls its sub-layers, so their hooks would not fire.
        module.train()
        try:
            module(dummy(model, input_shape))
        finally:
            for handle in handles:
                handle.remove()
        order = {name: index for index, name in enumerate(shapes)}
        layers.sort(key=lambda item: order.get(item[0], len(order)))  # never-called layers last
        rows = []
        for name, unit in layers:
            params = sum(p.numel() for p in unit.parameters() if p.requires_grad)
            # Frozen parameters (the LSTM's b_hh) and the moving statistics Keras also counts as
            # non-trainable; not batch norm's integer step counter, which Keras does not have.
            frozen = sum(p.numel() for p in unit.parameters() if not p.requires_grad)
            frozen += sum(b.numel() for b in unit.buffers() if b.is_floating_point())
            rows.append(_row(name, unit, shapes.get(name), params, frozen))
        return _totals(rows, torch_models.trainable_parameter_count(module), model, "torch")

    return table, torch.__version__, "NCHW"


def _tensorflow_tables():
    import keras
    import tensorflow as tf

    from engine.backends import tensorflow_models

    def count(variables: list) -> int:
        return sum(int(np.prod(v.shape)) for v in variables)  # np.prod(()) is 1: phi is a scalar

    def table(model: str, input_shape: tuple[int, ...], num_outputs: int) -> dict:
        keras.backend.clear_session()  # layer names Keras numbers (dropout_1, re_lu_5) start afresh
        keras.utils.set_random_seed(0)
        module = tensorflow_models.build_model(model, input_shape, num_outputs)
        rows = [_row(layer.name, layer, _shape(layer.output.shape), count(layer.trainable_weights),
                     count(layer.non_trainable_weights))
                for layer in module.layers if not isinstance(layer, keras.layers.InputLayer)]
        if not module.layers:  # a subclassed model holding its own weights (powerlaw): one row
            output = module(np.ones((DUMMY_BATCH,) + tuple(input_shape), dtype=np.float32))
            rows = [_row(module.name, module, _shape(output.shape), count(module.trainable_weights),
                         count(module.non_trainable_weights))]
        return _totals(rows, tensorflow_models.trainable_parameter_count(module), model, "tensorflow")

    return table, tf.__version__, "NHWC"


def _totals(rows: list[dict], zoo_count: int, model: str, framework: str) -> dict:
    total = sum(row["params"] for row in rows)
    if total != zoo_count:  # a layer the walk missed or counted twice
        raise RuntimeError(f"{framework} {model}: the layer rows hold {total} trainable parameters, "
                           f"the model {zoo_count}")
    return {"rows": rows, "total_params": total, "total_non_trainable": sum(row["non_trainable"] for row in rows)}


def parse_shape(text: str) -> tuple[int, ...]:
    """"8,8,1" -> (8, 8, 1): one sample's shape, images as H,W,C."""
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"input shape {text!r}: expected positive whole numbers like 8,8,1 or 32")
    return dims


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.backends.layers_worker",
                                     description="Print the layer table of zoo models as one framework builds them.")
    parser.add_argument("--framework", required=True, choices=FRAMEWORKS)
    parser.add_argument("--model", required=True, action="append", help="repeat with --input-shape and --classes")
    parser.add_argument("--input-shape", required=True, action="append", type=parse_shape,
                        help="one sample: H,W,C for images, T for token sequences, 1 for powerlaw")
    parser.add_argument("--classes", required=True, action="append", type=int, help="outputs of the last layer")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not len(args.model) == len(args.input_shape) == len(args.classes):
        parser.error(f"give --model, --input-shape and --classes once per model; got {len(args.model)}, "
                     f"{len(args.input_shape)} and {len(args.classes)}")
    table, version, image_layout = _torch_tables() if args.framework == "torch" else _tensorflow_tables()
    tables = []
    for model, input_shape, num_outputs in zip(args.model, args.input_shape, args.classes, strict=True):
        tables.append({"framework": args.framework, "framework_version": version, "model": model,
                       "input_shape": list(input_shape), "num_outputs": num_outputs,
                       "layout": image_layout if input_kind(model) == "image" else None,
                       **table(model, input_shape, num_outputs)})
    print(json.dumps(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
