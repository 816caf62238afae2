"""Each run's profiler trace, stored with it by the runner and written out by `python -m engine trace`.

Real runs of both frameworks through the CLI and the runner into a temporary SQLite database.
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from db import queries
from db.session import make_sessionmaker
from engine.spec import RunSpec
from engine.traces import trace_filename
from tests.conftest import REPO_ROOT, run_cli

STORED_NAMES = {"torch": "trace.json.gz", "tensorflow": "profile.xplane.pb.gz"}
_XPLANE_READER = """
import json, sys
from tensorflow.tsl.profiler.protobuf import xplane_pb2
space = xplane_pb2.XSpace()
space.ParseFromString(open(sys.argv[1], "rb").read())
print(json.dumps(sorted({m.name for plane in space.planes for m in plane.event_metadata.values()})))
"""


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """One tiny mlp run per framework, queued as one group by the CLI: (database URL, env, records by framework)."""
    home = tmp_path_factory.mktemp("traces")
    url = f"sqlite:///{home / 'arena.db'}"
    env = {"ARENA_HOME": str(home), "ARENA_DB_URL": url}
    result = run_cli("run", "--framework", "torch", "tensorflow", "--model", "mlp", "--dataset", "digits",
                     "--epochs", "1", "--max-steps-per-epoch", "10", "--inference-iters", "2",
                     "--calibration-steps", "5", "--profile-steps", "2", "--json", env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    records = json.loads(result.stdout.strip().splitlines()[-1])["runs"]
    return url, env, {record["framework"]: record for record in records}


def trace_cli(env: dict, run_id: int, out: Path, *flags: str) -> subprocess.CompletedProcess:
    return run_cli("trace", str(run_id), "--out", str(out), *flags, env=env)


def stored(url: str, run_id: int) -> tuple[dict, bytes]:
    with make_sessionmaker(url).begin() as s:
        (listed,) = queries.list_artifacts(s, [run_id], "trace")
        return listed, queries.get_artifact(s, listed["id"]).data


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_the_run_json_carries_the_phases_and_the_operator_profile(profiled, framework):
    record = profiled[2][framework]
    assert record["status"] == "finished"
    summary = record["summary"]
    assert summary["phases"]["steps"] == 5 and set(summary["phases"]["median_ms"]) == {
        "data", "copy", "forward", "backward", "optimizer"}
    assert summary["phases"]["fused_step_median_ms"] > 0 and summary["phases"]["sum_median_ms"] > 0
    profile = summary["operator_profile"]
    assert profile["steps"] == 2 and profile["top"] and profile["total_ms"] > 0
    assert summary["inference_bs1_p50_ms"] > 0  # the inference benchmark still runs after them


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_the_runner_stores_the_trace_gzip_compressed_with_the_run(profiled, framework):
    url, _, records = profiled
    listed, data = stored(url, records[framework]["run_id"])
    assert (listed["kind"], listed["name"], listed["media_type"]) == ("trace", STORED_NAMES[framework],
                                                                      "application/gzip")
    raw = gzip.decompress(data)
    assert listed["size_bytes"] == len(raw) and listed["stored_bytes"] == len(data) < len(raw)


def test_engine_trace_writes_the_torch_trace_as_chrome_trace_json(profiled, tmp_path):
    _, env, records = profiled
    run_id = records["torch"]["run_id"]
    result = trace_cli(env, run_id, tmp_path / "trace.json", "--json")
    assert result.returncode == 0, result.stderr
    written = json.loads(result.stdout.strip().splitlines()[-1])
    assert written["framework"] == "torch" and Path(written["path"]) == tmp_path / "trace.json"
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert any(event.get("name") in ("aten::addmm", "aten::mm", "aten::linear") for event in events)
    assert "Perfetto" in result.stderr  # which viewer opens it


def test_engine_trace_writes_the_tensorflow_profile_that_tensorflow_parses(profiled, tmp_path):
    url, env, records = profiled
    run_id = records["tensorflow"]["run_id"]
    out = tmp_path / "run.xplane.pb"
    assert trace_cli(env, run_id, out).returncode == 0
    assert out.read_bytes() == gzip.decompress(stored(url, run_id)[1])
    names = json.loads(subprocess.run([sys.executable, "-c", _XPLANE_READER, str(out)], cwd=REPO_ROOT,
                                      capture_output=True, text=True, timeout=300, check=True).stdout)
    assert any("MatMul" in name for name in names)


def test_engine_trace_writes_it_compressed_by_the_name_and_into_a_directory_under_its_own_name(profiled, tmp_path):
    url, env, records = profiled
    run_id = records["tensorflow"]["run_id"]
    assert trace_cli(env, run_id, tmp_path / "kept.xplane.pb.gz").returncode == 0
    assert (tmp_path / "kept.xplane.pb.gz").read_bytes() == stored(url, run_id)[1]  # as stored

    folder = tmp_path / "downloads"
    folder.mkdir()
    assert trace_cli(env, run_id, folder).returncode == 0
    expected = f"arena-run-{run_id}-tensorflow-profile.xplane.pb.gz"
    assert expected == trace_filename(run_id, "tensorflow", STORED_NAMES["tensorflow"])
    assert [path.name for path in folder.iterdir()] == [expected]


def test_engine_trace_refuses_an_existing_file_without_force(profiled, tmp_path):
    _, env, records = profiled
    out = tmp_path / "trace.json"
    out.write_text("keep me")
    refused = trace_cli(env, records["torch"]["run_id"], out)
    assert refused.returncode == 2 and "exists; add --force" in refused.stderr
    assert out.read_text() == "keep me"
    assert trace_cli(env, records["torch"]["run_id"], out, "--force").returncode == 0
    assert "traceEvents" in json.loads(out.read_text())


def test_engine_trace_never_writes_over_the_database(profiled):
    url, env, records = profiled
    database = Path(url.removeprefix("sqlite:///"))
    before = database.stat().st_size
    refused = trace_cli(env, records["torch"]["run_id"], database, "--force")
    assert refused.returncode == 2 and "never writes over a database" in refused.stderr
    assert database.stat().st_size == before


def test_engine_trace_names_a_run_without_a_trace_and_a_run_that_does_not_exist(profiled, tmp_path):
    url, env, _ = profiled
    with make_sessionmaker(url).begin() as s:  # queued, never trained: no trace
        untraced = queries.create_run(s, RunSpec("torch", "mlp", "digits").to_dict()).id
        queries.fail_run(s, untraced, "stopped before training")
    result = trace_cli(env, untraced, tmp_path / "t.json")
    assert result.returncode == 2 and f"run {untraced} has no stored trace" in result.stderr
    missing = trace_cli(env, 99999, tmp_path / "t.json")
    assert missing.returncode == 2 and "run 99999 does not exist" in missing.stderr
    assert not (tmp_path / "t.json").exists()
