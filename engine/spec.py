"""RunSpec: everything that defines one training run, validated where it is built."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from engine.augment import parse_augment
from engine.catalog import (
    DATASETS, FRAMEWORKS, LAYOUTS, MAX_LOADER_WORKERS, MODELS, MODES, NATIVE_PIPELINE_MODES, OPTIMIZERS, PIPELINES,
    PRECISIONS, SYNTHETIC_TEXT_VOCAB, default_mode,
)

# Used with fullmatch: "$" would also match before a trailing newline ("cpu\n"); [0-9], not \d, which
# matches any script's digits.
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda:[0-9]{1,4}")
_IMAGE_SHAPE_PATTERN = re.compile(r"([0-9]{1,9})x([0-9]{1,9})x([0-9]{1,9})")
_SEQUENCE_SHAPE_PATTERN = re.compile(r"([0-9]{1,9})")
MAX_SAMPLE_HZ = 100.0  # beyond it sampling costs the training loop more than it tells
DIVERGENCE_ACTIONS = ("stop", "continue")
MAX_SYNTHETIC_VALUES = 2_000_000_000  # samples x values per sample: beyond it the arrays do not fit in memory
MAX_HISTOGRAM_BINS = 200  # per tensor, kind and epoch in the database: more would not be readable anyway
MAX_EPOCHS = 100_000  # a typo like 1e20 must be an error, not an overflow of the run's step count in the database
STEP_TIMINGS = ("auto", "every_step", "windows")
LAST_BATCH_CHOICES = ("drop", "keep")
MAX_CALIBRATION_STEPS = 1000  # a calibration window is a short look, not a second training run
MAX_PROFILE_STEPS = 100  # a trace of more steps grows to hundreds of MB without telling more
MAX_STEPS_PER_EPOCH = 10_000_000  # the largest training set (synthetic_size) at batch size 1; a cap above it caps nothing
MAX_WORKERS = 8  # data-parallel worker processes of one run (runs.placed_device lists each one's device)
# How a TensorFlow run of several workers spreads them: one process per worker (MultiWorkerMirroredStrategy) or
# one process holding every worker's device (MirroredStrategy).
TF_STRATEGIES = ("multi_worker", "mirrored")


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
    # How the step runs: torch eager | compiled; tensorflow graph | eager | xla. None = the
    # framework's default (catalog.MODES), resolved here so the stored spec always names it.
    mode: Optional[str] = None
    precision: str = "fp32"  # "mixed": bf16 on CPU; bf16 or fp16 with loss scaling on GPU
    # TF32 matmuls/convolutions on Ampere+ GPUs. Off for both by default: TensorFlow turns it on
    # and PyTorch's matmuls leave it off, the kind of silent difference Arena exists to remove.
    tf32: bool = False
    layout: str = "channels_last"  # conv models only; the other models ignore it
    deterministic: bool = False  # PyTorch deterministic algorithms / TensorFlow op determinism
    # Start both frameworks from one set of weights drawn from the seed; off = each framework's own initialisers.
    same_init: bool = True
    # Steps at the start of the run excluded from throughput and step-time percentiles (compile, allocator warm-up).
    warmup_steps: int = 10
    # Test accuracy whose first crossing is timed (time to target); None or 0 = not timed.
    target_accuracy: Optional[float] = None
    # Timed forward passes per batch size in the inference benchmark after training; 0 skips it.
    inference_iters: int = 30
    # Synthetic datasets only: "HxWxC" for images, "T" (sequence length) for text; None = the model's default.
    synthetic_shape: Optional[str] = None
    synthetic_classes: int = 10
    synthetic_size: Optional[int] = None  # training samples; None = catalog default
    # Memory/utilisation samples per second taken in the runner (NVML, allocator, host); 0 = off.
    sample_hz: float = 10.0
    # TensorFlow only: grow GPU memory as needed (on, comparable with PyTorch's caching allocator)
    # or reserve nearly the whole GPU at start (off, TensorFlow's own default).
    tf_memory_growth: bool = True
    # A NaN or infinite loss ends the run as "diverged" ("stop") or is noted and training goes on ("continue").
    on_divergence: str = "stop"
    # Per-layer weight and gradient statistics (norms, histograms) at every epoch end, timed apart from training.
    layer_stats: bool = True
    histogram_bins: int = 30  # equal-width bins between a tensor's min and max
    # How steps are timed. "every_step": a device sync after each step, each step timed alone (free
    # where the host waits for the device anyway: a CPU). "windows": syncs only at the ends of windows
    # of steps (throughput, as the frameworks' own benchmarks measure it) and every few windows timed
    # step by step for the per-step distribution. "auto": every_step on a CPU, windows on a GPU.
    step_timing: str = "auto"
    # Steps of the calibration window after training that splits a step into phases (data, copy,
    # forward, backward, optimizer), synchronised between phases; 0 = none.
    calibration_steps: int = 20
    # Steps profiled operator by operator after training (torch.profiler, TensorFlow's profiler); 0 = none.
    profile_steps: int = 5
    # The last, smaller batch of an epoch: "drop" it (every step the same shape, as benchmarks do) or
    # "keep" it (a second shape: what a compiled step does when the shape changes).
    last_batch: str = "drop"
    # lstm and transformer only: each batch cut to its own sequence length (seeded, the same in both
    # frameworks), so the step sees many shapes: retracing and recompiling show.
    variable_length: bool = False
    # Keep the final weights with the run (canonical layout, in the database) for deployment; off keeps none.
    keep_weights: bool = True
    # Data-parallel worker processes (engine/distributed.py): PyTorch DistributedDataParallel, TensorFlow
    # MultiWorkerMirroredStrategy. batch_size stays the global batch, split evenly between the workers.
    workers: int = 1
    # TensorFlow with workers > 1 (TF_STRATEGIES): "mirrored" trains the N replicas in one process holding the N
    # devices (MirroredStrategy); the default elsewhere, ignored, so specs stored before the field load unchanged.
    tf_strategy: str = "multi_worker"
    # Multi-worker runs with batch norm: statistics synchronised across the workers (SyncBatchNorm, Keras's
    # synchronized BatchNormalization) instead of each worker's own.
    sync_batchnorm: bool = False
    # Where batches come from (catalog.PIPELINES): "arrays", one numpy pipeline feeding both frameworks the
    # same device arrays, or "native", each framework's own loader (DataLoader against tf.data, engine/pipeline.py).
    pipeline: str = "arrays"
    # Native pipeline only: loader processes (DataLoader num_workers) = parallel map calls and threads (tf.data).
    loader_workers: int = 2
    # Image augmentations applied to training batches (engine/augment.py): any of crop, flip, noise; () = none.
    augment: tuple = ()

    def __post_init__(self) -> None:
        _check_choice("framework", self.framework, FRAMEWORKS)
        _check_choice("model", self.model, tuple(MODELS))
        _check_choice("dataset", self.dataset, tuple(DATASETS))
        allowed = MODELS[self.model].datasets
        if self.dataset not in allowed:
            raise SpecError(
                "dataset", self.dataset, f"model {self.model!r} trains on {', '.join(allowed)}"
            )
        _check_int("epochs", self.epochs, low=1, high=MAX_EPOCHS)
        self._check_synthetic()
        train_size = self.train_size()
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
        if not isinstance(self.device, str) or not _DEVICE_PATTERN.fullmatch(self.device):
            raise SpecError("device", self.device, "expected 'auto', 'cpu' or 'cuda:N'")
        if self.max_steps_per_epoch is not None:
            _check_int("max_steps_per_epoch", self.max_steps_per_epoch, low=1, high=MAX_STEPS_PER_EPOCH)
        _check_float("noise", self.noise, positive=False)
        if self.mode is None:
            object.__setattr__(self, "mode", default_mode(self.framework))
        if self.mode not in MODES[self.framework]:
            raise SpecError("mode", self.mode, f"{self.framework} runs in {', '.join(MODES[self.framework])}")
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("layout", self.layout, LAYOUTS)
        for name in ("tf32", "deterministic", "same_init", "tf_memory_growth", "layer_stats",
                     "keep_weights"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(name, getattr(self, name), "expected true or false")
        _check_int("warmup_steps", self.warmup_steps, low=0, high=100_000)
        if self.target_accuracy == 0 and not isinstance(self.target_accuracy, bool):
            object.__setattr__(self, "target_accuracy", None)  # 0 = not timed (None means "model default" upstream)
        if self.target_accuracy is not None:
            _check_float("target_accuracy", self.target_accuracy, positive=True)
            if DATASETS[self.dataset].task != "classification":
                raise SpecError("target_accuracy", self.target_accuracy,
                                f"{self.dataset} is a regression task; it has no accuracy")
            if self.target_accuracy > 1:
                raise SpecError("target_accuracy", self.target_accuracy, "must be a fraction in (0, 1]")
        _check_int("inference_iters", self.inference_iters, low=0, high=100_000)
        _check_float("sample_hz", self.sample_hz, positive=False)
        if self.sample_hz > MAX_SAMPLE_HZ:
            raise SpecError("sample_hz", self.sample_hz, f"must be <= {MAX_SAMPLE_HZ:g} (0 turns sampling off)")
        _check_choice("on_divergence", self.on_divergence, DIVERGENCE_ACTIONS)
        _check_int("histogram_bins", self.histogram_bins, low=1, high=MAX_HISTOGRAM_BINS)
        _check_choice("step_timing", self.step_timing, STEP_TIMINGS)
        _check_int("calibration_steps", self.calibration_steps, low=0, high=MAX_CALIBRATION_STEPS)
        _check_int("profile_steps", self.profile_steps, low=0, high=MAX_PROFILE_STEPS)
        _check_choice("last_batch", self.last_batch, LAST_BATCH_CHOICES)
        if not isinstance(self.variable_length, bool):
            raise SpecError("variable_length", self.variable_length, "expected true or false")
        self._check_workers()
        self._check_pipeline()
        if self.variable_length and DATASETS[self.dataset].modality != "sequence":
            raise SpecError("variable_length", self.variable_length,
                            f"{self.dataset} holds no sequences; variable lengths are for lstm and transformer "
                            f"on synthetic_text")

    def _check_workers(self) -> None:
        _check_int("workers", self.workers, low=1, high=MAX_WORKERS)
        if not isinstance(self.sync_batchnorm, bool):
            raise SpecError("sync_batchnorm", self.sync_batchnorm, "expected true or false")
        _check_choice("tf_strategy", self.tf_strategy, TF_STRATEGIES)
        if self.tf_strategy == "mirrored" and self.framework != "tensorflow":
            raise SpecError("tf_strategy", self.tf_strategy, f"MirroredStrategy is TensorFlow's; {self.framework} "
                            f"runs one process per worker (keep multi_worker)")
        if self.tf_strategy == "mirrored" and self.workers == 1:
            raise SpecError("tf_strategy", self.tf_strategy, "MirroredStrategy spreads a run over several devices; "
                            "set workers to 2 or more, or keep multi_worker")
        if self.tf_strategy == "mirrored" and self.mode == "xla":
            # XLA's known issue "tf.Variable on a different device": one compiled step cannot span the N devices'
            # variables (Keras turns XLA off under tf.distribute for the same reason).
            raise SpecError("mode", self.mode, "one XLA-compiled step cannot reach the variables MirroredStrategy "
                            "keeps on every device; use graph or eager, or tf_strategy multi_worker")
        if self.workers == 1:
            return
        if self.batch_size % self.workers:
            raise SpecError("batch_size", self.batch_size, f"the global batch must split evenly between "
                            f"{self.workers} workers (a multiple of {self.workers})")
        if self.last_batch == "keep":
            raise SpecError("last_batch", self.last_batch, f"with {self.workers} workers every step needs an "
                            f"equal shard per worker; use drop")
        if self.device.startswith("cuda:"):
            raise SpecError("device", self.device, f"{self.workers} workers need {self.workers} devices: use auto "
                            f"(GPUs when the machine has them) or cpu")

    def _check_pipeline(self) -> None:
        _check_choice("pipeline", self.pipeline, PIPELINES)
        _check_int("loader_workers", self.loader_workers, low=0, high=MAX_LOADER_WORKERS)
        try:
            object.__setattr__(self, "augment", parse_augment(self.augment))
        except ValueError as exc:
            raise SpecError("augment", self.augment, str(exc)) from None
        if self.augment and DATASETS[self.dataset].modality != "image":
            raise SpecError("augment", ",".join(self.augment), f"{self.dataset} holds no images; augmentations "
                            f"(crop, flip, noise) are for image datasets")
        if self.mode in NATIVE_PIPELINE_MODES and self.pipeline != "native":
            raise SpecError("pipeline", self.pipeline, f"mode {self.mode} trains over the framework's own input "
                            f"pipeline (tf.data); use pipeline native")
        if self.pipeline == "native" and self.variable_length:
            raise SpecError("variable_length", self.variable_length, "variable lengths are cut by the arrays "
                            "pipeline; use pipeline arrays")
        if self.mode == "fit" and self.workers > 1:
            raise SpecError("workers", self.workers, "mode fit trains on one worker here; use mode graph for "
                            "multi-worker runs")

    def _check_synthetic(self) -> None:
        _check_int("synthetic_classes", self.synthetic_classes, low=2, high=1000)
        text_classes = SYNTHETIC_TEXT_VOCAB // 4
        if self.dataset == "synthetic_text" and self.synthetic_classes > text_classes:
            raise SpecError("synthetic_classes", self.synthetic_classes,
                            f"synthetic_text has room for at most {text_classes} classes")
        if self.synthetic_size is not None:
            _check_int("synthetic_size", self.synthetic_size, low=8, high=10_000_000)
        if self.synthetic_shape is None:
            if DATASETS[self.dataset].kind == "synthetic":
                object.__setattr__(self, "synthetic_shape", MODELS[self.model].synthetic_shape)
            return
        if not isinstance(self.synthetic_shape, str):
            raise SpecError("synthetic_shape", self.synthetic_shape, "expected text like '32x32x3' or '64'")
        modality = DATASETS[self.dataset].modality
        pattern = _SEQUENCE_SHAPE_PATTERN if modality == "sequence" else _IMAGE_SHAPE_PATTERN
        match = pattern.fullmatch(self.synthetic_shape)
        if not match:
            example = "'64' (sequence length)" if modality == "sequence" else "'32x32x3' (height x width x channels)"
            raise SpecError("synthetic_shape", self.synthetic_shape, f"expected {example}")
        dims = [int(d) for d in match.groups()]
        low = 4 if modality == "sequence" else 1
        if min(dims) < low or max(dims) > 4096:
            raise SpecError("synthetic_shape", self.synthetic_shape, f"each size must be in {low}..4096")
        if modality != "sequence" and (dims[0] < 4 or dims[1] < 4):
            raise SpecError("synthetic_shape", self.synthetic_shape, "images must be at least 4x4")
        samples = self.synthetic_size or DATASETS[self.dataset].train_size
        values = samples * 1.25  # the test split adds a quarter
        for d in dims:
            values *= d
        if values > MAX_SYNTHETIC_VALUES:
            raise SpecError("synthetic_shape", self.synthetic_shape,
                            f"with {samples:,} training samples this is {values:,.0f} values; too large for memory")

    def synthetic(self) -> bool:
        """Whether the dataset is generated from the spec's declared shape and size."""
        return DATASETS[self.dataset].kind == "synthetic"

    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample (NHWC for images, (T,) for token sequences)."""
        if self.synthetic():
            return tuple(int(d) for d in self.synthetic_shape.split("x"))
        return DATASETS[self.dataset].input_shape

    def num_outputs(self) -> int:
        """Number of classes (or regression outputs) the model predicts."""
        return self.synthetic_classes if self.synthetic() else DATASETS[self.dataset].num_outputs

    def train_size(self) -> int:
        """Training samples the dataset holds (nominal for file datasets)."""
        if self.synthetic() and self.synthetic_size is not None:
            return self.synthetic_size
        return DATASETS[self.dataset].train_size

    def uses_layout(self) -> bool:
        """Whether the data layout setting applies (conv models only)."""
        return MODELS[self.model].conv

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
        if not isinstance(model, str) or model not in MODELS:  # a list from a spec file cannot be looked up
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
