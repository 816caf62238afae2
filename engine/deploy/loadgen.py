"""A closed-loop load generator for a model server's POST /predict (engine/deploy/serve.py's API).

`measure(url, samples, concurrency, duration_s)`: `concurrency` clients each send one-sample requests back
to back (a client sends its next request when its last one is answered) for a short warm-up, which is not
counted, then for duration_s. A request belongs to the measurement if it was sent inside the measured window;
every one of them is awaited (at most timeout_s), so requests/s is completed / (last answer - window start).
Every request has a timeout, and a client that meets MAX_CONNECTION_FAILURES connection failures in a row
(refused, reset, timed out: the server is gone) stops, so a server that dies mid-measurement ends the
measurement with errors, never a hang.

The load generator runs on the server's machine and takes CPU from it: the result says how much
(client_cpu_cores), next to the server's own settings read from its GET /healthz (threads, batching) and how
many samples its predict calls got on average during the window.

CLI: `python -m engine.deploy.loadgen URL --concurrency 1,8,32 --duration 5 [--samples X.npy] [--json]`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import numpy as np

MAX_CONNECTION_FAILURES = 3  # in a row, per client: the server is unreachable, stop rather than spin
ERROR_PAUSE_S = 0.05  # after a failed request, so a dead server is not hammered in a tight loop
MAX_BODIES = 256  # distinct request bodies, encoded before timing starts
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a server to be started on (the job's, the benchmark's)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def predict_url(url: str) -> str:
    """The POST /predict URL: a server's base URL gets /predict appended, a full one is kept."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"url={url!r}: expected http://host:port[/predict]")
    path = parts.path if parts.path not in ("", "/") else "/predict"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def health_url(url: str) -> str:
    parts = urlsplit(predict_url(url))
    return urlunsplit((parts.scheme, parts.netloc, "/healthz", "", ""))


def server_health(url: str, timeout_s: float = 5.0) -> Optional[dict]:
    """The server's GET /healthz (its settings and counters), or None if it has none or does not answer."""
    try:
        with urllib.request.urlopen(health_url(url), timeout=timeout_s) as response:
            body = json.loads(response.read())
            return body if isinstance(body, dict) else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


@dataclass
class _Tally:
    """What the clients saw in the measured window."""

    window_start: float = 0.0
    window_end: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    last_answer: float = 0.0
    errors: int = 0
    first_error: Optional[str] = None
    clients_gave_up: int = 0
    clients_done: float = 0.0  # when the last client stopped: before window_end if they all gave up

    def error(self, message: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = message


async def _client(index: int, session, url: str, bodies: list[bytes], concurrency: int, tally: _Tally,
                  timeout_s: float) -> None:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    headers = {"Content-Type": "application/json"}
    next_body = index  # clients walk the bodies in step, each from its own offset
    failures_in_a_row = 0
    while True:
        sent = time.perf_counter()
        if sent >= tally.window_end:
            return
        measured = sent >= tally.window_start
        body = bodies[next_body % len(bodies)]
        next_body += concurrency
        problem = None
        try:
            async with session.post(url, data=body, headers=headers, timeout=timeout) as response:
                payload = await response.read()
            answered = time.perf_counter()
            if response.status != 200:
                problem = f"HTTP {response.status}: {payload[:300].decode(errors='replace')}"
            else:
                predictions = json.loads(payload).get("predictions")
                if not isinstance(predictions, list) or len(predictions) != 1:
                    problem = f"HTTP 200 without one prediction: {payload[:300].decode(errors='replace')}"
            failures_in_a_row = 0
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as error:
            failures_in_a_row += 1
            problem = f"{type(error).__name__}: {error}" if str(error) else (
                f"no answer within {timeout_s} s" if isinstance(error, asyncio.TimeoutError) else type(error).__name__)
        except (aiohttp.ClientError, ValueError, AttributeError) as error:
            problem = f"{type(error).__name__}: {error}"
        if problem is None:
            if measured:
                tally.latencies_s.append(answered - sent)
                tally.last_answer = max(tally.last_answer, answered)
            continue
        if measured:
            tally.error(problem)
        if failures_in_a_row >= MAX_CONNECTION_FAILURES:
            tally.clients_gave_up += 1
            if not measured:  # the server is gone before the window: the measurement still reports it
                tally.error(problem)
            return
        await asyncio.sleep(ERROR_PAUSE_S)


async def _run_clients(url: str, bodies: list[bytes], concurrency: int, warmup_s: float, duration_s: float,
                       timeout_s: float) -> _Tally:
    start = time.perf_counter()
    tally = _Tally(window_start=start + warmup_s, window_end=start + warmup_s + duration_s)
    connector = aiohttp.TCPConnector(limit=concurrency)  # one kept-alive connection per client
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(_client(i, session, url, bodies, concurrency, tally, timeout_s)
                               for i in range(concurrency)))
    tally.clients_done = time.perf_counter()
    return tally


