"""Every run's full spec side by side as text, the rows that differ, and what they say about the comparison."""
from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, Sequence

import pandas as pd

from analysis.run_styles import trace_name
from db.models import Run
from engine.spec import RunSpec

MISSING = "—"  # a key the run's spec does not have: stored before the field existed
# Rows in RunSpec's own order (framework, model, dataset, epochs ...), then keys it no longer has, by name.
SPEC_ORDER = [field.name for field in fields(RunSpec)]


def flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def spec_text(value: Any) -> str:
    """A spec value as table text: 0.001 -> "0.001", True -> "true", None -> "none", lists as JSON."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def _row_order(key: str) -> tuple[int, str]:
    top = key.split(".", 1)[0]
    return (SPEC_ORDER.index(top) if top in SPEC_ORDER else len(SPEC_ORDER), key)


def spec_table(runs: Sequence[Run]) -> pd.DataFrame:
    """The runs' specs flattened, as text: one row per key (RunSpec's order), one column per run ("#3 PyTorch")."""
    specs = {trace_name(run): flatten(run.spec or {}) for run in runs}
    keys = sorted({key for spec in specs.values() for key in spec}, key=_row_order)
    return pd.DataFrame({name: [spec_text(spec[key]) if key in spec else MISSING for key in keys]
                         for name, spec in specs.items()}, index=pd.Index(keys, dtype=object))


def differing_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows whose value is not the same in every column (a missing key differs from any value)."""
    return table[table.nunique(axis=1) > 1]


def difference_note(table: pd.DataFrame) -> str:
    """What the differing rows say about the comparison, in words; "" when there is nothing plain to say."""
    if len(table.columns) < 2:
        return ""
    differing = set(differing_rows(table).index)
    if not differing:
        return "The runs have identical settings: any difference between them is run-to-run noise."
    if differing == {"framework"}:
        return "The runs differ only in framework: a like-for-like comparison."
    if differing == {"framework", "mode"}:
        modes = ", ".join(dict.fromkeys(table.loc["mode"]))
        return (f"The runs differ only in framework and each framework's execution mode ({modes}): "
                "otherwise a like-for-like comparison.")
    if differing == {"seed"}:
        return "The runs differ only in seed: their spread is run-to-run noise."
    return ""
