"""Filters over the runs overview (db/run_table.py): one row of controls, kept in the URL, applied with pandas.

Shared by every page that lists runs. The chosen values live in query parameters named after the
caller's key (key "f": ?f_fw=torch&f_tag=baseline,ablation&f_q=resnet), so a filtered view can be
shared and reloaded; a value a link names that this database does not know is dropped and named
in a caption, never an error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import pandas as pd
import streamlit as st

from db.models import STATUSES
from engine.catalog import DATASETS, FRAMEWORKS, MODELS, framework_label
from pages import common, url_state

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


def _present(values: Iterable) -> list[str]:
    """The distinct non-empty strings, sorted."""
    return sorted({value for value in values if isinstance(value, str) and value})


def choices(frame: pd.DataFrame) -> dict[str, list[str]]:
    """The values each filter can take: what the runs hold, plus the known frameworks, models and statuses."""
    return {
        "frameworks": _present([*FRAMEWORKS, *frame["framework"]]),
        "models": _present([*MODELS, *frame["model"]]),
        "datasets": _present([*DATASETS, *frame["dataset"]]),
        "statuses": list(STATUSES),
        "tags": _present(tag for tags in frame["tags"] for tag in tags),
        "groups": _present(frame["group_tag"]),
    }


def filter_controls(frame: pd.DataFrame, key: str) -> RunFilters:
    """Multiselects for framework, model, dataset, status, tag and group and a search box, in one row."""
    allowed = choices(frame)
    widget = {field: f"{key}_{suffix}" for field, suffix in PARAMS.items()}  # widget keys = query parameters
    for field, values in allowed.items():
        url_state.seed_list(widget[field], widget[field], [], choices=values)
    url_state.seed(widget["text"], widget["text"], "")
    # Offered: values some run has (a model no run trained is noise), and whatever is chosen already.
    offered = {
        "frameworks": allowed["frameworks"], "statuses": allowed["statuses"],
        "models": _present([*frame["model"], *st.session_state[widget["models"]]]),
        "datasets": _present([*frame["dataset"], *st.session_state[widget["datasets"]]]),
        "tags": allowed["tags"], "groups": allowed["groups"],
    }
    for field in ("tags", "groups"):  # a tag removed from its last run leaves the filter, not an error
        st.session_state[widget[field]] = [v for v in st.session_state[widget[field]] if v in offered[field]]
    labels = {"frameworks": ("Framework", framework_label), "models": ("Model", str),
              "datasets": ("Dataset", str), "statuses": ("Status", common.status_badge),
              "tags": ("Tag", str), "groups": ("Group", str)}
    row = st.container(horizontal=True, vertical_alignment="bottom")
    text = row.text_input("Search", key=widget["text"], placeholder="Search names, notes, ids, errors",
                          help="Every word must appear in the run's id (#12), name, notes, tags, model, dataset, "
                               "group or error; case does not matter.", width=260)
    chosen: dict[str, tuple[str, ...]] = {}
    for field, (label, shown_as) in labels.items():
        values = row.multiselect(label, offered[field], key=widget[field], format_func=shown_as,
                                 placeholder="any", help=f"Runs with any of the chosen {label.lower()} values")
        chosen[field] = tuple(values)
        url_state.sync(widget[field], list(values), [])
    url_state.sync(widget["text"], text or "", "")
    dropped = [item for item in url_state.ignored() if item.startswith(f"{key}_")]
    if dropped:
        # Escaped, not in a code span: a value with a backtick would end the span and render as markdown.
        st.caption("Ignored from the link, not known here: "
                   + ", ".join(common.escape_markdown(item) for item in dropped))
    return RunFilters(text=text or "", **chosen)


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
