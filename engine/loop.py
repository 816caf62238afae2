"""The one training loop, shared by both backends: epochs, data order, timing, metrics."""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Optional, Protocol

import numpy as np

from engine import calibration, inference, pipeline
from engine.backends.base import Backend
from engine.batches import steps_per_epoch
from engine.data import Dataset, epoch_order
from engine.distributed import SINGLE, Workers, shard
from engine.host_threads import numpy_blas_single_threaded, numpy_blas_threads
from engine.layer_stats import layer_rows
from engine.spec import RunSpec
from engine.step_clock import ShapeLog, StepClock
from engine.weights import initial_weights, parameter_count

# Per-step values stay in memory (losses on the device) and go to the sink at most this often.
DRAIN_INTERVAL_S = 0.25
EVAL_BATCH_SIZE = 1024


class Diverged(Exception):
    """The loss (or a test metric) became NaN or infinite: the run ends as "diverged", a result."""

    def __init__(self, step: int, name: str, value: float, lr: float) -> None:
        self.step = step
        super().__init__(f"{name} became {value} at step {step}: the run diverged (lower lr, now {lr}?)")


class MetricSink(Protocol):
    # points: (step, epoch, value, unix time the step ended)
    def step_metrics(self, name: str, points: list[tuple[int, int, float, float]]) -> None: ...
    def epoch_metrics(self, epoch: int, step: int, metrics: dict[str, float]) -> None: ...
    def progress(self, epoch: int, step: int) -> None: ...
    # rows: engine.layer_stats.layer_rows, per-layer statistics of one epoch
    def tensor_stats(self, rows: list[dict]) -> None: ...


class EpochMeter(Protocol):
    """Exact per-epoch peaks and energy (engine.monitor.EpochMeter)."""

    def start(self) -> None: ...
    def train_done(self, samples: int) -> dict[str, float]: ...
    def end(self) -> dict[str, float]: ...
    def run_peaks(self) -> dict[str, float]: ...


class _StepBuffer:
    """Per-step losses (device scalars) and the times of the steps timed alone, waiting to go to the sink."""

    def __init__(self) -> None:
        self.losses: list = []
        self.steps: list[int] = []
        self.ended_at: list[float] = []  # unix time each step ended: memory can be plotted against step
        self.timed: list[tuple[int, float, float]] = []  # (step, milliseconds, ended at) of steps timed alone
        self.waits: list[tuple[int, float, float]] = []  # (step, milliseconds blocked on its batch, ended at)

    def add(self, step: int, ended_at: float, timed_s: Optional[float], wait_s: Optional[float] = None) -> None:
        """Note step `step` (its loss already appended), ended at unix time ended_at, and its seconds if timed alone;
        wait_s: the seconds the loop waited for its batch (recorded with the steps timed alone)."""
        self.steps.append(step)
        self.ended_at.append(ended_at)
        if timed_s is not None:
            self.timed.append((step, timed_s * 1e3, ended_at))
            if wait_s is not None:
                self.waits.append((step, wait_s * 1e3, ended_at))

    def drain(self, backend: Backend, sink: MetricSink, epoch: int) -> tuple[list[float], Optional[tuple[int, float]]]:
        """Send buffered steps; return their losses and the first (step, loss) that is not finite."""
        losses = backend.losses_to_floats(self.losses)
        rows = list(zip(self.steps, losses, self.ended_at))
        sink.step_metrics("train_loss", [(s, epoch, loss, t) for s, loss, t in rows])
        if self.timed:
            sink.step_metrics("step_time_ms", [(s, epoch, ms, t) for s, ms, t in self.timed])
        if self.waits:
            sink.step_metrics("data_wait_ms", [(s, epoch, ms, t) for s, ms, t in self.waits])
        self.losses, self.steps, self.ended_at, self.timed, self.waits = [], [], [], [], []
        bad = next(((step, loss) for step, loss, _ in rows if not math.isfinite(loss)), None)
        return losses, bad


