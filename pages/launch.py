"""Launch: pick a model and settings, queue one run or a matrix (frameworks x modes x precisions x seeds x workers)."""
from __future__ import annotations

import streamlit as st

from analysis.device_labels import device_labels
from analysis.formatting import escape_markdown
from analysis.launch_plan import (
    PRECISION_LABELS, build_matrix, data_files_note, describe_input, describe_matrix, run_names, setting_problem,
    spec_error_message, whole, worker_counts,
)
from analysis.run_ids import format_run_ids
from db import queries
from engine.augment import AUGMENTATIONS
from engine.catalog import (
    DATASETS, FRAMEWORKS, LAYOUTS, MAX_LOADER_WORKERS, MODE_LABELS, MODELS, MODES, OPTIMIZERS, PIPELINES, PRECISIONS,
    SYNTHETIC_DEFAULT_SIZE, default_mode, framework_label,
)
from engine.devices import check_available, on_cluster
from engine.launch import launch
from engine.executors.local import cpu_slots, runs_per_gpu
from engine.spec import LAST_BATCH_CHOICES, MAX_WORKERS, STEP_TIMINGS, TF_STRATEGIES, RunSpec, SpecError
from ui.database import db_url, sessions
from ui.router import COMPARE_PAGE, RUNS_PAGE, ensure_router
from ui.widgets import LAUNCHED_KEY, RUNS_PARAM

BOTH = "both"
FRAMEWORK_CHOICES = (*FRAMEWORKS, BOTH)
STEP_TIMING_LABELS = {"auto": "auto (windows on a GPU)", "every_step": "every step", "windows": "windows of steps"}
OPTIMIZER_LABELS = {"sgd": "SGD", "momentum": "SGD + momentum 0.9", "adam": "Adam"}
PIPELINE_LABELS = {"arrays": "arrays (the same in both)", "native": "native (DataLoader / tf.data)"}
AUGMENT_LABELS = {"crop": "random crop (zero padding)", "flip": "horizontal flip", "noise": "Gaussian noise"}
TF_STRATEGY_LABELS = {"multi_worker": "One process per worker", "mirrored": "One process, every device (Mirrored)"}
LAUNCHED_GROUP_KEY = "launched_group_tag"
CONV_MODELS = ", ".join(name for name, info in MODELS.items() if info.conv)
WHOLE = {"step": 1.0, "format": "%.0f"}  # counting inputs: float inputs shown as whole numbers (see the form)


def framework_choice_label(choice: str) -> str:
    return "Both (identical settings)" if choice == BOTH else framework_label(choice)


def launch_matrix(specs: list[RunSpec]) -> tuple[list[int], str | None]:
    """Queue the specs as one group and wake the scheduler, which places them; (run ids, group tag)."""
    dashboard = sessions()
    run_ids = launch(dashboard, specs, db_url())
    with dashboard.begin() as s:
        return run_ids, queries.get_run(s, run_ids[0]).group_tag


ensure_router()
st.title("Launch")
st.caption("Train the same experiment in PyTorch and TensorFlow and compare them run for run. "
           "Runs train in their own processes, one after the other: you can leave this page while they run.")

choice = st.radio("Framework", FRAMEWORK_CHOICES, index=len(FRAMEWORK_CHOICES) - 1,
                  format_func=framework_choice_label, horizontal=True, key="framework")
frameworks = list(FRAMEWORKS) if choice == BOTH else [choice]
if choice == BOTH:
    st.caption(":material/balance: **Both** runs every setting below in PyTorch and in TensorFlow and holds "
               "everything else equal: the same data split and sample order, the same initial weights generated "
               "from the seed, the same optimizer settings (including Adam's epsilon of 1e-8), precision, TF32 and "
               "layout, and the same warm-up steps left out of the timing. The runs train one after the other, "
               "never sharing the machine, so their speed numbers compare too.")

left, right = st.columns(2)
model = left.selectbox("Model", list(MODELS), key="model",
                       format_func=lambda name: f"{name} — {MODELS[name].description}")
dataset = right.selectbox("Dataset", MODELS[model].datasets, key="dataset",
                          format_func=lambda name: f"{name} — {DATASETS[name].description}")
