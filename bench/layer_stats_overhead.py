"""Does the per-epoch layer-statistics pass change the speed of the epochs after it? Ratio measured ABBA in one process.

`python bench/layer_stats_overhead.py [--framework torch|tensorflow] [--model cnn] [--pairs 6] [--epochs 5] [--json]`

Trains the same run with layer statistics on and off, alternating (on, off, off, on, ...) in one
worker process so that drift on a noisy machine cancels, and prints the steady samples/s of the
epochs after the first (each of which follows a statistics pass when they are on) as on ÷ off per
pair, their median and range. The pass itself is timed apart (layer_stats_s) and never counted;
the question is whether it slows what follows it (issue 15: it once did, by ~35 % for PyTorch's
cnn, through numpy's OpenBLAS threads spinning beside PyTorch's OpenMP ones). Goal: the median
within 0.97-1.03 and a range that includes 1.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere

GOAL = (0.97, 1.03)


class _Sink:
    """Keeps the epochs' samples/s; the rest of what a run records is not needed here."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def step_metrics(self, *args) -> None:
        pass

    def epoch_metrics(self, epoch: int, step: int, metrics: dict) -> None:
        self.rates.append(metrics.get("samples_per_s", 0.0))

    def progress(self, *args) -> None:
        pass

    def tensor_stats(self, rows) -> None:
        pass


def epochs_after_first(framework: str, model: str, epochs: int, layer_stats: bool) -> float:
    """Mean samples/s of epochs 2..N of one in-process run (epoch 1 holds warm-up and compilation)."""
    from engine.backends import get_backend
    from engine.data import load_spec
    from engine.loop import train
    from engine.spec import RunSpec

    spec = RunSpec(framework=framework, model=model, dataset="digits", epochs=epochs, layer_stats=layer_stats,
                   inference_iters=0, sample_hz=0, calibration_steps=0, profile_steps=0)
    sink = _Sink()
    train(spec, get_backend(framework, "cpu"), load_spec(spec), sink)
    return statistics.fmean(sink.rates[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", default="torch", choices=("torch", "tensorflow"))
    parser.add_argument("--model", default="cnn", choices=("mlp", "cnn"))
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    ratios = []
    for pair in range(args.pairs):
        order = (True, False) if pair % 2 == 0 else (False, True)  # ABBA: drift cancels across pairs
        rates = {on: epochs_after_first(args.framework, args.model, args.epochs, on) for on in order}
        ratios.append(rates[True] / rates[False])
        print(f"pair {pair + 1}: on {rates[True]:,.0f} / off {rates[False]:,.0f} samples/s = {ratios[-1]:.3f}",
              file=sys.stderr, flush=True)
    median = statistics.median(ratios)
    verdict = "PASS" if GOAL[0] <= median <= GOAL[1] and min(ratios) <= 1 <= max(ratios) else "FAIL"
    result = {"framework": args.framework, "model": args.model, "pairs": args.pairs, "median_ratio": median,
              "range": [min(ratios), max(ratios)], "verdict": verdict}
    print(json.dumps(result) if args.json else
          f"{args.framework} {args.model}: epochs after a statistics pass ÷ epochs without: median {median:.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}, {args.pairs} ABBA pairs in one process): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
