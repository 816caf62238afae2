"""db run_artifacts: a run's files (its profiler trace) stored, listed without bytes, read back, deleted with the run."""
import gzip

from sqlalchemy import text

from db import queries
from db.session import make_sessionmaker
from engine.spec import RunSpec

SPEC = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=1).to_dict()
TRACE = b'{"traceEvents": [{"name": "aten::addmm", "ph": "X", "ts": 0, "dur": 12.5}]}' * 200


def stored_trace(s, run_id: int) -> int:
    data = gzip.compress(TRACE)
    return queries.add_artifact(s, run_id, "trace", "trace.json.gz", "application/gzip", data, len(TRACE))


def test_an_artifact_is_stored_listed_without_its_bytes_and_read_back_whole(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        run_id, other = queries.create_run(s, SPEC).id, queries.create_run(s, SPEC).id
        artifact_id = stored_trace(s, run_id)
    with sessions.begin() as s:
        (listed,) = queries.list_artifacts(s, [run_id, other])
        assert set(listed) == {*queries.ARTIFACT_COLUMNS, "stored_bytes"}  # no "data": a listing reads no blob
        assert (listed["id"], listed["run_id"], listed["kind"], listed["name"], listed["media_type"]) == (
            artifact_id, run_id, "trace", "trace.json.gz", "application/gzip")
        assert listed["size_bytes"] == len(TRACE) and listed["stored_bytes"] == len(gzip.compress(TRACE))
        assert queries.list_artifacts(s, [other]) == [] and queries.list_artifacts(s, [run_id], "export") == []
        assert gzip.decompress(queries.get_artifact(s, artifact_id).data) == TRACE  # byte for byte, BYTEA or BLOB
        assert queries.get_artifact(s, artifact_id + 1000) is None
    sessions.kw["bind"].dispose()


def test_deleting_a_run_deletes_its_artifacts_and_leaves_the_others(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        doomed, kept = queries.create_run(s, SPEC).id, queries.create_run(s, SPEC).id
        stored_trace(s, doomed)
        kept_artifact = stored_trace(s, kept)
    with sessions.begin() as s:
        queries.delete_run(s, doomed)
    with sessions.begin() as s:
        assert queries.list_artifacts(s, [doomed]) == []
        assert [row["id"] for row in queries.list_artifacts(s, [kept])] == [kept_artifact]
    sessions.kw["bind"].dispose()


def test_the_database_itself_deletes_a_runs_artifacts_with_the_run(db_url):
    """ON DELETE CASCADE, like every per-run table: a run deleted by hand (or by an older Arena) leaves no orphan."""
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        run_id = queries.create_run(s, SPEC).id
        stored_trace(s, run_id)
    with sessions.begin() as s:
        s.execute(text("DELETE FROM runs WHERE id = :id"), {"id": run_id})
    with sessions.begin() as s:
        assert s.execute(text("SELECT count(*) FROM run_artifacts")).scalar() == 0
    sessions.kw["bind"].dispose()
