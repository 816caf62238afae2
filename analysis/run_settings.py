"""A run's settings as short display text, for runs stored before and after each setting existed."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from analysis import run_facts
from analysis.run_styles import trace_name
from db.models import Run
from engine.catalog import DATASETS, MODE_LABELS, MODELS


def spec_value(run: Run, key: str) -> Any:
    return (run.spec or {}).get(key)


def summary_value(run: Run, key: str) -> Any:
    """A value the runner measured; None while the run has not reported it (or predates the key)."""
    return (run.summary or {}).get(key)


def run_modes(runs: Sequence[Run]) -> dict[int, str]:
    """Execution mode id per run id ("eager", "graph" ...), as run_facts.modes reads it."""
    runs = list(runs)
    return dict(zip([run.id for run in runs], run_facts.modes(run_facts.runs_frame(runs)).tolist()))


def run_mode(run: Run) -> str:
    return run_modes([run])[run.id]


def mode_texts(runs: Sequence[Run]) -> dict[int, str]:
    """Execution mode label per run id ("tf.function (graph)"): one frame for all the runs."""
    return {run_id: MODE_LABELS.get(mode, mode) for run_id, mode in run_modes(runs).items()}


def mode_text(run: Run) -> str:
    return mode_texts([run])[run.id]


def run_precision(run: Run) -> str:
    """"fp32" or "mixed"; runs stored before precisions existed trained in fp32."""
    return (run.spec or {}).get("precision") or run_facts.DEFAULT_PRECISION


def precision_text(run: Run) -> str:
    """"fp32", or "mixed" with the compute dtype and loss scaling once the run has reported them."""
    precision = run_precision(run)
    dtype, scaling = summary_value(run, "compute_dtype"), summary_value(run, "loss_scaling")
    details = [d for d in (dtype, "loss scaling" if scaling else None) if d]
    if precision == "fp32" and dtype in (None, "float32") and not scaling:
        return "fp32"
    return f"{precision} ({', '.join(details)})" if details else precision


def compute_dtype(run: Run) -> Optional[str]:
    return summary_value(run, "compute_dtype")


def is_conv(run: Run) -> bool:
    return bool(MODELS.get(run.model) and MODELS[run.model].conv)


def layout_text(run: Run) -> Optional[str]:
    """The layout the run used ("n/a" for models without convolutions); None when not recorded."""
    if not is_conv(run):
        return "n/a"
    return summary_value(run, "layout") or spec_value(run, "layout")


def _flag(run: Run, key: str, on: str, off: str) -> Optional[str]:
    value = summary_value(run, key)
    if value is None:
        value = spec_value(run, key)
    return None if value is None else (on if value else off)


def tf32_text(run: Run) -> Optional[str]:
    return _flag(run, "tf32", "on", "off")


def deterministic_text(run: Run) -> Optional[str]:
    return _flag(run, "deterministic", "yes", "no")


def same_init_text(run: Run) -> Optional[str]:
    # Runs from before the setting existed always started from the shared weights.
    value = _flag(run, "same_init", "yes", "no")
    return "yes" if value is None else value


def warmup_steps(run: Run) -> Optional[int]:
    """Steps left out of step times and throughput: the summary's count, else the spec's."""
    value = summary_value(run, "warmup_steps")
    return value if value is not None else spec_value(run, "warmup_steps")


def target_accuracy(run: Run) -> Optional[float]:
    value = summary_value(run, "target_accuracy")
    return value if value is not None else spec_value(run, "target_accuracy")


def is_classification(run: Run) -> bool:
    return bool(DATASETS.get(run.dataset) and DATASETS[run.dataset].task == "classification")


def is_synthetic(run: Run) -> bool:
    return bool(DATASETS.get(run.dataset) and DATASETS[run.dataset].kind == "synthetic")


def is_file_dataset(run: Run) -> bool:
    return bool(DATASETS.get(run.dataset) and DATASETS[run.dataset].kind == "file")


def distinguishing_labels(runs, separator: str = " ") -> dict[int, str]:
    """Chart labels that tell a matrix's runs apart: "#3 PyTorch" plus the mode, precision and seed where
    those vary among the runs shown, e.g. "#7 PyTorch torch.compile mixed seed 1" (separator "<br>" puts
    the settings on a second line of a category axis)."""
    runs = list(runs)
    varying = []
    modes = mode_texts(runs)
    modes_per_framework: dict[str, set] = {}
    for run in runs:
        modes_per_framework.setdefault(run.framework, set()).add(modes[run.id])
    if any(len(labels) > 1 for labels in modes_per_framework.values()):
        varying.append(lambda run: modes[run.id])
    if len({run_precision(run) for run in runs}) > 1:
        varying.append(run_precision)
    if len({spec_value(run, "seed") for run in runs}) > 1:
        varying.append(lambda run: f"seed {spec_value(run, 'seed')}")
    return {run.id: separator.join(filter(None, [trace_name(run), " ".join(read(run) for read in varying)]))
            for run in runs}