def train(spec: RunSpec, backend: Backend, data: Dataset, sink: MetricSink, meter: Optional[EpochMeter] = None,
          artifacts: Optional[list[calibration.Artifact]] = None, workers: Workers = SINGLE) -> dict:
    """Train per the spec, streaming metrics to the sink; return the run summary.

    A NaN/inf loss raises Diverged (spec.on_divergence "stop") or is noted in the summary as
    diverged_at_step and training goes on ("continue"). The meter, when given, adds exact
    per-epoch memory peaks and energy to the epoch metrics. With spec.layer_stats, per-layer
    statistics go to the sink after every epoch, outside every timer and memory meter, and of the
    initial weights as epoch 0; their cost is the summary's layer_stats_s. Arena's own numpy work
    runs on one thread meanwhile, so it never competes with the framework (engine/host_threads.py).
    In a multi-worker run (workers, engine/distributed.py) this process trains its shard of every
    global batch; rank 0 alone evaluates, records the run's metrics and finishes, after a barrier
    that lets the others write their points; the others return their step timing.
    After the last epoch, outside every timer, a calibration window splits steps into phases and a
    few steps run under the framework's profiler (engine/calibration.py); the profiler's trace is
    appended to artifacts, for the caller to store.
    """
    with numpy_blas_single_threaded():
        run = _Run(spec, backend, data, sink, meter, workers)
        try:
            if spec.mode == "fit":
                run.fit()
            else:
                for epoch in range(1, spec.epochs + 1):
                    run.epoch(epoch)
            if workers.parallel:  # every worker at once: the exchange needs them all
                run.summary["communication"] = _communication(backend, run.summary, _timing_summary(spec, run.clock))
            if not workers.lead:
                return _timing_summary(spec, run.clock)
            if workers.distributed:
                backend.barrier()  # the other workers have written their points (engine/runner.py)
            return run.finish(artifacts)
        finally:
            run.pipeline.close()


