"""`python -m engine {run,runs,models}`: Arena from the command line, through the same runner path."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from db import queries
from db.models import FINISHED
from db.session import make_sessionmaker
from engine import devices
from engine.catalog import DATASETS, FRAMEWORKS, MODELS, OPTIMIZERS, framework_label
from engine.launch import default_url_for, queue_runs, reap, start_runner
from engine.spec import RunSpec, SpecError

POLL_INTERVAL_S = 0.5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Arena: PyTorch vs TensorFlow, run for run.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train one run and wait for it (exit 0 when it finished)")
    run.add_argument("--framework", required=True, help=f"one of {', '.join(FRAMEWORKS)}")
    run.add_argument("--model", required=True, help=f"one of {', '.join(MODELS)}")
    run.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    run.add_argument("--epochs", type=int, help="default: the model's (see `models`)")
    run.add_argument("--batch-size", type=int)
    run.add_argument("--lr", type=float)
    run.add_argument("--optimizer", help=f"one of {', '.join(OPTIMIZERS)}")
    run.add_argument("--seed", type=int)
    run.add_argument("--device", help="auto | cpu | cuda:N (default auto)")
    run.add_argument("--max-steps-per-epoch", type=int)
    run.add_argument("--noise", type=float, help="powerlaw: std of Gaussian noise on targets")
    _common(run)

    runs = sub.add_parser("runs", help="list stored runs with their final metrics")
    runs.add_argument("--limit", type=_positive_int, default=None, help="show only the N newest runs")
    _common(runs)

    models = sub.add_parser("models", help="models and datasets, with parameter counts per framework")
    _common(models)
    return parser


def _positive_int(text: str) -> int:
    """argparse type for counts: a whole number >= 1, else an error naming the value."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="SQLAlchemy URL (default: ARENA_DB_URL, else the embedded SQLite file)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line on stdout")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "runs":
        return cmd_runs(args)
    return cmd_models(args)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        spec = RunSpec.with_model_defaults(
            args.framework, args.model, args.dataset, epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, optimizer=args.optimizer, seed=args.seed, device=args.device,
            max_steps_per_epoch=args.max_steps_per_epoch, noise=args.noise,
        )
        devices.check_available(spec.device)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    url = default_url_for(args.db)
    sessions = make_sessionmaker(url)
    (run_id,) = queue_runs(sessions, [spec])
    print(f"run {run_id}: {framework_label(spec.framework)} {spec.model} on {spec.dataset}, "
          f"{spec.epochs} epochs (db {url})", file=sys.stderr)
    process = start_runner(sessions, run_id, url, detach=False)
    try:
        _follow(sessions, run_id, process)
    except KeyboardInterrupt:
        pass  # the runner got the same Ctrl-C and records the run as failed
    process.wait()
    reap(sessions)  # a runner killed before reporting still ends as failed, not running
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        record = _run_record(run, queries.final_metrics(s, [run_id])[run_id])
    if run.status != FINISHED:
        print(f"run {run_id} {run.status}:\n{run.error or ''}", file=sys.stderr)
    else:
        print(f"run {run_id} finished: " + ", ".join(f"{k}={v:.4g}" for k, v in record["metrics"].items()),
              file=sys.stderr)
    if args.json:
        print(json.dumps(record))
    return 0 if run.status == FINISHED else 1


def _follow(sessions, run_id: int, process: subprocess.Popen) -> None:
    """Print progress lines to stderr until the runner exits."""
    last = None
    while process.poll() is None:
        time.sleep(POLL_INTERVAL_S)
        with sessions.begin() as s:
            run = queries.get_run(s, run_id)
            state = (run.status, run.epoch, run.step)
            metrics = queries.final_metrics(s, [run_id])[run_id] if state != last else {}
        if state != last:
            shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in ("train_loss", "test_accuracy", "phi_estimate")
                              if k in metrics)
            print(f"  [{run.status}] epoch {run.epoch}/{run.total_epochs}  step {run.step}"
                  + (f"/{run.total_steps}" if run.total_steps else "")
                  + (f"  {shown}" if shown else ""), file=sys.stderr, flush=True)
            last = state


def _run_record(run, metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "run_id": run.id, "status": run.status, "framework": run.framework, "model": run.model,
        "dataset": run.dataset, "epochs": f"{run.epoch}/{run.total_epochs}",
        "created_at": run.created_at.isoformat(timespec="seconds") + "Z", "metrics": metrics,
        "error": (run.error or "").strip().splitlines()[-1] if run.error else None,
    }


def cmd_runs(args: argparse.Namespace) -> int:
    sessions = make_sessionmaker(default_url_for(args.db))
    reap(sessions)
    with sessions.begin() as s:
        runs = queries.list_runs(s, limit=args.limit)
        finals = queries.final_metrics(s, [r.id for r in runs])
        records = [_run_record(r, finals[r.id]) for r in runs]
    if not records:
        print("no runs yet: start one with `python -m engine run --framework torch --model mlp --dataset digits`",
              file=sys.stderr)
    for r in records:
        shown = " ".join(f"{k}={v:.4g}" for k, v in r["metrics"].items() if k != "epoch_time_s")
        print(f"{r['run_id']:>5}  {r['status']:<8}  {r['framework']:<10}  {r['model']:<8}  {r['dataset']:<8}  "
              f"{r['epochs']:>7}  {shown}", file=sys.stdout if not args.json else sys.stderr)
    if args.json:
        print(json.dumps(records))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    counts = {fw: _param_counts(fw) for fw in FRAMEWORKS}
    records = []
    for model in MODELS.values():
        for dataset in model.datasets:
            records.append({
                "model": model.name, "dataset": dataset, "description": model.description,
                "frameworks": list(FRAMEWORKS),
                "param_count": {fw: counts[fw][f"{model.name}/{dataset}"] for fw in FRAMEWORKS},
                "defaults": model.defaults,
            })
    out = sys.stderr if args.json else sys.stdout
    for r in records:
        per_fw = ", ".join(f"{framework_label(fw)} {n:,}" for fw, n in r["param_count"].items())
        print(f"{r['model']:<9} on {r['dataset']:<9} params: {per_fw}   ({r['description']})", file=out)
    if args.json:
        print(json.dumps({"models": records, "datasets": {
            name: {"task": d.task, "input_shape": list(d.input_shape), "train_size": d.train_size,
                   "test_size": d.test_size, "description": d.description} for name, d in DATASETS.items()}}))
    return 0


def _param_counts(framework: str) -> dict[str, int]:
    """Build every model in a child process of that framework and count its parameters."""
    result = subprocess.run(
        [sys.executable, "-m", "engine.backends.count", framework],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"counting {framework} parameters failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])
