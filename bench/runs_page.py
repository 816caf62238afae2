"""What the Runs page pays for its table at 10,000 runs: run_table.runs_overview, then analysis.runs_table.runs_table.

`python bench/runs_page.py [--runs N] [--epochs N] [--repeats N] [--json]`

Builds a temporary SQLite database of --runs runs (mixed frameworks, models, statuses, tags and
groups; some failed with a traceback, some queued or running) with --epochs per-epoch points of
train_loss, test_accuracy and samples_per_s each, written through queries.add_metric_points. Then
times `runs_overview(s)` and `runs_table(frame, now)` (the page's pure table preparation, from
analysis/runs_table.py) separately:

- cold: a new sessionmaker each repeat (fresh engine: connection, pragmas, SQLite page cache and
  statement cache all cold, as in a new dashboard process), its first call;
- warm: the same sessionmaker again, as the page's 2 s refresh calls it.

Medians over --repeats of each. The operating system's file cache stays warm: the database was
just written. Informational, outside the goal: what the page does after that (filters, coloured
labels, Arrow serialisation for st.dataframe), warm; and, once, the two queries the page ran
before run_table existed (queries.list_runs, an ORM Run per row, and every run's per-epoch points).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from sqlalchemy import insert, select

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `db` and `analysis` import from the repo

from db import queries, run_table  # noqa: E402  (needs ROOT on the path)
from db.models import DIVERGED, FAILED, FINISHED, NON_FINITE_LOSS, QUEUED, RUNNING, Run  # noqa: E402
from db.session import make_sessionmaker  # noqa: E402
from engine.monitor import host_busy_cpu_s  # noqa: E402
from engine.spec import RunSpec  # noqa: E402
from analysis import run_filters  # noqa: E402
from analysis.runs_table import runs_table  # noqa: E402
from ui.run_selection import labelled  # noqa: E402

RUNS, EPOCHS, REPEATS = 10_000, 5, 5
METRICS = ("train_loss", "test_accuracy", "samples_per_s")
GOAL_S = 0.2  # runs_overview + runs_table, 10,000 runs
NOISY_LOAD_CORES = 0.25  # average load from other processes above which the timings are called noisy
# What a finished run's summary and every run's environment hold (shapes of real rows, ~1 kB and
# ~0.6 kB): the table pulls single fields out of them, and their size is what that costs.
SUMMARY = {"param_count": 9610, "steps_per_epoch": 44, "same_init": True, "compute_dtype": "float32",
           "loss_scaling": False, "tf32": False, "layout": "n/a", "deterministic": False, "layer_stats_s": 0.06,
           "first_step_s": 0.037, "warmup_steps": 10, "warmup_s": 0.375, "steady_steps": 210, "compile_s": 0.0,
           "steady_samples_per_s": 716.95, "step_time_mean_ms": 43.6, "step_time_p50_ms": 41.9,
           "step_time_p95_ms": 59.8, "step_time_p99_ms": 66.4, "peak_bytes": {"host_rss": 533434368.0},
           "target_accuracy": 0.95, "time_to_target_s": None, "inference_batch_size": 32, "inference_iters": 30,
           "inference_bs1_p50_ms": 0.024, "inference_bs1_p95_ms": 10.5, "inference_bs1_samples_per_s": 779.9,
           "inference_bsN_p50_ms": 0.029, "inference_bsN_p95_ms": 0.035, "inference_bsN_samples_per_s": 1046331.8,
           "inference_compile_s": 0.006}
ENVIRONMENT = {"python_version": "3.11.7", "python_executable": "/work/main/.venv/bin/python",
               "platform": "Linux-6.18.44-x86_64-with-glibc2.36", "hostname": "vm",
               "cpu_model": "Intel(R) Xeon(R) Processor", "cpu_count": 2, "memory_total_bytes": 25276063744,
               "numpy_version": "2.4.6", "nvml": "NVML unavailable: NVML Shared Library Not Found",
               "framework": "torch", "framework_version": "2.13.0+cpu", "cuda_version": None, "cudnn_version": None,
               "device": "cpu", "intra_op_threads": 2, "device_name": "CPU: Intel(R) Xeon(R) Processor",
               "cuda_visible_devices": ""}
TRACEBACK = ("Traceback (most recent call last):\n  File \"engine/loop.py\", line 80, in train\n"
             "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n")



def run_rows(runs: int, epochs: int) -> list[dict[str, Any]]:
    """Runs rows as the page meets them: mostly finished, a few failed, diverged, running and queued."""
    rng = np.random.default_rng(0)
    start = queries.utcnow() - timedelta(days=30)
    models = (("mlp", "digits"), ("cnn", "digits"), ("resnet", "cifar10"))
    rows = []
    for index in range(runs):
        framework = ("torch", "tensorflow")[index % 2]
        model, dataset = models[(index // 2) % len(models)]
        spec = RunSpec.with_model_defaults(framework, model, dataset, epochs=epochs, seed=index % 7).to_dict()
        status = rng.choice([FINISHED, FAILED, DIVERGED, RUNNING, QUEUED], p=[0.9, 0.05, 0.02, 0.01, 0.02])
        created = start + timedelta(minutes=4 * index)
        done = status in (FINISHED, FAILED, DIVERGED)
        rows.append(dict(
            created_at=created, started_at=None if status == QUEUED else created + timedelta(seconds=5),
            finished_at=created + timedelta(seconds=65) if done else None, status=str(status),
            framework=framework, model=model, dataset=dataset, group_tag=f"pair-{index // 2:05d}", spec=spec,
            mode=spec["mode"], precision=spec["precision"], seed=spec["seed"],  # as queries.create_run copies them
            environment={**ENVIRONMENT, "framework": framework} if status != QUEUED else None,
            summary={**SUMMARY, "mode": spec["mode"], "param_count": 9610 + index} if done else None,
            error=TRACEBACK if status == FAILED else ("loss became nan" if status == DIVERGED else None),
            reason=NON_FINITE_LOSS if status == DIVERGED else None,
            epoch=epochs if done else 0, total_epochs=epochs, step=44 * epochs if done else 0,
            total_steps=44 * epochs, placed_device=None if status == QUEUED else "cpu",
            name=f"sweep {index % 50} lr={10 ** -(index % 4):g}" if index % 3 else None,
            notes="checked by hand" if index % 11 == 0 else None,
            tags=[("baseline", "ablation", "sweep")[index % 3]] + (["keep"] if index % 5 == 0 else []),
        ))
    return rows


def build_database(url: str, runs: int, epochs: int) -> None:
    """runs x epochs x METRICS points, runs bulk inserted, points through queries.add_metric_points."""
    sessions = make_sessionmaker(url)
    rng = np.random.default_rng(1)
    with sessions.begin() as s:
        s.execute(insert(Run.__table__), run_rows(runs, epochs))
        ids = s.scalars(select(Run.id)).all()
    points = []
    for run_id in ids:
        for epoch in range(1, epochs + 1):
            values = (2.0 / epoch, min(0.5 + 0.1 * epoch, 0.99), float(rng.normal(20_000, 2_000)))
            points += [dict(run_id=run_id, name=name, step=44 * epoch, epoch=epoch,
                            wall_time=1_700_000_000.0 + run_id * 60 + epoch, value=value)
                       for name, value in zip(METRICS, values)]
    with sessions.begin() as s:
        queries.add_metric_points(s, points)
    sessions.kw["bind"].dispose()


def _time(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def measure(sessions) -> dict[str, float]:
    """One runs_overview and one runs_table on this sessionmaker."""
    with sessions() as s:
        frame, query_s = _time(lambda: run_table.runs_overview(s))
    _, table_s = _time(lambda: runs_table(frame, queries.utcnow()))
    return {"overview_s": query_s, "table_s": table_s, "total_s": query_s + table_s, "rows": len(frame)}


def _epoch_metrics(s, run_ids: list[int]) -> dict[int, dict[str, list[float]]]:
    """Every run's per-epoch points as lists, as the page read them before run_table kept results on the run."""
    result: dict[int, dict[str, list[float]]] = {int(r): {} for r in run_ids}
    frame = queries.metric_frame(s, run_ids, METRICS) if run_ids else None
    if frame is None or frame.empty:
        return result
    for (run_id, name), group in frame.groupby(["run_id", "name"], sort=False):
        result[int(run_id)][name] = group.sort_values("epoch")["value"].astype(float).tolist()
    return result


