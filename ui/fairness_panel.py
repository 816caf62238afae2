""""What was compared", above every comparison: one line of what differs and a verdict badge; the rest on request."""
from __future__ import annotations

from typing import Sequence

import streamlit as st

from analysis import run_settings as rs
from analysis.fairness import (
    METHOD, NOT_RECORDED, concurrent_training_s, held_equal_words, modes_by_framework, split_settings, verdict,
)
from analysis.formatting import format_duration
from analysis.machine_load import busy_machine
from analysis.run_facts import facts_of
from analysis.run_styles import trace_name
from db.models import FINISHED, Run
from engine.catalog import framework_label

VERDICT_ICONS = {"info": ":material/info:", "warning": ":material/warning:", "success": ":material/balance:"}
# The one-line verdict badge per kind; a warning is also said in full, in its own box.
BADGE_COLORS = {"info": "blue", "warning": "orange", "success": "green"}
DETAILS_KEY = "compare_details_open"  # session state: the held-equal popover is open
OVERLAP_WARN_S = 1.0  # runs that trained at the same time for longer shared the processor: speed numbers suffer


def what_was_compared(runs: Sequence[Run]) -> None:
    """One line: the runs, what differs, a verdict badge and a held-equal button whose details open on request.

    Only what makes the numbers below unequal takes more room: runs that differ in more than the
    framework, that trained at the same time, or beside other busy processes get a warning box of their own.
    """
    frameworks = sorted({run.framework for run in runs})
    split = split_settings(runs)
    modes = modes_by_framework(runs)
    several_modes = any(len(labels) > 1 for labels in modes.values())
    different = list(split.different)
    if several_modes:
        different.insert(0, ("mode", "execution mode", rs.mode_texts(runs)))
    kind, message = verdict(runs, frameworks, split)
    overlap_s = concurrent_training_s(runs)
    busy = busy_machine(runs)
    with st.container(border=True):
        line, details = st.columns([5, 1], vertical_alignment="center")
        with line:
            st.markdown(_one_line(runs, frameworks, modes, several_modes, different, kind, message, overlap_s, busy))
        # The details are built only while the popover is open: a closed one sends nothing to the browser.
        with details:
            popover = st.popover(_held_label(runs, split), icon=":material/balance:", width="stretch",
                                 key=DETAILS_KEY, on_change="rerun")
        if popover.open:
            with popover:
                _details(runs, frameworks, split, modes, several_modes, different, kind, message)
        if kind == "warning":
            st.warning(message, icon=VERDICT_ICONS[kind])
        if overlap_s >= OVERLAP_WARN_S:
            st.warning(f"**Trained at the same time.** Runs overlapped for {format_duration(overlap_s)} on the "
                       "same machine and shared its processor, so speed and memory numbers include that contention; "
                       "learning curves are unaffected. For clean speed numbers, run them one after the other.",
                       icon=":material/timer:")
        if busy:
            st.warning(_busy_text(busy), icon=":material/speed:")
        unfinished = [run for run in runs if run.status != FINISHED]
        if unfinished:
            words = facts_of(unfinished)["status_words"]
            st.caption("Not finished: " + ", ".join(f"#{run.id} {words[run.id]} (epoch {run.epoch}/"
                                                   f"{run.total_epochs})" for run in unfinished)
                       + ". Their curves end where they stopped.")


def _busy_text(busy: list[tuple[Run, float, int]]) -> str:
    """"Busy machine. While this run trained, other processes kept cores busy on average (#3 PyTorch: 0.9 of 2 cores)..."."""
    held = "; ".join(f"{trace_name(run)}: {others:.1f}" + (f" of {cores}" if cores else "") + " cores"
                     for run, others, cores in busy)
    return (f"**Busy machine.** While {'this run' if len(busy) == 1 else 'these runs'} trained, other processes kept "
            f"cores busy on average ({held}), so speed numbers include that contention; learning curves are "
            "unaffected. PyTorch's thread team slows most when a core is taken. For clean speed numbers, rerun on "
            "a quiet machine (close other jobs; the dashboard itself is idle between page loads).")


def _one_line(runs, frameworks, modes, several_modes, different, kind, message, overlap_s, busy=()) -> str:
    """"#3 PyTorch eager vs #4 TensorFlow graph · differs: seed · [badge]" as one markdown line."""
    names = " vs ".join(f"**{trace_name(run)}**" for run in runs)
    if len(frameworks) > 1 and not several_modes:
        names += f" ({_modes_text(modes)})"
    parts = [names]
    if different:
        parts.append("differs: " + ", ".join(f"**{words}**" for _, words, _ in different))
    badge = {"success": message.split(":")[0].rstrip("."), "info": "Not a framework comparison",
             "warning": "Not an equal comparison"}[kind]
    if len(runs) == 1:
        badge = "One run"
    parts.append(f":{BADGE_COLORS[kind]}-badge[{VERDICT_ICONS[kind]} {badge}]")
    if overlap_s >= OVERLAP_WARN_S:
        parts.append(":orange-badge[:material/timer: Trained at the same time]")
    if busy:
        parts.append(":orange-badge[:material/speed: Busy machine]")
    return "**What was compared:** " + " · ".join(parts)


def _modes_text(modes: dict[str, list[str]]) -> str:
    """"PyTorch eager · TensorFlow tf.function (graph)": each framework's execution modes."""
    return " · ".join(f"{framework_label(fw)} {' and '.join(labels)}" for fw, labels in modes.items())


def _held_label(runs: Sequence[Run], split) -> str:
    identical = [item for item in split.identical if item[2] != NOT_RECORDED]
    return f"Held equal: {len(identical)}" if len(runs) > 1 else "Run settings"


def _details(runs, frameworks, split, modes, several_modes, different, kind, message) -> None:
    """Behind the one line: the verdict, identical settings, held-equal words, each difference, the method."""
    if kind != "warning":
        getattr(st, kind)(message, icon=VERDICT_ICONS[kind])
    lead = "Identical in all" if len(runs) > 1 else "Settings"
    identical = [item for item in split.identical if item[2] != NOT_RECORDED]
    if len(frameworks) == 1 and not several_modes:
        identical.append(("mode", "execution mode", modes[frameworks[0]][0]))
    st.markdown(f"{lead}: " + ", ".join(f"{words} `{value}`" for _, words, value in identical) + ".")
    unrecorded = [words for _, words, value in split.identical if value == NOT_RECORDED]
    if unrecorded:
        st.caption(f"Stored before Arena recorded {', '.join(unrecorded)}: "
                   f"{'this run does' if len(runs) == 1 else 'these runs do'} not say.")
    held = held_equal_words(runs, split)
    if held and len(runs) > 1:
        st.markdown("**Held equal:** " + ", ".join(held) + ".")
    if len(frameworks) > 1:
        st.markdown(f"**Execution mode, each framework's own:** {_modes_text(modes)}.")
    if different:
        st.markdown("\n".join(
            f"- **{words}** differs: " + " · ".join(f"#{run_id} `{value}`" for run_id, value in values.items())
            for _, words, values in different))
    st.markdown("**How the runs were measured**")
    st.markdown(METHOD)
