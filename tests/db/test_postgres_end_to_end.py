"""A real run recorded in PostgreSQL: `python -m engine run` and its runner, read back as the dashboard reads it."""
import json

from db import queries, run_table
from db.models import FINISHED
from db.session import make_sessionmaker
from tests.conftest import run_cli

TINY = ["--epochs", "1", "--max-steps-per-epoch", "3", "--warmup-steps", "1", "--inference-iters", "2"]


def test_a_run_against_postgresql_finishes_and_the_dashboard_reads_its_points(postgres_url, tmp_path):
    result = run_cli("run", "--framework", "torch", "--model", "mlp", "--dataset", "digits", *TINY,
                     "--db", postgres_url, "--json", env={"ARENA_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["status"] == FINISHED

    sessions = make_sessionmaker(postgres_url)
    with sessions.begin() as s:
        assert s.get_bind().dialect.name == "postgresql"
        run = queries.get_run(s, record["run_id"])
        assert (run.status, run.epoch, run.step) == (FINISHED, 1, 3)
        recorded = run.summary["recorded"]
        assert recorded["failed_flushes"] == 0
        assert all(recorded[kind]["stored"] == recorded[kind]["produced"] > 0 for kind in ("metric_points", "samples",
                                                                                          "tensor_stats"))
        overview = run_table.runs_overview(s)
        points = queries.metric_frame(s, [run.id])
        samples = queries.sample_frame(s, [run.id])
        layers = queries.tensor_stat_frame(s, [run.id])
    sessions.kw["bind"].dispose()

    row = overview.iloc[0]
    assert (row["id"], row["status"], row["framework"], row["model"]) == (run.id, FINISHED, "torch", "mlp")
    assert row["test_accuracy"] == record["metrics"]["test_accuracy"] and row["samples_per_s"] > 0
    assert row["finished_at"] >= row["started_at"] >= row["created_at"]
    per_step = points[points["name"] == "step/train_loss"]
    assert per_step["step"].tolist() == [1, 2, 3]  # packed chunks, unpacked from bytea
    assert set(record["metrics"]) <= set(points["name"])
    assert len(points) == recorded["metric_points"]["stored"]
    assert len(samples) == recorded["samples"]["stored"] and len(layers) == recorded["tensor_stats"]["stored"]
