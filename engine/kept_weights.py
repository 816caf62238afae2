"""A finished run's final weights, kept with it (issue 17): canonical layout, one compressed .npz in the database.

The canonical layout is the one shared initial weights use (engine/weights.py), so either
framework can rebuild the trained model from the file, and every machine of a cluster reads it
where it reads the run: the database (run_artifacts, deleted with the run). RunSpec.keep_weights
turns keeping off. The file holds every tensor (batch-norm moving statistics too) and, under
META_KEY, a JSON string saying what they belong to; it is read with allow_pickle=False.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from sqlalchemy.orm import Session

from db import queries
from db.models import WEIGHTS_KIND
from engine.calibration import Artifact
from engine.data import Dataset
from engine.spec import RunSpec

KIND = WEIGHTS_KIND
FILE_NAME = "weights.npz"
MEDIA_TYPE = "application/x-npz"
META_KEY = "__arena_meta__"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class KeptWeights:
    weights: dict[str, np.ndarray]
    meta: dict[str, Any]  # framework, model, input_shape, num_outputs, task, run_id, version

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["input_shape"])

    @property
    def num_outputs(self) -> int:
        return int(self.meta["num_outputs"])


def describe(spec: RunSpec, data: Dataset, run_id: int) -> dict[str, Any]:
    """The meta of a run's weights: what rebuilds the model, and where they came from."""
    return {"run_id": run_id, "framework": spec.framework, "model": spec.model, "dataset": spec.dataset,
            "input_shape": list(data.x_train.shape[1:]), "num_outputs": data.num_outputs, "task": data.task}


def pack(weights: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """The .npz bytes (zip-deflated) of float32 tensors and their meta."""
    if META_KEY in weights:
        raise ValueError(f"{META_KEY!r} is reserved for the meta")
    buffer = io.BytesIO()
    arrays = {name: np.asarray(value, dtype=np.float32) for name, value in weights.items()}
    np.savez_compressed(buffer, **arrays, **{META_KEY: np.array(json.dumps({**meta, "version": FORMAT_VERSION}))})
    return buffer.getvalue()


def unpack(data: bytes) -> KeptWeights:
    """Read pack's bytes back; never unpickles (an .npz from elsewhere is data, not code)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        if META_KEY not in archive.files:
            raise ValueError(f"not an Arena weights file: no {META_KEY!r} entry")
        meta = json.loads(str(archive[META_KEY]))
        weights = {name: archive[name] for name in archive.files if name != META_KEY}
    return KeptWeights(weights, meta)


def artifact(weights: dict[str, np.ndarray], meta: dict[str, Any]) -> Artifact:
    """The packed weights as a file for the runner to store with the run's end (with its trace)."""
    data = pack(weights, meta)
    return Artifact(KIND, FILE_NAME, MEDIA_TYPE, data, len(data))


def find(s: Session, run_id: int) -> Optional[dict[str, Any]]:
    """The run's kept weights' row without the bytes (queries.ARTIFACT_COLUMNS), or None."""
    found = queries.list_artifacts(s, [run_id], KIND)
    return found[-1] if found else None


def load(s: Session, run_id: int) -> Optional[KeptWeights]:
    """The run's kept weights, or None when it has none."""
    row = find(s, run_id)
    return None if row is None else unpack(queries.get_artifact(s, row["id"]).data)
