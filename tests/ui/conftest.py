"""Fixtures of the ui/ sections' tests: made-up runs in the dashboard's database."""
from __future__ import annotations

import pytest

from db import queries
from db.session import make_sessionmaker
from engine.spec import RunSpec


def fabricate_pair(url: str) -> tuple[int, int]:
    """A finished PyTorch run and a TensorFlow run with equal settings (each in its default mode); TF 10 % faster."""
    sessions = make_sessionmaker(url)
    with sessions.begin() as s:
        ids = []
        for framework, rate, accuracies in (("torch", 1000.0, [0.8, 0.9]), ("tensorflow", 1100.0, [0.85, 0.88])):
            spec = RunSpec.with_model_defaults(framework, "mlp", "digits", epochs=2, max_steps_per_epoch=5)
            run_id = queries.create_run(s, spec.to_dict()).id
            queries.update_run(s, run_id, status="running", started_at=queries.utcnow())
            queries.add_metric_points(s, [
                dict(run_id=run_id, name=name, step=5 * epoch, epoch=epoch, wall_time=float(epoch), value=value)
                for name, values in (("test_accuracy", accuracies), ("test_loss", [0.6, 0.5]),
                                     ("train_loss", [0.7, 0.55]), ("samples_per_s", [rate, rate]))
                for epoch, value in enumerate(values, start=1)])
            queries.add_system_samples(s, [dict(run_id=run_id, time=float(t), source="host", name="rss",
                                                value=400.0 * 2**20, unit="bytes") for t in range(3)])
            queries.finish_run(s, run_id, {"steady_samples_per_s": rate, "step_time_p50_ms": 1e6 / rate,
                                           "param_count": 9610, "peak_bytes": {"host_rss": 500.0 * 2**20}})
            ids.append(run_id)
    sessions.kw["bind"].dispose()
    return ids[0], ids[1]


@pytest.fixture
def pair(arena_db, monkeypatch) -> tuple[int, int]:
    monkeypatch.setenv("ARENA_SCHEDULER", "off")  # made-up runs: nothing here may start a runner
    return fabricate_pair(arena_db)
