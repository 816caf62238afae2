"""TensorFlow backend: eager, tf.function or XLA; the mirror image of torch_backend.py."""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import keras

from engine.backends import tensorflow_models, tf_xplane
from engine.backends.base import Backend, OperatorProfile, exception_chain
from engine.catalog import DATASETS, MODELS
from engine.distributed import COLLECTIVE_TIMEOUT_S, SINGLE, Workers
from engine.weights import layer_shapes, trainable


# TensorFlow raises tf.errors.ResourceExhaustedError when an allocation fails, on the CPU as on a
# GPU (TF 2.21, tf.zeros([2**40]) on Linux: "OOM when allocating tensor with shape[1099511627776]
# and type float on /job:localhost/replica:0/task:0/device:CPU:0 by allocator cpu [Op:Fill]").
# oneDNN (TensorFlow's CPU kernels) reports a failed allocation as status 1, dnnl_out_of_memory,
# wrapped in an ordinary op error rather than ResourceExhaustedError.
_ONEDNN_OUT_OF_MEMORY = "Status:1, message: could not create a memory object"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether exc (or an exception it was raised from) is an allocation failure."""
    return any(isinstance(link, (tf.errors.ResourceExhaustedError, MemoryError))
               or (isinstance(link, tf.errors.OpError) and _ONEDNN_OUT_OF_MEMORY in str(link))
               for link in exception_chain(exc))


class TensorFlowBackend(Backend):
    name = "tensorflow"

    def __init__(self, device: str, memory_growth: bool = True, threads: int | None = None) -> None:
        if threads:  # this worker's share of the cores (engine/distributed.py); only before TensorFlow starts
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        self._workers, self._strategy = SINGLE, None
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            # TensorFlow reserves nearly all GPU memory when it first initialises a GPU; growth on
            # demand (the default here) behaves like PyTorch's caching allocator. It can only be set
            # before that first use, which is why the backend sets it as it starts.
            tf.config.experimental.set_memory_growth(gpu, memory_growth)
        self._memory_growth = memory_growth
        if device == "auto":
            device = "cuda:0" if gpus else "cpu"
        if device.startswith("cuda"):
            index = int(device.split(":")[1])
            if index >= len(gpus):
                raise RuntimeError(
                    f"device {device!r} requested but TensorFlow sees {len(gpus)} GPU(s)"
                )
            self._tf_device = f"/GPU:{index}"
            self._index = index
        else:
            self._tf_device = "/CPU:0"
            self._index = None
        self.device = device

    def join(self, workers: Workers) -> None:
        """Become one worker of a data-parallel run: MultiWorkerMirroredStrategy over TF_CONFIG, before build; or,
        holding every worker's device (workers.replicas), MirroredStrategy over them in this process."""
        self._workers = workers
        if workers.replicas > 1:
            self._strategy, self._strategy_name = self._mirrored(workers.replicas)
            return
        if not workers.distributed:
            return
        os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers.addresses()},
                                              "task": {"type": "worker", "index": workers.rank}})
        implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL if self._index is not None
                          else tf.distribute.experimental.CommunicationImplementation.RING)
        self._strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=implementation, timeout_seconds=COLLECTIVE_TIMEOUT_S))
        self._strategy_name = f"MultiWorkerMirroredStrategy ({implementation.name.lower()})"

    def _mirrored(self, replicas: int) -> tuple[tf.distribute.Strategy, str]:
        """MirroredStrategy over this process's GPUs (NCCL all-reduce), or, without a GPU, over as many logical CPU
        devices carved from the one CPU: the same arithmetic, a functional check only (they share the cores)."""
        if self._index is not None:
            gpus = tf.config.list_physical_devices("GPU")
            if len(gpus) < replicas:
                raise RuntimeError(f"tf_strategy='mirrored' with {replicas} workers needs {replicas} GPUs in this "
                                   f"process; TensorFlow sees {len(gpus)} (CUDA_VISIBLE_DEVICES="
                                   f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
            devices = [f"/GPU:{index}" for index in range(replicas)]
            return (tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.NcclAllReduce()),
                    f"MirroredStrategy over {replicas} GPUs in one process (NCCL all-reduce)")
        # Only before TensorFlow's runtime starts (the backend creates no tensor before join).
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
        devices = [f"/CPU:{index}" for index in range(replicas)]
        # ReductionToOneDevice: NCCL needs GPUs, and HierarchicalCopyAllReduce is laid out for DGX-1 GPU links.
        return (tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice()),
                f"MirroredStrategy over {replicas} logical CPU devices in one process (ReductionToOneDevice): "
                f"a functional check, not a speed figure")

    def barrier(self) -> None:
        """Every worker waits here for the others (a multi-worker run's end: each has written its points)."""
        if self._strategy is not None:
            self._strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("sum", tf.constant(1.0)))

    def all_reduce_ms(self, repeats: int) -> list[float]:
        """Milliseconds of one all-reduce of the gradients' bytes (one float32 buffer), each after a barrier so a
        late worker's wait is not counted: what a step's gradient exchange costs on this strategy's collectives."""
        import time

        size = sum(int(np.prod(v.shape)) for v in self.module.trainable_variables)
        with self._placement():
            # A variable of the strategy (mirrored on every worker's device), read in the replica: a plain
            # tensor handed to strategy.run has no device the collective can reduce to.
            buffer = tf.Variable(tf.zeros([size], tf.float32), trainable=False)

            @tf.function
            def all_reduce():
                return self._strategy.run(
                    lambda: tf.distribute.get_replica_context().all_reduce("sum", buffer.read_value()))

            all_reduce()  # traced here, outside the timings
            times = []
            for _ in range(repeats):
                self.barrier()
                start = time.perf_counter()
                result = all_reduce()
                self._strategy.experimental_local_results(result)[0].numpy()  # the value is here: the exchange is done
                times.append((time.perf_counter() - start) * 1e3)
        return times

    def leave(self) -> None:
        """Nothing to tear down: the strategy's servers end with the process."""

    def _placement(self):
        """Where the model, its variables and its steps live: the strategy's scope for several workers."""
        return self._strategy.scope() if self._strategy is not None else tf.device(self._tf_device)

    def build(self, spec, task, weights, input_shape, num_outputs) -> int:
        self._configure(spec)
        keras.utils.set_random_seed(spec.seed)
        self.task = task
        self.model_name = spec.model
        self._images = len(input_shape) == 3
        self._canonical_names = [name for name, _ in layer_shapes(spec.model, input_shape, num_outputs)
                                 if trainable(name)]
        sync = self._strategy is not None and spec.sync_batchnorm
        with self._placement(), tensorflow_models.synchronized_batch_norm(sync):
            self.module = tensorflow_models.build_model(
                spec.model, input_shape, num_outputs,
                data_format=self._layout if self._layout != "n/a" else "channels_last",
                free_length=spec.variable_length,
            )
            has_batch_norm = any(isinstance(layer, keras.layers.BatchNormalization) for layer in self.module.layers)
            self._sync_batchnorm = ("no batch norm" if not has_batch_norm else "synchronized BatchNormalization"
                                    if sync else "off: each worker's own statistics")
            if weights is not None:
                tensorflow_models.load_canonical(self.module, spec.model, weights)
            if spec.optimizer == "sgd":
                optimizer = keras.optimizers.SGD(learning_rate=spec.lr)
            elif spec.optimizer == "momentum":
                optimizer = keras.optimizers.SGD(learning_rate=spec.lr, momentum=0.9)
            else:
                # Keras's default epsilon is 1e-7, PyTorch's 1e-8: pin it so both run the same Adam.
                optimizer = keras.optimizers.Adam(learning_rate=spec.lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
            if self._loss_scaling:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.module.trainable_variables)
        if task == "classification":
            self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            label_spec = tf.TensorSpec([None], tf.int64)
        else:
            self.loss_fn = keras.losses.MeanSquaredError()
            label_spec = tf.TensorSpec([None, num_outputs], tf.float32)
        shape = list(input_shape)
        if self._layout == "channels_first":
            shape = [shape[2], shape[0], shape[1]]
        input_dtype = tf.int64 if DATASETS[spec.dataset].modality == "sequence" else tf.float32
        if spec.variable_length:
            shape[0] = None  # every batch its own sequence length: free in the signature, as the batch size is
        input_spec = tf.TensorSpec([None, *shape], input_dtype)
        # A fixed signature with a free batch dimension: a smaller batch does not retrace (XLA still
        # compiles once per concrete shape, which the loop's warm-up absorbs).
        self._xla_shapes: dict[str, set[tuple[int, ...]]] = {"step": set(), "predict": set()}
        step = self._train_step if self._strategy is None else self._distributed_step
        if spec.mode == "eager":
            self._step, self._predict, self._gradients = step, self._forward, self._fixed_batch_gradients
        else:
            jit = spec.mode == "xla"
            self._step = tf.function(step, input_signature=[input_spec, label_spec], jit_compile=jit)
            self._predict = tf.function(self._forward, input_signature=[input_spec], jit_compile=jit)
            # Traced (and compiled) on first use, outside the timed epochs.
            self._gradients = tf.function(self._fixed_batch_gradients, input_signature=[input_spec, label_spec],
                                          jit_compile=jit)
        if spec.mode == "fit":
            # Keras's defaults otherwise: jit_compile "auto" (XLA on a GPU where the model allows, not on a CPU),
            # one step per execution. The loop's own step (self._step, a tf.function) serves calibration only.
            with self._placement():
                self.module.compile(optimizer=self.optimizer, loss=self.loss_fn, steps_per_execution=1)
        return tensorflow_models.trainable_parameter_count(self.module)

    def fit(self, dataset, epochs: int, steps_per_epoch: int, hooks) -> None:
        """Train with Keras's model.fit over a tf.data dataset: verbose=0, one callback that hands every epoch and
        step to hooks (engine.loop's clock and recorder): epoch_begin(epoch), step_begin(i), step_end(i, mean loss),
        epoch_end(epoch), epochs counted from 1."""
        with self._placement():
            # shuffle=False: the dataset holds every epoch's order already (Keras ignores shuffle for a tf.data
            # dataset anyway, with a warning).
            self.module.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0, shuffle=False,
                            callbacks=[_FitCallback(hooks)])

    def _configure(self, spec) -> None:
        """Set TF32, determinism and the mixed-precision policy before any model exists."""
        self._mode = spec.mode
        self._tf32 = spec.tf32
        tf.config.experimental.enable_tensor_float_32_execution(spec.tf32)
        self._deterministic = spec.deterministic
        if spec.deterministic:
            tf.config.experimental.enable_op_determinism()
        self._layout = spec.layout if MODELS[spec.model].conv else "n/a"
        if self._layout == "channels_first" and self._index is None and spec.mode != "xla":
            raise ValueError(
                "layout='channels_first': TensorFlow runs NCHW convolutions only on a GPU and this run is on "
                "the CPU; choose channels_last (the default) or mode xla"
            )
        if spec.precision == "fp32":
            policy = "float32"
        elif self._index is None or _compute_capability(self._index) >= (8, 0):
            policy = "mixed_bfloat16"
        else:  # pre-Ampere GPUs: float16, with loss scaling against underflow
            policy = "mixed_float16"
        keras.mixed_precision.set_global_policy(policy)
        self._compute_dtype = keras.mixed_precision.global_policy().compute_dtype
        self._loss_scaling = policy == "mixed_float16"

    def settings(self):
        return {
            "mode": self._mode,
            "compute_dtype": self._compute_dtype,
            "loss_scaling": self._loss_scaling,
            "tf32": self._tf32 if self._index is not None else False,
            "layout": self._layout,
            "deterministic": self._deterministic,
            "tf_memory_growth": self._memory_growth,
            **({"fit": f"model.fit(tf.data dataset, steps_per_epoch, verbose=0), steps_per_execution="
                       f"{self.module.steps_per_execution}, jit_compile={self.module.jit_compile}; callbacks: Arena's "
                       f"per-step recorder (reads the logs every step) and Keras's History; the step's loss is "
                       f"recovered from Keras's running mean"} if self._mode == "fit" else {}),
            **({"strategy": self._strategy_name,
                "sync_batchnorm": self._sync_batchnorm} if self._strategy is not None else {}),
        }

    def to_device(self, x, y):
        if self._images and self._layout == "channels_first":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        with tf.device(self._tf_device):
            return tf.constant(x), tf.constant(y)

    def native_pipeline(self, spec, data):
        """TensorFlow's own loader: tf.data (engine/backends/tensorflow_pipeline.py)."""
        from engine.backends.tensorflow_pipeline import TfDataPipeline

        return TfDataPipeline(spec, self, data)

    def _train_step(self, x, y):
        with tf.GradientTape() as tape:
            loss = self.loss_fn(y, tf.cast(self.module(x, training=True), tf.float32))
            scaled = self.optimizer.scale_loss(loss) if self._loss_scaling else loss
        variables = self.module.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return loss

    def _distributed_step(self, x, y):
        """One step of a multi-worker run on this worker's shard: the optimizer (Keras under the strategy)
        sums the gradients over the workers, each computed from the shard's mean loss / workers (Keras's
        losses divide by the replicas in sync themselves, keras.losses.loss.scale_loss_for_distribution),
        so the step is the one a single worker takes on the whole global batch; returns that batch's loss.
        Holding every device (MirroredStrategy), this process has the whole global batch: replica r takes its
        r-th slice, as rank r would (engine/distributed.py shard), cut where the batch is: each device gets its own."""
        if self._workers.replicas > 1:
            x, y = self._per_replica(x), self._per_replica(y)

        def replica_step(x, y):
            with tf.GradientTape() as tape:
                loss = self.loss_fn(y, tf.cast(self.module(x, training=True), tf.float32))
            variables = self.module.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        per_worker = self._strategy.run(replica_step, args=(x, y))
        return self._strategy.reduce(tf.distribute.ReduceOp.SUM, per_worker, axis=None)

    def _per_replica(self, value):
        """Replica r's part of a global batch: its r-th equal slice."""
        parts = tf.split(value, self._workers.replicas)
        return self._strategy.experimental_distribute_values_from_function(
            lambda context: parts[context.replica_id_in_sync_group])

    def _forward(self, x):
        return self.module(x, training=False)

    def _fixed_batch_gradients(self, x, y):
        # training=False: dropout off; batch norm normalises with, and does not update, its moving statistics.
        with tf.GradientTape() as tape:
            loss = self.loss_fn(y, tf.cast(self.module(x, training=False), tf.float32))
            scaled = self.optimizer.scale_loss(loss) if self._loss_scaling else loss  # float16: no underflow to zero
        grads = tape.gradient(scaled, self.module.trainable_variables)
        if self._loss_scaling:
            grads = [None if g is None else tf.convert_to_tensor(g) / self.optimizer.dynamic_scale for g in grads]
        return grads

    def train_step(self, x, y):
        if self._mode == "xla":
            self._xla_shapes["step"].add(tuple(x.shape))
        with self._placement():
            return self._step(x, y)

    def losses_to_floats(self, losses: Sequence[Any]) -> list[float]:
        return tf.stack(list(losses)).numpy().astype(float).tolist() if losses else []

    def evaluate(self, x, y, batch_size):
        x_all, y_all = self.to_device(x, y)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            out = tf.cast(self.predict(x_all[start:start + batch_size]), tf.float32)
            target = y_all[start:start + batch_size]
            loss_sum += float(self.loss_fn(target, out)) * int(target.shape[0])
            if self.task == "classification":
                correct += int(tf.reduce_sum(tf.cast(tf.argmax(out, axis=1) == target, tf.int32)))
        metrics = {"test_loss": loss_sum / len(x)}
        if self.task == "classification":
            metrics["test_accuracy"] = correct / len(x)
        else:
            metrics["phi_estimate"] = float(self.module.phi.numpy())
        return metrics

    def predict(self, x):
        if self._mode == "xla":
            self._xla_shapes["predict"].add(tuple(x.shape))
        with tf.device(self._tf_device):
            return self._predict(x)

    def named_parameters_canonical(self):
        variables = tensorflow_models._variables(self.module)  # the mapping load_canonical uses
        return [(name, np.asarray(variables[name].numpy(), dtype=np.float32)) for name in self._canonical_names]

    def canonical_weights(self):
        return {name: np.asarray(variable.numpy(), dtype=np.float32)
                for name, variable in tensorflow_models._variables(self.module).items()}

    def fixed_batch_gradients(self, x, y):
        x_batch, y_batch = self.to_device(x, y)
        with tf.device(self._tf_device):
            grads = self._gradients(x_batch, y_batch)
        by_name = tensorflow_models.canonical_gradients(self.module, self.model_name, list(grads))
        return [(name, by_name[name]) for name in self._canonical_names]

    def synchronize(self) -> None:
        # Eager TF ops return when done on CPU; on GPU, pulling a value to the host waits for
        # every op queued before it on the device stream.
        if self._index is not None:
            with tf.device(self._tf_device):
                tf.constant(0.0).numpy()

    @property
    def asynchronous(self) -> bool:
        return self._index is not None  # GPU kernels are queued on a stream; CPU ops return when done

    def compile_events(self):
        """tf.function's own tracing counts; under XLA, the input shapes it compiled an executable for.

        The step's signature leaves the batch (and, for sequences, the length) dimension free, so a
        new shape never retraces the graph; XLA still compiles one executable per concrete shape
        (TensorFlow's XLA documentation), which these shapes count. TensorFlow exposes no counter of
        XLA compilations to Python, so their time is the extra time of the steps that met a new shape.
        """
        if self._mode == "eager":
            return {}
        traces = {name: int(function.experimental_get_tracing_count())
                  for name, function in (("step", self._step), ("predict", self._predict),
                                         ("gradients", self._gradients))}
        events = {"tool": "tf.function", "traces": traces, "retraces": sum(max(0, n - 1) for n in traces.values())}
        if self._mode == "xla":
            events["xla_shapes"] = {name: sorted(shapes) for name, shapes in self._xla_shapes.items()}
            events["xla_executables"] = sum(len(shapes) for shapes in self._xla_shapes.values())
        return events

    def memory_stats(self):
        """GPU allocator gauges; [] on the CPU.

        TensorFlow keeps no CPU allocator statistics: get_memory_info("CPU:0") raises ValueError
        "Allocator stats not available for device 'CPU:0'" (TF 2.21). The host RSS covers it.
        """
        if self._index is None:
            return []
        info = tf.config.experimental.get_memory_info(f"GPU:{self._index}")
        return [
            ("allocated", float(info["current"]), "bytes"),
            ("peak_allocated", float(info["peak"]), "bytes"),
        ]

    def reset_peak_memory(self) -> None:
        if self._index is not None:
            tf.config.experimental.reset_memory_stats(f"GPU:{self._index}")  # peak := current use

    def peak_memory(self) -> dict[str, float]:
        if self._index is None:
            return {}
        return {"allocated": float(tf.config.experimental.get_memory_info(f"GPU:{self._index}")["peak"])}

    def describe(self):
        build = tf.sysconfig.get_build_info()
        info: dict[str, Any] = {
            "framework": "tensorflow",
            "framework_version": tf.__version__,
            "keras_version": keras.__version__,
            "cuda_version": build.get("cuda_version"),
            "cudnn_version": build.get("cudnn_version"),
            "device": self.device,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        }
        if self._index is not None:
            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[self._index])
            info["device_name"] = details.get("device_name")
        return info

    @property
    def gpu_index(self):
        return self._index

    # Calibration and profiling after training (engine/calibration.py) -----------------------------
    @property
    def backward_repeats_forward(self) -> bool:
        # A GradientTape cannot outlive a tf.function call: graph modes' gradients graph runs the forward again.
        return self._mode != "eager"

    def forward_loss(self, x, y):
        """Eager: the forward pass and loss under a tape, kept for backward(). Graph, XLA: the forward graph."""
        with tf.device(self._tf_device):
            if self._mode == "eager":
                tape = tf.GradientTape()
                with tape:
                    scaled = self._scaled_loss(x, y)
                return tape, scaled
            self._phase_graphs()[0](x, y)
            return x, y

    def backward(self, forward):
        """Eager: tape.gradient. Graph, XLA: the gradients graph (forward pass included, see _phase_graphs)."""
        with tf.device(self._tf_device):
            if self._mode == "eager":
                tape, scaled = forward
                return tape.gradient(scaled, self.module.trainable_variables)
            return self._phase_graphs()[1](*forward)

    def apply_gradients(self, gradients):
        with tf.device(self._tf_device):
            if self._mode == "eager":
                self._apply(gradients)
            else:
                self._phase_graphs()[2](gradients)

    def snapshot_training_state(self):
        # Copies: a variable's value read on the CPU may share the variable's buffer.
        return [np.array(variable.numpy(), copy=True) for variable in self._state_variables()]

    def restore_training_state(self, state):
        for variable, value in zip(self._state_variables(), state, strict=True):
            variable.assign(value)

    def profile(self, run_steps, directory):
        """tf.profiler (host and, on a GPU, device tracing) over run_steps(), into TensorBoard's profile format.

        Operator self times come from the .xplane.pb it writes under plugins/profile/<run>/, read
        with TensorFlow's own protobuf classes (engine/backends/tf_xplane.py says which events count).
        """
        tf.profiler.experimental.start(str(directory))
        try:
            run_steps()
        finally:
            tf.profiler.experimental.stop()
        written = sorted(directory.glob("plugins/profile/*/*.xplane.pb"))
        if not written:
            raise RuntimeError(f"tf.profiler wrote no .xplane.pb under {directory}/plugins/profile")
        on_gpu = self._index is not None
        operators = tf_xplane.operator_self_times(tf_xplane.parse(written[0].read_bytes()), on_gpu)
        return OperatorProfile(f"tf.profiler {tf.__version__}", "GPU kernel time" if on_gpu else "host self time",
                               operators, written[0], "profile.xplane.pb")

    def _state_variables(self) -> list:
        """Weights, batch-norm statistics, the dropout seed generators' state, and the optimizer's slots,
        iteration count and loss scale: everything a training step changes."""
        return [*self.module.variables, *self.optimizer.variables]

    def _scaled_loss(self, x, y):
        loss = self.loss_fn(y, tf.cast(self.module(x, training=True), tf.float32))
        return self.optimizer.scale_loss(loss) if self._loss_scaling else loss

    def _loss_gradients(self, x, y):
        with tf.GradientTape() as tape:
            scaled = self._scaled_loss(x, y)
        return tape.gradient(scaled, self.module.trainable_variables)

    def _apply(self, gradients):
        self.optimizer.apply_gradients(zip(gradients, self.module.trainable_variables))

    def _phase_graphs(self) -> tuple:
        """Forward+loss, gradients and update as three tf.functions in the run's jit setting, traced on first use.

        An approximation of the fused step, which is one graph: no optimisation crosses the phases
        (grappler's and XLA's fusions, e.g. XLA folding the update into the gradient kernels), the
        gradients are materialised between graphs, every call pays tf.function's dispatch (0.2-0.4 ms
        a call on the 2-core development VM: most of a small model's phase), and the gradients graph
        runs the forward pass again (calibration times a second forward and subtracts it; batch-norm
        statistics update more than once, and are restored afterwards). The phases therefore add up
        to more than the fused step (1.1-1.5x measured); the difference is what the fusion saves.
        """
        if getattr(self, "_phase_functions", None) is None:
            jit = self._mode == "xla"
            self._phase_functions = tuple(tf.function(function, jit_compile=jit)
                                          for function in (self._scaled_loss, self._loss_gradients, self._apply))
        return self._phase_functions


def _compute_capability(index: int) -> tuple[int, int]:
    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[index])
    return tuple(details.get("compute_capability", (0, 0)))


class _FitCallback(keras.callbacks.Callback):
    """Hands model.fit's epochs and steps to the loop (TensorFlowBackend.fit)."""

    def __init__(self, hooks) -> None:
        super().__init__()
        self.hooks = hooks

    def on_epoch_begin(self, epoch, logs=None):
        self.hooks.epoch_begin(epoch + 1)

    def on_train_batch_begin(self, batch, logs=None):
        self.hooks.step_begin(batch)

    def on_train_batch_end(self, batch, logs=None):
        self.hooks.step_end(batch, float(logs["loss"]))

    def on_epoch_end(self, epoch, logs=None):
        self.hooks.epoch_end(epoch + 1)
