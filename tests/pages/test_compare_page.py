"""Compare page: empty state, charts in framework colours, and the "what was compared" verdict."""
from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta

import numpy as np

from db import queries
from db.session import make_sessionmaker
from engine.spec import RunSpec
from analysis.run_styles import FRAMEWORK_COLORS
from ui.fairness_panel import DETAILS_KEY
from ui.router import COMPARE_PAGE


def chart_specs(at) -> dict[str, dict]:
    """Plotly figures on the page by chart key suffix ("chart_loss_step" ...)."""
    charts = at.get("plotly_chart")
    return {chart.proto.id.rsplit("-", 1)[-1]: json.loads(chart.proto.spec) for chart in charts}


def array(values) -> list:
    """A plotly JSON array: a plain list, or numpy data encoded as {"dtype", "bdata"}."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)


def stored(url: str, run_id: int):
    with make_sessionmaker(url).begin() as s:
        run = queries.get_run(s, run_id)
        s.expunge(run)
        return run


def summary_table(at):
    """The per-run summary (section, quantity) x run, run columns named "#3 PyTorch" (baseline mark dropped)."""
    table = next(d.value for d in at.dataframe if ("Settings", "status") in d.value.index)
    table = table.rename(columns=lambda name: name.replace(" (baseline)", ""))
    return table


def show_tab(at, name: str):
    """Open a tab of the Compare page (only the open tab is rendered) and render again."""
    at.session_state["compare_tab"] = name
    return at.run()


def open_details(at):
    """Open the "Held equal" popover, whose details are built only while it is open, and render again."""
    at.session_state[DETAILS_KEY] = True
    return at.run()


def every_chart(at) -> dict[str, dict]:
    """Charts of every tab, opening each in turn."""
    specs = {}
    for name in ("Learning", "Speed", "Memory"):
        specs.update(chart_specs(show_tab(at, name)))
    return specs


def selected_ids(at) -> list[int]:
    if "runs" not in at.query_params:
        return []
    value = at.query_params["runs"]
    return [int(i) for i in (value if isinstance(value, str) else value[0]).split(",")]


def text_of(at) -> str:
    return "\n".join(e.value for kind in ("markdown", "subheader", "success", "warning", "info", "caption")
                     for e in getattr(at, kind))


def test_empty_database_says_there_are_no_runs_and_links_to_launch(arena_db, open_page):
    at = open_page(COMPARE_PAGE)

    assert "No runs yet" in at.info[0].value
    assert at.get("page_link")[0].proto.label == "Launch your first run"
    assert not at.dataframe and not at.get("plotly_chart")


def test_a_fair_pair_gets_every_chart_in_its_framework_colour(runs_db, open_page):
    ids = sorted([runs_db.torch_id, runs_db.tensorflow_id])
    at = open_page(COMPARE_PAGE, runs=f"{ids[0]},{ids[1]}")

    assert selected_ids(at) == ids
    specs = every_chart(at)
    assert {"chart_metric_step/train_loss", "chart_metric_test_accuracy", "chart_throughput", "chart_rate_violin",
            "chart_epoch_time", "chart_warmup", "chart_step_time_box", "chart_step_time", "chart_inference_bs1",
            "chart_inference_bsN", "chart_memory", "chart_cpu"} <= set(specs)
    loss_traces = [t for t in specs["chart_metric_step/train_loss"]["data"] if t.get("showlegend") is not False]
    # Train and test together: the per-step loss in each run's colour, the test loss beside it, fainter.
    colours = {trace["name"]: (trace["line"]["color"], trace["line"]["dash"]) for trace in loss_traces}
    assert colours == {
        f"#{runs_db.torch_id} PyTorch": (FRAMEWORK_COLORS["torch"], "solid"),
        f"#{runs_db.tensorflow_id} TensorFlow": (FRAMEWORK_COLORS["tensorflow"], "dash"),
        f"#{runs_db.torch_id} PyTorch · test loss": (FRAMEWORK_COLORS["torch"], "solid"),
        f"#{runs_db.tensorflow_id} TensorFlow · test loss": (FRAMEWORK_COLORS["tensorflow"], "dash"),
    }
    assert specs["chart_throughput"]["data"][0]["marker"]["color"] == [
        FRAMEWORK_COLORS["torch" if i == runs_db.torch_id else "tensorflow"] for i in ids]


def test_what_was_compared_says_only_the_framework_differs(runs_db, open_page):
    at = open_page(COMPARE_PAGE, runs=f"{runs_db.torch_id},{runs_db.tensorflow_id}")

    closed = text_of(at)
    assert "What was compared" in closed and "Equal settings" in closed  # the one line and its badge
    assert "Identical in all" not in closed and "How the runs were measured" not in closed  # not sent until opened
    text = text_of(open_details(at))
    assert "Identical in all: model `mlp`, dataset `digits`, epochs `2`" in text
    assert "Equal settings: only the framework differs." in text
    assert "first step" in text and "warm-up steps" in text and "same initial weights" in text and "1e-8" in text
    assert not at.warning
    # One run each: no interval is claimed (the steps of one run say nothing about the next run); the page says
    # how many seeds would tell, and shows the steps' spread only as variation within one run.
    speed = text_of(show_tab(at, "Speed"))
    assert "No difference can be told yet from 1 run each" in speed and "95% CI" not in speed
    assert "runs (seeds) per side" in speed and "Within one run, steady steps vary by" in speed
    summary = summary_table(show_tab(at, "Summary"))
    assert list(summary.columns) == sorted(summary.columns, key=lambda name: int(name.split()[0][1:]))
    assert {("Result", "final test accuracy"), ("Speed", "samples/s (median epoch)"), ("Model", "trainable parameters"),
            ("Settings", "framework version"), ("Settings", "device"), ("Settings", "mode"),
            ("Settings", "precision (compute dtype)")} <= set(summary.index)
    assert [cell.split(" (")[0] for cell in summary.loc[("Model", "trainable parameters")]] == ["9,610"] * 2


def test_runs_with_different_settings_are_flagged_as_unequal(runs_db, open_page):
    sessions = make_sessionmaker(runs_db.url)
    spec = RunSpec.with_model_defaults("tensorflow", "mlp", "digits", epochs=2, max_steps_per_epoch=10, seed=3)
    with sessions.begin() as s:
        other = queries.create_run(s, spec.to_dict()).id
        queries.fail_run(s, other, "RuntimeError: never trained")
    at = open_page(COMPARE_PAGE, runs=f"{runs_db.torch_id},{other}")

    assert "differs: **seed**" in text_of(at)  # the one line
    assert "**seed** differs" in text_of(open_details(at))  # the details, each run's value
    assert len(at.warning) == 1
    assert "Not an equal comparison" in at.warning[0].value and "seed" in at.warning[0].value


def test_runs_that_trained_at_the_same_time_are_flagged(runs_db, open_page):
    sessions = make_sessionmaker(runs_db.url)
    start = datetime(2026, 1, 1, 12, 0, 0)
    ids = []
    with sessions.begin() as s:
        for framework, offset_s in (("torch", 0), ("tensorflow", 5)):
            spec = RunSpec.with_model_defaults(framework, "mlp", "digits", epochs=2)
            run = queries.create_run(s, spec.to_dict())
            started = start + timedelta(seconds=offset_s)
            queries.update_run(s, run.id, status="finished", hostname="box", started_at=started,
                               finished_at=started + timedelta(seconds=20))
            ids.append(run.id)
    at = open_page(COMPARE_PAGE, runs=f"{ids[0]},{ids[1]}")

    warning = next(w.value for w in at.warning if "same time" in w.value)
    assert "15 s" in warning and "speed" in warning
    assert "Equal settings: only the framework differs." in text_of(open_details(at))


def test_a_run_that_trained_beside_busy_processes_is_flagged_and_a_quiet_one_is_not(runs_db, open_page):
    sessions = make_sessionmaker(runs_db.url)
    ids = []
    with sessions.begin() as s:
        for framework, others in (("torch", 0.93), ("tensorflow", 0.04)):
            spec = RunSpec.with_model_defaults(framework, "mlp", "digits", epochs=2)
            run = queries.create_run(s, spec.to_dict())
            queries.finish_run(s, run.id, {"others_busy_cores": others, "host_cores": 2})
            ids.append(run.id)
    at = open_page(COMPARE_PAGE, runs=f"{ids[0]},{ids[1]}")

    assert "Busy machine" in text_of(at)  # the badge on the one line
    warning = next(w.value for w in at.warning if "Busy machine" in w.value)
    assert f"#{ids[0]} PyTorch: 0.9 of 2 cores" in warning and f"#{ids[1]}" not in warning

    at = open_page(COMPARE_PAGE, runs=f"{runs_db.torch_id},{ids[1]}")  # the fixture's runs read quiet (0.0)
    assert "Busy machine" not in text_of(at)


def test_unknown_run_ids_in_the_url_are_reported(runs_db, open_page):
    at = open_page(COMPARE_PAGE, runs=f"{runs_db.torch_id},9999")

    assert "#9999" in at.warning[0].value
    assert selected_ids(at) == [runs_db.torch_id]


def test_without_a_selection_the_newest_runs_are_compared(runs_db, open_page):
    at = open_page(COMPARE_PAGE)

    with make_sessionmaker(runs_db.url).begin() as s:
        newest = [run.id for run in queries.list_runs(s)[:2]]
    assert selected_ids(at) == sorted(newest)


def test_step_times_are_drawn_per_run_after_the_warm_up_steps(runs_db, open_page):
    ids = sorted([runs_db.torch_id, runs_db.tensorflow_id])
    at = open_page(COMPARE_PAGE, runs=f"{ids[0]},{ids[1]}", tab="Speed")

    boxes = chart_specs(at)["chart_step_time_box"]["data"]
    assert [box["type"] for box in boxes] == ["box", "box"]
    for box, run_id in zip(boxes, ids):
        run = stored(runs_db.url, run_id)
        assert box["name"].startswith(f"#{run_id} ")
        assert box["line"]["color"] == FRAMEWORK_COLORS[run.framework]
        # 2 epochs x 10 steps, the first 10 (warm-up) left out: the box holds the steady-state steps only.
        assert run.summary["warmup_steps"] == 10
        assert len(array(box["y"])) == 2 * 10 - 10
    assert "leave out the first 10 warm-up steps" in text_of(at)
    per_step = chart_specs(at)["chart_step_time"]
    assert per_step["layout"]["yaxis"]["type"] == "log"
    assert per_step["layout"]["shapes"][0]["x1"] == 10.5  # the warm-up steps, shaded
    startup = [trace for trace in chart_specs(at)["chart_warmup"]["data"] if trace.get("showlegend") is False]
    assert [trace["name"] for trace in startup] == ["first step", "compile", "all warm-up steps"]
    for trace in startup:  # one bar per run in its framework colour
        assert [name.split()[0] for name in trace["x"]] == [f"#{i}" for i in ids]
        # Outlined in the framework colour; the fill is that colour in one shade per quantity.
        assert trace["marker"]["line"]["color"] == [FRAMEWORK_COLORS[stored(runs_db.url, i).framework] for i in ids]


def test_inference_latency_is_charted_at_batch_1_and_the_training_batch_size(runs_db, open_page):
    ids = sorted([runs_db.torch_id, runs_db.tensorflow_id])
    at = open_page(COMPARE_PAGE, runs=f"{ids[0]},{ids[1]}", tab="Speed")

    specs = chart_specs(at)
    for key, label in (("chart_inference_bs1", "batch 1"), ("chart_inference_bsN", "batch 32")):
        (bars,) = specs[key]["data"]
        assert [name.split("<br>")[-1] for name in bars["x"]] == [label, label]
        assert bars["marker"]["color"] == [FRAMEWORK_COLORS["torch" if i == runs_db.torch_id else "tensorflow"]
                                           for i in ids]
        assert all(value > 0 for value in array(bars["y"]))
    assert any("at batch 1 and at its training batch size" in c.value for c in at.caption)


def test_summary_shows_how_each_run_ran_and_its_speed_in_detail(runs_db, open_page):
    at = open_page(COMPARE_PAGE, runs=f"{runs_db.torch_id},{runs_db.tensorflow_id}", tab="Summary")

    summary = summary_table(at)
    settings = {quantity for section, quantity in summary.index if section == "Settings"}
    assert {"mode", "precision (compute dtype)", "layout", "TF32", "deterministic", "same initial weights",
            "time to target"} <= settings
    speed = {quantity for section, quantity in summary.index if section == "Speed"}
    assert {"compile time (first step − median step)", "first step (excluded)", "steady samples/s", "step time p50",
            "step time p95"} <= speed, speed
    by_framework = {name.split()[-1]: summary[name] for name in summary.columns}
    assert by_framework["PyTorch"][("Settings", "mode")] == "eager"
    assert by_framework["TensorFlow"][("Settings", "mode")] == "tf.function (graph)"
    assert set(summary.loc[("Settings", "precision (compute dtype)")]) == {"fp32"}
    assert set(summary.loc[("Settings", "TF32")]) == {"off"}
    assert set(summary.loc[("Settings", "same initial weights")]) == {"yes"}
    assert set(summary.loc[("Settings", "layout")]) == {"n/a"}  # an MLP has no convolutions
    baseline = summary.columns[0]
    assert summary[baseline][("Speed", "step time p95")].endswith(" ms")
    assert summary[summary.columns[1]][("Speed", "step time p95")].endswith("%)")  # the other run: its difference
    # Two epochs of ten steps do not reach mlp's 95 % target.
    assert set(summary.loc[("Settings", "time to target")]) == {"95.0 % not reached"}


def test_what_was_held_equal_is_said_in_words(runs_db, open_page):
    at = open_details(open_page(COMPARE_PAGE, runs=f"{runs_db.torch_id},{runs_db.tensorflow_id}"))

    text = text_of(at)
    assert ("**Held equal:** the same data split and sample order, the same initial weights, the same optimizer "
            "(Adam, learning rate 0.001), warm-up 10 steps excluded from timing, fp32, TF32 off, default "
            "(non-deterministic) kernels, the same device (cpu).") in text
    assert "**Execution mode, each framework's own:** PyTorch eager · TensorFlow tf.function (graph)." in text


def test_a_seed_matrix_is_matched_across_frameworks_not_unequal(runs_db, open_page):
    sessions = make_sessionmaker(runs_db.url)
    ids = []
    with sessions.begin() as s:
        for framework in ("torch", "tensorflow"):
            for seed in (0, 1):
                spec = RunSpec.with_model_defaults(framework, "mlp", "digits", epochs=2, seed=seed)
                run = queries.create_run(s, spec.to_dict(), "matrix01")
                queries.fail_run(s, run.id, "RuntimeError: never trained")
                ids.append(run.id)
    at = open_details(open_page(COMPARE_PAGE, runs=",".join(map(str, ids))))

    assert "**seed** differs" in text_of(at)
    assert not [w for w in at.warning if "Not an equal comparison" in w.value]
    assert any("Matched across frameworks" in s.value and "seed" in s.value for s in at.success)


def test_a_precision_difference_between_frameworks_is_flagged(runs_db, open_page):
    sessions = make_sessionmaker(runs_db.url)
    spec = RunSpec.with_model_defaults("tensorflow", "mlp", "digits", epochs=2, max_steps_per_epoch=10,
                                       precision="mixed")
    with sessions.begin() as s:
        other = queries.create_run(s, spec.to_dict()).id
        queries.fail_run(s, other, "RuntimeError: never trained")
    at = open_page(COMPARE_PAGE, runs=f"{runs_db.torch_id},{other}")

    assert "differs: **precision**" in text_of(at)
    assert "**precision** differs" in text_of(open_details(at))
    assert "precision" in next(w.value for w in at.warning if "Not an equal comparison" in w.value)
