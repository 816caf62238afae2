"""Bad input at the CLI's boundaries: flags, spec files, environment variables and database URLs.

Each case runs the real `python -m engine` and checks that it exits 2 with a message naming the
problem, and that nothing was stored: the database still holds exactly the one run it held before.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from db import queries
from db.models import FINISHED
from db.session import make_sessionmaker
from engine.spec import RunSpec
from tests.conftest import run_cli

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


def refused(one_run, *args: str, env: dict | None = None) -> str:
    """Run the CLI, assert it refused with exit status 2 and stored nothing; return its stderr."""
    url, run_id = one_run
    result = run_cli(*args, env=env, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert stored_ids(url) == [run_id]
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
    (RUN + ["--mode", "jit"], "modes='jit': expected some of compiled, eager, graph, xla"),
    (RUN + ["--optimizer", "rmsprop"], "optimizer='rmsprop': expected one of sgd, momentum, adam"),
    (RUN + ["--seeds", "0-100000"], "more than 200 seeds"),
    (["run", "--framework", "torch", "--model", "resnet", "--dataset", "synthetic_images",
      "--synthetic-shape", "4096x4096x3"], "synthetic_shape='4096x4096x3': with 4,096 training samples"),
    (["run", "--framework", "torch", "--dataset", "digits"], "give --model (framework, model and dataset name a run)"),
]


def flag_case_id(args: list[str]) -> str:
    return " ".join(args[len(RUN):] if args[:len(RUN)] == RUN else args[1:])


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
