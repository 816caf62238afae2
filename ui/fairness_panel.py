""""What was compared", above every comparison: equal settings, differing ones, the verdict, overlap, the method."""
from __future__ import annotations

from typing import Sequence

import streamlit as st

from analysis import run_settings as rs
from analysis.fairness import (
    METHOD, NOT_RECORDED, concurrent_training_s, held_equal_words, modes_by_framework, split_settings, verdict,
)
from analysis.formatting import format_duration
from analysis.run_facts import facts_of
from analysis.run_styles import trace_name
from db.models import FINISHED, Run
from engine.catalog import framework_label

VERDICT_ICONS = {"info": ":material/info:", "warning": ":material/warning:", "success": ":material/balance:"}


def what_was_compared(runs: Sequence[Run]) -> None:
    """Which settings are equal, which differ (a warning when that makes the match unequal), and the method."""
    frameworks = sorted({run.framework for run in runs})
    split = split_settings(runs)
    modes = modes_by_framework(runs)
    several_modes = any(len(labels) > 1 for labels in modes.values())
    with st.container(border=True):
        st.subheader("What was compared")
        lead = "Identical in all" if len(runs) > 1 else "Settings"
        identical = [item for item in split.identical if item[2] != NOT_RECORDED]
        if len(frameworks) == 1 and not several_modes:
            identical.append(("mode", "execution mode", modes[frameworks[0]][0]))
        st.markdown(" vs ".join(f"**{trace_name(run)}**" for run in runs) + f". {lead}: "
                    + ", ".join(f"{words} `{value}`" for _, words, value in identical) + ".")
        unrecorded = [words for _, words, value in split.identical if value == NOT_RECORDED]
        if unrecorded:
            st.caption(f"Stored before Arena recorded {', '.join(unrecorded)}: "
                       f"{'this run does' if len(runs) == 1 else 'these runs do'} not say.")
        held = held_equal_words(runs, split)
        if held and len(runs) > 1:
            st.markdown("**Held equal:** " + ", ".join(held) + ".")
        if len(frameworks) > 1:
            st.markdown("**Execution mode, each framework's own:** " + " · ".join(
                f"{framework_label(fw)} {' and '.join(labels)}" for fw, labels in modes.items()) + ".")
        different = list(split.different)
        if several_modes:
            different.insert(0, ("mode", "execution mode", rs.mode_texts(runs)))
        if different:
            st.markdown("\n".join(
                f"- **{words}** differs: " + " · ".join(f"#{run_id} `{value}`" for run_id, value in values.items())
                for _, words, values in different))
        kind, message = verdict(runs, frameworks, split)
        getattr(st, kind)(message, icon=VERDICT_ICONS[kind])
        overlap_s = concurrent_training_s(runs)
        if overlap_s >= 1.0:
            st.warning(f"**Trained at the same time.** Runs overlapped for {format_duration(overlap_s)} on the "
                       "same machine and shared its processor, so speed and memory numbers include that contention; "
                       "learning curves are unaffected. For clean speed numbers, run them one after the other.",
                       icon=":material/timer:")
        unfinished = [run for run in runs if run.status != FINISHED]
        if unfinished:
            words = facts_of(unfinished)["status_words"]
            st.caption("Not finished: " + ", ".join(f"#{run.id} {words[run.id]} (epoch {run.epoch}/"
                                                   f"{run.total_epochs})" for run in unfinished)
                       + ". Their curves end where they stopped.")
        with st.expander("How the runs were measured", icon=":material/science:"):
            st.markdown(METHOD)