class _Run:
    """One training run's state between epochs: the model built, the clock, the counters, the summary so far."""

    def __init__(self, spec: RunSpec, backend: Backend, data: Dataset, sink: MetricSink,
                 meter: Optional[EpochMeter], workers: Workers = SINGLE) -> None:
        self.spec, self.backend, self.data, self.sink, self.meter = spec, backend, data, sink, meter
        self.workers = workers
        # A worker's batches are its shard of each global batch: batch_size / workers samples.
        self.local_spec = (dataclasses.replace(spec, batch_size=spec.batch_size // workers.world)
                           if workers.distributed else spec)
        input_shape = tuple(data.x_train.shape[1:])
        weights = initial_weights(spec.model, input_shape, data.num_outputs, spec.seed) if spec.same_init else None
        param_count = backend.build(spec, data.task, weights, input_shape, data.num_outputs)
        expected = parameter_count(spec.model, input_shape, data.num_outputs)
        if param_count != expected:
            raise RuntimeError(f"{backend.name} built {spec.model} with {param_count} parameters, expected {expected}")
        self.steps = steps_per_epoch(spec, len(data.x_train))
        self.pipeline = pipeline.make(self.local_spec, backend, data)
        self.waits: list[tuple[int, float]] = []  # (step, seconds blocked on its batch)
        self.summary: dict = {"param_count": param_count, "steps_per_epoch": self.steps, "same_init": spec.same_init,
                              **backend.settings(), "numpy_blas_threads": numpy_blas_threads(),
                              "workers": workers.replicas_in_sync}
        if workers.parallel:  # a replica's batch: this process's shard, split again between its devices
            self.summary["per_worker_batch"] = self.local_spec.batch_size // workers.replicas
        every_step = spec.step_timing == "every_step" or (spec.step_timing == "auto" and not backend.asynchronous)
        self.clock = StepClock(backend.synchronize, every_step, spec.warmup_steps)
        self.summary["step_timing"] = self.clock.describe()
        self.shapes = ShapeLog()
        self.global_step = 0
        self.train_total_s = 0.0
        self.energy_j, self.energy_samples = 0.0, 0
        # The run's first training batch: the same samples in both frameworks, every epoch.
        first_batch = epoch_order(len(data.x_train), spec.seed, 1)[:spec.batch_size]
        self.stats_batch = (data.x_train[first_batch], data.y_train[first_batch])
        if spec.layer_stats and workers.lead:
            # Epoch 0 without gradients: a forward and backward pass before the first step would warm up
            # the kernels that step uses and make its time, the compile estimate, look shorter.
            self.summary["layer_stats_s"] = _record_layer_stats(spec, backend, sink, None, 0, 0)

    def epoch(self, epoch: int) -> None:
        """Train one epoch, timed; then, untimed, evaluate, record its metrics and its layer statistics."""
        if self.meter is not None:
            self.meter.start()
        before = self.clock.snapshot()
        samples, train_s, losses, bad = self._train_steps(epoch)
        self._end_epoch(epoch, before, samples, train_s, losses, bad)

    def _end_epoch(self, epoch: int, before: tuple, samples: int, train_s: float, losses: list[float],
                   bad: Optional[tuple[int, float]]) -> None:
        """After an epoch's steps (timed since the clock's snapshot `before`): its metrics, untimed."""
        self.train_total_s += train_s
        energy = self.meter.train_done(samples) if self.meter is not None else {}
        if "energy_j" in energy:
            self.energy_j, self.energy_samples = self.energy_j + energy["energy_j"], self.energy_samples + samples
        if bad:  # a loss of the epoch's last steps, drained after the timer stopped
            self.sink.progress(epoch - 1, self.global_step)
            self._diverged(bad[0], "train_loss", bad[1])
        if not self.workers.lead:
            return  # rank 0 evaluates and records the epoch; this worker goes on to the next step's all-reduce
        metrics = {"train_loss": sum(losses) / len(losses), "epoch_time_s": train_s}
        timed_samples, timed_s = self.clock.steady(since=before)
        if timed_samples and timed_s > 0:
            metrics["samples_per_s"] = timed_samples / timed_s
        metrics.update(energy)
        metrics.update(self.backend.evaluate(self.data.x_test, self.data.y_test, EVAL_BATCH_SIZE))
        if self.meter is not None:
            metrics.update(self.meter.end())
        if self.spec.layer_stats:
            self.summary["layer_stats_s"] += _record_layer_stats(self.spec, self.backend, self.sink, self.stats_batch,
                                                                 epoch, self.global_step)
        if "phi_true" in self.data.info:
            metrics["phi_true"] = self.data.info["phi_true"]  # the target, plotted beside the estimate
        self.sink.epoch_metrics(epoch, self.global_step, metrics)
        bad = next(((name, value) for name, value in metrics.items() if not math.isfinite(value)), None)
        if bad:
            self.sink.progress(epoch, self.global_step)
            self._diverged(self.global_step, *bad)
        self.sink.progress(epoch, self.global_step)
        self._check_target(epoch, metrics)

    def _train_steps(self, epoch: int) -> tuple[int, float, list[float], Optional[tuple[int, float]]]:
        """The epoch's optimizer steps, losses drained to the sink as they go.

        Returns samples, seconds, the losses, and the first (step, loss) of the last drain that is not finite.
        """
        backend, clock = self.backend, self.clock
        order = self._order(epoch)
        world = self.workers.world  # every worker's step takes a shard: world x its samples make the global batch
        backend.synchronize()
        start = time.perf_counter()
        clock.start_epoch(start)
        batches = self.pipeline.batches(epoch, order, self.steps)  # the arrays pipeline copies the epoch here
        buffer, losses = _StepBuffer(), []
        last_drain, samples = start, 0
        for i in range(self.steps):
            wait_start = time.perf_counter()
            x_batch, y_batch, size = next(batches)
            waited = time.perf_counter() - wait_start
            size *= world
            step = self.global_step + 1
            new_shape = self.shapes.first_time(tuple(x_batch.shape), step)
            clock.before_step(step, alone=new_shape)  # a new shape's step is timed alone: it may compile
            buffer.losses.append(backend.train_step(x_batch, y_batch))
            step_s = clock.after_step(step, size)  # synchronises only where this step is timed alone
            step_end = time.perf_counter()
            buffer.add(step, time.time(), step_s, waited)
            self.waits.append((step, waited))
            self.global_step, samples = step, samples + size
            if step_end - last_drain >= DRAIN_INTERVAL_S:
                drained, bad = buffer.drain(backend, self.sink, epoch)
                losses += drained
                self.sink.progress(epoch - 1, self.global_step)
                if bad:
                    self._diverged(bad[0], "train_loss", bad[1])
                last_drain = time.perf_counter()
        clock.end_epoch()
        train_s = time.perf_counter() - start
        drained, bad = buffer.drain(backend, self.sink, epoch)
        return samples, train_s, losses + drained, bad

    def _order(self, epoch: int) -> np.ndarray:
        """This worker's samples of the epoch, in step order."""
        return shard(epoch_order(len(self.data.x_train), self.spec.seed, epoch), self.steps, self.spec.batch_size,
                     self.workers)

    def fit(self) -> None:
        """Every epoch through Keras's model.fit (spec.mode "fit"): one call over a tf.data dataset of every epoch;
        a callback times each step with the clock and ends each epoch as epoch() does."""
        size = self.steps * self.local_spec.batch_size
        dataset = self.pipeline.fit_dataset(self.spec.epochs, lambda epoch: self._order(epoch)[:size])
        self.backend.fit(dataset, self.spec.epochs, self.steps, _FitEpochs(self, len(self._order(1)[:size])))

    def _diverged(self, step: int, name: str, value: float) -> None:
        if not self.workers.lead:
            return  # rank 0 sees the same global loss and ends the run; it stops this worker with it
        if "diverged_at_step" not in self.summary:
            self.summary.update(diverged_at_step=step, diverged_metric=name)
        if self.spec.on_divergence == "stop":
            raise Diverged(step, name, value, self.spec.lr)

    def _check_target(self, epoch: int, metrics: dict[str, float]) -> None:
        target = self.spec.target_accuracy
        if target is not None and "time_to_target_s" not in self.summary and metrics.get("test_accuracy", 0) >= target:
            # Training time only (evaluation excluded), warm-up included: it is part of getting there.
            self.summary.update(time_to_target_s=self.train_total_s, epochs_to_target=epoch,
                                steps_to_target=self.global_step)

    def _input_summary(self) -> dict:
        """The pipeline as it ran, the time steps waited for their batches, and (after training, untimed) the
        loader alone and the step alone: whether the run was input-bound."""
        spec = self.spec
        result = {**pipeline.describe(spec, self.data), **self.pipeline.settings()}
        steady = [seconds for step, seconds in self.waits if step > spec.warmup_steps]
        if spec.mode == "fit":
            result["data_wait"] = "inside model.fit's step: Keras takes the next batch within its train function"
        elif steady:
            steady_s = self.clock.totals.steady_s + self.clock.totals.sampled_steady_s  # every steady window
            result.update(data_wait_p50_ms=statistics.median(steady) * 1e3,
                          data_wait_mean_ms=statistics.fmean(steady) * 1e3,
                          data_wait_share=min(1.0, sum(steady) / steady_s) if steady_s > 0 else None)
        if self.workers.parallel:
            result["figures_skipped"] = "multi-worker run: the loader and the step alone are measured by one-worker runs"
        elif spec.calibration_steps:
            result.update(pipeline.input_figures(self.local_spec, self.backend, self.pipeline, self.data,
                                                 self._order(spec.epochs + 1), self.steps, spec.calibration_steps))
        return result

    def finish(self, artifacts: Optional[list[calibration.Artifact]]) -> dict:
        """The run's summary: timing, shapes, compiles, peaks, energy, target; then calibration and inference."""
        spec, summary = self.spec, self.summary
        summary.update(_timing_summary(spec, self.clock))
        summary["shapes"] = self.shapes.summary(self.clock.totals, summary.get("step_time_p50_ms"))
        summary["input"] = self._input_summary()
        summary["compile_events"] = self.backend.compile_events()
        if self.meter is not None:
            summary["peak_bytes"] = self.meter.run_peaks()
        if self.energy_samples:
            summary.update(energy_j=self.energy_j,
                           samples_per_j=self.energy_samples / self.energy_j if self.energy_j > 0 else None)
        summary["target_accuracy"] = spec.target_accuracy
        if spec.target_accuracy is not None:
            summary.setdefault("time_to_target_s", None)
        # Phases and the operator profile, then the inference benchmark: outside every timer above.
        if self.workers.parallel:
            # Their steps would wait for gradients from workers that have finished: one worker's phases
            # are measured by a one-worker run of the same spec.
            summary["calibration_skipped"] = "multi-worker run: phases and operator profiles come from one-worker runs"
        else:
            summary.update(calibration.after_training(spec, self.backend, self.data, artifacts))
        if spec.inference_iters:
            summary.update(inference.benchmark(self.backend, self.data.x_test, self.data.y_test, spec.batch_size,
                                               spec.inference_iters))
        return summary


def _record_layer_stats(spec: RunSpec, backend: Backend, sink: MetricSink, batch: Optional[tuple], epoch: int,
                        step: int) -> float:
    """Send per-layer statistics of the weights and (batch given) their gradients to the sink; return the seconds spent.

    The gradient is taken on one fixed batch at the current weights, not averaged over the epoch:
    with the same weights both frameworks then differentiate the same function at the same point.
    """
    start = time.perf_counter()
    weights = backend.named_parameters_canonical()
    grads = backend.fixed_batch_gradients(*batch) if batch is not None else []
    sink.tensor_stats(layer_rows(epoch, step, weights, grads, spec.histogram_bins))
    return time.perf_counter() - start


COMMUNICATION_REPEATS = 20  # all-reduces of the gradients' bytes timed after training, the median kept


def _communication(backend: Backend, summary: dict, timing: dict) -> dict:
    """What a multi-worker step spends exchanging gradients, measured after training on every worker at once:
    the gradients' bytes all-reduced alone, COMMUNICATION_REPEATS times (the same buffer in both frameworks),
    against this worker's median step."""
    times = backend.all_reduce_ms(COMMUNICATION_REPEATS)
    ms = statistics.median(times)
    step_ms = timing.get("step_time_p50_ms")
    return {"method": f"the gradients' {summary['param_count']:,} float32 values all-reduced alone, "
                      f"{len(times)} times after training, each after a barrier; median",
            "all_reduce_ms": ms, "share": ms / step_ms if step_ms else None}


def _timing_summary(spec: RunSpec, clock: StepClock) -> dict:
    """First step, compile estimate and steady-state percentiles, warm-up steps excluded.

    Percentiles come from the steps timed alone (every step on a CPU; a quarter of them in windows
    on a GPU); throughput from the steady windows (engine/step_clock.py).
    """
    totals = clock.totals
    steady = [seconds for step, seconds in zip(totals.timed_steps, totals.step_times) if step > spec.warmup_steps]
    steady_samples, steady_s = clock.steady()
    result: dict = {
        "first_step_s": totals.step_times[0],
        "warmup_steps": min(spec.warmup_steps, totals.steps),
        "warmup_s": totals.warmup_s,
        "steady_steps": len(steady),
    }
    if not steady:
        return result  # every step was warm-up: no steady state to report
    median = statistics.median(steady)
    result.update(
        # What the first step cost beyond a normal one: tracing/compiling (or, in eager mode,
        # allocator and kernel warm-up).
        compile_s=max(0.0, totals.step_times[0] - median),
        steady_samples_per_s=steady_samples / steady_s if steady_s > 0 else None,
        step_time_mean_ms=statistics.fmean(steady) * 1e3,
        step_time_p50_ms=inference.percentile_ms(steady, 50),
        step_time_p95_ms=inference.percentile_ms(steady, 95),
        step_time_p99_ms=inference.percentile_ms(steady, 99),
    )
    return result


class _FitEpochs:
    """What model.fit calls back (TensorFlowBackend.fit): the loop's clock, buffers and epoch ends, driven from
    Keras's callbacks instead of the loop's own for-loop. Keras takes each batch inside its train function, so
    a fit run has no data wait of its own."""

    def __init__(self, run: _Run, epoch_samples: int) -> None:
        self.run, self.epoch_samples = run, epoch_samples  # every epoch's: the same samples in another order

    def epoch_begin(self, epoch: int) -> None:
        run = self.run
        if run.meter is not None:
            run.meter.start()
        self.epoch, self.before = epoch, run.clock.snapshot()
        self.buffer, self.losses, self.samples, self.previous_mean = _StepBuffer(), [], 0, 0.0
        run.backend.synchronize()
        self.start = self.last_drain = time.perf_counter()
        run.clock.start_epoch(self.start)

    def step_begin(self, index: int) -> None:
        run, batch = self.run, self.run.local_spec.batch_size
        self.size = min(batch, self.epoch_samples - index * batch)
        step = run.global_step + 1
        run.clock.before_step(step, alone=run.shapes.first_time((self.size, *run.data.x_train.shape[1:]), step))

    def step_end(self, index: int, mean_loss: float) -> None:
        """Keras reports the epoch's running mean of the loss, weighted by batch size: the step's own loss is what
        its samples added to the sum, over its samples."""
        run = self.run
        step = run.global_step + 1
        total = mean_loss * (self.samples + self.size)
        self.buffer.losses.append((total - self.previous_mean * self.samples) / self.size)
        self.previous_mean = mean_loss
        self.buffer.add(step, time.time(), run.clock.after_step(step, self.size))
        run.global_step, self.samples = step, self.samples + self.size
        if time.perf_counter() - self.last_drain >= DRAIN_INTERVAL_S:
            drained, bad = self.buffer.drain(run.backend, run.sink, self.epoch)
            self.losses += drained
            run.sink.progress(self.epoch - 1, run.global_step)
            if bad:
                run._diverged(bad[0], "train_loss", bad[1])
            self.last_drain = time.perf_counter()

    def epoch_end(self, epoch: int) -> None:
        run = self.run
        run.clock.end_epoch()
        train_s = time.perf_counter() - self.start
        drained, bad = self.buffer.drain(run.backend, run.sink, epoch)
        run._end_epoch(epoch, self.before, self.samples, train_s, self.losses + drained, bad)
