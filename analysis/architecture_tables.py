"""One model in both frameworks as tables: layers side by side, whether their parameter counts match."""
from __future__ import annotations

from dataclasses import asdict
from typing import Optional, Sequence

import pandas as pd
from pandas.io.formats.style import Styler

from analysis.summary import DIFFERS_SHADE
from engine import architecture
from engine.architecture import LayerTable
from engine.catalog import framework_label

COLUMNS = ["layer", "type", "output shape", "parameters"]


def shape_text(shape: Optional[tuple[Optional[int], ...]]) -> str:
    """(None, 32, 8, 8) -> "(None, 32, 8, 8)"; "—" for a layer that never ran."""
    return "—" if shape is None else "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def layer_frame(rows: Sequence[dict], prefix: str) -> pd.DataFrame:
    """Text cells, parameters with thousands separators; a layer this framework lacks is a blank row."""
    def cells(row: dict) -> list[str]:
        if row[f"{prefix}layer"] is None:
            return [""] * len(COLUMNS)
        return [row[f"{prefix}layer"], row[f"{prefix}type"], shape_text(row[f"{prefix}output_shape"]),
                f"{row[f'{prefix}params']:,}"]
    return pd.DataFrame([cells(row) for row in rows], columns=COLUMNS)


def side_frames(torch_table: LayerTable, tf_table: LayerTable) -> dict[str, Styler]:
    """One frame per framework, row i of each the same layer, so the two tables line up on screen;
    a blank row where one framework has a layer the other lacks, rows whose parameters differ shaded."""
    rows = architecture.side_by_side(torch_table, tf_table)
    shades = [DIFFERS_SHADE if row["params_differ"] else "" for row in rows]
    return {fw: layer_frame(rows, f"{fw}_").style.apply(lambda _column: shades, axis=0)
            for fw in (torch_table.framework, tf_table.framework)}


def single_frame(table: LayerTable) -> Styler:
    """One framework's table alone (when the other could not be built)."""
    return layer_frame([asdict(row) for row in table.rows], "").style


def parameter_sentence(torch_table: LayerTable, tf_table: LayerTable) -> str:
    """"Both have 269,722 trainable parameters." or how many more one framework has."""
    a, b = torch_table.total_params, tf_table.total_params
    if a == b:
        sentence = f"Both have {a:,} trainable parameters."
    else:
        more, less = (torch_table, tf_table) if a > b else (tf_table, torch_table)
        sentence = (f"{framework_label(more.framework)} has {more.total_params:,} trainable parameters, "
                    f"{framework_label(less.framework)} {less.total_params:,}: {abs(a - b):,} more.")
    differing = sum(row["params_differ"] for row in architecture.side_by_side(torch_table, tf_table))
    if differing:
        sentence += f" {differing} {'layer differs' if differing == 1 else 'layers differ'} in parameters (shaded)."
    if torch_table.total_non_trainable != tf_table.total_non_trainable:
        sentence += (f" Non-trainable values differ: {framework_label(torch_table.framework)} holds "
                     f"{torch_table.total_non_trainable:,}, {framework_label(tf_table.framework)} "
                     f"{tf_table.total_non_trainable:,}.")
    return sentence


def table_caption(table: LayerTable) -> str:
    layout = f" · shapes in {table.layout}, batch as None" if table.layout else " · batch as None"
    return (f"Total: {table.total_params:,} trainable, {table.total_non_trainable:,} non-trainable"
            f"{layout} · {framework_label(table.framework)} {table.framework_version}")
