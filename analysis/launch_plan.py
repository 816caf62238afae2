"""From Launch form values to a validated run matrix, described in words (no widgets here)."""
from __future__ import annotations

from decimal import Decimal
from typing import Any, Optional, Sequence

from engine import datafiles
from engine.catalog import DATASETS, MODE_LABELS, framework_label
from engine.matrix import MAX_MATRIX_RUNS, expand, parse_seeds, with_tf_strategy
from engine.executors import executor_name
from engine.executors.local import cpu_slots, runs_per_gpu
from engine.scheduler import scheduling_enabled
from engine.spec import MAX_WORKERS, RunSpec, SpecError

FIELD_LABELS = {
    "framework": "Framework", "frameworks": "Framework", "model": "Model", "dataset": "Dataset",
    "epochs": "Epochs", "batch_size": "Batch size", "lr": "Learning rate", "optimizer": "Optimizer",
    "seed": "Seeds", "seeds": "Seeds", "device": "Device", "max_steps_per_epoch": "Max steps per epoch",
    "noise": "Noise", "mode": "Mode", "modes": "Mode", "precision": "Precision", "precisions": "Precision",
    "tf32": "TF32", "layout": "Layout", "deterministic": "Deterministic", "same_init": "Same initial weights",
    "warmup_steps": "Warm-up steps", "target_accuracy": "Target accuracy", "inference_iters": "Inference iterations",
    "synthetic_shape": "Input shape", "synthetic_classes": "Classes", "synthetic_size": "Training samples",
    "matrix": "Runs in the matrix", "sample_hz": "Memory samples per second",
    "tf_memory_growth": "TensorFlow memory growth", "on_divergence": "NaN or infinite loss",
    "layer_stats": "Layer statistics", "histogram_bins": "Histogram bins", "keep_weights": "Keep the trained weights",
    "workers": "Workers", "sync_batchnorm": "Sync batch norm", "last_batch": "Last, smaller batch",
    "tf_strategy": "TensorFlow strategy",
    "pipeline": "Pipeline", "loader_workers": "Loader workers", "augment": "Augmentation",
}
PRECISION_LABELS = {"fp32": "fp32", "mixed": "mixed (bf16 or fp16)"}


def setting_problem() -> str | None:
    """What is wrong with ARENA_RUNS_PER_GPU, ARENA_CPU_SLOTS, ARENA_SCHEDULER or ARENA_EXECUTOR, if anything.

    The CLI asks the same before it queues.
    """
    try:
        for check in (runs_per_gpu, cpu_slots, scheduling_enabled, executor_name):
            check()
    except ValueError as exc:
        return str(exc)
    return None


def whole(value: float) -> int | float:
    """A counting input's value as an int when it is whole, else as it is (RunSpec names the field and value).

    Through the shortest decimal form, so 1e30 is named as 1 and 30 zeros, as typed, not as int(1e30).
    """
    return int(Decimal(repr(value))) if isinstance(value, float) and value.is_integer() else value


def spec_error_message(exc: SpecError, submitted: bool = True) -> str:
    """Say which field is wrong, its value, why, and what to do; the form keeps the input."""
    label = FIELD_LABELS.get(exc.field, exc.field)
    reason = str(exc)[len(f"{exc.field}={exc.value!r}: "):] or str(exc)
    value = exc.value if not isinstance(exc.value, (list, tuple)) else ", ".join(map(str, exc.value)) or "none"
    message = f"**{label}** = `{value}` can't be used: {reason}. Change {label.lower()}"
    return message + (" and submit again. Nothing was queued." if submitted else " to queue runs.")


def build_matrix(base: dict[str, Any], modes: dict[str, Sequence[str]], precisions: Sequence[str],
                 seeds_text: str, workers_text: str = "1") -> list[RunSpec]:
    """Validated specs: for each framework, its chosen modes x precisions x seeds x worker counts; raises SpecError.

    One engine.matrix.expand call per framework and worker count, because a mode name can exist in both
    frameworks ("eager") while the form picks modes per framework, and expand knows no workers axis. The form's
    TensorFlow strategy (base["tf_strategy"]) goes to the TensorFlow runs of 2 or more workers only.
    """
    base = dict(base)
    strategy = base.pop("tf_strategy", None)
    if not modes:
        raise SpecError("frameworks", "none", "choose PyTorch, TensorFlow or both")
    seeds = parse_seeds(seeds_text)
    counts = parse_workers(workers_text)
    specs: list[RunSpec] = []
    for framework, chosen in modes.items():
        if not chosen:
            raise SpecError("modes", "none", f"choose at least one {framework_label(framework)} mode")
        for workers in counts:
            specs += expand({**base, "workers": workers}, [framework], list(chosen), list(precisions), seeds)
    specs = with_tf_strategy(specs, strategy)
    if len(specs) > MAX_MATRIX_RUNS:
        raise SpecError("matrix", len(specs), f"at most {MAX_MATRIX_RUNS} runs at once; "
                                              "pick fewer seeds, modes, precisions or worker counts")
    return specs


