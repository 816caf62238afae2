"""Bad input at the CLI's boundaries: flags, spec files, environment variables, database URLs and output paths.

Each case runs the real `python -m engine` and checks that it exits 2 with a message naming the
problem, and that nothing was stored or changed: the database still holds exactly the one run it held
before, row for row.
"""
from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from db import queries
from db.models import FINISHED
from db.session import make_sessionmaker
from engine.spec import RunSpec
from tests.conftest import run_cli
from tests.reliability import row_digests

RUN = ["run", "--framework", "torch", "--model", "mlp", "--dataset", "digits"]
CLI_TIMEOUT_S = 60  # a bad input is refused in about a second; a case that slipped through would hang


@pytest.fixture
def one_run(arena_db, monkeypatch) -> tuple[str, int]:
    """The database with one finished run in it; no scheduler in the children, should a case get that far."""
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        run_id = queries.create_run(s, RunSpec("torch", "mlp", "digits").to_dict()).id
        queries.update_run(s, run_id, status=FINISHED)
    sessions.kw["bind"].dispose()
    return arena_db, run_id


def stored_ids(url: str) -> list[int]:
    sessions = make_sessionmaker(url)
    with sessions.begin() as s:
        ids = [run.id for run in queries.list_runs(s)]
    sessions.kw["bind"].dispose()
    return ids


def database_file(url: str) -> Path:
    return Path(url.split("///", 1)[1])