info, defaults = DATASETS[dataset], MODELS[model].defaults
files = data_files_note(dataset)
if files is not None:
    present, note = files
    (right.caption if present else right.warning)(note, **({} if present else {"icon": ":material/download:"}))
synthetic = info.kind == "synthetic"
classification = info.task == "classification"

# Keys of model-dependent widgets include the model and dataset: switching either pre-fills its defaults.
# Number inputs carry no min or max: Streamlit silently resets a value outside them to the default, so
# RunSpec checks the ranges and the form names the field and the value instead. Counts are float inputs
# shown without decimals (WHOLE) for the same reason: an int input has hidden bounds of +/-2**53, and
# 99999999999999999999 typed into one became the default; a float input passes 1e20 on to be named.
prefix = f"{model}.{dataset}"
settings: dict = {"model": model, "dataset": dataset}

with st.container(border=True):
    st.markdown(f"**Training** · starting from {model}'s recommended settings")
    c1, c2, c3 = st.columns(3)
    settings["epochs"] = whole(c1.number_input("Epochs", value=float(defaults["epochs"]), **WHOLE,
                                               key=f"{prefix}.epochs"))
    size_hint = "the synthetic training set size below" if synthetic else f"{info.train_size:,}: the training set"
    settings["batch_size"] = whole(c2.number_input("Batch size", value=float(defaults["batch_size"]), **WHOLE,
                                                   key=f"{prefix}.batch_size", help=f"At most {size_hint}."))
    settings["lr"] = c3.number_input("Learning rate", value=float(defaults["lr"]), step=1e-4,
                                     format="%g", key=f"{prefix}.lr",
                                     help="Must be > 0. Type small values directly, e.g. 0.0001.")
    c1, c2, c3 = st.columns(3)
    settings["optimizer"] = c1.selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(defaults["optimizer"]),
                                         format_func=OPTIMIZER_LABELS.get, key=f"{prefix}.optimizer")
    seeds_text = c2.text_input("Seeds", value="0", key="seeds",
                               help="One seed (0), a range (0-4) or a list (0, 3, 7): one run per seed and setting. "
                                    "A seed fixes the data split, the sample order and the initial weights.")
    labels = device_labels()
    settings["device"] = c3.selectbox("Device", list(labels), key="device", format_func=labels.get,
                                      help="auto: the scheduler places the run on a free GPU (the CPU on a machine "
                                           "without one). Pin a GPU or the CPU to wait for that device. "
                                           "See Devices for what is busy.")
    c1, c2, _ = st.columns(3)
    settings["max_steps_per_epoch"] = whole(c1.number_input(
        "Max steps per epoch", value=0.0, **WHOLE, key=f"{prefix}.max_steps",
        help="0 trains on the whole training set each epoch; a cap makes quick looks.")) or None
    if not classification:
        settings["noise"] = c2.number_input("Noise", value=0.0, step=0.01, format="%g",
                                            key=f"{prefix}.noise",
                                            help="Standard deviation of Gaussian noise added to the targets.")

with st.container(border=True):
    st.markdown("**Input** · where each step's batch comes from")
    c1, c2, c3 = st.columns(3)
    settings["pipeline"] = c1.radio(
        "Pipeline", PIPELINES, horizontal=True, key="pipeline", format_func=PIPELINE_LABELS.get,
        help="arrays: one numpy pipeline feeds both frameworks the same device arrays, so only the training step "
             "differs: a comparison of steps. native: each framework loads its batches its own way, a PyTorch "
             "DataLoader over a Dataset against a tf.data pipeline (file datasets read from their files), with "
             "the same samples in the same order and as many loader workers on both sides: a comparison of "
             "training the way each framework's tutorials write it. Keras model.fit needs native.")
    if settings["pipeline"] == "native":
        settings["loader_workers"] = whole(c2.number_input(
            "Loader workers", value=2.0, **WHOLE, key="loader_workers",
            help=f"0 to {MAX_LOADER_WORKERS}: DataLoader worker processes (num_workers) in PyTorch, parallel map "
                 "calls on a private thread pool of that size in tf.data. 0 loads in the training process "
                 "(tf.data's prefetch still runs ahead on a background thread)."))
    else:
        c2.caption("Loader workers apply to the native pipeline.")
    if info.modality == "image":
        settings["augment"] = tuple(c3.multiselect(
            "Augmentation", AUGMENTATIONS, default=[], key="augment", format_func=AUGMENT_LABELS.get,
            placeholder="none",
            help="Applied to training batches, seeded from (seed, epoch, sample): defined once and implemented "
                 "in numpy (arrays pipeline, the same draws in both frameworks) and in each framework's own ops "
                 "(native pipeline). Compare's Data tab shows a few images before and after."))
    else:
        c3.caption(f"Augmentation is for image datasets; {dataset} holds none.")