def parse_workers(text: str) -> list[int]:
    """'1' or '1, 2, 4' or '1-4' -> worker counts (a scaling study); raises SpecError naming the bad part.

    Counts outside 1..MAX_WORKERS are left to RunSpec, which names them; a range stops one past the
    largest count, so '1-1000000' is named without a million specs built first.
    """
    counts: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        low_text, _, high_text = part.partition("-") if "-" in part[1:] else (part, "", part)
        try:
            low, high = int(low_text), int(high_text)
        except ValueError:
            raise SpecError("workers", part, "expected whole numbers like '1', '1, 2, 4' or '1-4'") from None
        if high < low:
            raise SpecError("workers", part, "a range must go up, like 1-4")
        for count in range(low, min(high, max(low, MAX_WORKERS + 1)) + 1):
            if count in counts:
                raise SpecError("workers", count, "a worker count is listed twice")
            counts.append(count)
    if not counts:
        raise SpecError("workers", text, f"name at least one worker count, like '1' or '1, 2, 4' (at most "
                                         f"{MAX_WORKERS})")
    return counts


def worker_counts(text: str) -> list[int]:
    """The worker counts the form's text names, [] while it names none validly (build_matrix says why)."""
    try:
        return parse_workers(text)
    except SpecError:
        return []


def format_seeds(seeds: Sequence[int]) -> str:
    """Seeds in short form: [0, 1, 2, 3, 7] -> "0-3, 7"."""
    parts, ordered = [], sorted(set(seeds))
    start = prev = None
    for seed in ordered + [None]:
        if start is not None and (seed is None or seed != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if seed is not None and start is None:
            start = seed
        prev = seed
    return ", ".join(parts)


def describe_matrix(specs: Sequence[RunSpec]) -> str:
    """"PyTorch eager fp32 × seeds 0-4 · TensorFlow tf.function (graph) fp32 × seeds 0-4", with "× workers 1, 2"
    when a run of the matrix trains with several workers ("(MirroredStrategy: one process)" when in one process)."""
    mirrored = {(spec.framework, spec.mode, spec.precision) for spec in specs if spec.tf_strategy == "mirrored"}
    cells: dict[tuple[str, str, str], tuple[list[int], list[int]]] = {}
    for spec in specs:
        seeds, counts = cells.setdefault((spec.framework, spec.mode, spec.precision), ([], []))
        seeds.append(spec.seed)
        counts.append(spec.workers)
    parts = []
    for (framework, mode, precision), (seeds, counts) in cells.items():
        seeds, counts = list(dict.fromkeys(seeds)), list(dict.fromkeys(counts))
        seed_words = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {format_seeds(seeds)}"
        worker_words = "" if counts == [1] else (
            f" × {counts[0]} workers" if len(counts) == 1 else f" × workers {', '.join(map(str, counts))}")
        worker_words += " (MirroredStrategy: one process)" if (framework, mode, precision) in mirrored else ""
        parts.append(f"{framework_label(framework)} {MODE_LABELS.get(mode, mode)} {precision} × {seed_words}"
                     + worker_words)
    return " · ".join(parts)


def describe_input(specs: Sequence[RunSpec]) -> str:
    """The matrix's input in words ("" for the shared arrays without augmentation): "each framework's own pipeline
    (DataLoader against tf.data) with 2 loader workers; augmentation crop, flip"."""
    if not specs:
        return ""
    spec = specs[0]  # the form sets one pipeline and one list of augmentations for every run
    parts = []
    if spec.pipeline == "native":
        workers = f"{spec.loader_workers} loader worker{'s' if spec.loader_workers != 1 else ''}"
        parts.append(f"each framework's own pipeline (DataLoader against tf.data) with {workers}")
    if spec.augment:
        parts.append(f"augmentation {', '.join(spec.augment)}")
    return "; ".join(parts)


def run_names(run_ids: Sequence[int]) -> str:
    """"#3", "#3 and #4", "#3, #4, #5 and #6", or "#3–#40" for long lists."""
    names = [f"#{i}" for i in run_ids]
    if len(names) == 1:
        return names[0]
    if len(names) > 6 and list(run_ids) == list(range(run_ids[0], run_ids[0] + len(run_ids))):
        return f"{names[0]}–{names[-1]}"
    return ", ".join(names[:-1]) + f" and {names[-1]}"


# Data files ---------------------------------------------------------------------------------
def missing_data_files(dataset: str) -> list[str]:
    """Files the dataset needs that are not in its directory (presence only; the runner verifies checksums)."""
    return datafiles.missing(dataset)


def data_files_note(dataset: str) -> Optional[tuple[bool, str]]:
    """(present, markdown) for a file dataset: where its files are looked for, and how to fetch them."""
    if DATASETS[dataset].kind != "file":
        return None
    where = datafiles.data_dir() / dataset
    try:
        missing = missing_data_files(dataset)
    except datafiles.DataFileError as exc:  # a bad ARENA_DATA_VERIFY: the files cannot be judged until it is fixed
        return False, f"{exc}."
    if not missing:
        return True, f"Files found in `{where}`; the runner verifies them when it reads them."
    listed = ", ".join(f"`{name}`" for name in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                                                else "")
    return False, (f"Missing in `{where}`: {listed} (set `{datafiles.ENV_DATA_DIR}` to look elsewhere). Fetch them "
                   f"with `python -m engine download {dataset}`, then launch; a run started without them fails.")
