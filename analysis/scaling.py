"""The Compare page's Scaling tab without Streamlit: runs that differ only in their number of workers, as
throughput against workers with the ideal line, scaling efficiency, straggling, per-rank step times and memory.

A study is the chosen runs of one framework whose specs are equal but for workers, seed and sync batch norm
(a scaling study launched in one click is one). The efficiency of an N-worker run is its steady samples/s over
N times the 1-worker run's of its study, the run of the same seed when there is one (the median of the study's
1-worker runs otherwise).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import pandas as pd
import plotly.graph_objects as go

from analysis import run_settings as rs
from analysis.fairness import OPTIMIZER_WORDS
from analysis.figure_layout import base_figure, compact, translucent
from analysis.formatting import MIB, format_number, format_rate
from analysis.run_styles import FRAMEWORK_DASHES, FRAMEWORK_PALETTES, SYMBOLS, UNKNOWN_FRAMEWORK_COLOR
from db.models import Run
from engine.catalog import FRAMEWORKS, MODE_LABELS, framework_label

# What the runs of one study may differ in. tf_strategy: a MirroredStrategy run (one process, N devices) scales
# from the same 1-worker run as a MultiWorkerMirroredStrategy one; the table and "what ran" name each run's strategy.
STUDY_FREE_FIELDS = ("workers", "seed", "sync_batchnorm", "tf_strategy")
IDEAL_DASH = "dot"
# The summary's sync_batchnorm as words ("SyncBatchNorm", "synchronized BatchNormalization" name themselves).
SYNC_WORDS = {"off": "sync batch norm off", "on": "sync batch norm on"}
RUN_COLUMNS = ["run_id", "study", "framework", "workers", "seed", "samples_per_s", "ideal_samples_per_s",
               "efficiency", "baseline", "straggling"]


@dataclass(frozen=True)
class Study:
    label: str  # "PyTorch", or "PyTorch torch.compile" where a framework has several studies
    framework: str
    color: str
    symbol: str
    runs: tuple[Run, ...]  # by workers, then id


def workers_of(run: Run) -> int:
    """Worker processes the run trained with (its summary once it ran, else its spec); 1 for older runs."""
    return int(rs.summary_value(run, "workers") or rs.spec_value(run, "workers") or 1)


def multi_worker(runs: Sequence[Run]) -> list[Run]:
    return [run for run in runs if workers_of(run) > 1]


def throughput(run: Run) -> Optional[float]:
    """Steady samples/s of the whole run (all workers: the global batch per step time); None until it ran."""
    value = rs.summary_value(run, "steady_samples_per_s")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def straggling(run: Run) -> Optional[float]:
    """The slowest rank's median step time over the median of the ranks' (1.0: no rank waits for another)."""
    value = rs.summary_value(run, "straggling")
    if isinstance(value, (int, float)):
        return float(value)
    medians = [rank["step_time_p50_ms"] for rank in _ranks(run) if rank.get("step_time_p50_ms")]
    return max(medians) / statistics.median(medians) if len(medians) > 1 else None


def _ranks(run: Run) -> list[dict[str, Any]]:
    ranks = rs.summary_value(run, "ranks")
    return [rank for rank in ranks if isinstance(rank, dict)] if isinstance(ranks, list) else []


def _study_key(run: Run) -> str:
    spec = {key: value for key, value in (run.spec or {}).items() if key not in STUDY_FREE_FIELDS}
    return json.dumps({"framework": run.framework, "model": run.model, "dataset": run.dataset, **spec},
                      sort_keys=True, default=str)


def studies(runs: Sequence[Run]) -> list[Study]:
    """The runs grouped into studies, PyTorch's first; each framework's studies in its colours' order."""
    grouped: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.id):
        grouped.setdefault(_study_key(run), []).append(run)
    order = {framework: index for index, framework in enumerate(FRAMEWORKS)}
    members = sorted(grouped.values(), key=lambda group: (order.get(group[0].framework, len(order)), group[0].id))
    labels = _labels([group[0] for group in members])
    result, seen = [], {}
    for group in members:
        framework = group[0].framework
        rank = seen[framework] = seen.get(framework, -1) + 1
        palette = FRAMEWORK_PALETTES.get(framework, (UNKNOWN_FRAMEWORK_COLOR,))
        result.append(Study(labels[group[0].id], framework, palette[rank % len(palette)],
                            SYMBOLS[rank % len(SYMBOLS)],
                            tuple(sorted(group, key=lambda r: (workers_of(r), r.id)))))
    return result


