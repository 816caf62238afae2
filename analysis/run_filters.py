"""Filters over the runs overview (db/run_table.py): what each filter can take, and the rows that pass.

ui/run_filter_controls.py draws the controls and keeps the chosen values in the URL.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import pandas as pd

from db.models import STATUSES
from engine.catalog import DATASETS, FRAMEWORKS, MODELS

# Query parameter suffix per filter: ?{key}_{suffix}=...
PARAMS = {"frameworks": "fw", "models": "model", "datasets": "data", "statuses": "status", "tags": "tag",
          "groups": "group", "text": "q"}
RUN_ID_WORD = re.compile(r"#?([0-9]+)")  # "#12" (or "12") in a search finds run 12 itself, not 120


@dataclass(frozen=True)
class RunFilters:
    """What to show: runs matching any chosen value of every dimension given, and every word of the text."""

    frameworks: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    text: str = ""

    def active(self) -> bool:
        """Whether any filter is set."""
        return any((self.frameworks, self.models, self.datasets, self.statuses, self.tags, self.groups,
                    self.text.strip()))


def distinct_texts(values: Iterable) -> list[str]:
    """The distinct non-empty strings, sorted."""
    return sorted({value for value in values if isinstance(value, str) and value})


def choices(frame: pd.DataFrame) -> dict[str, list[str]]:
    """The values each filter can take: what the runs hold, plus the known frameworks, models and statuses."""
    return {
        "frameworks": distinct_texts([*FRAMEWORKS, *frame["framework"]]),
        "models": distinct_texts([*MODELS, *frame["model"]]),
        "datasets": distinct_texts([*DATASETS, *frame["dataset"]]),
        "statuses": list(STATUSES),
        "tags": distinct_texts(tag for tags in frame["tags"] for tag in tags),
        "groups": distinct_texts(frame["group_tag"]),
    }


def apply_filters(frame: pd.DataFrame, filters: RunFilters) -> pd.DataFrame:
    """The rows of the overview that pass the filters, in their order."""
    keep = pd.Series(True, index=frame.index)
    for field, column in (("frameworks", "framework"), ("models", "model"), ("datasets", "dataset"),
                          ("statuses", "status"), ("groups", "group_tag")):
        wanted = getattr(filters, field)
        if wanted:
            keep &= frame[column].isin(wanted)
    if filters.tags:
        wanted_tags = set(filters.tags)
        keep &= frame["tags"].map(lambda tags: not wanted_tags.isdisjoint(tags)).astype(bool)
    words = filters.text.lower().split()
    if words:
        keep &= _text_matches(frame, words)
    return frame[keep]


def _text_matches(frame: pd.DataFrame, words: list[str]) -> pd.Series:
    """Rows whose searchable text holds every word (a "#12" word matches run 12 exactly)."""
    haystack = frame["name"].fillna("").astype(str)
    for column in ("notes", "model", "dataset", "group_tag", "error"):
        haystack = haystack + "\n" + frame[column].fillna("").astype(str)
    haystack = (haystack + "\n" + frame["tags"].map("\n".join)).str.lower()
    matches = pd.Series(True, index=frame.index)
    for word in words:
        run_id = RUN_ID_WORD.fullmatch(word)
        found = haystack.str.contains(word, regex=False)
        matches &= (found | (frame["id"] == int(run_id.group(1)))) if run_id else found
    return matches
