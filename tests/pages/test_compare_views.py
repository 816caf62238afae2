"""Compare page views on stored runs: settings in the URL, seed groups with bands, the throughput ratio in
words, long series cut to 2,000 points without losing a spike, any metric against any x axis."""
from __future__ import annotations

import math

import pytest

from db import queries
from db.models import FINISHED
from db.session import make_sessionmaker
from engine.spec import RunSpec
from analysis.run_styles import FRAMEWORK_COLORS
from ui.router import COMPARE_PAGE
from tests.pages.test_compare_page import array, chart_specs, selected_ids, text_of

STEPS = 5000
SPIKE_STEP = 3217


@pytest.fixture
def seeds_db(arena_db, monkeypatch):
    """Two seeds per framework, finished, each with STEPS per-step losses (one spike) and step times."""
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    ids = {}
    for framework, step_ms in (("torch", 4.0), ("tensorflow", 5.0)):
        for seed in (0, 1):
            spec = RunSpec.with_model_defaults(framework, "mlp", "digits", epochs=5, seed=seed)
            with sessions.begin() as s:
                run = queries.create_run(s, spec.to_dict(), group_tag="seeds", total_steps=STEPS)
                rows = []
                for step in range(1, STEPS + 1):
                    loss = 2.0 * math.exp(-step / 1500) + 0.01 * seed
                    if step == SPIKE_STEP and framework == "torch" and seed == 0:
                        loss = 50.0
                    epoch = 1 + (step - 1) // 1000
                    wall = 1.7e9 + step * step_ms / 1000
                    rows.append(dict(run_id=run.id, name="step/train_loss", step=step, epoch=epoch, wall_time=wall,
                                     value=loss))
                    rows.append(dict(run_id=run.id, name="step/step_time_ms", step=step, epoch=epoch,
                                     wall_time=wall, value=step_ms * (1 + 0.05 * math.sin(step + seed))))
                rows += [dict(run_id=run.id, name=name, step=epoch * 1000, epoch=epoch, wall_time=1.7e9 + epoch,
                              value=value) for epoch in range(1, 6)
                         for name, value in (("test_accuracy", 0.5 + 0.08 * epoch + 0.01 * seed),
                                             ("test_loss", 1.0 / epoch), ("train_loss", 1.1 / epoch))]
                queries.add_metric_points(s, rows)
                queries.update_run(s, run.id, status=FINISHED, epoch=5, step=STEPS,
                                   summary={"steady_samples_per_s": 32_000 / step_ms * (1 + 0.01 * seed),
                                            "warmup_steps": 10})
                ids[(framework, seed)] = run.id
    return ids


def _run_list(ids) -> str:
    return ",".join(str(i) for i in sorted(ids.values()))


def test_every_chart_setting_is_read_from_and_written_to_the_url(seeds_db, open_page):
    at = open_page(COMPARE_PAGE, runs=_run_list(seeds_db), m="test_loss,step/train_loss", x="epoch", smooth="0",
                   log="1", tt="0")

    assert at.multiselect(key="compare_metrics").value == ["test_loss", "step/train_loss"]
    assert at.session_state["compare_x"] == "epoch" and at.toggle(key="compare_log_y").value is True
    specs = chart_specs(at)
    assert {"chart_metric_test_loss", "chart_metric_step/train_loss"} <= set(specs)
    assert specs["chart_metric_test_loss"]["layout"]["yaxis"]["type"] == "log"
    assert specs["chart_metric_test_loss"]["layout"]["xaxis"]["title"]["text"] == "epoch"

    at.toggle(key="compare_log_y").set_value(False).run()
    at.slider(key="compare_smoothing").set_value(0.9).run()
    assert "log" not in at.query_params  # back to the default: left out of the link
    assert at.query_params["smooth"] in ("0.9", ["0.9"])
    assert selected_ids(at) == sorted(seeds_db.values())  # the selection survives the settings


def test_a_link_with_values_that_make_no_sense_says_what_it_ignored(seeds_db, open_page):
    at = open_page(COMPARE_PAGE, runs=_run_list(seeds_db), x="banana", m="step/train_loss,no_such_metric")

    assert at.session_state["compare_x"] == "step"
    assert at.multiselect(key="compare_metrics").value == ["step/train_loss"]
    caption = next(c.value for c in at.caption if "Ignored in the link" in c.value)
    assert "x=banana" in caption.replace("\\", "") and "m=no_such_metric" in caption.replace("\\", "")


def test_long_series_are_cut_to_2000_points_and_keep_their_spike(seeds_db, open_page):
    spiked = seeds_db[("torch", 0)]
    at = open_page(COMPARE_PAGE, runs=str(spiked), m="step/train_loss", smooth="0", tt="0")

    (trace,) = [t for t in chart_specs(at)["chart_metric_step/train_loss"]["data"] if t.get("showlegend") is not False]
    x, y = array(trace["x"]), array(trace["y"])
    assert len(x) <= 2000 < STEPS
    assert max(y) == 50.0 and x[y.index(50.0)] == SPIKE_STEP  # the true extreme, at its step
    assert x[0] == 1 and x[-1] == STEPS
    assert "lowest and highest value" in text_of(at)