with st.container(border=True):
    st.markdown("**Execution** · pick several modes, precisions or worker counts to queue every combination")
    modes = {}
    columns = st.columns(len(frameworks) + 1)
    for column, framework in zip(columns, frameworks):
        modes[framework] = column.multiselect(
            f"{framework_label(framework)} mode", MODES[framework], default=[default_mode(framework)],
            format_func=MODE_LABELS.get, key=f"modes.{framework}",
            help=f"Default: {MODE_LABELS[default_mode(framework)]}, the framework's usual way to run a training step.")
    precisions = columns[-1].multiselect(
        "Precision", PRECISIONS, default=["fp32"], format_func=PRECISION_LABELS.get, key="precisions",
        help="mixed: bfloat16 compute on a CPU; float16 with loss scaling (or bfloat16) on a GPU. "
             "The compute dtype each run used is in its summary.")
    c1, c2, c3, c4 = st.columns(4)
    conv = MODELS[model].conv
    layout = c1.selectbox(
        "Layout", LAYOUTS, key="layout", disabled=not conv,
        help="Memory layout of images and activations. TensorFlow on a CPU runs convolutions channels_last only.")
    settings["layout"] = layout if conv else LAYOUTS[0]  # stored as the default where it does not apply
    c1.caption("TensorFlow on a CPU runs channels_last only." if conv
               else f"Applies to convolutional models only ({CONV_MODELS}).")
    settings["tf32"] = c2.toggle("TF32", value=False, key="tf32",
                                 help="TF32 matmuls and convolutions on Ampere or newer NVIDIA GPUs. Off in both "
                                      "by default: TensorFlow would turn it on where PyTorch's matmuls leave it off.")
    c2.caption("Only matters on Ampere+ GPUs.")
    settings["deterministic"] = c3.toggle("Deterministic", value=False, key="deterministic",
                                          help="PyTorch deterministic algorithms / TensorFlow op determinism: "
                                               "repeatable results, usually slower.")
    settings["same_init"] = c4.toggle("Same initial weights", value=True, key="same_init",
                                      help="One set of weights drawn from the seed and loaded into both frameworks. "
                                           "Off: each framework's own initialisers.")
    # Text, not a number input: several counts ("1, 2, 4") queue a scaling study, and RunSpec names a count
    # outside 1..8 or a batch that does not split evenly, as for the other fields.
    c1, c2, c3, _ = st.columns(4)
    workers_text = c1.text_input(
        "Workers", value="1", key="workers",
        help=f"Data-parallel worker processes per run, 1 to {MAX_WORKERS}: PyTorch DistributedDataParallel, "
             "TensorFlow MultiWorkerMirroredStrategy. The batch size above stays the global batch, split evenly "
             "between the workers. Several counts (1, 2, 4) queue a scaling study in one group: one run per count, "
             "compared on Compare's Scaling tab.")
    settings["sync_batchnorm"] = c2.toggle(
        "Sync batch norm", value=False, key="sync_batchnorm",
        help="With several workers, batch norm statistics computed over the global batch (SyncBatchNorm, "
             "Keras's synchronized BatchNormalization) instead of each worker's shard. Slower; no effect on "
             "one worker or on models without batch norm.")
    c2.caption("Only matters with 2 or more workers.")
    if "tensorflow" in frameworks and max(worker_counts(workers_text), default=1) > 1:
        settings["tf_strategy"] = c3.selectbox(
            "TensorFlow strategy", TF_STRATEGIES, key="tf_strategy", format_func=TF_STRATEGY_LABELS.get,
            help="How a TensorFlow run of several workers spreads them. One process per worker: "
                 "MultiWorkerMirroredStrategy, as PyTorch's DDP runs. One process, every device: MirroredStrategy "
                 "over the run's GPUs (on a machine without GPUs, logical CPU devices: a check that it computes "
                 "the same steps, not a speed figure).")

