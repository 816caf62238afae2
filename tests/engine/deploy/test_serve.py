"""engine/deploy/serve.py and loadgen.py for real: a Ray Serve server in its own process serving a torch mlp's ONNX
export, answered over HTTP, measured by the load generator, stopped by SIGTERM, killed mid-measurement.

Ray's start costs 5-15 s a server on 2 cores, so the two servers most tests talk to (batching on and off)
are module-scoped; the lifecycle and crash tests start their own.
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import psutil
import pytest

from engine.deploy import loadgen
from tests.conftest import REPO_ROOT

THREADS = 1
READY_TIMEOUT_S = 180  # Ray's start on a busy 2-core machine
TOLERANCE = 1e-5  # ONNX's, from engine/deploy/formats.py; the server's predict is the same runtime, batched


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """`python -m engine.deploy.serve ...` in a session of its own; stop() leaves no process and no temp dir."""

    def __init__(self, artifact: dict, tmp: Path, *flags: str):
        self.port = free_port()
        self.stderr_path = tmp / f"serve-{self.port}.err"
        self.stdout_lines: queue.Queue[str] = queue.Queue()
        args = [sys.executable, "-m", "engine.deploy.serve", "--framework", "torch", "--format", "onnx",
                "--path", str(artifact["path"]), "--threads", str(THREADS), "--port", str(self.port),
                "--example", str(artifact["example"]), *flags]
        # A cluster address in the environment must not be joined: the server starts its own local Ray.
        # A home of its own: the server must leave no Ray token there (serve.start_ray).
        self.home = tmp / f"home-{self.port}"
        self.home.mkdir()
        env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1", "PYTHONPATH": str(REPO_ROOT), "HOME": str(self.home)}
        self.started = time.monotonic()
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr,
                                            text=True, start_new_session=True)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self.tree: list[psutil.Process] = []
        self.url: Optional[str] = None
        self.stdout: list[str] = []

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self.stdout_lines.put(line)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def temp_dir(self) -> Optional[Path]:
        found = re.search(r"^ray temp dir (\S+)$", self.stderr(), re.MULTILINE)
        return Path(found.group(1)) if found else None

    def wait_ready(self) -> str:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.url is None:
            try:
                line = self.stdout_lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no 'ready' line within {READY_TIMEOUT_S} s:\n{self.stderr()[-3000:]}")
            self.stdout.append(line)
            if line.startswith("ready "):
                self.url = line.split()[1]
            elif self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server exited ({self.process.returncode}):\n{self.stderr()[-3000:]}")
        self.start_s = time.monotonic() - self.started
        self.tree = self.descendants()
        return self.url

    def descendants(self) -> list[psutil.Process]:
        """The server and every process under it now (Ray's workers set up process groups of their own)."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def sigterm(self, timeout_s: float = 60) -> int:
        self.tree = self.tree or self.descendants()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        """kill -9 the server's process group and whatever else it started."""
        self.tree = self.descendants() or self.tree
        with _gone_is_fine():
            os.killpg(self.process.pid, signal.SIGKILL)
        for process in self.tree:
            with _gone_is_fine():
                process.kill()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.sigterm(timeout_s=30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        psutil.wait_procs(self.tree, timeout=10)
        self.process.wait(timeout=10)
        if self.temp_dir():
            shutil.rmtree(self.temp_dir(), ignore_errors=True)


class _gone_is_fine:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        return kind is not None and issubclass(kind, (ProcessLookupError, psutil.NoSuchProcess))


def post(url: str, instances: list, timeout_s: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps({"instances": instances}).encode(),
                                     headers={"Content-Type": "application/json"})
    return _answer(request, timeout_s)


def get(url: str, timeout_s: float = 30) -> tuple[int, dict]:
    return _answer(urllib.request.Request(url), timeout_s)


def _answer(request: urllib.request.Request, timeout_s: float) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def health(url: str) -> dict:
    status, body = get(loadgen.health_url(url))
    assert status == 200, body
    return body


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> dict:
    """A torch mlp on 8x8x1 images exported to ONNX by torch_formats, and ONNX Runtime's own outputs for it."""
    from engine.deploy import runtime_onnx, torch_formats
    from engine.weights import initial_weights

    directory = tmp_path_factory.mktemp("onnx")
    module = torch_formats.build("mlp", (8, 8, 1), 10, initial_weights("mlp", (8, 8, 1), 10, seed=0))
    images = np.random.default_rng(0).random((48, 8, 8, 1), dtype=np.float32)  # NHWC, as sklearn digits scaled
    x = torch_formats.to_input("mlp", images)  # NCHW, the artifact's layout
    path = torch_formats.export("onnx", module, "mlp", x[:4], directory)
    np.save(directory / "example.npy", x[:4])
    direct = runtime_onnx.load("onnx", path, THREADS)(x)
    assert np.abs(direct - torch_formats.reference_outputs(module, x)).max() <= TOLERANCE
    return {"path": path, "example": directory / "example.npy", "x": x, "direct": direct}


@pytest.fixture(scope="module", params=[True, False], ids=["batching", "no-batching"])
def server(request, artifact, tmp_path_factory):
    flags = ["--batching", "--max-batch", "8", "--batch-wait-ms", "2"] if request.param else ["--no-batching"]
    process = ServerProcess(artifact, tmp_path_factory.mktemp("serve"), *flags)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_the_server_answers_what_the_artifact_computes(server, artifact):
    x, direct = artifact["x"], artifact["direct"]
    status, body = post(server.url, x[:5].tolist())  # several samples in one request
    assert status == 200, body
    assert np.abs(np.asarray(body["predictions"], dtype=np.float32) - direct[:5]).max() <= TOLERANCE

    def one(index: int) -> np.ndarray:  # single-sample requests at once: the ones batching merges
        status, body = post(server.url, [x[index].tolist()])
        assert status == 200, body
        return np.asarray(body["predictions"], dtype=np.float32)

    with ThreadPoolExecutor(8) as pool:
        answers = np.concatenate(list(pool.map(one, range(len(x)))))
    assert answers.shape == direct.shape
    assert np.abs(answers - direct).max() <= TOLERANCE


def test_the_server_listens_on_loopback_only_and_says_what_it_serves(server, artifact):
    assert server.url == f"http://127.0.0.1:{server.port}/predict"
    assert server.stdout == [f"ready {server.url}\n"]  # stdout carries the ready line and nothing else
    listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port}
    assert listening == {"127.0.0.1"}
    settings = health(server.url)
    assert (settings["framework"], settings["fmt"], settings["threads"]) == ("torch", "onnx", THREADS)
    assert settings["input"] == {"shape": [1, 8, 8], "dtype": "float32"}
    # Ray's token for the server's private cluster stays in its environment: none is written to the home,
    # where every later `ray start` on the machine would adopt it.
    assert not (server.home / ".ray" / "auth_token").exists()


def test_bad_requests_are_answered_with_the_reason(server):
    status, body = post(server.url, [[[1.0, 2.0]]])
    assert status == 400 and "shape [1, 8, 8]" in body["error"]
    status, body = post(server.url, [])
    assert status == 400 and "non-empty" in body["error"]
    status, body = post(server.url, [[1.0], [1.0, 2.0]])
    assert status == 400 and "one shape" in body["error"]
    request = urllib.request.Request(server.url, data=b"{not json", headers={"Content-Type": "application/json"})
    status, body = _answer(request, 30)
    assert status == 400 and "not JSON" in body["error"]
    assert get(server.url)[0] == 405
    assert get(server.url.replace("/predict", "/elsewhere"))[0] == 404


@pytest.mark.parametrize("concurrency", [1, 8])
def test_loadgen_measures_the_server(server, artifact, concurrency):
    result = loadgen.measure(server.url, artifact["x"], concurrency, duration_s=1.5, timeout_s=10, warmup_s=0.3)
    assert result["errors"] == 0, result["first_error"]
    assert result["completed"] > 0 and result["requests_per_s"] > 0
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["concurrency"] == concurrency and result["duration_s"] == 1.5 and result["same_machine"]
    batching = health(server.url)["batching"]
    assert result["server"]["batching"] == batching and result["server"]["threads"] == THREADS
    if not batching:  # every one-sample request is a predict call of its own
        assert result["mean_batch_samples"] == 1.0
    elif concurrency == 8:  # eight clients waiting on one predict thread: queued requests are merged
        assert 1 < health(server.url)["largest_batch"] <= 8


def test_the_loadgen_cli_measures_each_concurrency_with_samples_of_the_servers_shape(server):
    done = subprocess.run([sys.executable, "-m", "engine.deploy.loadgen", server.url, "--concurrency", "1,4",
                           "--duration", "0.5", "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [r["concurrency"] for r in results] == [1, 4]
    assert all(r["errors"] == 0 and r["completed"] > 0 for r in results), results


def test_a_taken_port_fails_at_once_naming_it(artifact):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "engine.deploy.serve", "--framework", "torch", "--format",
                               "onnx", "--path", str(artifact["path"]), "--threads", "1", "--port", str(port)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"port {port}" in done.stderr and "in use" in done.stderr
    assert time.monotonic() - started < 10  # before Ray starts
    assert done.stdout == ""


def test_sigterm_stops_the_server_and_everything_it_started(artifact, tmp_path):
    server = ServerProcess(artifact, tmp_path, "--batching")
    try:
        server.wait_ready()
        assert post(server.url, artifact["x"][:1].tolist())[0] == 200
        temp_dir = server.temp_dir()
        assert temp_dir is not None and temp_dir.exists()
        assert len(str(temp_dir)) < 40  # Ray's AF_UNIX sockets live under it: paths must stay under 108 bytes
        assert server.sigterm(timeout_s=60) == 0, server.stderr()[-3000:]
        psutil.wait_procs(server.tree, timeout=10)
        assert [p for p in server.tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
        assert not temp_dir.exists()
    finally:
        server.stop()


def test_a_server_killed_mid_measurement_ends_it_with_errors_not_a_hang(artifact, tmp_path):
    server = ServerProcess(artifact, tmp_path, "--no-batching")
    try:
        server.wait_ready()
        timeout_s = 3.0
        threading.Timer(1.5, server.kill).start()  # 1 s into the window (after 0.5 s of warm-up)
        started = time.monotonic()
        result = loadgen.measure(server.url, artifact["x"], 8, duration_s=30, timeout_s=timeout_s, warmup_s=0.5)
        took = time.monotonic() - started
        assert took < 1.5 + timeout_s + 5, result  # not the 30 s asked for: clients stop when the server is gone
        assert result["errors"] > 0 and result["first_error"]
        assert result["completed"] > 0  # it answered until it was killed
        assert result["clients_gave_up"] == 8
        assert result["elapsed_s"] < 1 + timeout_s + 5  # requests/s over the time it answered, not the 30 s
    finally:
        server.stop()