def refused(one_run, *args: str, env: dict | None = None) -> str:
    """Run the CLI, assert it refused with exit status 2 and stored or changed nothing; return its stderr."""
    url, run_id = one_run
    before = row_digests(database_file(url))
    result = run_cli(*args, env=env, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert stored_ids(url) == [run_id]
    assert row_digests(database_file(url)) == before
    return result.stderr


FLAG_CASES = [
    (RUN + ["--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    (RUN + ["--epochs", "-1"], "epochs=-1: must be >= 1"),
    (RUN + ["--epochs", "100000000000000000000"], "epochs=100000000000000000000: must be <= 100000"),
    (["run", "--framework", "torch", "--model", "nosuchmodel", "--dataset", "digits"],
     "model='nosuchmodel': expected one of mlp, cnn"),
    (["run", "--framework", "torch", "--model", "mlp", "--dataset", "nosuch"],
     "dataset='nosuch': expected one of digits"),
    (["run", "--framework", "jax", "--model", "mlp", "--dataset", "digits"],
     "frameworks='jax': expected one of torch, tensorflow"),
    (RUN + ["--lr", "nan"], "lr=nan: must be finite"),
    (RUN + ["--histogram-bins", "500"], "histogram_bins=500: must be <= 200"),
    (RUN + ["--sample-hz", "1000"], "sample_hz=1000.0: must be <= 100"),
    (RUN + ["--device", "cuda:99"], "device='cuda:99'"),
    (RUN + ["--device", "gpu0"], "device='gpu0': expected 'auto', 'cpu' or 'cuda:N'"),
    (RUN + ["--mode", "jit"], "modes='jit': expected some of compiled, eager, fit, graph, xla"),
    (RUN + ["--optimizer", "rmsprop"], "optimizer='rmsprop': expected one of sgd, momentum, adam"),
    (RUN + ["--seeds", "0-100000"], "more than 200 seeds"),
    (["run", "--framework", "torch", "--model", "resnet", "--dataset", "synthetic_images",
      "--synthetic-shape", "4096x4096x3"], "synthetic_shape='4096x4096x3': with 4,096 training samples"),
    (["run", "--framework", "torch", "--dataset", "digits"], "give --model (framework, model and dataset name a run)"),
    (RUN + ["--max-steps-per-epoch", "99999999999999999999"],
     "max_steps_per_epoch=99999999999999999999: must be <= 10000000"),
    (RUN + ["--seed", "9223372036854775808"], "seed=9223372036854775808: must be <= 2147483647"),
    (RUN + ["--synthetic-size", "99999999999999999999"], "synthetic_size=99999999999999999999: must be <= 10000000"),
    (RUN + ["--device", "cpu\n"], "device='cpu\\n': expected 'auto', 'cpu' or 'cuda:N'"),
    (RUN + ["--device", "cuda:" + "9" * 5000], "expected 'auto', 'cpu' or 'cuda:N'"),
    # Run ids and counts: bounded where argparse reads them, not an OverflowError in the database driver.
    (["cancel", "9223372036854775808"], "argument RUN_ID: '9223372036854775808' is too large: at most 2147483647"),
    (["cancel", "2147483648"], "argument RUN_ID: '2147483648' is too large: at most 2147483647"),
    (["cancel", "²"], "argument RUN_ID: '²' is not a whole number >= 1"),
    (["cancel", "٣"], "argument RUN_ID: '٣' is not a whole number >= 1"),
    (["export", "99999999999999999999999", "--format", "json", "--out", "never-written.json"],
     "argument RUN_ID: '99999999999999999999999' is too large: at most 2147483647"),
    (["runs", "--limit", "99999999999999999999999"],
     "argument --limit: '99999999999999999999999' is too large: at most 2147483647"),
    (["runs", "--limit", "1" * 5000], "argument --limit: '" + "1" * 40 + "'... (5,000 characters) is too large"),
    (["scheduler", "--interval", "nan"], "argument --interval: 'nan' is not a number of seconds in (0, 3600]"),
    (["scheduler", "--interval", "inf"], "argument --interval: 'inf' is not a number of seconds in (0, 3600]"),
    (["parity", "--model", "mlp", "--batch-size", "100000000000"],
     "batch_size=100000000000: expected a whole number in 1..1024"),
]


def flag_case_id(args: list[str]) -> str:
    text = " ".join(args[len(RUN):] if args[:len(RUN)] == RUN else args[1:] if args[0] == "run" else args)
    return text if len(text) <= 60 else f"{text[:50]}...({len(text)} chars)"


@pytest.mark.parametrize("args, message", FLAG_CASES, ids=[flag_case_id(args) for args, _ in FLAG_CASES])
def test_a_bad_flag_is_named_and_nothing_is_queued(one_run, args, message):
    assert message in refused(one_run, *args)


@pytest.mark.parametrize("variable, value, message", [
    ("ARENA_RUNS_PER_GPU", "-1", "ARENA_RUNS_PER_GPU='-1': expected a whole number >= 1"),
    ("ARENA_CPU_SLOTS", "abc", "ARENA_CPU_SLOTS='abc': expected a whole number >= 0"),
    ("ARENA_SCHEDULER", "maybe", "ARENA_SCHEDULER='maybe': expected on or off"),
], ids=["ARENA_RUNS_PER_GPU", "ARENA_CPU_SLOTS", "ARENA_SCHEDULER"])
def test_a_bad_scheduler_setting_is_named_before_anything_is_queued(one_run, variable, value, message):
    assert message in refused(one_run, *RUN, env={variable: value})


def test_a_bad_verify_setting_is_named_before_a_file_dataset_is_queued(one_run, tmp_path):
    stderr = refused(one_run, "run", "--framework", "torch", "--model", "mlp", "--dataset", "mnist",
                     env={"ARENA_DATA_VERIFY": "perhaps", "ARENA_DATA_DIR": str(tmp_path / "data")})
    assert "ARENA_DATA_VERIFY='perhaps': expected 1 (verify, the default) or 0 (do not verify)" in stderr


# Spec files ------------------------------------------------------------------------------------------
def spec_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_spec_file_trains_the_run_it_describes(arena_db, tmp_path):
    """The control for the cases below: a good file is queued and trained like the flags would be."""
    path = spec_file(tmp_path, "run.toml", 'framework = "torch"\nmodel = "mlp"\ndataset = "digits"\nepochs = 1\n'
                                           'max_steps_per_epoch = 3\nwarmup_steps = 1\ninference_iters = 0\n')
    result = run_cli("run", "--spec", str(path), "--json", timeout=180)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert (record["status"], record["framework"], record["epochs"]) == ("finished", "torch", "1/1")
    with make_sessionmaker(arena_db).begin() as s:
        spec = queries.get_run(s, record["run_id"]).spec
    assert (spec["max_steps_per_epoch"], spec["lr"], spec["optimizer"]) == (3, 1e-3, "adam")  # the rest: defaults


SPEC_CASES = [
    ("missing.json", None, "missing.json: no such file"),
    ("malformed.json", '{"framework": "torch",\n "model": "mlp"\n "dataset": "digits"}',
     "malformed.json: not valid JSON at line 3, column 2: Expecting ',' delimiter"),
    ("malformed.toml", 'framework = "torch"\nmodel = "mlp"\ndataset = digits\n',
     "malformed.toml: not valid TOML: Invalid value (at line 3, column 11)"),
    ("unknown.json", '{"framework": "torch", "model": "mlp", "dataset": "digits", "epoch": 3}',
     "unknown.json: unknown field 'epoch' (did you mean 'epochs'?)"),
    ("wrong_type.toml", 'framework = "torch"\nmodel = "mlp"\ndataset = "digits"\nepochs = "3"\n',
     "wrong_type.toml: epochs='3': expected a whole number"),
    ("jax.json", '{"framework": "jax", "model": "mlp", "dataset": "digits"}',
     "jax.json: framework='jax': expected one of torch, tensorflow"),
    ("spec.yaml", "framework: torch\n", "spec.yaml: expected a .json or .toml spec file, not '.yaml'"),
    ("huge.json", "HUGE", "huge.json: 2,097,224 bytes is too large for a run spec (at most 1,048,576)"),
    # 2 KB that the parsers recurse into once per bracket (a RecursionError before).
    ("deep.json", '{"framework": ' + "[" * 1000 + "]" * 1000 + "}",
     "deep.json: brackets nested more than 8 deep; a spec's fields hold single values"),
    ("deep.toml", "framework = " + "[" * 1000 + "]" * 1000 + "\n",
     "deep.toml: brackets nested more than 8 deep; a spec's fields hold single values"),
    ("deep_field.json", '{"framework": "torch", "model": "mlp", "dataset": "digits", "epochs": ' + "[" * 900
     + "]" * 900 + "}", "deep_field.json: brackets nested more than 8 deep"),
    # "$" in a pattern matches before a trailing newline; the checks match the whole text.
    ("newline.json", '{"framework": "torch", "model": "mlp", "dataset": "digits", "device": "cpu\\n"}',
     "newline.json: device='cpu\\n': expected 'auto', 'cpu' or 'cuda:N'"),
    ("newline.toml", 'framework = "torch"\nmodel = "cnn"\ndataset = "synthetic_images"\n'
                     'synthetic_shape = "8x8x3\\n"\n', "newline.toml: synthetic_shape='8x8x3\\n': expected '32x32x3'"),
]


@pytest.mark.parametrize("name, text, message", SPEC_CASES, ids=[name for name, _, _ in SPEC_CASES])
def test_a_bad_spec_file_is_named_and_nothing_is_queued(one_run, tmp_path, name, text, message):
    if text == "HUGE":  # made here: a 2 MB parameter would become the test's name, and that an environment variable
        text = '{"framework": "torch", "model": "mlp", "dataset": "digits", "notes": "' + "x" * (2 << 20) + '"}'
    path = tmp_path / name if text is None else spec_file(tmp_path, name, text)
    assert message in refused(one_run, "run", "--spec", str(path))


def test_a_directory_given_as_the_spec_file_is_named(one_run, tmp_path):
    (tmp_path / "specs.json").mkdir()
    stderr = refused(one_run, "run", "--spec", str(tmp_path / "specs.json"))
    assert f"{tmp_path / 'specs.json'} is a directory; expected a .json spec file" in stderr


@pytest.mark.parametrize("kind", ["symlink-to-dev-zero", "fifo"])
def test_a_spec_file_that_is_not_a_regular_file_is_refused_without_reading_it(one_run, tmp_path, kind):
    """/dev/zero never ends (stat says 0 bytes) and a FIFO blocks open() until a writer comes: neither is read."""
    path = tmp_path / "spec.json"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    what = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
    assert f"{path} is {what}; expected a .json spec file" in refused(one_run, "run", "--spec", str(path))


def test_flags_beside_a_spec_file_are_an_error_not_a_silent_override(one_run, tmp_path):
    path = spec_file(tmp_path, "run.json", '{"framework": "torch", "model": "mlp", "dataset": "digits"}')
    stderr = refused(one_run, "run", "--spec", str(path), "--epochs", "3", "--tf32")
    assert f"--spec {path} defines the whole run; drop --epochs, --tf32" in stderr


def hide_module(tmp_path: Path, name: str) -> str:
    """A PYTHONPATH whose sitecustomize makes `import NAME` fail, as on a machine without it."""
    site = tmp_path / f"no-{name}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{name!r}] = None  # import raises\n")
    return str(site)


def test_a_spec_for_a_framework_that_is_not_installed_is_refused_before_queuing(one_run, tmp_path):
    path = spec_file(tmp_path, "tf.json", '{"framework": "tensorflow", "model": "mlp", "dataset": "digits"}')
    env = {"PYTHONPATH": hide_module(tmp_path, "tensorflow")}
    probe = run_cli("run", "--spec", str(tmp_path / "absent.json"), env=env)
    assert "no such file" in probe.stderr  # the CLI itself still starts with tensorflow hidden
    stderr = refused(one_run, "run", "--spec", str(path), env=env)
    assert "tf.json: framework='tensorflow': TensorFlow is not installed in this Python" in stderr
    assert "pip install -r requirements.txt" in stderr
    assert "TensorFlow is not installed" in refused(one_run, "run", "--framework", "both", "--model", "mlp",
                                                    "--dataset", "digits", env=env)


# Database URLs -----------------------------------------------------------------------------------------
def files_under(path: Path) -> list[Path]:
    return sorted(path.rglob("*"))


@pytest.mark.parametrize("make_args, message, hidden", [
    (lambda tmp: ["--db", "mysql://root:secret@db-host/arena"], "'mysql' is not supported", None),
    (lambda tmp: ["--db", f"sqlite:///{tmp / 'a-directory'}"], "a-directory is a directory", None),
    # requirements.txt installs psycopg; a Python without it is made by hiding it.
    (lambda tmp: ["--db", "postgresql+psycopg://arena:secret@db-host/arena"], "driver is not installed", "psycopg"),
    (lambda tmp: ["--db", "not a url"], "cannot be parsed", None),
], ids=["mysql", "directory", "psycopg-missing", "unparseable"])
def test_a_bad_database_url_is_named_with_its_password_masked_and_nothing_is_created(tmp_path, monkeypatch,
                                                                                      make_args, message, hidden):
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))  # whatever it would write stays in tmp_path
    (tmp_path / "a-directory").mkdir()
    env = {"PYTHONPATH": hide_module(tmp_path, hidden)} if hidden else None
    before = files_under(tmp_path)
    result = run_cli(*RUN, *make_args(tmp_path), env=env, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "secret" not in result.stderr and "Traceback" not in result.stderr
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("variables, message", [
    ({"ARENA_DB_URL": "ftp://files.example/arena"}, "'ftp' is not supported"),
    ({"ARENA_DB_URL": "", "ARENA_HOME": "{tmp}/a-file"}, "a-file is a file, not a directory the database can go in"),
], ids=["ARENA_DB_URL=ftp", "ARENA_HOME=a-file"])
def test_a_bad_database_setting_in_the_environment_is_named(tmp_path, monkeypatch, variables, message):
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    (tmp_path / "a-file").write_text("not a directory")
    before = files_under(tmp_path)
    result = run_cli("runs", env={k: v.format(tmp=tmp_path) for k, v in variables.items()}, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert files_under(tmp_path) == before and (tmp_path / "a-file").read_text() == "not a directory"


# Export destinations ------------------------------------------------------------------------------------
def other_database(tmp_path: Path) -> Path:
    """An SQLite database that is not the one the command reads (another project's, say)."""
    path = tmp_path / "other.sqlite"
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        connection.execute("INSERT INTO notes (text) VALUES ('keep me')")
        connection.commit()
    return path


OUT_CASES = {  # --out as given, made from the database's path and tmp_path -> what the message says
    "the-database": (lambda db, tmp: str(db), "{out} is the database {db} this command reads"),
    "a-symlink-to-it": (lambda db, tmp: str(tmp / "link.json"), "{out} is the database {db} this command reads"),
    "a-roundabout-path": (lambda db, tmp: f"{db.parent}/../{db.parent.name}/{db.name}",
                          "{out} is the database {db} this command reads"),
    "its-wal-file": (lambda db, tmp: f"{db}-wal", "{out} is arena.db-wal, a file of the database {db}"),
    "its-journal": (lambda db, tmp: f"{db}-journal", "{out} is arena.db-journal, a file of the database {db}"),
    "another-database": (lambda db, tmp: str(other_database(tmp)), "{out} is an SQLite database"),
    "another-databases-wal": (lambda db, tmp: f"{other_database(tmp)}-wal",
                              "{out} is other.sqlite-wal, a file of the SQLite database {tmp}/other.sqlite"),
}


@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
@pytest.mark.parametrize("case", list(OUT_CASES))
def test_export_never_writes_over_a_database_even_when_forced(one_run, tmp_path, case, force):
    url, run_id = one_run
    db = database_file(url)
    (tmp_path / "link.json").symlink_to(db)
    make_out, message = OUT_CASES[case]
    out = make_out(db, tmp_path)
    other = tmp_path / "other.sqlite"
    others_rows = row_digests(other) if other.exists() else None
    stderr = refused(one_run, "export", str(run_id), "--format", "json", "--out", out, "--db", url,
                     *(["--force"] if force else []))
    assert message.format(out=out, db=db, tmp=tmp_path) in stderr
    assert "an export never writes over a database: choose another --out" in stderr
    if others_rows is not None:
        assert row_digests(other) == others_rows
    assert not Path(f"{other}-wal").exists()


def test_export_replaces_an_existing_file_only_when_told_to(one_run, tmp_path):
    url, run_id = one_run
    out = tmp_path / "runs.json"
    out.write_text("last week's export")
    stderr = refused(one_run, "export", str(run_id), "--format", "json", "--out", str(out), "--db", url)
    assert f"{out} exists; add --force to replace it, or choose another --out" in stderr
    assert out.read_text() == "last week's export"
    # Into a directory: the file it would write there is the one checked.
    (tmp_path / f"arena-runs-{run_id}.json").write_text("kept")
    stderr = refused(one_run, "export", str(run_id), "--format", "json", "--out", str(tmp_path), "--db", url)
    assert f"{tmp_path / f'arena-runs-{run_id}.json'} exists; add --force" in stderr
    for flag in ("--force", "--overwrite"):
        before = row_digests(database_file(url))
        result = run_cli("export", str(run_id), "--format", "json", "--out", str(out), "--db", url, flag)
        assert result.returncode == 0, result.stderr
        assert [run["id"] for run in json.loads(out.read_text())["runs"]] == [run_id]
        assert row_digests(database_file(url)) == before


# Download directories ------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["--dir", "ARENA_DATA_DIR"])
def test_a_file_given_as_the_download_directory_is_named(tmp_path, where):
    a_file = tmp_path / "passwd"
    a_file.write_text("root:x:0:0\n")
    args, env = (["--dir", str(a_file)], None) if where == "--dir" else ([], {"ARENA_DATA_DIR": str(a_file)})
    result = run_cli("download", "mnist", *args, env=env, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert (f"error: cannot create the directory {a_file / 'mnist'}: {a_file} is a file, not a directory. Give --dir "
            f"(or ARENA_DATA_DIR) a directory") in result.stderr
    assert files_under(tmp_path) == [a_file] and a_file.read_text() == "root:x:0:0\n"


@pytest.mark.parametrize("args", [["runs"], ["cancel", "1"], [*RUN, "--epochs", "1"], ["export", "1", "--format", "json",
                                                                          "--out", "{tmp}/x.json"], ["scheduler"]], ids=["runs", "cancel", "run", "export", "scheduler"])
def test_an_unreachable_database_server_is_named_without_a_traceback(args, tmp_path):
    url = "postgresql+psycopg://arena:secret@127.0.0.1:1/arena"  # nothing listens on port 1
    args = [arg.format(tmp=tmp_path) for arg in args]
    result = run_cli(*args, "--db", url, env={"ARENA_HOME": str(tmp_path), "ARENA_SCHEDULER": "off"},
                     timeout=CLI_TIMEOUT_S)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "secret" not in result.stderr
    assert ("error: the database cannot be used: postgresql+psycopg://arena:***@127.0.0.1:1/arena: connection "
            "refused: no server listens there") in result.stderr
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "logs"])  # nothing written anywhere
