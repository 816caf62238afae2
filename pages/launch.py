"""Launch: pick a model and settings, queue one run or an identical PyTorch/TensorFlow pair."""
from __future__ import annotations

import streamlit as st

from engine.catalog import DATASETS, FRAMEWORKS, MODELS, OPTIMIZERS, framework_label
from engine.devices import check_available
from engine.launch import launch
from engine.spec import RunSpec, SpecError
from pages import common

BOTH = "both"
FRAMEWORK_CHOICES = (*FRAMEWORKS, BOTH)
OPTIMIZER_LABELS = {"sgd": "SGD", "momentum": "SGD + momentum 0.9", "adam": "Adam"}
FIELD_LABELS = {
    "framework": "Framework", "model": "Model", "dataset": "Dataset", "epochs": "Epochs",
    "batch_size": "Batch size", "lr": "Learning rate", "optimizer": "Optimizer", "seed": "Seed",
    "device": "Device", "max_steps_per_epoch": "Max steps per epoch", "noise": "Noise",
}


def framework_choice_label(choice: str) -> str:
    return "Both (identical settings)" if choice == BOTH else framework_label(choice)


def spec_error_message(exc: SpecError) -> str:
    """Say which field is wrong, its value, why, and what to do; the form keeps the input."""
    label = FIELD_LABELS.get(exc.field, exc.field)
    reason = str(exc).split(": ", 1)[-1]
    return (f"**{label}** = `{exc.value}` can't be used: {reason}. "
            f"Change {label.lower()} and submit again. Nothing was queued.")


def build_specs(frameworks: list[str], model: str, dataset: str, settings: dict) -> list[RunSpec]:
    """Validated specs, one per framework with the same settings; raises SpecError."""
    specs = [RunSpec.with_model_defaults(fw, model, dataset, **settings) for fw in frameworks]
    check_available(specs[0].device)
    return specs


common.ensure_router()
st.title("Launch")
st.caption("Train the same experiment in PyTorch and TensorFlow and compare them run for run. "
           "Runs train in their own processes: you can leave this page while they run.")

choice = st.radio("Framework", FRAMEWORK_CHOICES, index=len(FRAMEWORK_CHOICES) - 1,
                  format_func=framework_choice_label, horizontal=True, key="framework")
if choice == BOTH:
    st.caption(":material/balance: **Both** queues a PyTorch run and a TensorFlow run that hold everything "
               "else equal: the same data split and sample order, the same initial weights generated from "
               "the seed, and the same optimizer settings (including Adam's epsilon of 1e-8). They train one "
               "after the other, never sharing the machine, so their speed numbers compare too.")

left, right = st.columns(2)
model = left.selectbox("Model", list(MODELS), key="model",
                       format_func=lambda name: f"{name} — {MODELS[name].description}")
dataset = right.selectbox("Dataset", MODELS[model].datasets, key="dataset",
                          format_func=lambda name: f"{name} — {DATASETS[name].description}")
defaults = MODELS[model].defaults
train_size = DATASETS[dataset].train_size

# Widget keys include the model and dataset, so switching either pre-fills that model's defaults.
prefix = f"{model}.{dataset}"
with st.form("launch_form"):
    st.markdown(f"**Settings** · defaults for {model} reach the quality bar on {dataset}")
    c1, c2, c3 = st.columns(3)
    epochs = c1.number_input("Epochs", min_value=1, max_value=1000, value=defaults["epochs"], step=1,
                             key=f"{prefix}.epochs")
    batch_size = c2.number_input("Batch size", min_value=1, value=defaults["batch_size"], step=1,
                                 key=f"{prefix}.batch_size",
                                 help=f"At most {train_size:,}: the {dataset} training set.")
    lr = c3.number_input("Learning rate", min_value=0.0, value=float(defaults["lr"]), step=1e-4, format="%g",
                         key=f"{prefix}.lr", help="Must be > 0. Type small values directly, e.g. 0.0001.")
    c1, c2, c3 = st.columns(3)
    optimizer = c1.selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(defaults["optimizer"]),
                             format_func=OPTIMIZER_LABELS.get, key=f"{prefix}.optimizer")
    seed = c2.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key=f"{prefix}.seed",
                           help="Fixes the data split, the sample order and the initial weights.")
    device = c3.selectbox("Device", common.device_choices(), key=f"{prefix}.device",
                          help="auto: a GPU when the framework finds one, otherwise the CPU.")
    c1, c2, _ = st.columns(3)
    max_steps = c1.number_input("Max steps per epoch", min_value=0, value=0, step=1, key=f"{prefix}.max_steps",
                                help="0 trains on the whole training set each epoch; a cap makes quick looks.")
    noise = 0.0
    if DATASETS[dataset].task == "regression":
        noise = c2.number_input("Noise", min_value=0.0, value=0.0, step=0.01, format="%g", key=f"{prefix}.noise",
                                help="Standard deviation of Gaussian noise added to the targets.")
    frameworks = list(FRAMEWORKS) if choice == BOTH else [choice]
    submitted = st.form_submit_button("Queue 2 runs" if choice == BOTH else "Queue run", type="primary")

if submitted:
    settings = dict(epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), optimizer=optimizer,
                    seed=int(seed), device=device, max_steps_per_epoch=int(max_steps) or None, noise=float(noise))
    try:
        specs = build_specs(frameworks, model, dataset, settings)
    except SpecError as exc:
        st.error(spec_error_message(exc), icon=":material/error:")
    else:
        try:
            run_ids = launch(common.sessions(), specs, common.db_url())
        except OSError as exc:
            st.error(f"Could not start a runner process: {exc}. Check that this machine can start Python "
                     "processes, then submit again.", icon=":material/error:")
        else:
            st.session_state[common.LAUNCHED_KEY] = run_ids

launched = st.session_state.get(common.LAUNCHED_KEY)
if launched:
    ids = common.format_run_ids(launched)
    names = " and ".join(f"#{i}" for i in launched)
    st.success(f"Queued run{'s' if len(launched) > 1 else ''} {names}. "
               "They train in the background; follow them live.", icon=":material/check_circle:")
    c1, c2, _ = st.columns([1, 1, 3])
    with c1:
        st.page_link(common.RUNS_PAGE, label="Follow on Runs", icon=":material/table_rows:",
                     query_params={common.RUNS_PARAM: ids})
    with c2:
        st.page_link(common.COMPARE_PAGE, label="Open in Compare", icon=":material/compare_arrows:",
                     query_params={common.RUNS_PARAM: ids})