with st.container(border=True):
    st.markdown("**Measurement**")
    c1, c2, c3 = st.columns(3)
    settings["warmup_steps"] = whole(c1.number_input(
        "Warm-up steps", value=10.0, **WHOLE, key="warmup_steps",
        help="The first steps (compilation, tracing, allocator warm-up) are timed apart and left out of "
             "throughput and step-time percentiles."))
    settings["inference_iters"] = whole(c2.number_input(
        "Inference iterations", value=30.0, **WHOLE, key="inference_iters",
        help="Timed forward passes at batch 1 and at the training batch size after training; 0 skips them."))
    if classification:
        settings["target_accuracy"] = c3.number_input(
            "Target accuracy", value=float(defaults.get("target_accuracy", 0.9)),
            step=0.01, format="%.2f", key=f"{prefix}.target_accuracy",
            help="Time to target: wall time until the test accuracy first reaches this fraction (checked "
                 "after every epoch).")
    else:
        c3.caption("Time to target needs a classification dataset.")
    c1, c2, c3 = st.columns(3)
    settings["sample_hz"] = float(c1.number_input(
        "Memory samples per second", value=10.0, step=1.0, format="%g",
        key="sample_hz", help="How often the runner reads NVML, the framework allocator and the host (RSS, CPU). "
                              "Exact per-epoch peaks come from the allocators' own counters either way; 0 turns "
                              "the trace off."))
    settings["tf_memory_growth"] = c2.toggle(
        "TensorFlow memory growth", value=True, key="tf_memory_growth", disabled="tensorflow" not in frameworks,
        help="On: TensorFlow takes GPU memory as it needs it, comparable with PyTorch's caching allocator. "
             "Off: TensorFlow's own default, reserving nearly the whole GPU at start.")
    c2.caption("GPU only; recorded on the run.")
    settings["on_divergence"] = c3.radio(
        "NaN or infinite loss", ("stop", "continue"), horizontal=True, key="on_divergence",
        format_func={"stop": "Stop the run", "continue": "Note it, keep training"}.get,
        help="Either way the run ends as diverged, with the step where the loss stopped being finite.")
    settings["layer_stats"] = c1.toggle(
        "Layer statistics", value=True, key="layer_stats",
        help="At the start and after every epoch: each layer's weights and its gradient on one fixed batch (norms, "
             "histograms), compared on Compare. Timed apart: not in epoch time or throughput.")
    c1, c2, c3 = st.columns(3)
    settings["step_timing"] = c1.selectbox(
        "Step timing", STEP_TIMINGS, key="step_timing", format_func=STEP_TIMING_LABELS.get,
        help="Every step: the device is synchronised after each step and each is timed alone (free on a CPU, "
             "which waits for each step anyway). Windows: synchronised only at the ends of windows of steps, as "
             "the frameworks' own benchmarks time throughput, and every few windows timed step by step for the "
             "per-step distribution. Auto: every step on a CPU, windows on a GPU.")
    settings["calibration_steps"] = whole(c2.number_input(
        "Phase calibration steps", value=20.0, **WHOLE, key="calibration_steps",
        help="After training: steps timed phase by phase (data, copy to device, forward, backward, optimizer), "
             "synchronised between phases. Outside the timed throughput; 0 skips it."))
    settings["profile_steps"] = whole(c3.number_input(
        "Profiled steps", value=5.0, **WHOLE, key="profile_steps",
        help="After training: steps recorded operator by operator by the framework's own profiler "
             "(torch.profiler, TensorFlow's profiler), with the trace to download. 0 skips it."))
    settings["last_batch"] = c1.radio(
        "Last, smaller batch", LAST_BATCH_CHOICES, horizontal=True, key="last_batch",
        format_func={"drop": "Drop it", "keep": "Train on it"}.get,
        help="Dropped, every step has one shape (as benchmarks do). Kept, the step meets a second shape at each "
             "epoch end: a compiled step may retrace or recompile, and Compare counts it.")
    settings["keep_weights"] = c3.toggle(
        "Keep the trained weights", value=True, key="keep_weights",
        help="Stored with the run (canonical layout, in the database; the Runs page shows their size) so the "
             "Deploy page can export and serve the trained model. Deleted with the run.")
    if info.modality == "sequence":
        settings["variable_length"] = c2.toggle(
            "Variable sequence length", value=False, key="variable_length",
            help="Every batch cut to its own length (seeded, the same in both frameworks): many shapes, so "
                 "tf.function retraces and torch.compile recompiles show on Compare.")

