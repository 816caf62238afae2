"""`python -m engine deploy RUN_ID... [--formats ...] [--serve] [--json]`: the Deploy page, headless.

Queues one deployment job per run (engine/deploy/jobs.py checks every run, format and setting
first and queues nothing when one is bad); the database's scheduler (this command's, or a
dashboard's) places them like runs, one after another, each in its own processes. Prints progress,
then a table per run; --json ends with one JSON line of every figure. Ctrl-C cancels the jobs.
Exit 0 when every job finished, 1 when one did not, 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, Optional, Sequence

from analysis.deployment import job_progress
from db import deployments, queries
from db.errors import database_error
from db.models import ACTIVE_STATUSES, FINISHED
from db.session import make_sessionmaker, resolve_db_url
from engine.deploy import jobs
from engine.deploy.formats import FORMATS
from engine.deploy.job import DEFAULT_SETTINGS
from engine.processes import reap_deployments
from engine.run_ids import run_id_argument
from engine.scheduler import NOT_SCHEDULING, scheduling_enabled, wake

POLL_S = 1.0


def _numbers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected whole numbers separated by commas, like 1,8,32") from None


def build_parser() -> argparse.ArgumentParser:
    names = sorted({f.name for f in FORMATS})
    parser = argparse.ArgumentParser(prog="python -m engine deploy", description=__doc__.splitlines()[0])
    parser.add_argument("run_ids", nargs="+", type=run_id_argument, metavar="RUN_ID", help="finished runs with kept weights")
    parser.add_argument("--formats", help=f"comma-separated, of the run's framework (default: all of them): "
                                          f"{', '.join(names)}")
    parser.add_argument("--threads", type=int, default=DEFAULT_SETTINGS["threads"],
                        help="intra-op threads of every runtime (default 1)")
    parser.add_argument("--batches", type=_numbers, default=DEFAULT_SETTINGS["batch_sizes"],
                        help="batch sizes timed (default 1,8,32,128)")
    parser.add_argument("--min-time", type=float, default=DEFAULT_SETTINGS["min_time_s"],
                        help="seconds of timed calls per batch size (default 1)")
    parser.add_argument("--serve", action="store_true", help="also serve each artifact over HTTP and load it")
    parser.add_argument("--concurrency", type=_numbers, default=DEFAULT_SETTINGS["concurrency"],
                        help="clients of the load generator (default 1,8,32)")
    parser.add_argument("--serve-duration", type=float, default=DEFAULT_SETTINGS["serve_duration_s"],
                        help="seconds of load per concurrency (default 5)")
    parser.add_argument("--db", help="SQLAlchemy URL (default: ARENA_DB_URL, else the embedded SQLite file)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line on stdout")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    url = resolve_db_url(args.db)
    settings = {"threads": args.threads, "batch_sizes": args.batches, "min_time_s": args.min_time,
                "serve": args.serve, "concurrency": args.concurrency, "serve_duration_s": args.serve_duration}
    names = [n.strip() for n in args.formats.split(",") if n.strip()] if args.formats else None
    try:
        scheduling_enabled()  # a bad ARENA_SCHEDULER is reported before queuing
        sessions = make_sessionmaker(url)
        job_ids = jobs.queue(sessions, args.run_ids, names, settings)
    except (jobs.DeployError, ValueError) as exc:
        print(f"error: {exc}; nothing was queued", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - unreachable or damaged database: say which and why
        print(f"error: the database cannot be used: {database_error(exc, url)}", file=sys.stderr)
        return 2
    print(f"queued deployment{'s' * (len(job_ids) > 1)} {', '.join(map(str, job_ids))}", file=sys.stderr)
    scheduler = wake(sessions, url)
    if scheduler is None:
        print(f"  {NOT_SCHEDULING} jobs", file=sys.stderr, flush=True)
    try:
        _follow(sessions, job_ids)
    except KeyboardInterrupt:
        for job_id in job_ids:
            jobs.cancel(sessions, job_id)
        print("cancelled", file=sys.stderr)
        return 130
    finally:
        if scheduler is not None:
            scheduler.stop()  # the lease goes at once; a dashboard's scheduler takes the queue over
    with sessions.begin() as s:
        ended = {j["id"]: j for j in deployments.jobs(s, args.run_ids) if j["id"] in job_ids}
        found = deployments.results(s, job_ids)
    for job_id in job_ids:
        print_job(ended[job_id], [r for r in found if r["deployment_id"] == job_id])
    if args.json:
        print(json.dumps({"deployments": [_jsonable(ended[j]) for j in job_ids],
                          "results": [_jsonable(r) for r in found]}, default=str))
    return 0 if all(ended[j]["status"] == FINISHED for j in job_ids) else 1


def _follow(sessions, job_ids: list[int]) -> None:
    """Print each job's progress line when it changes, until every job has ended (a dead process ends it lost)."""
    last: dict[int, str] = {}
    while True:
        reap_deployments(sessions)
        with sessions.begin() as s:
            active = [j for j in deployments.jobs(s, statuses=list(ACTIVE_STATUSES)) if j["id"] in job_ids]
        if not active:
            return
        now = queries.utcnow()
        for job in reversed(active):
            line = (f"deployment {job['id']} (run {job['run_id']}): {job_progress(job, now)[1]}"
                    + (f" · {job['current']}" if job["current"] else ""))
            if line != last.get(job["id"]):
                print(line, file=sys.stderr, flush=True)
                last[job["id"]] = line
        time.sleep(POLL_S)


def print_job(job: dict[str, Any], results: list[dict[str, Any]]) -> None:
    print(f"\ndeployment {job['id']} of run {job['run_id']}: {job['status']}"
          + (f" ({job['error'].strip().splitlines()[-1]})" if job["error"] else ""))
    header = ("format", "status", "size KiB", "export s", "load s", "1st call ms", "max |Δ|", "acc", "p50@1 ms",
              "best samples/s", "peak RSS MiB")
    rows = [header]
    for r in results:
        f = r["figures"] or {}
        parity = f.get("parity", {})
        latency = f.get("latency", [])
        p50 = next((x["p50_ms"] for x in latency if x["batch"] == 1), None)
        rows.append((f"{r['framework']}/{r['format']}", r["status"], _n(r["size_bytes"], 1 / 1024, 1),
                     _n(r["export_s"], 1, 2), _n(f.get("load_s"), 1, 3), _n(f.get("first_call_s"), 1e3, 2),
                     _e(parity.get("max_abs_diff")), _n(parity.get("accuracy_artifact"), 1, 4), _n(p50, 1, 3),
                     _n(max((x["samples_per_s"] for x in latency), default=None), 1, 0),
                     _n(f.get("peak_rss_bytes"), 1 / 2**20, 0)))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    for r in results:
        if r["status"] not in ("ok",) and r["error"]:
            print(f"  {r['framework']}/{r['format']}: {r['error'].strip().splitlines()[-1]}")
        for served in r["serving"] or []:
            print(f"  served {r['format']}: batching {'on ' if served['batching'] else 'off'} concurrency "
                  f"{served['concurrency']:>3}: p50 {_n(served.get('p50_ms'), 1, 2)} ms, p99 "
                  f"{_n(served.get('p99_ms'), 1, 2)} ms, {_n(served.get('requests_per_s'), 1, 0)} req/s, "
                  f"{served.get('errors', 0)} errors")


def _n(value, scale: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value * scale:,.{digits}f}"


def _e(value) -> str:
    return "-" if value is None else f"{value:.1e}"


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
