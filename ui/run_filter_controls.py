"""Filter controls over the runs overview: one row of them, the chosen values kept in the URL.

Shared by every page that lists runs. The chosen values live in query parameters named after the
caller's key (key "f": ?f_fw=torch&f_tag=baseline,ablation&f_q=resnet), so a filtered view can be
shared and reloaded; a value a link names that this database does not know is dropped and named
in a caption, never an error. analysis/run_filters.py applies them.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.formatting import escape_markdown
from analysis.run_facts import status_badge
from analysis.run_filters import PARAMS, RunFilters, distinct_texts, choices
from engine.catalog import framework_label
from ui import url_state


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
        "models": distinct_texts([*frame["model"], *st.session_state[widget["models"]]]),
        "datasets": distinct_texts([*frame["dataset"], *st.session_state[widget["datasets"]]]),
        "tags": allowed["tags"], "groups": allowed["groups"],
    }
    for field in ("tags", "groups"):  # a tag removed from its last run leaves the filter, not an error
        st.session_state[widget[field]] = [v for v in st.session_state[widget[field]] if v in offered[field]]
    labels = {"frameworks": ("Framework", framework_label), "models": ("Model", str),
              "datasets": ("Dataset", str), "statuses": ("Status", status_badge),
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
                   + ", ".join(escape_markdown(item) for item in dropped))
    return RunFilters(text=text or "", **chosen)
