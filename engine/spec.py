"""RunSpec: everything that defines one training run, validated where it is built."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from engine.catalog import DATASETS, FRAMEWORKS, MODELS, OPTIMIZERS

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda:\d+)$")


class SpecError(ValueError):
    """A run spec field holds a value Arena cannot run; the message names field and value."""

    def __init__(self, field: str, value: Any, reason: str):
        self.field = field
        self.value = value
        super().__init__(f"{field}={value!r}: {reason}")


@dataclass(frozen=True)
class RunSpec:
    framework: str
    model: str
    dataset: str
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    device: str = "auto"
    # Cap on optimizer steps per epoch: for smoke tests and quick looks; None trains on all data.
    max_steps_per_epoch: Optional[int] = None
    # Standard deviation of Gaussian noise added to powerlaw targets; ignored by other datasets.
    noise: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("framework", self.framework, FRAMEWORKS)
        _check_choice("model", self.model, tuple(MODELS))
        _check_choice("dataset", self.dataset, tuple(DATASETS))
        allowed = MODELS[self.model].datasets
        if self.dataset not in allowed:
            raise SpecError(
                "dataset", self.dataset, f"model {self.model!r} trains on {', '.join(allowed)}"
            )
        _check_int("epochs", self.epochs, low=1)
        train_size = DATASETS[self.dataset].train_size
        _check_int("batch_size", self.batch_size, low=1)
        if self.batch_size > train_size:
            raise SpecError(
                "batch_size",
                self.batch_size,
                f"larger than the {self.dataset} training set ({train_size} samples)",
            )
        _check_float("lr", self.lr, positive=True)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_int("seed", self.seed, low=0, high=2**31 - 1)
        if not isinstance(self.device, str) or not _DEVICE_PATTERN.match(self.device):
            raise SpecError("device", self.device, "expected 'auto', 'cpu' or 'cuda:N'")
        if self.max_steps_per_epoch is not None:
            _check_int("max_steps_per_epoch", self.max_steps_per_epoch, low=1)
        _check_float("noise", self.noise, positive=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, the form stored on every run row."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSpec":
        """Rebuild (and so re-validate) a spec; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(unknown[0], data[unknown[0]], "unknown spec field")
        return cls(**data)

    @classmethod
    def with_model_defaults(cls, framework: str, model: str, dataset: str, **overrides: Any) -> "RunSpec":
        """A spec that takes the model's recommended hyper-parameters unless overridden (None = default)."""
        if model not in MODELS:
            _check_choice("model", model, tuple(MODELS))
        values = dict(MODELS[model].defaults)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(framework=framework, model=model, dataset=dataset, **values)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpecError(name, value, f"expected one of {', '.join(choices)}")


def _check_int(name: str, value: Any, low: int, high: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(name, value, "expected a whole number")
    if value < low:
        raise SpecError(name, value, f"must be >= {low}")
    if high is not None and value > high:
        raise SpecError(name, value, f"must be <= {high}")


def _check_float(name: str, value: Any, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(name, value, "expected a number")
    if not math.isfinite(value):
        raise SpecError(name, value, "must be finite")
    if positive and value <= 0:
        raise SpecError(name, value, "must be > 0")
    if not positive and value < 0:
        raise SpecError(name, value, "must be >= 0")