if synthetic:
    with st.container(border=True):
        st.markdown("**Synthetic data** · generated from the seed, learnable")
        c1, c2, c3 = st.columns(3)
        sequence = info.modality == "sequence"
        settings["synthetic_shape"] = c1.text_input(
            "Input shape", value=MODELS[model].synthetic_shape or "", key=f"{prefix}.synthetic_shape",
            help="Sequence length, e.g. 32." if sequence else "Height x width x channels, e.g. 32x32x3.")
        settings["synthetic_classes"] = whole(c2.number_input("Classes", value=10.0, **WHOLE,
                                                              key=f"{prefix}.synthetic_classes"))
        settings["synthetic_size"] = whole(c3.number_input(
            "Training samples", value=float(SYNTHETIC_DEFAULT_SIZE), step=256.0, format="%.0f",
            key=f"{prefix}.synthetic_size", help="The test split holds a quarter as many."))

# The preview validates on every change; submitting validates again and only then queues.
try:
    specs, problem = build_matrix(settings, modes, precisions, seeds_text, workers_text), None
except SpecError as exc:
    specs, problem = [], exc
count = len(specs)
label = "Queue runs" if problem else ("Queue run" if count == 1 else f"Queue {count} runs")
preview = st.empty()
submitted = st.button(label, type="primary", key="queue")

if problem is None:
    input_words = describe_input(specs)
    preview.info(f"This will queue **{count} run{'s' if count > 1 else ''}**"
                 + (" as one group" if count > 1 else "") + f": {describe_matrix(specs)}."
                 + (f" Input: {input_words}." if input_words else ""), icon=":material/playlist_add_check:")
if submitted and problem is None:
    try:
        check_available(specs[0].device)
        if files is not None and not files[0]:  # the runner would fail at once: refuse here, as the CLI does
            raise SpecError("dataset", dataset, "its files are not in the data directory (the note above says how "
                                                "to fetch them)")
    except SpecError as exc:
        problem = exc
setting = setting_problem() if submitted and problem is None else None
if problem is not None:
    message = spec_error_message(problem, submitted=submitted)
    (preview.error if submitted else preview.warning)(message, icon=":material/error:")
elif setting is not None:
    preview.error(f"{escape_markdown(setting)}. Fix it in the dashboard's environment and restart the "
                  "dashboard. Nothing was queued.", icon=":material/error:")
elif submitted:
    try:
        run_ids, group_tag = launch_matrix(specs)
    except OSError as exc:
        preview.error(f"Could not start a runner process: {exc}. Check that this machine can start Python "
                      "processes, then submit again.", icon=":material/error:")
    else:
        st.session_state[LAUNCHED_KEY] = run_ids
        st.session_state[LAUNCHED_GROUP_KEY] = group_tag

launched = st.session_state.get(LAUNCHED_KEY)
if launched:
    ids = format_run_ids(launched)
    group = st.session_state.get(LAUNCHED_GROUP_KEY)
    what = f"{len(launched)} runs {run_names(launched)} as group `{group}`" if len(launched) > 1 else \
        f"run {run_names(launched)}"
    try:
        where = ("The Ray cluster places each on a node with a free GPU, else free CPUs" if on_cluster() else
                 f"The scheduler places each on a free device ({runs_per_gpu()} per GPU, {cpu_slots()} at a time "
                 "on the CPU)")
    except ValueError as exc:
        where = f"The scheduler cannot place runs: {exc}"
    st.success(f"Queued {what}. {where}; each trains in its own process in the background. Follow them live.",
               icon=":material/check_circle:")
    c1, c2, _ = st.columns([1, 1, 3])
    with c1:
        st.page_link(RUNS_PAGE, label="Follow on Runs", icon=":material/table_rows:",
                     query_params={RUNS_PARAM: ids})
    with c2:
        st.page_link(COMPARE_PAGE, label="Open in Compare", icon=":material/compare_arrows:",
                     query_params={RUNS_PARAM: ids})
