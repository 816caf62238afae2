"""What a comparison holds equal, in words: the settings that match, the ones that differ, the verdict, the method.

ui/fairness_panel.py shows it above every comparison ("What was compared").
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Optional, Sequence

from analysis import run_settings as rs
from db import queries
from db.models import Run
from engine.catalog import framework_label
from engine.executors.base import placed_devices

NOT_RECORDED = "not recorded"  # a setting the run's spec predates
OPTIMIZER_WORDS = {"sgd": "SGD", "momentum": "SGD with momentum 0.9", "adam": "Adam"}
METHOD = (
    "**Method.** Runs with equal settings train on the same train/test split and see the samples in the same "
    "order every epoch, start from the same initial weights generated from the seed (unless *same initial "
    "weights* is off), and use the same optimizer settings (Adam's epsilon is 1e-8 in both). Step timing follows "
    "the run's *step timing*: by default, on a CPU every optimizer step is timed on its own (the host waits for "
    "the device anyway); on a GPU throughput is timed over windows of steps synchronised only at their ends, as "
    "the frameworks' own benchmarks do, and every few windows are timed step by step for the step-time "
    "distribution. The first step and the warm-up steps after it (tf.function tracing, "
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
    if field == "augment":
        return ", ".join(value) if value else "none"
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
    # Stored before multi-worker runs existed: one worker. The global batch is batch_size either way.
    Setting("workers", "workers", _spec("workers", "1")),
    Setting("sync_batchnorm", "synchronised batch norm", _spec("sync_batchnorm", "False"),
            _any(lambda run: int((run.spec or {}).get("workers", 1)) > 1)),
    Setting("tf_strategy", "TensorFlow strategy", _spec("tf_strategy", "multi_worker"),
            _any(lambda run: run.framework == "tensorflow" and int((run.spec or {}).get("workers", 1)) > 1)),
    # Stored before input pipelines existed: the arrays, no augmentation.
    Setting("pipeline", "input pipeline", _spec("pipeline", "arrays")),
    Setting("loader_workers", "loader workers", _spec("loader_workers", "2"),
            _any(lambda run: (run.spec or {}).get("pipeline") == "native")),
    Setting("augment", "augmentation", _spec("augment", "none")),
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
    Setting("precision", "precision", rs.run_precision),
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
    labels = rs.mode_texts(runs)
    for run in sorted(runs, key=lambda r: r.id):
        label = labels[run.id]
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


def verdict(runs: Sequence[Run], frameworks: list[str], split: Split) -> tuple[str, str]:
    """(kind, markdown): equal, a matched matrix, or unequal (naming what differs besides the framework).

    kind is "info" (one run, or one framework), "warning" (not an equal comparison) or "success".
    """
    if len(runs) == 1:
        return "info", "One run selected: add a run of the other framework above to compare them."
    if len(frameworks) == 1:
        return "info", (f"All selected runs use {framework_label(frameworks[0])}: this compares settings, "
                        "not frameworks.")
    unmatched = [words for _, words, values in split.different if not balanced(runs, values)]
    matched = [words for _, words, values in split.different if balanced(runs, values)]
    if unmatched:
        return "warning", (f"**Not an equal comparison.** Besides the framework, these runs differ in "
                           f"{', '.join(unmatched)}, so their results differ for more than the framework's sake. "
                           "For a fair match, launch *Both (identical settings)* on the Launch page.")
    if matched:
        return "success", (f"Matched across frameworks: each framework ran every value of {_and(matched)}, with "
                           "everything else equal. Compare runs that share these values.")
    return "success", "Equal settings: only the framework differs."


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" and {words[-1]}"


def concurrent_training_s(runs: Sequence[Run], now: Optional[datetime] = None) -> float:
    """Longest time two of the runs trained at once on one device of one machine (they shared it).

    Runs the scheduler placed on different GPUs did not share a device and are not counted; a multi-worker
    run holds each device it lists, and any run on the CPU shares it with the loop of every run.
    """
    longest = 0.0
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if a.started_at is None or b.started_at is None or a.hostname != b.hostname:
                continue
            a_devices, b_devices = set(placed_devices(a.placed_device)), set(placed_devices(b.placed_device))
            on_gpus_only = a_devices and b_devices and "cpu" not in a_devices | b_devices
            if on_gpus_only and not a_devices & b_devices:
                continue
            now = now or queries.utcnow()
            overlap = (min(a.finished_at or now, b.finished_at or now) - max(a.started_at, b.started_at))
            longest = max(longest, overlap.total_seconds())
    return longest