def _labels(leaders: Sequence[Run]) -> dict[int, str]:
    """The framework, plus the settings that tell one framework's studies apart (mode first)."""
    parts = {run.id: [framework_label(run.framework)] for run in leaders}
    for framework in {run.framework for run in leaders}:
        own = [run for run in leaders if run.framework == framework]
        if len(own) < 2:
            continue
        specs = [run.spec or {} for run in own]
        keys = sorted({key for spec in specs for key in spec} - set(STUDY_FREE_FIELDS),
                      key=lambda key: (key != "mode", key))
        for key in keys:
            if len({json.dumps(spec.get(key), default=str) for spec in specs}) > 1:
                for run, spec in zip(own, specs):
                    value = spec.get(key)
                    parts[run.id].append(MODE_LABELS.get(value, value) if key == "mode" else f"{key} {value}")
    labels = {run.id: " ".join(map(str, parts[run.id])) for run in leaders}
    if len(set(labels.values())) < len(labels):
        labels = {run_id: f"{label} (#{run_id})" for run_id, label in labels.items()}
    return labels


def baseline(run: Run, study: Study) -> tuple[Optional[float], list[int]]:
    """(1-worker samples/s, the runs it is from) for a run of the study: the same seed's, else the median."""
    singles = [other for other in study.runs if workers_of(other) == 1 and throughput(other) is not None]
    same_seed = [other for other in singles if rs.spec_value(other, "seed") == rs.spec_value(run, "seed")]
    chosen = same_seed or singles
    if not chosen:
        return None, []
    return statistics.median(throughput(other) for other in chosen), [other.id for other in chosen]


