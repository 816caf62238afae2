"""What a comparison holds equal, in words: the settings that match, the ones that differ, the method.

Not a page: app.py registers only launch.py, runs.py and compare.py with st.navigation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import streamlit as st

from db.models import FINISHED, Run
from engine.catalog import framework_label
from pages import common
from pages import run_settings as rs

NOT_RECORDED = "not recorded"  # a setting the run's spec predates
OPTIMIZER_WORDS = {"sgd": "SGD", "momentum": "SGD with momentum 0.9", "adam": "Adam"}
METHOD = (
    "**Method.** Runs with equal settings train on the same train/test split and see the samples in the same "
    "order every epoch, start from the same initial weights generated from the seed (unless *same initial "
    "weights* is off), and use the same optimizer settings (Adam's epsilon is 1e-8 in both). Every optimizer step "
    "is timed with the device synchronised. The first step and the warm-up steps after it (tf.function tracing, "
    "torch.compile or XLA compilation, allocator warm-up) are shown apart and left out of throughput and the "
    "step-time percentiles. Test metrics are computed after each epoch on the held-out split; time to target is "
    "the training time until the test accuracy first reaches the target. Inference latency is timed after "
    "training, at batch 1 and at the training batch size."
)


@dataclass(frozen=True)
class Setting:
    key: str
    words: str
    read: Callable[[Run], Any]  # display text; None when the run does not say
    applies: Callable[[Sequence[Run]], bool] = lambda runs: True
    measured: bool = False  # reported by the runner: unknown until it has run, so None is skipped, not compared


def _spec_text(field: str, value: Any) -> str:
    if field == "max_steps_per_epoch":
        return "all" if value is None else f"at most {value}"
    if field == "lr":
        return f"{value:g}"
    return str(value)


def _spec(field: str, missing: Optional[str] = None) -> Callable[[Run], Any]:
    """Reader of a spec field; missing: text for runs stored before the field existed."""
    def read(run: Run) -> Any:
        if missing is not None and field not in (run.spec or {}):
            return missing
        return _spec_text(field, rs.spec_value(run, field))
    return read


def _or_not_recorded(read: Callable[[Run], Any]) -> Callable[[Run], Any]:
    return lambda run: NOT_RECORDED if read(run) is None else read(run)


def _any(test: Callable[[Run], bool]) -> Callable[[Sequence[Run]], bool]:
    return lambda runs: any(test(run) for run in runs)


# In the order a reader checks them. Execution mode is not here: it is named per framework.
SETTINGS = (
    Setting("model", "model", _spec("model")),
    Setting("dataset", "dataset", _spec("dataset")),
    Setting("epochs", "epochs", _spec("epochs")),
    Setting("batch_size", "batch size", _spec("batch_size")),
    Setting("lr", "learning rate", _spec("lr")),
    Setting("optimizer", "optimizer", _spec("optimizer")),
    Setting("seed", "seed", _spec("seed")),
    Setting("max_steps_per_epoch", "steps per epoch", _spec("max_steps_per_epoch")),
    Setting("noise", "target noise", _spec("noise"), _any(lambda run: not rs.is_classification(run))),
    Setting("synthetic_shape", "input shape", _spec("synthetic_shape", NOT_RECORDED), _any(rs.is_synthetic)),
    Setting("synthetic_classes", "classes", _spec("synthetic_classes", NOT_RECORDED), _any(rs.is_synthetic)),
    Setting("synthetic_size", "training samples", _spec("synthetic_size", NOT_RECORDED), _any(rs.is_synthetic)),
    Setting("data_sha256", "data files (sha256)", lambda run: (rs.summary_value(run, "data_sha256") or "")[:12]
            or None, _any(rs.is_file_dataset), measured=True),
    Setting("precision", "precision", common.run_precision),
    Setting("compute_dtype", "compute dtype", rs.compute_dtype, measured=True),
    Setting("tf32", "TF32", _or_not_recorded(rs.tf32_text)),
    Setting("layout", "layout", _or_not_recorded(rs.layout_text), _any(rs.is_conv)),
    Setting("deterministic", "deterministic algorithms", _or_not_recorded(rs.deterministic_text)),
    Setting("same_init", "same initial weights", rs.same_init_text),
    Setting("warmup_steps", "warm-up steps", _or_not_recorded(rs.warmup_steps)),
    Setting("target_accuracy", "target accuracy", _or_not_recorded(rs.target_accuracy),
            _any(rs.is_classification)),
    Setting("inference_iters", "inference iterations", _spec("inference_iters", NOT_RECORDED)),
    Setting("device", "device requested", _spec("device")),
    Setting("device_used", "device used", lambda run: (run.environment or {}).get("device", "not started")),
    Setting("machine", "machine", lambda run: run.hostname or (run.environment or {}).get("hostname", "—")),
)


@dataclass(frozen=True)
class Split:
    identical: list[tuple[str, str, Any]]  # (key, words, value)
    different: list[tuple[str, str, dict[int, Any]]]  # (key, words, {run_id: value})


def split_settings(runs: Sequence[Run]) -> Split:
    """The settings that apply to these runs, split into identical in all and different."""
    identical, different = [], []
    for setting in SETTINGS:
        if not setting.applies(runs):
            continue
        values = {run.id: setting.read(run) for run in runs}
        if setting.measured:
            known = {run_id: value for run_id, value in values.items() if value is not None}
            if len(known) < len(values) and len(set(map(str, known.values()))) <= 1:
                continue  # not every run has reported it, and those that have agree: nothing to say yet
            values = known
        if len(set(map(str, values.values()))) == 1:
            identical.append((setting.key, setting.words, next(iter(values.values()))))
        else:
            different.append((setting.key, setting.words, values))
    return Split(identical, different)


def modes_by_framework(runs: Sequence[Run]) -> dict[str, list[str]]:
    """Execution modes each framework ran in, as labels: {"torch": ["eager"], ...}."""
    modes: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: r.id):
        label = rs.mode_text(run)
        if label not in modes.setdefault(run.framework, []):
            modes[run.framework].append(label)
    return modes


def balanced(runs: Sequence[Run], values: dict[int, Any]) -> bool:
    """Whether every framework ran the same values (a matrix, e.g. seeds 0-4 in each): a matched design."""
    per_framework: dict[str, list[str]] = {}
    for run in runs:
        if run.id in values:
            per_framework.setdefault(run.framework, []).append(str(values[run.id]))
    lists = [sorted(v) for v in per_framework.values()]
    return len(lists) > 1 and all(v == lists[0] for v in lists)


def held_equal_words(runs: Sequence[Run], split: Split) -> list[str]:
    """The equal settings in plain words: "the same data split and sample order", "fp32", "TF32 off" ..."""
    same = {key: value for key, _, value in split.identical}
    words = []
    differing = {key for key, _, _ in split.different}
    data_keys = {"dataset", "seed", "synthetic_shape", "synthetic_classes", "synthetic_size", "data_sha256"}
    matched_seeds = "seed" in differing and balanced(runs, {run.id: rs.spec_value(run, "seed") for run in runs})
    if {"dataset", "seed"} <= same.keys() and not differing & data_keys:
        words.append("the same data split and sample order")
    elif matched_seeds and "dataset" in same and not differing & (data_keys - {"seed"}):
        words.append("for each seed the same data split and sample order in every framework")
    if same.get("same_init") == "yes" and "seed" in same and "model" in same:
        words.append("the same initial weights")
    elif same.get("same_init") == "yes" and matched_seeds and "model" in same:
        words.append("for each seed the same initial weights")
    elif same.get("same_init") == "no":
        words.append("each framework's own initial weights")
    if "optimizer" in same and "lr" in same:
        words.append(f"the same optimizer ({OPTIMIZER_WORDS.get(same['optimizer'], same['optimizer'])}, "
                     f"learning rate {same['lr']})")
    warmup = same.get("warmup_steps")
    if isinstance(warmup, int):
        words.append(f"warm-up {warmup} step{'s' if warmup != 1 else ''} excluded from timing" if warmup
                     else "no warm-up steps excluded from timing")
    if "precision" in same:
        dtype = same.get("compute_dtype")
        words.append("fp32" if same["precision"] == "fp32" else
                     f"mixed precision{f' ({dtype})' if dtype else ''}")
    for key, text in (("tf32", {"on": "TF32 on", "off": "TF32 off"}),
                      ("deterministic", {"yes": "deterministic algorithms", "no": "default (non-deterministic) "
                                                                                  "kernels"})):
        if same.get(key) in text:
            words.append(text[same[key]])
    if same.get("layout") not in (None, "n/a", NOT_RECORDED):
        words.append(str(same["layout"]))
    if same.get("device_used") not in (None, "not started"):
        words.append(f"the same device ({same['device_used']})")
    return words


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
        st.markdown(" vs ".join(f"**{common.trace_name(run)}**" for run in runs) + f". {lead}: "
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
            different.insert(0, ("mode", "execution mode", {run.id: rs.mode_text(run) for run in runs}))
        if different:
            st.markdown("\n".join(
                f"- **{words}** differs: " + " · ".join(f"#{run_id} `{value}`" for run_id, value in values.items())
                for _, words, values in different))
        verdict(runs, frameworks, split)
        overlap_s = concurrent_training_s(runs)
        if overlap_s >= 1.0:
            st.warning(f"**Trained at the same time.** Runs overlapped for {common.format_duration(overlap_s)} on the "
                       "same machine and shared its processor, so speed and memory numbers include that contention; "
                       "learning curves are unaffected. For clean speed numbers, run them one after the other.",
                       icon=":material/timer:")
        unfinished = [run for run in runs if run.status != FINISHED]
        if unfinished:
            st.caption("Not finished: " + ", ".join(f"#{run.id} {common.status_words(run)} (epoch {run.epoch}/"
                                                   f"{run.total_epochs})" for run in unfinished)
                       + ". Their curves end where they stopped.")
        with st.expander("How the runs were measured", icon=":material/science:"):
            st.markdown(METHOD)


def verdict(runs: Sequence[Run], frameworks: list[str], split: Split) -> None:
    """Equal, a matched matrix, or unequal (a warning naming what differs besides the framework)."""
    if len(runs) == 1:
        st.info("One run selected: add a run of the other framework above to compare them.", icon=":material/info:")
        return
    if len(frameworks) == 1:
        st.info(f"All selected runs use {framework_label(frameworks[0])}: this compares settings, "
                "not frameworks.", icon=":material/info:")
        return
    unmatched = [words for _, words, values in split.different if not balanced(runs, values)]
    matched = [words for _, words, values in split.different if balanced(runs, values)]
    if unmatched:
        st.warning(f"**Not an equal comparison.** Besides the framework, these runs differ in {', '.join(unmatched)}, "
                   "so their results differ for more than the framework's sake. For a fair match, launch "
                   "*Both (identical settings)* on the Launch page.", icon=":material/warning:")
    elif matched:
        st.success(f"Matched across frameworks: each framework ran every value of {_and(matched)}, with "
                   "everything else equal. Compare runs that share these values.", icon=":material/balance:")
    else:
        st.success("Equal settings: only the framework differs.", icon=":material/balance:")


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" and {words[-1]}"


def concurrent_training_s(runs: Sequence[Run]) -> float:
    """Longest time two of the runs trained at once on one device of one machine (they shared it).

    Runs the scheduler placed on different GPUs did not share a device and are not counted.
    """
    longest = 0.0
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if a.started_at is None or b.started_at is None or a.hostname != b.hostname:
                continue
            on_gpus = {a.placed_device, b.placed_device} - {None, "cpu"}
            if len(on_gpus) == 2:
                continue
            now = common.utc_now()
            overlap = (min(a.finished_at or now, b.finished_at or now) - max(a.started_at, b.started_at))
            longest = max(longest, overlap.total_seconds())
    return longest