def test_seeds_are_drawn_as_a_mean_with_a_band_and_the_group_size(seeds_db, open_page):
    at = open_page(COMPARE_PAGE, runs=_run_list(seeds_db), m="test_accuracy", grp="ci95")

    traces = chart_specs(at)["chart_metric_test_accuracy"]["data"]
    lines = [t for t in traces if t.get("showlegend") is not False]
    assert sorted(t["name"] for t in lines) == ["PyTorch eager mlp (n=2, mean, 95 % CI)",
                                               "TensorFlow graph mlp (n=2, mean, 95 % CI)"]
    bands = [t for t in traces if t.get("fill") == "toself"]
    assert len(bands) == 2
    torch_mean = next(t for t in lines if t["name"].startswith("PyTorch"))
    assert torch_mean["line"]["color"] == FRAMEWORK_COLORS["torch"]
    # Epoch 5: seeds at 90 % and 91 %: the mean is 90.5 %.
    assert array(torch_mean["y"])[-1] == pytest.approx(90.5)


def test_two_seeds_a_side_are_too_few_for_an_interval_and_the_page_says_how_many_would_do(seeds_db, open_page):
    at = open_page(COMPARE_PAGE, runs=_run_list(seeds_db), tab="Speed")

    sentence = next(m.value for m in at.markdown if "No difference can be told yet" in m.value)
    # 4 ms against 5 ms per step: PyTorch trains about 1.25x as many samples per second, 2 seeds each.
    assert sentence.startswith("**No difference can be told yet from 2 runs each: PyTorch eager measured 1.2")
    assert "TensorFlow graph" in sentence and "runs (seeds) per side would tell" in sentence
    assert not any("95% CI" in m.value for m in at.markdown)
    assert any("No interval below 3 runs per side" in c.value and "assumed" in c.value for c in at.caption)
    assert "chart_rate_violin" in chart_specs(at)


@pytest.fixture
def four_seeds_db(arena_db, monkeypatch):
    """Four finished seeds per framework, each with a steady throughput and a few step times."""
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    ids = []
    for framework, samples_per_s in (("torch", (1180.0, 1260.0, 1210.0, 1240.0)),
                                     ("tensorflow", (1000.0, 1030.0, 980.0, 1010.0))):
        for seed, rate in enumerate(samples_per_s):
            spec = RunSpec.with_model_defaults(framework, "mlp", "digits", epochs=1, seed=seed)
            with sessions.begin() as s:
                run = queries.create_run(s, spec.to_dict(), group_tag="seeds", total_steps=20)
                queries.add_metric_points(s, [dict(run_id=run.id, name="step/step_time_ms", step=step, epoch=1,
                                                   wall_time=1.7e9 + step, value=32_000 / rate)
                                              for step in range(1, 21)])
                queries.update_run(s, run.id, status=FINISHED, epoch=1, step=20,
                                   summary={"steady_samples_per_s": rate, "warmup_steps": 10})
                ids.append(run.id)
    return ids


def test_four_seeds_a_side_get_a_welch_interval_over_runs(four_seeds_db, open_page):
    at = open_page(COMPARE_PAGE, runs=",".join(map(str, four_seeds_db)), tab="Speed")

    sentence = next(m.value for m in at.markdown if "95% CI" in m.value)
    # Geometric means 1,222 and 1,005 samples/s; Welch's dof 5.5 from the spread of the four runs a side.
    assert sentence == "**PyTorch eager is 1.22× TensorFlow graph (95% CI 1.16–1.27×, Welch t over 4 and 4 runs).**"
    assert any("Welch t-interval on the log of each run's steady samples/s" in c.value for c in at.caption)


@pytest.mark.parametrize("x_axis, title", [("wall_time", "wall time (UTC)"),
                                           ("relative_time", "seconds since the run's first point")])
def test_metrics_plot_against_wall_and_relative_time(seeds_db, open_page, x_axis, title):
    at = open_page(COMPARE_PAGE, runs=str(seeds_db[("torch", 1)]), m="step/train_loss", x=x_axis, smooth="0", tt="0")

    spec = chart_specs(at)["chart_metric_step/train_loss"]
    assert spec["layout"]["xaxis"]["title"]["text"] == title
    (trace,) = [t for t in spec["data"] if t.get("showlegend") is not False]
    if x_axis == "relative_time":
        x = array(trace["x"])
        assert x[0] == pytest.approx(0.0) and x[-1] == pytest.approx((STEPS - 1) * 4.0 / 1000)
    else:
        assert spec["layout"]["xaxis"]["type"] == "date"


def test_the_run_picker_filters_by_url_and_keeps_runs_hidden_by_the_filter_selected(seeds_db, open_page):
    at = open_page(COMPARE_PAGE, runs=_run_list(seeds_db), c_fw="torch")
    assert not at.dataframe  # closed: a shared link opens straight onto its charts, the table is not built

    at.session_state["compare_picker_open"] = True
    at.run()
    table = at.dataframe[0].value
    torch_ids = sorted(seeds_db[("torch", seed)] for seed in (0, 1))
    assert sorted(table["id"]) == torch_ids
    hidden = ", ".join(f"#{seeds_db[('tensorflow', seed)]}" for seed in (0, 1))
    assert any(f"also selected, hidden by the filters: {hidden}" in c.value for c in at.caption)
    assert selected_ids(at) == sorted(seeds_db.values())