def run_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run (RUN_COLUMNS): its study, workers, samples/s, the ideal (1 worker x N) and efficiency."""
    rows = []
    for study in studies(runs):
        for run in study.runs:
            workers, measured = workers_of(run), throughput(run)
            single, baseline_ids = baseline(run, study) if workers > 1 else (None, [])
            ideal = single * workers if single is not None else None
            rows.append(dict(
                run_id=run.id, study=study.label, framework=run.framework, workers=workers,
                seed=rs.spec_value(run, "seed"), samples_per_s=measured, ideal_samples_per_s=ideal,
                efficiency=measured / ideal if measured is not None and ideal else None,
                baseline=", ".join(f"#{i}" for i in baseline_ids) or None,
                straggling=straggling(run) if workers > 1 else None,
            ))
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


AGREEMENT_STEPS = 20  # the first steps whose losses a multi-worker run is checked against its 1-worker run over


def loss_agreement(losses: pd.DataFrame, frame: pd.DataFrame) -> dict[int, float]:
    """Per multi-worker run: the largest relative difference of its first AGREEMENT_STEPS per-step losses from
    its 1-worker run's (the same seed's; losses: run_id, step, value of step/train_loss). With deterministic
    kernels and no dropout or batch norm, data parallelism computes the same steps: about 1e-7 in float32."""
    agreement = {}
    for row in frame.itertuples():
        if row.workers <= 1 or not row.baseline or "," in row.baseline:
            continue  # one 1-worker run of the same seed, or nothing to check against
        single_id = int(row.baseline.lstrip("#"))
        mine = losses[(losses["run_id"] == row.run_id) & (losses["step"] <= AGREEMENT_STEPS)].set_index("step")["value"]
        single = losses[(losses["run_id"] == single_id) & (losses["step"] <= AGREEMENT_STEPS)].set_index("step")["value"]
        common = mine.index.intersection(single.index)
        if len(common):
            agreement[row.run_id] = float(((mine[common] - single[common]).abs() / single[common].abs()).max())
    return agreement


def study_colors(runs: Sequence[Run]) -> dict[int, str]:
    """Each run in its study's colour: the framework's own for its first study, so PyTorch is red on every chart."""
    return {run.id: study.color for study in studies(runs) for run in study.runs}


def ideal_line(study: Study) -> Optional[tuple[list[int], list[float]]]:
    """(workers, samples/s) of perfect scaling, 1-worker samples/s x N, over the study's worker counts;
    None without a 1-worker run that measured its throughput."""
    singles = [throughput(run) for run in study.runs if workers_of(run) == 1 and throughput(run) is not None]
    if not singles:
        return None
    single = statistics.median(singles)
    counts = sorted({1, *(workers_of(run) for run in study.runs)})
    return counts, [single * n for n in counts]


# Figures ----------------------------------------------------------------------------------------------
def _by_workers(study: Study, read) -> tuple[list[Run], list[int], list[float], list[int], list[float]]:
    """Runs with a value, their workers and values, and the median value per worker count (the line)."""
    shown = [run for run in study.runs if read(run) is not None]
    values = [float(read(run)) for run in shown]
    counts = sorted({workers_of(run) for run in shown})
    medians = [statistics.median(v for run, v in zip(shown, values) if workers_of(run) == n) for n in counts]
    return shown, [workers_of(run) for run in shown], values, counts, medians


def _against_workers(title: str, y_title: str, runs: Sequence[Run], read, hover: str, ideal: bool) -> go.Figure:
    traces, counts_shown = [], set()
    for study in studies(runs):
        shown, workers, values, counts, medians = _by_workers(study, read)
        if not shown:
            continue
        counts_shown.update(counts)
        dash = FRAMEWORK_DASHES.get(study.framework, "solid")
        traces.append(go.Scatter(
            x=counts, y=compact(medians), name=study.label, legendgroup=study.label, mode="lines",
            line=dict(color=study.color, dash=dash, width=2.5), hoverinfo="skip"))
        traces.append(go.Scatter(
            x=workers, y=compact(values), name=study.label, legendgroup=study.label, mode="markers",
            showlegend=False, marker=dict(color=study.color, symbol=study.symbol, size=10),
            customdata=[f"#{run.id}" for run in shown],
            hovertemplate=f"{study.label} %{{customdata}}: %{{x}} workers, {hover}<extra></extra>"))
        line = ideal_line(study) if ideal else None
        if line is not None:
            counts_shown.update(line[0])
            traces.append(go.Scatter(
                x=line[0], y=compact(line[1]), name=f"{study.label} ideal (1 worker × N)",
                legendgroup=study.label, mode="lines", line=dict(color=study.color, dash=IDEAL_DASH, width=1.5),
                hovertemplate=f"{study.label} ideal: %{{x}} workers, {hover}<extra></extra>"))
    fig = base_figure(title, "workers", y_title, data=traces)
    fig.update_layout(hovermode="closest")
    fig.update_xaxes(tickvals=sorted(counts_shown), range=[0.5, max(counts_shown, default=1) + 0.5])
    fig.update_yaxes(rangemode="tozero")
    return fig


def throughput_figure(runs: Sequence[Run]) -> go.Figure:
    """Steady samples/s against workers per study (line: median over seeds), and the ideal line where known."""
    return _against_workers("Throughput against workers (dotted: ideal, 1 worker × N)", "samples / s", runs,
                            throughput, "%{y:,.0f} samples/s", ideal=True)


def has_time_to_target(runs: Sequence[Run]) -> bool:
    return any(_time_to_target(run) is not None for run in runs)


def _time_to_target(run: Run) -> Optional[float]:
    value = rs.summary_value(run, "time_to_target_s")
    return float(value) if isinstance(value, (int, float)) else None


def time_to_target_figure(runs: Sequence[Run]) -> go.Figure:
    """Training time until the test accuracy first reached the target, against workers."""
    targets = {rs.target_accuracy(run) for run in runs if _time_to_target(run) is not None}
    target = f" ({100 * targets.pop():g} % test accuracy)" if len(targets) == 1 and None not in targets else ""
    return _against_workers(f"Time to target{target} against workers", "seconds", runs, _time_to_target,
                            "%{y:.1f} s", ideal=False)


def one_process(run: Run) -> bool:
    """Whether the run's workers were replicas in one process (TensorFlow's MirroredStrategy): no rank of its own."""
    return rs.spec_value(run, "tf_strategy") == "mirrored"


def _run_label(run: Run, workers: Optional[int] = None) -> str:
    workers = workers_of(run) if workers is None else workers
    where = ", one process" if one_process(run) else ""
    return f"#{run.id} {framework_label(run.framework)}<br>{workers} worker{'s' if workers > 1 else ''}{where}"


def efficiency_figure(frame: pd.DataFrame, runs: Sequence[Run]) -> go.Figure:
    """Scaling efficiency per N-worker run, in % of the ideal, against a 100 % line."""
    by_id = {run.id: run for run in runs}
    colors = study_colors(runs)
    rows = frame[frame["efficiency"].notna()]
    percent = [100 * float(value) for value in rows["efficiency"]]
    bars = go.Bar(
        x=[_run_label(by_id[i]) for i in rows["run_id"]], y=percent, showlegend=False,
        marker_color=[colors[int(i)] for i in rows["run_id"]],
        text=[f"{value:.0f} %" for value in percent], textposition="auto",
        customdata=list(zip(rows["baseline"], [format_rate(v) for v in rows["samples_per_s"]],
                            [format_rate(v) for v in rows["ideal_samples_per_s"]])),
        hovertemplate="%{x}: %{y:.1f} % of ideal<br>%{customdata[1]} against %{customdata[2]} "
                      "(1 worker: %{customdata[0]})<extra></extra>")
    fig = base_figure("Scaling efficiency (samples/s ÷ N × 1-worker samples/s)", "", "% of ideal", data=[bars])
    fig.add_hline(y=100, line=dict(color="#374151", dash=IDEAL_DASH, width=1), annotation_text="ideal",
                  annotation_position="top left")
    fig.update_layout(hovermode="closest")
    fig.update_yaxes(range=[0, max([100.0, *percent]) * 1.15])
    return fig


def _steady(rank_steps: pd.DataFrame, run: Run) -> pd.DataFrame:
    points = rank_steps[rank_steps["run_id"] == run.id]
    return points[points["step"] > int(rs.warmup_steps(run) or 0)]


def rank_step_time_figure(rank_steps: pd.DataFrame, runs: Sequence[Run]) -> go.Figure:
    """Step time after warm-up per rank of each run (rank 0 is the run's own): a box per (run, rank)."""
    colors = study_colors(runs)
    traces = []
    for run in runs:
        points = _steady(rank_steps, run)
        colour = colors[run.id]
        for rank, rows in points.groupby("rank", sort=True):
            values = rows["value"].dropna()
            if values.empty:
                continue
            label = _run_label(run)
            traces.append(go.Box(
                x=[[label] * len(values), [f"rank {rank}"] * len(values)], y=compact(values), showlegend=False,
                name=f"#{run.id} rank {rank}", marker=dict(color=colour, size=3), line=dict(color=colour),
                fillcolor=translucent(colour, 0.5 if rank == 0 else 0.2), boxpoints="outliers",
                hovertemplate=f"#{run.id} rank {rank}: %{{y:.2f}} ms<extra></extra>"))
    fig = base_figure("Step time per rank after warm-up (box: quartiles, whiskers 1.5 IQR)", "",
                      "ms per optimizer step", data=traces)
    fig.update_layout(hovermode="closest")
    fig.update_yaxes(rangemode="tozero")
    return fig


def rank_memory_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Peak host RSS per rank (run_id, rank, peak_rss_bytes): the summary's ranks, or a one-process run's own peak."""
    rows = []
    for run in runs:
        ranks = _ranks(run)
        if ranks:
            rows += [dict(run_id=run.id, rank=int(rank.get("rank", index)), peak_rss_bytes=float(rank["peak_rss_bytes"]))
                     for index, rank in enumerate(ranks) if isinstance(rank.get("peak_rss_bytes"), (int, float))]
        elif workers_of(run) == 1 or one_process(run):
            peak = (rs.summary_value(run, "peak_bytes") or {}).get("host_rss")
            if isinstance(peak, (int, float)):
                rows.append(dict(run_id=run.id, rank=0, peak_rss_bytes=float(peak)))
    return pd.DataFrame(rows, columns=["run_id", "rank", "peak_rss_bytes"])


def rank_memory_figure(memory: pd.DataFrame, runs: Sequence[Run]) -> go.Figure:
    """Peak host RSS of every rank's process, a bar per (run, rank) in the run's colour."""
    by_id = {run.id: run for run in runs}
    colors = study_colors(runs)
    labels = [_run_label(by_id[int(i)]) for i in memory["run_id"]]
    mib = [value / MIB for value in memory["peak_rss_bytes"]]
    bars = go.Bar(
        x=[labels, [f"rank {r}" for r in memory["rank"]]], y=compact(mib), showlegend=False,
        marker_color=[colors[int(i)] for i in memory["run_id"]],
        text=[f"{value:,.0f}" for value in mib], textposition="auto",
        hovertemplate="%{x}: %{y:,.1f} MiB<extra></extra>")
    fig = base_figure("Peak host memory (RSS) per rank", "", "MiB", data=[bars])
    fig.update_layout(hovermode="closest")
    return fig


# Words -------------------------------------------------------------------------------------------------
def _one_or_several(values: Sequence[Any]) -> list[str]:
    return list(dict.fromkeys(str(value) for value in values if value not in (None, "")))


def what_ran(runs: Sequence[Run]) -> str:
    """"PyTorch: DistributedDataParallel (gloo), 1 thread per worker, sync batch norm off · TensorFlow: ..."."""
    parts = []
    shown = {run.framework for run in multi_worker(runs)}
    for framework in [*(fw for fw in FRAMEWORKS if fw in shown), *sorted(shown - set(FRAMEWORKS))]:
        own = [run for run in multi_worker(runs) if run.framework == framework]
        strategy = " / ".join(_one_or_several(rs.summary_value(run, "strategy") for run in own)) or "not recorded yet"
        threads = {}
        for run in sorted(own, key=workers_of):
            value = rs.summary_value(run, "threads_per_worker")
            if value is not None:
                threads.setdefault(workers_of(run), set()).add(value)
        if len({value for values in threads.values() for value in values}) == 1:
            (count,) = next(iter(threads.values()))
            thread_words = f"{count} thread{'s' if count != 1 else ''} per worker"
        elif threads:
            thread_words = "threads per worker " + ", ".join(
                f"{'/'.join(map(str, sorted(values)))} at {n} workers" for n, values in threads.items())
        else:
            thread_words = "threads per worker not recorded"
        sync = _one_or_several(rs.summary_value(run, "sync_batchnorm") for run in own) or _one_or_several(
            "on" if rs.spec_value(run, "sync_batchnorm") else "off" for run in own)  # asked, not yet reported
        sync_words = " / ".join(SYNC_WORDS.get(value, value) for value in sync)
        parts.append(f"**{framework_label(framework)}**: {strategy}, {thread_words}, {sync_words}")
    single = [run for run in runs if workers_of(run) == 1]
    ones = " · 1-worker runs: the framework's own threads (all cores)" if single else ""
    return " · ".join(parts) + ones


def workers_differ(runs: Sequence[Run]) -> bool:
    """Whether some study holds runs of more than one worker count (else there is no scaling within it)."""
    return any(len({workers_of(run) for run in study.runs}) > 1 for study in studies(runs))


def held_equal(runs: Sequence[Run]) -> str:
    """What every chosen run shared, in words: the global batch, sample order and initial weights, optimizer."""
    words = []
    batches = _one_or_several(rs.spec_value(run, "batch_size") for run in runs)
    if len(batches) == 1:
        splits = sorted({(workers_of(run), int(batches[0]) // workers_of(run)) for run in multi_worker(runs)})
        words.append(f"the global batch of {batches[0]} samples per step" + (
            " (" + ", ".join(f"{per} per worker at {n} workers" for n, per in splits) + ")" if splits else ""))
    seeds = _one_or_several(rs.spec_value(run, "seed") for run in runs)
    same_init = all(rs.spec_value(run, "same_init") is not False for run in runs)
    what = "the sample order and initial weights" if same_init else "the sample order"
    if len(seeds) == 1:
        words.append(f"{what} (seed {seeds[0]})")
    elif seeds:
        words.append(f"{what} for each seed ({', '.join(seeds)})")
    optimizers = _one_or_several(f"{rs.spec_value(run, 'optimizer')}, learning rate {rs.spec_value(run, 'lr'):g}"
                                 for run in runs if rs.spec_value(run, "lr") is not None)
    if len(optimizers) == 1:
        name, _, lr = optimizers[0].partition(", ")
        words.append(f"the optimizer ({OPTIMIZER_WORDS.get(name, name)}, {lr})")
    return ", ".join(words)


def _rate(samples_per_s: Optional[float]) -> str:
    return "—" if samples_per_s is None or pd.isna(samples_per_s) else f"{samples_per_s:,.0f}"


def table(frame: pd.DataFrame, runs: Sequence[Run], agreement: Optional[dict[int, float]] = None) -> pd.DataFrame:
    """The per-run table as shown: samples/s, ideal, efficiency, straggling, the losses' agreement with the
    1-worker run (loss_agreement) and what ran, in words."""
    agreement = agreement or {}
    by_id = {run.id: run for run in runs}
    rows = []
    for row in frame.itertuples():
        run = by_id[row.run_id]
        communication = rs.summary_value(run, "communication") or {}
        share = communication.get("share") if isinstance(communication, dict) else None
        exchange_ms = communication.get("all_reduce_ms") if isinstance(communication, dict) else None
        rows.append({
            "run": f"#{run.id} {framework_label(run.framework)}", "workers": row.workers,
            "samples/s": _rate(row.samples_per_s), "ideal samples/s": _rate(row.ideal_samples_per_s),
            "efficiency": "—" if pd.isna(row.efficiency) else f"{100 * row.efficiency:.0f} %",
            "straggling": "—" if pd.isna(row.straggling) else f"{format_number(row.straggling, 3)}×",
            "gradient all-reduce": "—" if exchange_ms is None else f"{float(exchange_ms):.2f} ms",
            "share of a step": "—" if share is None else f"{100 * float(share):.0f} %",
            "strategy": rs.summary_value(run, "strategy") or ("one process" if row.workers == 1 else "—"),
            "threads per worker": rs.summary_value(run, "threads_per_worker")
            or ("framework's default" if row.workers == 1 else "—"),
            "batch per worker": rs.summary_value(run, "per_worker_batch")
            or (int(rs.spec_value(run, "batch_size")) // row.workers if rs.spec_value(run, "batch_size") else "—"),
            "1-worker run": row.baseline or "—",
            f"loss vs 1 worker, first {AGREEMENT_STEPS} steps": (f"{agreement[row.run_id]:.1e} relative"
                                                                 if row.run_id in agreement else "—"),
        })
    return pd.DataFrame(rows).astype(str)
