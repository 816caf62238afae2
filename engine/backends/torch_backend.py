"""PyTorch backend: eager or torch.compile, the mirror image of tensorflow_backend.py."""
from __future__ import annotations

import contextlib
import copy
import os
from typing import Any, Sequence

import numpy as np
import torch
from torch.nn import functional as F
from torch.profiler import ProfilerActivity

from engine.backends import torch_models
from engine.backends.base import Backend, OperatorProfile, exception_chain
from engine.catalog import MODELS
from engine.distributed import COLLECTIVE_TIMEOUT_S, SINGLE, Workers
from engine.weights import layer_shapes, trainable


# What PyTorch raises when an allocation fails, besides torch.OutOfMemoryError (the CUDA caching
# allocator's; torch.cuda.OutOfMemoryError is the same class). The CPU allocator raises a plain
# RuntimeError (torch 2.13, torch.empty(2**50) on Linux): "[enforce fail at alloc_cpu.cpp:127]
# err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 4503599627370496
# bytes. Error code 12 (Cannot allocate memory)". A CUDA call outside the caching allocator
# (cuBLAS workspace, a kernel launch) reports cudaErrorMemoryAllocation as "CUDA error: out of memory".
_OOM_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", "CUDA error: out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether exc (or an exception it was raised from, e.g. inside torch.compile) is an allocation failure."""
    for link in exception_chain(exc):
        if isinstance(link, (torch.OutOfMemoryError, MemoryError)):
            return True
        if isinstance(link, RuntimeError) and any(m in str(link) for m in _OOM_MESSAGES):
            return True
    return False


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: str, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)  # this worker's share of the cores (engine/distributed.py)
        self._workers = SINGLE
        if device == "auto":
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda"):
            index = int(device.split(":")[1])
            if index >= torch.cuda.device_count():
                raise RuntimeError(
                    f"device {device!r} requested but PyTorch sees {torch.cuda.device_count()} CUDA device(s)"
                )
        self.device = torch.device(device)

    def join(self, workers: Workers) -> None:
        """Become one rank of a data-parallel run: the process group (gloo on CPUs, NCCL on GPUs), met at rank 0's
        address, before build."""
        self._workers = workers
        if workers.distributed:
            import datetime

            import torch.distributed as dist

            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                    init_method=f"tcp://{workers.addresses()[0]}", rank=workers.rank,
                                    world_size=workers.world, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))

    def barrier(self) -> None:
        """Every rank waits here for the others (a multi-worker run's end: each has written its points)."""
        if self._workers.distributed:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_ms(self, repeats: int) -> list[float]:
        """Milliseconds of one all-reduce of the gradients' bytes (one float32 buffer), each after a barrier so a
        late worker's wait is not counted: what a step's gradient exchange costs on this process group."""
        import time

        import torch.distributed as dist

        size = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
        buffer = torch.zeros(size, dtype=torch.float32, device=self.device)
        times = []
        for _ in range(repeats):
            dist.barrier()
            self.synchronize()
            start = time.perf_counter()
            dist.all_reduce(buffer)
            self.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
        return times

    def leave(self) -> None:
        if self._workers.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def build(self, spec, task, weights, input_shape, num_outputs) -> int:
        self._configure(spec)
        torch.manual_seed(spec.seed)
        self.task = task
        self.model_name = spec.model
        self.module = torch_models.build_model(spec.model, input_shape, num_outputs)
        self._canonical_names = [name for name, _ in layer_shapes(spec.model, input_shape, num_outputs)
                                 if trainable(name)]
        if weights is not None:
            torch_models.load_canonical(self.module, spec.model, weights)
        self.module.to(self.device)
        # Image models see logical NCHW; channels_last only changes the memory order (NHWC strides).
        self._images = len(input_shape) == 3
        self._memory_format = torch.channels_last if self._layout == "channels_last" else torch.contiguous_format
        if self._images:
            self.module.to(memory_format=self._memory_format)
        self._train_module = self._data_parallel(spec)
        params = [p for p in self.module.parameters() if p.requires_grad]
        if spec.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=spec.lr)
        elif spec.optimizer == "momentum":
            self.optimizer = torch.optim.SGD(params, lr=spec.lr, momentum=0.9)
        else:
            self.optimizer = torch.optim.Adam(params, lr=spec.lr, betas=(0.9, 0.999), eps=1e-8)
        self.loss_fn = F.cross_entropy if task == "classification" else F.mse_loss
        # torch.compile wraps the model (the idiomatic use); it compiles on the first call of each
        # mode (train, eval) and input shape, which the loop times apart as warm-up.
        self._forward = torch.compile(self.module) if spec.mode == "compiled" else self.module
        self._train_forward = (self._forward if self._train_module is self.module else
                               torch.compile(self._train_module) if spec.mode == "compiled" else self._train_module)
        self._pending_losses: list = []  # (tensor, all-reduce work) of a multi-worker run's losses
        self._scaler = torch.amp.GradScaler(self.device.type) if self._dtype == torch.float16 else None
        return torch_models.trainable_parameter_count(self.module)

    def _data_parallel(self, spec) -> torch.nn.Module:
        """The module a training step runs: DistributedDataParallel around the model in a multi-worker run.

        DDP averages the gradients over the workers during backward, so each rank's optimizer takes the
        same step a single worker takes on the whole global batch (equal shards, mean losses).
        """
        self._sync_batchnorm = "no batch norm"
        if not self._workers.distributed:
            return self.module
        from torch.nn.parallel import DistributedDataParallel

        batch_norms = [m for m in self.module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if batch_norms:
            self._sync_batchnorm = "off: each worker's own statistics"
            if spec.sync_batchnorm:
                if self.device.type != "cuda":
                    raise ValueError("sync_batchnorm=True: PyTorch's SyncBatchNorm runs on GPUs only (it refuses CPU "
                                     "tensors); on CPU workers launch with sync_batchnorm off")
                self.module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
                self._sync_batchnorm = "SyncBatchNorm"
        return DistributedDataParallel(self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _configure(self, spec) -> None:
        """Set TF32, determinism and the mixed-precision dtype before any model exists."""
        self._mode = spec.mode
        self._tf32 = spec.tf32
        torch.backends.cuda.matmul.allow_tf32 = spec.tf32
        torch.backends.cudnn.allow_tf32 = spec.tf32
        self._deterministic = spec.deterministic
        if spec.deterministic:
            # cuBLAS needs a fixed workspace for deterministic matmuls (PyTorch's reproducibility notes).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        self._layout = spec.layout if MODELS[spec.model].conv else "n/a"
        if spec.precision == "fp32":
            self._dtype = torch.float32
        elif self.device.type == "cpu" or torch.cuda.is_bf16_supported():
            self._dtype = torch.bfloat16
        else:  # pre-Ampere GPUs: float16, with loss scaling against underflow
            self._dtype = torch.float16

    def _autocast(self):
        if self._dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._dtype)

    def settings(self):
        return {
            "mode": self._mode,
            "compute_dtype": str(self._dtype).replace("torch.", ""),
            "loss_scaling": self._scaler is not None,
            "tf32": self._tf32 if self.device.type == "cuda" else False,
            "layout": self._layout,
            "deterministic": self._deterministic,
            **self._worker_settings(),
        }

    def _worker_settings(self) -> dict[str, Any]:
        if not self._workers.distributed:
            return {}
        import torch.distributed as dist

        return {"strategy": f"DistributedDataParallel ({dist.get_backend()})", "sync_batchnorm": self._sync_batchnorm}

    def to_device(self, x, y):
        return self.host_tensors_to_device(torch.from_numpy(np.ascontiguousarray(x)),
                                           torch.from_numpy(np.ascontiguousarray(y)))

    def host_tensors_to_device(self, x: torch.Tensor, y: torch.Tensor, non_blocking: bool = False):
        """Host tensors (images NHWC) onto the device in the run's layout; non_blocking from pinned memory."""
        if self._images:
            # NHWC arrays viewed as NCHW already have channels_last strides; .to() keeps or changes them.
            x = x.permute(0, 3, 1, 2).to(self.device, memory_format=self._memory_format, non_blocking=non_blocking)
        else:
            x = x.to(self.device, non_blocking=non_blocking)
        return x, y.to(self.device, non_blocking=non_blocking)

    def native_pipeline(self, spec, data):
        """PyTorch's own loader: a DataLoader over a map-style Dataset (engine/backends/torch_pipeline.py)."""
        from engine.backends.torch_pipeline import DataLoaderPipeline

        return DataLoaderPipeline(spec, self, data)

    def train_step(self, x, y):
        if not self.module.training:  # evaluate() leaves eval mode; train() walks every submodule
            self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.loss_fn(self._train_forward(x).float(), y)
        if self._scaler is not None:
            self._scaler.scale(loss).backward()
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self._workers.distributed:
            # The global batch's loss, as one worker computes it: the mean of the equal shards' means,
            # summed over the workers without waiting (losses_to_floats waits when it reads them).
            import torch.distributed as dist

            total = loss.detach().clone()
            self._pending_losses.append(dist.all_reduce(total, async_op=True))
            return total  # a sum until losses_to_floats divides it, after the all-reduce is done
        return loss.detach()

    def losses_to_floats(self, losses: Sequence[Any]) -> list[float]:
        pending, self._pending_losses = self._pending_losses, []
        for work in pending:
            work.wait()
        if not losses:
            return []
        return (torch.stack(list(losses)) / self._workers.world).cpu().tolist()

    @torch.no_grad()
    def evaluate(self, x, y, batch_size):
        x_all, y_all = self.to_device(x, y)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            out = self.predict(x_all[start:start + batch_size]).float()
            target = y_all[start:start + batch_size]
            loss_sum += float(self.loss_fn(out, target, reduction="sum"))
            if self.task == "classification":
                correct += int((out.argmax(dim=1) == target).sum())
        # Regression: mean squared error per sample, like Keras's mse over a (N, 1) target.
        metrics = {"test_loss": loss_sum / len(x)}
        if self.task == "classification":
            metrics["test_accuracy"] = correct / len(x)
        else:
            metrics["phi_estimate"] = float(self.module.phi)
        return metrics

    @torch.no_grad()
    def predict(self, x):
        if self.module.training:
            self.module.eval()
        with self._autocast():
            return self._forward(x)

    def named_parameters_canonical(self):
        return self._canonical(lambda parameter: parameter)

    def canonical_weights(self):
        return dict(self._canonical(lambda tensor: tensor, trainable_only=False))

    def fixed_batch_gradients(self, x, y):
        x_batch, y_batch = self.to_device(x, y)
        parameters = [p for p in self.module.parameters() if p.requires_grad]
        was_training = self.module.training
        self.module.eval()  # dropout off; batch norm normalises with, and leaves alone, its running statistics
        try:
            # The eager module in compiled mode too: a backward through the eval-mode graph would compile another one.
            with torch.enable_grad(), self._autocast():
                loss = self.loss_fn(self.module(x_batch).float(), y_batch)
            scale = self._scaler.get_scale() if self._scaler is not None else 1.0  # float16: no underflow to zero
            # autograd.grad fills no .grad: the optimizer's next step cannot see this pass.
            grads = torch.autograd.grad(loss * scale, parameters, allow_unused=True)
        finally:
            self.module.train(was_training)
        by_parameter = {id(p): torch.zeros_like(p) if g is None else g / scale for p, g in zip(parameters, grads)}
        return self._canonical(lambda parameter: by_parameter[id(parameter)])

    def _canonical(self, pick, trainable_only: bool = True) -> list[tuple[str, np.ndarray]]:
        """pick(tensor) for every trainable canonical tensor (or every one, buffers too), converted to its
        canonical name and layout."""
        slots = torch_models._slots(self.module, self.model_name)  # the mapping load_canonical uses
        tensors = []
        for name in self._canonical_names if trainable_only else slots:
            slot = slots[name]
            value = slot.target(pick(slot.tensor)).detach().float().cpu().numpy()
            tensors.append((name, np.array(slot.to_canonical(value), dtype=np.float32, order="C")))
        return tensors

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def asynchronous(self) -> bool:
        return self.device.type == "cuda"  # CUDA kernels are queued; CPU ops return when done

    def compile_events(self):
        """torch.compile's own counters (TorchDynamo): frames compiled, graphs, graph breaks, compile seconds.

        A frame is compiled once per guard set: the train-mode step, the eval-mode forward, and again
        whenever a guard fails, e.g. on a new input shape (after the second shape TorchDynamo marks
        the dimension dynamic and stops recompiling for it).
        """
        if self._mode != "compiled":
            return {}
        from torch._dynamo.utils import compile_times, counters  # only where torch.compile ran

        names, seconds = compile_times(repr="csv", aggregate=True)
        total = dict(zip(names, seconds)).get("_compile.compile_inner", 0.0)
        # What Dynamo refused to capture runs eagerly: e.g. "Attempted to wrap RNN, GRU, or LSTM" leaves
        # the whole lstm model uncompiled in "compiled" mode. Its first line says why.
        refused = [reason.splitlines()[0] for reason in counters["unimplemented"]][:5]
        return {"tool": "torch.compile", "frames": int(counters["frames"]["total"]),
                "compiled_frames": int(counters["frames"]["ok"]),
                "unique_graphs": int(counters["stats"]["unique_graphs"]),
                "graph_breaks": int(sum(counters["graph_break"].values())),
                "not_compiled": refused, "compile_s": float(total)}

    def memory_stats(self):
        """CUDA caching-allocator gauges; [] on the CPU.

        PyTorch's CPU allocator keeps no statistics (torch.cuda.memory_stats("cpu") returns an
        empty dict on a CPU build, torch.accelerator has no CPU device): the host RSS covers it.
        """
        if self.device.type != "cuda":
            return []
        return [
            ("allocated", float(torch.cuda.memory_allocated(self.device)), "bytes"),
            ("reserved", float(torch.cuda.memory_reserved(self.device)), "bytes"),
            ("peak_allocated", float(torch.cuda.max_memory_allocated(self.device)), "bytes"),
        ]

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory(self) -> dict[str, float]:
        if self.device.type != "cuda":
            return {}
        stats = torch.cuda.memory_stats(self.device)  # one call for both peaks
        return {"allocated": float(stats.get("allocated_bytes.all.peak", 0)),
                "reserved": float(stats.get("reserved_bytes.all.peak", 0))}

    def describe(self):
        info: dict[str, Any] = {
            "framework": "torch",
            "framework_version": torch.__version__,
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": str(self.device),
            "intra_op_threads": torch.get_num_threads(),
        }
        if self.device.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(self.device)
        return info

    @property
    def gpu_index(self):
        return self.device.index if self.device.type == "cuda" else None

    # Calibration and profiling after training (engine/calibration.py) -----------------------------
    @property
    def backward_repeats_forward(self) -> bool:
        return False  # autograd keeps the forward's graph: backward() runs only the backward pass

    def forward_loss(self, x, y):
        """zero_grad, forward and loss as train_step does them; compiled mode runs the compiled forward graph."""
        if not self.module.training:
            self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            return self.loss_fn(self._forward(x).float(), y)

    def backward(self, forward):
        """loss.backward() (compiled mode: AOTAutograd's backward graph); the gradients stay in each .grad."""
        (self._scaler.scale(forward) if self._scaler is not None else forward).backward()

    def apply_gradients(self, gradients):
        if self._scaler is not None:
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            self.optimizer.step()

    def snapshot_training_state(self):
        cuda = self.device.type == "cuda"
        return {
            "module": {name: tensor.detach().clone() for name, tensor in self.module.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scaler": copy.deepcopy(self._scaler.state_dict()) if self._scaler is not None else None,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if cuda else None,
        }

    def restore_training_state(self, state):
        # load_state_dict copies into the existing tensors, so torch.compile's graphs and the optimizer
        # keep the parameters they hold; deepcopy keeps the snapshot itself untouched by later steps.
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.optimizer.zero_grad(set_to_none=True)
        if self._scaler is not None:
            self._scaler.load_state_dict(copy.deepcopy(state["scaler"]))
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def profile(self, run_steps, directory):
        """torch.profiler over run_steps(): CPU activity, and CUDA kernels on a GPU; shapes not recorded.

        Self time per operator from key_averages(): on the CPU the operators' self CPU time (what
        torch.profiler's own table sorts by); on a GPU the kernels' device time, where a step's time goes there.
        """
        on_gpu = self.device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
        with torch.profiler.profile(activities=activities, record_shapes=False) as profiler:
            run_steps()
        operators = []
        for event in profiler.key_averages():
            self_us = event.self_device_time_total if on_gpu else event.self_cpu_time_total
            if self_us > 0:
                operators.append((event.key, self_us / 1e3, int(event.count)))
        trace_path = directory / "trace.json"
        profiler.export_chrome_trace(str(trace_path))  # Chrome trace JSON: Perfetto and chrome://tracing open it
        return OperatorProfile(f"torch.profiler {torch.__version__}", "GPU kernel time" if on_gpu else "CPU self time",
                               operators, trace_path, "trace.json")
