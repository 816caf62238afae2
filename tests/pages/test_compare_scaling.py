"""The Compare page's Scaling tab (ui/scaling_section.py) on runs stored as multi-worker runs record them."""
from __future__ import annotations

import statistics

import pytest

from db import queries
from db.models import FINISHED
from db.session import make_sessionmaker
from engine.spec import RunSpec
from analysis.run_styles import FRAMEWORK_COLORS
from tests.pages.helpers import failures
from tests.pages.test_compare_page import array, chart_specs, text_of
from ui.router import COMPARE_PAGE

MIB = 2**20
STEPS = 30
WARMUP = 5
BATCH = 64
# (framework, workers) -> rank 0's steady step time in ms; the other ranks a little faster.
STEP_MS = {("torch", 1): 10.0, ("torch", 2): 6.0, ("tensorflow", 1): 12.0, ("tensorflow", 2): 8.0}
STRATEGIES = {"torch": "DistributedDataParallel (gloo)", "tensorflow": "MultiWorkerMirroredStrategy (ring)"}


def store_scaling_study(url: str) -> dict[tuple[str, int], int]:
    """Both frameworks x workers 1 and 2, finished, one group, shaped as issue 18's contract has them recorded:
    step times per rank, a summary with ranks, straggling, strategy and threads. Run ids by (framework, workers)."""
    sessions = make_sessionmaker(url)
    ids = {}
    with sessions.begin() as s:
        for (framework, workers), step_ms in STEP_MS.items():
            spec = RunSpec.with_model_defaults(framework, "mlp", "digits", epochs=1, batch_size=BATCH,
                                               workers=workers, warmup_steps=WARMUP, target_accuracy=0.9)
            run = queries.create_run(s, spec.to_dict(), group_tag="scaling", total_steps=STEPS)
            rank_ms = [step_ms * (1 - 0.05 * rank) for rank in range(workers)]
            rows = [dict(run_id=run.id, name="step/train_loss", step=step, epoch=1, wall_time=1.7e9 + step,
                         value=1.0 / step) for step in range(1, STEPS + 1)]
            for rank, ms in enumerate(rank_ms):
                name = "step/step_time_ms" if rank == 0 else f"rank{rank}/step/step_time_ms"
                rows += [dict(run_id=run.id, name=name, step=step, epoch=1, wall_time=1.7e9 + step,
                              value=ms * (3 if step <= WARMUP else 1 + 0.02 * (step % 3)))
                         for step in range(1, STEPS + 1)]
            rows.append(dict(run_id=run.id, name="test_accuracy", step=STEPS, epoch=1, wall_time=1.7e9 + STEPS,
                             value=0.93))
            queries.add_metric_points(s, rows)
            summary = {"workers": workers, "warmup_steps": WARMUP, "steady_samples_per_s": BATCH * 1000 / step_ms,
                       "step_time_p50_ms": step_ms, "time_to_target_s": 40.0 * step_ms / 10.0 / workers,
                       "peak_bytes": {"host_rss": 400.0 * MIB}}
            if workers > 1:
                summary.update(
                    strategy=STRATEGIES[framework], threads_per_worker=1, per_worker_batch=BATCH // workers,
                    sync_batchnorm="no batch norm", straggling=max(rank_ms) / statistics.median(rank_ms),
                    ranks=[{"rank": rank, "step_time_p50_ms": ms, "step_time_p95_ms": ms * 1.1,
                            "steady_samples_per_s": BATCH // workers * 1000 / ms,
                            "peak_rss_bytes": (380.0 + 10 * rank) * MIB} for rank, ms in enumerate(rank_ms)],
                    communication={"method": "the gradients' values all-reduced alone", "all_reduce_ms": 1.0,
                                   "share": 0.25})
            queries.update_run(s, run.id, status=FINISHED, epoch=1, step=STEPS, summary=summary,
                               placed_device=",".join(["cpu"] * workers))
            ids[(framework, workers)] = run.id
    sessions.kw["bind"].dispose()
    return ids


@pytest.fixture
def scaling_db(arena_db, monkeypatch) -> dict[tuple[str, int], int]:
    monkeypatch.setenv("ARENA_SCHEDULER", "off")  # made-up runs: nothing here may start a runner
    return store_scaling_study(arena_db)


def test_rank_step_times_reads_every_ranks_series(scaling_db, arena_db):
    with make_sessionmaker(arena_db).begin() as s:
        frame = queries.rank_step_times(s, [scaling_db[("torch", 1)], scaling_db[("torch", 2)]])

    assert list(frame.columns) == ["run_id", "rank", "step", "value"]
    counts = frame.groupby(["run_id", "rank"]).size().to_dict()
    assert counts == {(scaling_db[("torch", 1)], 0): STEPS, (scaling_db[("torch", 2)], 0): STEPS,
                      (scaling_db[("torch", 2)], 1): STEPS}
    assert frame[frame["rank"] == 1]["value"].iloc[-1] == pytest.approx(6.0 * 0.95 * 1.0)  # step 30: 30 % 3 == 0


