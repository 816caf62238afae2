"""engine/export.py and `python -m engine export`: every point of stored runs, read back by each format's reader."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import sys
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from db import queries
from db.session import make_sessionmaker
from engine import export
from engine.spec import RunSpec
from tests.conftest import REPO_ROOT, run_cli

# TensorBoard's own switch to its TensorFlow-free stub (what its no_tensorflow build sets): the
# reader below then never loads tensorflow into the test process.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    HISTOGRAMS, SCALARS, TENSORS, EventAccumulator)

STEPS = 14_000  # TensorBoard's own CSV download stops at 1,000 points; an Arena export must not
NAN_STEP = 7_001
EPOCHS = 3
SAMPLES = 40
LAYERS = ("dense_1.kernel", "dense_2.bias")


@dataclass(frozen=True)
class Stored:
    url: str
    torch_id: int
    tensorflow_id: int

    @property
    def ids(self) -> list[int]:
        return [self.torch_id, self.tensorflow_id]


def _points(run_id: int, offset: float) -> list[dict]:
    rows = [dict(run_id=run_id, name="step/train_loss", step=step, epoch=step * EPOCHS // STEPS + 1,
                 wall_time=1.7e9 + offset + step * 0.0123, value=1.0 / (step + 1) + math.sin(step) * 1e-3)
            for step in range(1, STEPS + 1)]
    rows[NAN_STEP - 1]["value"] = float("nan")  # a diverged step: recorded, not dropped
    for epoch in range(1, EPOCHS + 1):
        step = epoch * STEPS // EPOCHS
        for name, value in (("train_loss", 1.0 / epoch), ("test_accuracy", 0.5 + epoch / 10)):
            rows.append(dict(run_id=run_id, name=name, step=step, epoch=epoch,
                             wall_time=1.7e9 + offset + step * 0.0123 + 0.5, value=value))
    return rows


def _samples(run_id: int, offset: float) -> list[dict]:
    rows = []
    for index in range(SAMPLES):
        moment = 1.7e9 + offset + index * 0.1
        rows.append(dict(run_id=run_id, time=moment, source="host", name="rss", value=2e8 + index, unit="bytes"))
        rows.append(dict(run_id=run_id, time=moment, source="host", name="cpu_percent", value=float(index % 100),
                         unit="%"))
    return rows


def _tensor_stats(run_id: int) -> list[dict]:
    rows = []
    for epoch in range(1, EPOCHS + 1):
        for layer in LAYERS:
            for kind in ("weight", "grad"):
                edges = [-1.0 / epoch + i * 0.25 / epoch for i in range(9)]
                counts = [float(i + epoch) for i in range(8)]
                mean = None if (kind, epoch) == ("grad", 3) else 0.01 * epoch  # a non-finite mean, stored as NULL
                rows.append(dict(run_id=run_id, epoch=epoch, step=epoch * STEPS // EPOCHS, layer=layer, kind=kind,
                                 numel=int(sum(counts)), norm=1.5 * epoch, mean=mean, std=0.2, min=edges[0] + 0.01,
                                 max=edges[-1] - 0.01, histogram={"edges": edges, "counts": counts}))
    return rows


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Stored:
    """Two runs: PyTorch finished with tensor statistics, TensorFlow diverged; each with 14,000 step points."""
    url = f"sqlite:///{tmp_path_factory.mktemp('export') / 'arena.db'}"
    sessions = make_sessionmaker(url)
    with sessions.begin() as s:
        ids = []
        for offset, framework in enumerate(("torch", "tensorflow")):
            spec = RunSpec.with_model_defaults(framework, "mlp", "digits", epochs=EPOCHS, lr=0.05).to_dict()
            run_id = queries.create_run(s, spec, group_tag="pair-1").id
            queries.add_metric_points(s, _points(run_id, offset * 1000.0))
            queries.add_system_samples(s, _samples(run_id, offset * 1000.0))
            ids.append(run_id)
        queries.add_tensor_stats(s, _tensor_stats(ids[0]))
        queries.annotate_run(s, ids[0], name="baseline", notes="first try,\nwith a comma", tags=["a", "b"])
        queries.finish_run(s, ids[0], {"param_count": 9610, "first_step_s": 0.25})
        queries.fail_run(s, ids[1], "train_loss became nan", summary={"final_loss": float("nan")},
                         reason="non_finite_loss", status="diverged")
    sessions.kw["bind"].dispose()
    return Stored(url, ids[0], ids[1])


@pytest.fixture(scope="module")
def frames(stored):
    """What the database holds, through the same query functions, to compare every export against."""
    with make_sessionmaker(stored.url).begin() as s:
        return queries.metric_frame(s, stored.ids), queries.sample_frame(s, stored.ids)


def test_csv_holds_every_point_and_writes_nan(stored, frames):
    archive = zipfile.ZipFile(io.BytesIO(export.export_csv(make_sessionmaker(stored.url), stored.ids)))
    assert sorted(archive.namelist()) == ["README.txt", "deployment_latency.csv", "deployment_serving.csv",
                                          "deployments.csv", "metrics.csv", "runs.csv", "samples.csv",
                                          "tensor_stats.csv"]
    metrics = list(csv.DictReader(io.TextIOWrapper(archive.open("metrics.csv"), encoding="utf-8")))
    assert list(metrics[0]) == ["run_id", "name", "step", "epoch", "wall_time", "value"]
    for run_id in stored.ids:
        steps = [row for row in metrics if row["run_id"] == str(run_id) and row["name"] == "step/train_loss"]
        assert len(steps) == STEPS
        assert [int(row["step"]) for row in steps] == list(range(1, STEPS + 1))
        assert steps[NAN_STEP - 1]["value"] == "nan"
        assert sum(row["value"] == "nan" for row in steps) == 1
    assert len(metrics) == len(frames[0])
    # Full precision: every value and time parses back to exactly what the database holds.
    expected = frames[0]
    assert [float(row["wall_time"]) for row in metrics] == expected["wall_time"].tolist()
    assert np.array_equal(np.array([float(row["value"]) for row in metrics]), expected["value"].to_numpy(),
                          equal_nan=True)

    runs = list(csv.DictReader(io.TextIOWrapper(archive.open("runs.csv"), encoding="utf-8")))
    assert [int(run["id"]) for run in runs] == stored.ids
    torch_run, tensorflow_run = runs
    assert (torch_run["name"], torch_run["framework"], torch_run["status"], torch_run["tags"], torch_run["group"]) == (
        "baseline", "torch", "finished", "a,b", "pair-1")
    assert torch_run["notes"] == "first try,\nwith a comma"
    assert (tensorflow_run["status"], tensorflow_run["reason"]) == ("diverged", "non_finite_loss")
    assert (torch_run["spec.lr"], torch_run["spec.epochs"], torch_run["spec.model"]) == ("0.05", "3", "mlp")
    assert torch_run["created_at"].endswith("Z") and torch_run["finished_at"]

    samples = list(csv.DictReader(io.TextIOWrapper(archive.open("samples.csv"), encoding="utf-8")))
    assert len(samples) == len(frames[1]) == 2 * 2 * SAMPLES
    stats = list(csv.DictReader(io.TextIOWrapper(archive.open("tensor_stats.csv"), encoding="utf-8")))
    assert len(stats) == EPOCHS * len(LAYERS) * 2 and "histogram" not in stats[0]
    assert sum(row["mean"] == "nan" for row in stats) == len(LAYERS)


def _strict(constant: str):
    raise AssertionError(f"invalid JSON token {constant}")


def test_json_is_strict_and_holds_every_point_with_null_for_nan(stored, frames):
    document = json.loads(export.export_json(make_sessionmaker(stored.url), stored.ids), parse_constant=_strict)
    assert document["arena_export"] == 1 and "null" in document["note"] and "non-finite" in document["note"]
    torch_run, tensorflow_run = document["runs"]
    assert [torch_run["id"], tensorflow_run["id"]] == stored.ids
    assert (torch_run["name"], torch_run["tags"], torch_run["spec"]["lr"]) == ("baseline", ["a", "b"], 0.05)
    assert tensorflow_run["summary"] == {"final_loss": None} and tensorflow_run["status"] == "diverged"
    metrics, samples = frames
    for run in document["runs"]:
        steps = run["metrics"]["step/train_loss"]
        assert len(steps["value"]) == len(steps["step"]) == len(steps["epoch"]) == len(steps["wall_time"]) == STEPS
        assert steps["value"][NAN_STEP - 1] is None and steps["value"].count(None) == 1
        expected = metrics[(metrics.run_id == run["id"]) & (metrics.name == "step/train_loss")]
        assert steps["wall_time"] == expected["wall_time"].tolist()
        assert [v for v in steps["value"] if v is not None] == expected["value"].dropna().tolist()
        assert run["metrics"]["test_accuracy"]["value"] == pytest.approx([0.6, 0.7, 0.8])
        rss = run["samples"]["host"]["rss"]
        assert rss["unit"] == "bytes" and rss["value"] == [2e8 + i for i in range(SAMPLES)]
        assert rss["time"] == samples[(samples.run_id == run["id"]) & (samples.name == "rss")]["time"].tolist()
    assert len(torch_run["tensor_stats"]) == EPOCHS * len(LAYERS) * 2 and tensorflow_run["tensor_stats"] == []
    first = torch_run["tensor_stats"][0]
    assert first["histogram"]["counts"] == [float(i + 1) for i in range(8)] and first["layer"] == LAYERS[0]


def _read_logdir(data: bytes, into: Path) -> dict[str, EventAccumulator]:
    zipfile.ZipFile(io.BytesIO(data)).extractall(into)
    readers = {}
    for directory in sorted(into.iterdir()):
        files = list(directory.iterdir())
        assert len(files) == 1 and re.fullmatch(r"events\.out\.tfevents\.\d{10}\.arena", files[0].name), files
        # 0: keep everything, so nothing is sampled away before it is compared.
        reader = EventAccumulator(str(directory), size_guidance={SCALARS: 0, HISTOGRAMS: 0, TENSORS: 0})
        readers[directory.name] = reader.Reload()
    return readers


def test_tensorboard_reader_gets_back_every_scalar_histogram_and_the_spec(stored, frames, tmp_path):
    readers = _read_logdir(export.export_tensorboard(make_sessionmaker(stored.url), stored.ids), tmp_path)
    assert list(readers) == [f"run-{stored.torch_id}-torch-mlp", f"run-{stored.tensorflow_id}-tensorflow-mlp"]
    metrics, samples = frames
    for run_id, reader in zip(stored.ids, readers.values()):
        run_metrics = metrics[metrics.run_id == run_id]
        tags = reader.Tags()
        assert sorted(tags["scalars"]) == sorted(
            [*run_metrics["name"].unique(), "memory/host/rss", "system/host/cpu_percent"])
        for name, expected in run_metrics.groupby("name"):
            events = reader.Scalars(name)
            assert len(events) == len(expected)
            assert [e.step for e in events] == expected["step"].tolist()
            assert [e.wall_time for e in events] == expected["wall_time"].tolist()
            # TensorBoard scalars are float32, as tf.summary.scalar writes them.
            assert np.array_equal([e.value for e in events], expected["value"].to_numpy(np.float32), equal_nan=True)
        assert len(reader.Scalars("step/train_loss")) == STEPS
        assert math.isnan(reader.Scalars("step/train_loss")[NAN_STEP - 1].value)
        rss = reader.Scalars("memory/host/rss")
        expected_rss = samples[(samples.run_id == run_id) & (samples.name == "rss")]
        assert [e.step for e in rss] == list(range(SAMPLES))  # documented: a sample's index in its series
        assert [e.wall_time for e in rss] == expected_rss["time"].tolist()
        assert [e.value for e in rss] == expected_rss["value"].astype(np.float32).tolist()
        spec_text = reader.Tensors("spec")[0].tensor_proto.string_val[0].decode()
        assert "| lr | 0.05 |" in spec_text and "| framework | " in spec_text

    torch_reader, tensorflow_reader = readers.values()
    assert tensorflow_reader.Tags()["histograms"] == []
    assert sorted(torch_reader.Tags()["histograms"]) == sorted(f"{k}/{layer}" for layer in LAYERS
                                                               for k in ("weight", "grad"))
    histograms = torch_reader.Histograms(f"grad/{LAYERS[0]}")
    assert [h.step for h in histograms] == [epoch * STEPS // EPOCHS for epoch in range(1, EPOCHS + 1)]
    for epoch, event in enumerate(histograms, start=1):
        edges = [-1.0 / epoch + i * 0.25 / epoch for i in range(9)]
        value = event.histogram_value
        assert list(value.bucket_limit) == edges[1:] and list(value.bucket) == [float(i + epoch) for i in range(8)]
        assert (value.min, value.max) == (edges[0] + 0.01, edges[-1] - 0.01)  # the stored min and max
        assert value.num == sum(i + epoch for i in range(8))
        if epoch < 3:
            assert value.sum == pytest.approx(0.01 * epoch * value.num)
        else:  # epoch 3's mean was not finite: estimated from the bucket centres
            centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
            assert value.sum == pytest.approx(sum(c * n for c, n in zip(centres, value.bucket)))


def test_tensorboard_export_loads_no_framework(stored):
    """The dashboard builds this file: tensorboard's writer must not pull tensorflow in."""
    code = ("import sys\nfrom db.session import make_sessionmaker\nfrom engine import export\n"
            f"assert export.export_tensorboard(make_sessionmaker({stored.url!r}), {stored.ids!r})\n"
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("run_ids, fmt, message", [
    ([1, 999], "csv", "run 999 does not exist"),
    ([998, 999], "json", "runs 998, 999 do not exist"),
    ([], "tensorboard", "no run ids given"),
    ([1], "xml", "format 'xml' is not one of csv, json, tensorboard"),
])
def test_write_export_names_what_is_wrong_and_writes_nothing(stored, tmp_path, run_ids, fmt, message):
    out = tmp_path / "out.bin"
    with pytest.raises(ValueError, match=re.escape(message)):
        export.write_export(make_sessionmaker(stored.url), run_ids, fmt, out)
    assert not out.exists()


def test_file_names_name_the_runs():
    assert export.export_filename([3, 4], "csv") == "arena-runs-3-4.csv.zip"
    assert export.open_tensorboard_command("out/logs.zip").startswith("unzip out/logs.zip -d out/logs && tensorboard")
    assert export.export_filename([3], "json") == "arena-runs-3.json"
    assert export.export_filename([3, 4], "tensorboard") == "arena-runs-3-4.tensorboard.zip"
    assert export.export_filename(list(range(1, 11)), "json") == "arena-runs-1-2-3-4-5-6-7-8-and-2-more.json"


def test_cli_writes_the_file_and_reports_it(stored, tmp_path):
    out = tmp_path / "runs.json"
    result = run_cli("export", *map(str, stored.ids), "--format", "json", "--out", str(out), "--db", stored.url,
                     "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record == {"path": str(out), "format": "json", "run_ids": stored.ids, "bytes": out.stat().st_size}
    document = json.loads(out.read_bytes(), parse_constant=_strict)
    assert [len(run["metrics"]["step/train_loss"]["value"]) for run in document["runs"]] == [STEPS, STEPS]

    # Into a directory: the file gets the dashboard's name, and the message says how to open it.
    result = run_cli("export", str(stored.torch_id), "--format", "tensorboard", "--out", str(tmp_path),
                     "--db", stored.url)
    assert result.returncode == 0, result.stderr
    written = tmp_path / f"arena-runs-{stored.torch_id}.tensorboard.zip"
    assert zipfile.ZipFile(written).namelist()[0].startswith(f"run-{stored.torch_id}-torch-mlp/events.out.tfevents.")
    assert f"unzip {written} -d {tmp_path / f'arena-runs-{stored.torch_id}'} && tensorboard --logdir" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--format", "xml"], "invalid choice: 'xml'"),
    (["--format", "csv", "999"], "run 999 does not exist"),
    (["--format", "csv", "abc"], "'abc' is not a whole number >= 1"),
])
def test_cli_rejects_bad_input_with_exit_2_naming_it(stored, tmp_path, args, message):
    out = tmp_path / "out.zip"
    ids = [] if any(arg in ("999", "abc") for arg in args) else [str(stored.torch_id)]
    result = run_cli("export", *ids, *args, "--out", str(out), "--db", stored.url)
    assert result.returncode == 2
    assert message in result.stderr
    assert not out.exists()