def measure(url: str, samples: np.ndarray, concurrency: int, duration_s: float, timeout_s: float = 10.0,
            warmup_s: Optional[float] = None) -> dict[str, Any]:
    """Latency percentiles (ms), requests/s and errors of `concurrency` closed-loop clients over duration_s.

    samples: (N, *sample shape) in the artifact's input layout; each request sends one of them. warmup_s
    (default: a fifth of duration_s, at most 1 s) runs first and is not counted. Returns within about
    warmup_s + duration_s + timeout_s whatever the server does.
    """
    target = predict_url(url)
    samples = np.asarray(samples)
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency}: expected >= 1")
    if not duration_s > 0:
        raise ValueError(f"duration_s={duration_s}: expected > 0")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s}: expected > 0")
    if samples.ndim < 1 or len(samples) == 0:
        raise ValueError(f"samples of shape {samples.shape}: expected (N, *sample shape) with N >= 1")
    warmup_s = min(1.0, duration_s / 5) if warmup_s is None else warmup_s
    bodies = [json.dumps({"instances": [sample.tolist()]}).encode() for sample in samples[:MAX_BODIES]]

    before = server_health(target)
    load_average = os.getloadavg()[0]  # others' work on the machine skews the figures: say how busy it was
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    tally = asyncio.run(_run_clients(target, bodies, concurrency, warmup_s, duration_s, timeout_s))
    client_cpu_s, wall_s = time.process_time() - cpu_before, time.perf_counter() - wall_before
    after = server_health(target) if before is not None else None

    latencies_ms = np.asarray(tally.latencies_s) * 1000
    completed = len(latencies_ms)
    window_closed = max(tally.last_answer, min(tally.window_end, tally.clients_done))
    elapsed_s = window_closed - tally.window_start if completed else duration_s
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99]).tolist() if completed else (None, None, None)
    host = urlsplit(target).hostname or ""
    result = {
        "url": target, "concurrency": concurrency, "duration_s": duration_s, "warmup_s": warmup_s,
        "timeout_s": timeout_s, "client": "aiohttp closed loop, one sample per request",
        "completed": completed, "errors": tally.errors, "first_error": tally.first_error,
        "requests_per_s": completed / elapsed_s if completed else 0.0, "elapsed_s": elapsed_s,
        "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
        "mean_ms": float(latencies_ms.mean()) if completed else None,
        "max_ms": float(latencies_ms.max()) if completed else None,
        "clients_gave_up": tally.clients_gave_up,
        # The client shares the machine (and its cores) with the server when it calls it on loopback.
        "same_machine": host in LOOPBACK, "cpu_count": os.cpu_count(), "load_average_1min": load_average,
        # Cores the load generator itself kept busy over warm-up and window: taken from the server's share.
        "client_cpu_cores": client_cpu_s / wall_s,
        "server": None, "mean_batch_samples": None,
    }
    if before is not None:
        result["server"] = {key: before.get(key) for key in
                            ("framework", "fmt", "path", "threads", "batching", "max_batch", "batch_wait_ms")}
    if before is not None and after is not None:
        calls = after.get("predict_calls", 0) - before.get("predict_calls", 0)
        predicted = after.get("samples_predicted", 0) - before.get("samples_predicted", 0)
        # Over warm-up and window together: how many samples Serve's batching put into each predict call.
        result["mean_batch_samples"] = predicted / calls if calls > 0 else None
    return result


def _samples_for(url: str, path: Optional[str], count: int = 64) -> np.ndarray:
    """--samples, else random samples of the shape and dtype the server's /healthz declares."""
    if path:
        return np.load(path)
    health = server_health(url)
    spec = (health or {}).get("input")
    if not spec:
        raise ValueError(f"{health_url(url)} declares no input shape (the server has no --example): pass --samples")
    rng = np.random.default_rng(0)
    shape, dtype = (count, *spec["shape"]), np.dtype(spec["dtype"])
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, 2, shape).astype(dtype)  # token ids 0 and 1 exist in every vocabulary


def _print_table(results: list[dict]) -> None:
    print(f"{'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'batch':>6} {'done':>7} {'errors':>6}")
    for r in results:
        cell = (lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}")
        batch = f"{r['mean_batch_samples']:6.1f}" if r["mean_batch_samples"] is not None else f"{'-':>6}"
        print(f"{r['concurrency']:>5} {r['requests_per_s']:9.1f} {cell(r['p50_ms'])} {cell(r['p95_ms'])} "
              f"{cell(r['p99_ms'])} {batch} {r['completed']:>7} {r['errors']:>6}")
        if r["first_error"]:
            print(f"      first error: {r['first_error']}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.deploy.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server's POST /predict URL (or its base URL)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts, one run each")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=None, help="uncounted seconds first (default duration/5, <= 1)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one request may take")
    parser.add_argument("--samples", help=".npy (N, *sample shape) in the artifact's layout (default: random "
                                          "samples of the shape the server declares)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON list")
    args = parser.parse_args(argv)
    try:
        levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
        samples = _samples_for(args.url, args.samples)
        results = [measure(args.url, samples, level, args.duration, args.timeout, args.warmup) for level in levels]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        _print_table(results)
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