def test_scaling_tab_draws_throughput_with_the_ideal_line_efficiency_ranks_and_memory(scaling_db, open_page):
    at = open_page(COMPARE_PAGE, runs=",".join(map(str, sorted(scaling_db.values()))), tab="Scaling")

    assert not failures(at)
    specs = chart_specs(at)
    assert {"chart_scaling_throughput", "chart_scaling_efficiency", "chart_scaling_rank_step_time",
            "chart_scaling_time_to_target", "chart_scaling_rank_memory"} <= set(specs)
    throughput = {trace["name"]: trace for trace in specs["chart_scaling_throughput"]["data"]
                  if trace["mode"] == "lines"}  # the runs' markers share their line's name
    ideal = throughput["PyTorch ideal (1 worker × N)"]
    assert array(ideal["x"]) == [1, 2] and array(ideal["y"]) == pytest.approx([6400.0, 12800.0])
    assert ideal["line"]["color"] == FRAMEWORK_COLORS["torch"]
    assert throughput["TensorFlow"]["line"]["color"] == FRAMEWORK_COLORS["tensorflow"]
    (bars,) = specs["chart_scaling_efficiency"]["data"]
    # PyTorch: 64000/6 / (2 x 6400) = 83 %; TensorFlow: 8000 / (2 x 5333) = 75 %.
    assert bars["text"] == ["83 %", "75 %"]
    boxes = [trace["name"] for trace in specs["chart_scaling_rank_step_time"]["data"]]
    assert boxes == [f"#{scaling_db[key]} rank {rank}" for key in STEP_MS for rank in range(key[1])]
    text = text_of(at)
    assert "**PyTorch**: DistributedDataParallel (gloo), 1 thread per worker, no batch norm" in text
    assert "**TensorFlow**: MultiWorkerMirroredStrategy (ring), 1 thread per worker" in text
    assert "the global batch of 64 samples per step (32 per worker at 2 workers)" in text
    assert "within a framework only the number of workers differs" in text
    table = at.dataframe[0].value.set_index("run")
    assert table.loc[f"#{scaling_db[('torch', 2)]} PyTorch", "efficiency"] == "83 %"
    assert table.loc[f"#{scaling_db[('torch', 2)]} PyTorch", "straggling"] == "1.03×"  # 6 ms over 5.85 ms
    assert table.loc[f"#{scaling_db[('torch', 1)]} PyTorch", "ideal samples/s"] == "—"
    assert table.loc[f"#{scaling_db[('tensorflow', 2)]} TensorFlow", "share of a step"] == "25 %"


def test_scaling_tab_without_multi_worker_runs_says_how_to_launch_a_study(scaling_db, open_page):
    singles = f"{scaling_db[('torch', 1)]},{scaling_db[('tensorflow', 1)]}"
    at = open_page(COMPARE_PAGE, runs=singles, tab="Scaling")

    assert not failures(at)
    assert not chart_specs(at)
    message = " ".join(info.value for info in at.info)
    assert "None of these runs trained with more than one worker" in message and "`1, 2`" in message
    assert "Launch a scaling study" in [link.proto.label for link in at.get("page_link")]


def test_a_one_process_mirrored_run_has_no_ranks_of_its_own_and_the_tab_still_draws_it(scaling_db, arena_db, open_page):
    """TensorFlow's MirroredStrategy: 2 replicas in one process record rank 0's series only, no ranks or straggling."""
    spec = RunSpec.with_model_defaults("tensorflow", "mlp", "digits", epochs=1, batch_size=BATCH, workers=2,
                                       tf_strategy="mirrored", warmup_steps=WARMUP, target_accuracy=0.9)
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        run = queries.create_run(s, spec.to_dict(), group_tag="scaling", total_steps=STEPS)
        queries.add_metric_points(s, [dict(run_id=run.id, name=name, step=step, epoch=1, wall_time=1.7e9 + step,
                                           value=value) for step in range(1, STEPS + 1)
                                      for name, value in (("step/train_loss", 1.0 / step), ("step/step_time_ms", 9.0))])
        strategy = ("MirroredStrategy over 2 logical CPU devices in one process (ReductionToOneDevice): a functional "
                    "check, not a speed figure")
        queries.update_run(s, run.id, status=FINISHED, epoch=1, step=STEPS, placed_device="cpu,cpu", summary={
            "workers": 2, "warmup_steps": WARMUP, "steady_samples_per_s": BATCH * 1000 / 9.0, "step_time_p50_ms": 9.0,
            "peak_bytes": {"host_rss": 500.0 * MIB}, "strategy": strategy, "per_worker_batch": BATCH // 2,
            "sync_batchnorm": "no batch norm", "communication": {"method": "all-reduced alone", "all_reduce_ms": 0.7,
                                                                 "share": 0.08}})
        mirrored = run.id
    sessions.kw["bind"].dispose()
    single = scaling_db[("tensorflow", 1)]
    at = open_page(COMPARE_PAGE, runs=f"{single},{mirrored}", tab="Scaling")

    assert not failures(at)
    specs = chart_specs(at)
    (bars,) = specs["chart_scaling_efficiency"]["data"]
    assert bars["text"] == ["67 %"]  # 64000/9 / (2 x 64000/12): against the TensorFlow 1-worker run of its study
    boxes = [trace["name"] for trace in specs["chart_scaling_rank_step_time"]["data"]]
    assert boxes == [f"#{single} rank 0", f"#{mirrored} rank 0"]
    (memory,) = specs["chart_scaling_rank_memory"]["data"]
    assert array(memory["y"]) == pytest.approx([400.0, 500.0])  # its one process's own peak
    assert f"**TensorFlow**: {strategy}" in text_of(at)
    table = at.dataframe[0].value.set_index("run")
    row = table.loc[f"#{mirrored} TensorFlow"]
    assert (row["straggling"], row["strategy"], row["gradient all-reduce"]) == ("—", strategy, "0.70 ms")