def measure_display(sessions) -> dict[str, float]:
    """What the page does after the goal's part, once: filter, Styler colours, Arrow bytes for st.dataframe."""
    from streamlit import dataframe_util

    with sessions() as s:
        frame = run_table.runs_overview(s)
    table = runs_table(frame, queries.utcnow())
    filters = run_filters.RunFilters(tags=("ablation",), text="sweep")
    shown, filter_s = _time(lambda: run_filters.apply_filters(frame, filters))
    (data, _), labels_s = _time(lambda: labelled(table.reset_index(drop=True)))
    _, arrow_s = _time(lambda: dataframe_util.convert_pandas_df_to_arrow_bytes(data))
    with sessions() as s:
        _, orm_s = _time(lambda: _epoch_metrics(s, [run.id for run in queries.list_runs(s)]))
    return {"filter_s": filter_s, "labels_s": labels_s, "arrow_s": arrow_s, "shown": len(shown), "orm_s": orm_s}


def format_report(runs_n: int, epochs: int, cold: list[dict], warm: list[dict], display: dict,
                  build_s: float, other_load: float) -> str:
    lines = [f"Runs page table: {runs_n:,} runs x {epochs} epochs x {len(METRICS)} metrics in SQLite "
             f"(written in {build_s:.0f} s); runs_overview then runs_table; {len(cold)} cold repeats (new "
             f"sessionmaker, first call) and {len(warm)} warm ones, medians",
             f"  other processes busy {other_load:.2f} cores during the repeats"]
    if other_load > NOISY_LOAD_CORES:
        lines.append(f"  WARNING: other processes kept more than {NOISY_LOAD_CORES} cores busy: the timings are "
                     "noisy; rerun on a quiet machine")
    header = f"{'part':<26} {'cold s':>8} {'warm s':>8} {'warm range s':>15}"
    lines += ["", header, "-" * len(header)]
    for key, label in (("overview_s", "run_table.runs_overview"), ("table_s", "runs_table"),
                       ("total_s", "together")):
        warm_values = [r[key] for r in warm]
        lines.append(f"{label:<26} {statistics.median(r[key] for r in cold):>8.3f} "
                     f"{statistics.median(warm_values):>8.3f} {min(warm_values):>7.3f}-{max(warm_values):<7.3f}")
    lines += ["", f"informational, warm, once: apply_filters {display['filter_s']:.3f} s "
                  f"({display['shown']:,} rows shown); for st.dataframe, all rows: coloured labels "
                  f"{display['labels_s']:.3f} s, Arrow bytes {display['arrow_s']:.3f} s",
              f"informational, once: the ORM path before run_table (list_runs + epoch_metrics, before "
              f"any table preparation) {display['orm_s']:.3f} s"]
    for label, repeats in (("cold", cold), ("warm", warm)):
        total = statistics.median(r["total_s"] for r in repeats)
        lines.append(f"goal <= {GOAL_S} s ({label}): {total:.3f} s, goal/measured {GOAL_S / total:.2f}  "
                     f"{'PASS' if total <= GOAL_S else 'FAIL'}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="runs in the database (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs of points per run (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="cold and warm measurements (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.epochs < 1 or args.repeats < 1:
        parser.error(f"--runs={args.runs} --epochs={args.epochs} --repeats={args.repeats}: need at least 1 of each")

    with tempfile.TemporaryDirectory(prefix="arena-runs-page-") as tmp:
        url = f"sqlite:///{tmp}/b.db"
        print(f"writing {args.runs:,} runs x {args.epochs} epochs ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        build_database(url, args.runs, args.epochs)
        build_s = time.perf_counter() - started
        busy, measuring, cpu = host_busy_cpu_s(), time.perf_counter(), time.process_time()
        cold = []
        for _ in range(args.repeats):
            sessions = make_sessionmaker(url)  # schema check and engine set-up: once per process, not timed
            cold.append(measure(sessions))
            sessions.kw["bind"].dispose()
        sessions = make_sessionmaker(url)
        measure(sessions)  # the first call is the cold one
        warm = [measure(sessions) for _ in range(args.repeats)]
        display = measure_display(sessions)
        sessions.kw["bind"].dispose()
        wall_s = time.perf_counter() - measuring
        other_load = max(0.0, (host_busy_cpu_s() - busy - (time.process_time() - cpu)) / wall_s)
    print(format_report(args.runs, args.epochs, cold, warm, display, build_s, other_load))
    if args.json:
        print(json.dumps({"goal_s": GOAL_S, "runs": args.runs, "epochs": args.epochs, "build_s": build_s,
                          "other_load_cores": other_load, "cold": cold, "warm": warm, "display": display}))
    return 0  # a benchmark reports; it does not assert


if __name__ == "__main__":
    sys.exit(main())
