"""Timing training steps without slowing them: windows synchronised at their ends, sampled windows step by step.

A device that runs ahead of the host (a GPU) must be synchronised for a timer to read device time.
Synchronising after every step serialises the host's launch overhead with the device's compute,
which no idiomatic loop does, and penalises the framework with more launch overhead. So on such a
device the steps run in windows, synchronised only at the window's ends: throughput comes from
those windows, as the frameworks' own benchmarks measure it. The first steady window and every
SAMPLE_EVERY-th after it are timed step by step (synchronised after each step) for the per-step
distribution, and left out of the throughput. On a CPU the host waits for each step anyway, so every
step is timed alone at no cost; throughput then comes from one window over the whole steady stretch
of an epoch (no window closed and opened per step: that bookkeeping cost ~10 us a step, 2 % of a
0.45 ms mlp step).

Window boundaries also fall at the first step (its time is the compile estimate) and at the end of
warm-up, so warm-up is timed exactly apart from the steady state.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

WINDOW_STEPS = 16  # steps between two synchronisations: long enough to hide launch latency, short enough to drain
SAMPLE_EVERY = 4  # every 4th steady window timed step by step: a quarter of the steps give the per-step distribution


@dataclass
class Totals:
    """What the clock measured over the run so far."""

    warmup_s: float = 0.0
    warmup_samples: int = 0
    steady_s: float = 0.0  # windows that count for throughput (step-by-step windows excluded where there are others)
    steady_samples: int = 0
    sampled_steady_s: float = 0.0  # step-by-step windows after warm-up: throughput when no other window exists
    sampled_steady_samples: int = 0
    steps: int = 0
    step_times: list[float] = field(default_factory=list)  # seconds of each step timed alone, in step order
    timed_steps: list[int] = field(default_factory=list)  # the global step numbers of step_times


class StepClock:
    """Decides where the device is synchronised and collects the timings of one run's training steps."""

    def __init__(self, synchronize: Callable[[], None], every_step: bool, warmup_steps: int) -> None:
        self._synchronize = synchronize
        self.every_step = every_step
        self._warmup_steps = warmup_steps
        self.totals = Totals()
        self._steady_windows = 0
        self._window_start = 0.0
        self._window_steps = 0
        self._window_samples = 0
        self._window_sampled = False
        self._window_warmup = False
        self._step_start = 0.0
        self._epoch_start: float | None = None
        self._window_alone = False

    def describe(self) -> dict:
        """How steps were timed, for the run's summary."""
        if self.every_step:  # throughput over each epoch's steady stretch, every step timed alone in it
            return {"method": "every_step", "window_steps": None, "sampled_every": 1}
        return {"method": "windows", "window_steps": WINDOW_STEPS, "sampled_every": SAMPLE_EVERY}

    def start_epoch(self, started_at: float) -> None:
        """The epoch began at started_at (perf_counter, device synchronised): its first window starts there.

        So the epoch's own setup (its data copied to the device) counts with its first window, as it
        counts in the epoch's time.
        """
        self._window_steps = 0
        self._epoch_start = started_at

    def before_step(self, global_step: int, alone: bool = False) -> None:
        """Called before step global_step (1-based) starts; alone: time this step by itself (a new input shape)."""
        warmup = global_step <= self._warmup_steps
        boundary = (self._window_steps == 0 or self._window_steps >= self._window_length()
                    or warmup != self._window_warmup or global_step == 1 or global_step == 2
                    or alone or self._window_alone)
        if boundary:
            if self._window_steps:
                self._close_window()
            # The first step alone (the compile estimate); after warm-up the 1st, 5th, 9th ... window.
            sampled = (self.every_step or global_step == 1 or alone
                       or (not warmup and self._steady_windows % SAMPLE_EVERY == 0))
            self._open_window(warmup, sampled=sampled)
            self._window_alone = alone
        if self._window_sampled:
            self._step_start = time.perf_counter()

    def after_step(self, global_step: int, samples: int) -> float | None:
        """Called right after step global_step was launched with `samples` samples; its seconds if timed alone."""
        seconds = None
        if self._window_sampled:
            self._synchronize()
            seconds = time.perf_counter() - self._step_start
            self.totals.step_times.append(seconds)
            self.totals.timed_steps.append(global_step)
        self._window_steps += 1
        self._window_samples += samples
        self.totals.steps += 1
        return seconds

    def end_epoch(self) -> None:
        """The epoch's last step was launched: close its window (synchronises)."""
        if self._window_steps:
            self._close_window()

    def snapshot(self) -> tuple[int, float, int, float]:
        """The steady totals now, to measure a stretch (an epoch) against with steady(since=...)."""
        t = self.totals
        return t.steady_samples, t.steady_s, t.sampled_steady_samples, t.sampled_steady_s

    def steady(self, since: tuple[int, float, int, float] = (0, 0.0, 0, 0.0)) -> tuple[int, float]:
        """(samples, seconds) of the steady state since a snapshot, from the windows that count for throughput.

        Only where no such window exists (a short run on a GPU) do the step-by-step windows stand in.
        """
        now = self.snapshot()
        counted = (now[0] - since[0], now[1] - since[1])
        return counted if counted[0] else (now[2] - since[2], now[3] - since[3])

    def _window_length(self) -> float:
        return math.inf if self.every_step else WINDOW_STEPS

    def _open_window(self, warmup: bool, sampled: bool) -> None:
        if not sampled and not self.every_step and self._epoch_start is None:
            self._synchronize()  # what was queued before belongs to the previous window
        self._window_start = self._epoch_start if self._epoch_start is not None else time.perf_counter()
        self._epoch_start = None
        self._window_steps, self._window_samples = 0, 0
        self._window_sampled, self._window_warmup = sampled, warmup
        self._steady_windows += 0 if warmup else 1

    def _close_window(self) -> None:
        self._synchronize()
        elapsed = time.perf_counter() - self._window_start
        totals = self.totals
        if self._window_warmup:
            totals.warmup_s += elapsed
            totals.warmup_samples += self._window_samples
        elif self._window_sampled and not self.every_step:
            totals.sampled_steady_s += elapsed
            totals.sampled_steady_samples += self._window_samples
        else:
            totals.steady_s += elapsed
            totals.steady_samples += self._window_samples
        self._window_steps = 0


class ShapeLog:
    """The input shapes a run's steps met, and the steps that met one first (timed alone: they may compile)."""

    MAX_LISTED = 50  # first-seen shapes kept in the summary; a variable-length run meets dozens

    def __init__(self) -> None:
        self._first_step: dict[tuple[int, ...], int] = {}

    def first_time(self, shape: tuple[int, ...], global_step: int) -> bool:
        """Note the shape of step global_step; True when no earlier step had it."""
        if shape in self._first_step:
            return False
        self._first_step[shape] = global_step
        return True

    def summary(self, totals: Totals, steady_median_ms: float | None) -> dict:
        """Distinct shapes, and each first-seen shape's step time, beyond a steady step's where known."""
        times = dict(zip(totals.timed_steps, totals.step_times))
        first = []
        for shape, step in sorted(self._first_step.items(), key=lambda item: item[1]):
            milliseconds = times[step] * 1e3 if step in times else None
            first.append({"step": step, "shape": list(shape), "ms": milliseconds})
        later = [entry["ms"] for entry in first[1:] if entry["ms"] is not None]  # the first step is the compile estimate
        extra = sum(max(0.0, ms - steady_median_ms) for ms in later) if steady_median_ms else None
        return {"distinct": len(first), "first_seen": first[:self.MAX_LISTED],
                "later_shapes_extra_ms": extra}
