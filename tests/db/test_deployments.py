"""db/deployments.py: a deployment job's life (queued, claimed, progress, cancel, end) and its deletion with the run."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from db import deployments, queries
from db.models import CANCELLED, FINISHED, RUNNING, Deployment, DeploymentResult
from db.session import make_sessionmaker
from engine.spec import RunSpec


@pytest.fixture
def sessions(db_url):
    made = make_sessionmaker(db_url)
    yield made
    made.kw["bind"].dispose()


def a_run(s) -> int:
    return queries.create_run(s, RunSpec("torch", "mlp", "digits").to_dict()).id


def test_a_job_is_claimed_once_beats_while_running_and_is_never_rewritten_once_ended(sessions):
    with sessions.begin() as s:
        job = deployments.create(s, a_run(s), ["onnx"], {"threads": 1})
    with sessions.begin() as s:
        assert deployments.claim(s, job, 4242, "here")
        assert not deployments.claim(s, job, 4343, "there")  # a second claimer gets nothing
        assert deployments.progress(s, job, 1, 3, "measuring")
    with sessions.begin() as s:
        found = deployments.get(s, job)
        assert (found.status, found.pid, found.steps_done, found.steps_total, found.current) == (
            RUNNING, 4242, 1, 3, "measuring")
        assert deployments.end(s, job, FINISHED)
        assert not deployments.end(s, job, "failed", "late")  # ended: never rewritten
        assert not deployments.progress(s, job, 2, 3, "late")
    with sessions.begin() as s:
        assert deployments.get(s, job).status == FINISHED and deployments.get(s, job).error is None
        with pytest.raises(ValueError, match="'running'"):
            deployments.end(s, job, RUNNING)


def test_cancel_ends_a_queued_job_at_once_and_asks_a_running_one(sessions):
    with sessions.begin() as s:
        run = a_run(s)
        queued, running = (deployments.create(s, run, ["onnx"], {}) for _ in range(2))
        deployments.claim(s, running, 1, "here")
    with sessions.begin() as s:
        assert deployments.request_cancel(s, queued) == CANCELLED
        assert deployments.request_cancel(s, running) == RUNNING
        assert deployments.cancel_requested(s, running) and deployments.request_cancel(s, 999) is None


def test_results_and_artifacts_are_listed_without_bytes_and_go_with_the_run(sessions):
    with sessions.begin() as s:
        run, other = a_run(s), a_run(s)
        job = deployments.create(s, run, ["torchscript", "onnx"], {})
        kept = deployments.create(s, other, ["onnx"], {})
        first = deployments.add_result(s, job, "torch", "torchscript", "ok", export_s=0.5, size_bytes=3,
                                       figures={"load_s": 0.1}, artifact_name="model.pt", artifact=b"abc")
        deployments.add_result(s, job, "torch", "onnx", "not_exportable", error="no")
        deployments.set_serving(s, first, [{"concurrency": 1, "p50_ms": 2.0}], "server died")
        deployments.add_result(s, kept, "torch", "onnx", "ok")
    with sessions.begin() as s:
        found = deployments.results(s, [job])
        assert [(r["format"], r["status"]) for r in found] == [("torchscript", "ok"), ("onnx", "not_exportable")]
        assert "artifact" not in found[0] and found[0]["serving"] == [{"concurrency": 1, "p50_ms": 2.0}]
        assert found[0]["error"] == "server died"
        assert deployments.artifact(s, first) == ("model.pt", b"abc")
        assert deployments.artifact(s, found[1]["id"]) is None
        assert [j["id"] for j in deployments.jobs(s, [run])] == [job]
    with sessions.begin() as s:
        queries.delete_run(s, run)
    with sessions.begin() as s:
        assert [j["id"] for j in deployments.jobs(s)] == [kept]
        assert s.scalar(select(func.count(DeploymentResult.id))) == 1
        assert s.scalar(select(func.count(Deployment.id))) == 1


def test_a_job_waits_for_runs_and_earlier_jobs_on_its_own_machine_only(sessions):
    with sessions.begin() as s:
        run, elsewhere = a_run(s), a_run(s)
        first, second = (deployments.create(s, run, ["onnx"], {}) for _ in range(2))
        deployments.claim(s, first, 1, "here")
        deployments.claim(s, second, 2, "here")
        assert deployments.blockers(s, first, "here") == (0, 0)  # the later job never holds the earlier one up
        assert deployments.blockers(s, second, "here") == (0, 1)
        assert deployments.blockers(s, second, "there") == (0, 0)
        assert queries.place_run(s, run, "cpu", "here")  # placed, its runner not started yet: about to train
        assert queries.place_run(s, elsewhere, "cpu", "there")
        assert deployments.blockers(s, first, "here") == (1, 0)
        queries.claim_run(s, run, 3, "here")
        assert deployments.blockers(s, first, "here") == (1, 0)
        assert deployments.holding(s, "here") == 2 and deployments.holding(s, "there") == 0


def test_placement_is_conditional_and_undone_only_before_the_process_starts(sessions):
    with sessions.begin() as s:
        run = a_run(s)
        job, other = (deployments.create(s, run, ["onnx"], {}) for _ in range(2))
        assert [j.id for j in deployments.unplaced(s)] == [job, other]
        assert deployments.place(s, job, "ray:cpu", None) and not deployments.place(s, job, "cpu", "here")
        assert [j.id for j in deployments.unplaced(s)] == [other]
        assert deployments.placed_unstarted(s, ["ray:cpu"]) == [job]
        assert deployments.unplace(s, job) and deployments.place(s, job, "cpu", "here")
        assert deployments.holding(s, "here") == 1  # placed, its process not started: the machine is its already
        deployments.set_process(s, job, 42, "here")
        assert not deployments.unplace(s, job) and deployments.unplace_unstarted(s, timedelta(0)) == []
