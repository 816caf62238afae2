"""How much faster one setting trains than another, with a 95 % CI over runs, in words.

Runs are pooled into comparison groups: runs that differ only by their seed form one group,
labelled by what sets it apart ("PyTorch eager", "TensorFlow graph"). Runs are the unit: each
gives one steady samples/s, and separate processes on one machine differ far more than the steps
of one run do. From series.MIN_RUNS_PER_SIDE runs a side, the ratio gets a Welch t interval on log
throughput; below that, no interval is claimed: the sentence says how many seeds per side would
tell the difference, at a stated assumed run-to-run spread. The per-step spread of a single run
is shown only as what it is, variation within that run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from analysis import run_settings as rs
from analysis import series
from analysis.step_times import run_throughput, steady_rates
from db.models import Run
from engine.catalog import framework_label


@dataclass(frozen=True)
class Group:
    label: str  # "PyTorch eager", "TensorFlow graph fp32"
    runs: tuple[Run, ...]


def comparison_groups(runs: Sequence[Run]) -> list[Group]:
    """Seed groups (and single runs) labelled by framework and what else varies among the groups."""
    specs = {run.id: run.spec or {} for run in runs}
    by_id = {run.id: run for run in runs}
    grouped = series.seed_groups(specs)
    in_group = {i for group in grouped for i in group}
    members = [tuple(by_id[i] for i in group) for group in grouped]
    members += [(run,) for run in runs if run.id not in in_group]
    members.sort(key=lambda group: group[0].id)
    labels = _labels([group[0] for group in members])
    return [Group(labels[group[0].id], group) for group in members]


def _labels(leaders: Sequence[Run]) -> dict[int, str]:
    """Framework and mode, plus precision, model and dataset where those vary; the run id only as a last resort."""
    modes = rs.run_modes(leaders)
    parts = {run.id: [framework_label(run.framework), modes[run.id]] for run in leaders}
    for read in (rs.run_precision, lambda run: run.model, lambda run: run.dataset,
                 lambda run: f"batch {rs.spec_value(run, 'batch_size')}", lambda run: f"lr {rs.spec_value(run, 'lr')}"):
        if len({read(run) for run in leaders}) > 1:
            for run in leaders:
                parts[run.id].append(read(run))
    labels = {run.id: " ".join(parts[run.id]) for run in leaders}
    if len(set(labels.values())) < len(labels):
        labels = {run.id: f"{label} (#{run.id})" for run, label in zip(leaders, labels.values())}
    return labels


@dataclass(frozen=True)
class Ratio:
    sentence: str
    ratio: float  # a's steady samples/s over b's: the ratio of their geometric means over runs
    low: Optional[float]  # the 95 % CI; None below series.MIN_RUNS_PER_SIDE runs a side, where none is claimed
    high: Optional[float]
    runs_needed: Optional[int]  # seeds per side that would tell the difference; None when the interval tells it
    method: str  # how the numbers were made and what was assumed, for the caption under the sentence


def ratio_between(a: Group, b: Group, step_times: pd.DataFrame) -> Optional[Ratio]:
    """Throughput of a over b, with a Welch 95 % CI over runs from enough runs; None when a side has nothing timed."""
    rates_a, rates_b = _run_throughputs(a, step_times), _run_throughputs(b, step_times)
    if not rates_a or not rates_b:
        return None
    n_a, n_b = len(rates_a), len(rates_b)
    log_a, log_b = np.log(rates_a), np.log(rates_b)
    if min(n_a, n_b) < series.MIN_RUNS_PER_SIDE:
        ratio = float(np.exp(log_a.mean() - log_b.mean()))
        needed = series.runs_to_tell(ratio, series.log_sd(series.ASSUMED_RUN_CV))
        sentence = series.untold_ratio_sentence(a.label, b.label, ratio, n_a, n_b, needed, series.ASSUMED_RUN_CV)
        return Ratio(sentence, ratio, None, None, needed, _untold_method(a, b, step_times))
    ratio, low, high, dof = series.welch_ratio(rates_a, rates_b)
    needed = None
    if low <= 1 <= high:
        pooled_sd = float(np.sqrt(((n_a - 1) * log_a.var(ddof=1) + (n_b - 1) * log_b.var(ddof=1)) / (n_a + n_b - 2)))
        needed = series.runs_to_tell(ratio, pooled_sd)
        # The figure is approximate (80 % power, equal spreads): one at or below the runs already made would
        # read as nonsense beside an interval that holds 1, so it is left out.
        needed = needed if needed > min(n_a, n_b) else None
    sentence = series.ratio_sentence(a.label, b.label, ratio, low, high, n_a, n_b, runs_needed=needed)
    method = (f"95 % CI: Welch t-interval on the log of each run's steady samples/s, runs as the unit "
              f"(Welch–Satterthwaite dof {dof:.1f}); the ratio is that of the geometric means.")
    if needed is not None:
        method += (" Runs needed: the fewest seeds per side at which a 95 % interval would exclude 1.00× in 80 % of "
                   "studies, if the ratio and the spread measured here are the true ones.")
    return Ratio(sentence, ratio, low, high, needed, method)


def _run_throughputs(group: Group, step_times: pd.DataFrame) -> list[float]:
    """One steady samples/s per run that has one; runs with none yet are left out of the count."""
    rates = [run_throughput(run, step_times) for run in group.runs]
    return [rate for rate in rates if rate and rate > 0]


def _untold_method(a: Group, b: Group, step_times: pd.DataFrame) -> str:
    """Why there is no interval, what the runs-needed figure assumes, and a single run's step spread for what it is."""
    method = (f"No interval below {series.MIN_RUNS_PER_SIDE} runs per side: with fewer, a side's run-to-run spread "
              f"rests on one difference between runs at most, and separate runs on this kind of machine differ by up "
              f"to ±30 %. Runs needed: the fewest seeds per side at which a 95 % interval would exclude 1.00× "
              f"in 80 % of studies, if the ratio measured here is the true one and runs vary by "
              f"{series.ASSUMED_RUN_CV:.0%} (coefficient of variation, assumed).")
    spreads = []
    for group in (a, b):
        if len(group.runs) == 1:
            rates = steady_rates(step_times, group.runs[0])
            if len(rates) >= 2 and rates.mean() > 0:
                spreads.append(f"{rates.std() / rates.mean():.1%} ({group.label})")
    if spreads:
        method += (" Within one run, steady steps vary by " + " and ".join(spreads) + " (CV of per-step samples/s): "
                   "variation inside one process, not between runs, so no measure of how sure the ratio is.")
    return method
