"""The checks behind the boundaries, on real files: database URLs (db/urls.py), spec files (engine/specfile.py),
spec patterns (engine/spec.py), and run ids and numbers read from text (engine/run_ids.py, ui/url_state.py).

The CLI and the Launch form run these same checks end to end in tests/engine/test_bad_inputs_cli.py
and tests/pages/test_bad_inputs_form.py.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import pytest

from db.urls import DatabaseURLError, masked, validate
from engine.run_ids import MAX_RUN_ID, parse_run_id
from engine.spec import RunSpec, SpecError
from engine.specfile import SpecFileError, load
from analysis import run_ids
from ui import url_state


def files_under(path: Path) -> list[Path]:
    return sorted(path.rglob("*"))


# Database URLs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, message", [
    ("mysql://root:secret@db-host/arena",
     "database URL 'mysql://root:***@db-host/arena': 'mysql' is not supported; Arena stores runs in SQLite or "
     "PostgreSQL"),
    ("ftp://files.example/arena", "database URL 'ftp://files.example/arena': 'ftp' is not supported"),
    ("sqlite+aiosqlite:///arena.db", "'sqlite+aiosqlite' is not supported"),
    ("postgresql://arena:secret@db-host/arena",
     "Arena talks to PostgreSQL through psycopg 3; write postgresql+psycopg://arena:***@db-host/arena"),
    ("not a url", "database URL 'not a url' cannot be parsed; expected dialect+driver://..."),
    ("postgresql://arena:secret@db-host:port/arena", "database URL 'postgresql://arena:***@db-host:port/arena' "
                                                     "cannot be parsed"),
    ("sqlite://", "is an in-memory SQLite database: it lives in one process, so the runner processes would never"),
    ("sqlite:///:memory:", "is an in-memory SQLite database"),
    ("sqlite:///file:memdb1?mode=memory&cache=shared&uri=true",
     "has a URI filename (file:...): Arena opens SQLite databases by path"),
    ("sqlite:///arena.db?timeout=1", "has parameters (timeout): Arena opens SQLite databases by path"),
], ids=["mysql", "ftp", "async-sqlite-driver", "postgresql-without-psycopg", "words", "port-not-a-number",
        "sqlite-memory", "sqlite-memory-named", "sqlite-uri-in-memory", "sqlite-parameters"])
def test_an_unsupported_or_unparseable_url_is_named_with_the_password_masked(url, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatabaseURLError) as caught:
        validate(url)
    assert message in str(caught.value) and "secret" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # nothing created, not even a file named like the URI


def test_a_postgresql_url_without_its_driver_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as in a Python without it (requirements.txt installs it)
    with pytest.raises(DatabaseURLError, match=r"'postgresql\+psycopg://arena:\*\*\*@db-host/arena': the psycopg "
                                               r"driver is not installed .* `pip install \"psycopg\[binary\]\"`"):
        validate("postgresql+psycopg://arena:secret@db-host/arena")


def test_a_directory_where_the_database_file_should_be_is_named(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(DatabaseURLError, match=rf"{tmp_path / 'runs'} is a directory; name the database file inside "
                                               rf"it, like sqlite:///{tmp_path / 'runs' / 'arena.db'}"):
        validate(f"sqlite:///{tmp_path / 'runs'}")
    assert files_under(tmp_path) == [tmp_path / "runs"]


def test_a_file_where_a_directory_of_the_path_should_be_is_named(tmp_path):
    (tmp_path / "home").write_text("ARENA_HOME pointing at a file")
    with pytest.raises(DatabaseURLError, match=rf"{tmp_path / 'home'} is a file, not a directory the database can go "
                                               r"in\. Give --db or ARENA_DB_URL another URL \(or ARENA_HOME"):
        validate(f"sqlite:///{tmp_path / 'home' / 'arena.db'}")
    with pytest.raises(DatabaseURLError, match=rf"{tmp_path / 'home'} is a file, so the directory "
                                               rf"{tmp_path / 'home' / 'deeper'} cannot be created"):
        validate(f"sqlite:///{tmp_path / 'home' / 'deeper' / 'arena.db'}")
    assert files_under(tmp_path) == [tmp_path / "home"]


def test_a_file_that_is_not_an_sqlite_database_is_named(tmp_path):
    (tmp_path / "notes.db").write_text("these are my notes")
    with pytest.raises(DatabaseURLError, match=r"notes.db exists and is not an SQLite database \(SQLite says: "
                                               r"file is not a database\)"):
        validate(f"sqlite:///{tmp_path / 'notes.db'}")
    assert (tmp_path / "notes.db").read_text() == "these are my notes"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_directory_without_write_permission_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(DatabaseURLError, match=rf"no permission to create the directory {locked / 'arena'} in "
                                               rf"{locked}"):
        validate(f"sqlite:///{locked / 'arena' / 'arena.db'}")


def test_good_urls_pass_unchanged_and_validating_creates_nothing(tmp_path):
    new = f"sqlite:///{tmp_path / 'not' / 'yet' / 'arena.db'}"
    assert validate(new) == new and files_under(tmp_path) == []  # make_engine creates it, not the check
    with closing(sqlite3.connect(tmp_path / "arena.db")) as connection:
        connection.execute("CREATE TABLE t (x)")
    (tmp_path / "empty.db").touch()  # SQLite makes an empty file a database
    for url in (f"sqlite:///{tmp_path / 'arena.db'}", f"sqlite+pysqlite:///{tmp_path / 'empty.db'}"):
        assert validate(url) == url


def test_masked_hides_a_password_even_in_a_url_that_does_not_parse():
    assert masked("postgresql+psycopg://arena:s3cret@db-host/arena") == "postgresql+psycopg://arena:***@db-host/arena"
    assert masked("postgresql://arena:s3cret@db-host:port/arena") == "postgresql://arena:***@db-host:port/arena"


# Spec files ----------------------------------------------------------------------------------------------
def test_a_stored_spec_is_a_spec_file(tmp_path):
    spec = RunSpec.with_model_defaults("tensorflow", "cnn", "synthetic_images", epochs=2, mode="xla", seed=7)
    (tmp_path / "run.json").write_text(json.dumps(spec.to_dict()))
    assert load(tmp_path / "run.json") == spec
    (tmp_path / "run.toml").write_text('framework = "torch"\nmodel = "powerlaw"\ndataset = "powerlaw"\n')
    assert load(tmp_path / "run.toml") == RunSpec.with_model_defaults("torch", "powerlaw", "powerlaw")


@pytest.mark.parametrize("name, content, message", [
    ("list.json", b'[{"framework": "torch"}]', "list.json: holds a JSON list; expected an object of spec fields"),
    ("few.toml", b'model = "mlp"\n', "few.toml: missing 'framework', 'dataset'; a spec names at least framework"),
    ("latin1.json", b'{"framework": "torch", "notes": "caf\xe9"}', "latin1.json: not UTF-8 text (byte 36 is b'\\xe9')"),
    ("models.json", b'{"framework": "torch", "model": ["mlp", "cnn"], "dataset": "digits"}',
     "models.json: model=['mlp', 'cnn']: expected one of mlp, cnn"),
    ("nan.json", b'{"framework": "torch", "model": "mlp", "dataset": "digits", "lr": NaN}',
     "nan.json: lr=nan: must be finite"),
    ("batch.toml", b'framework = "torch"\nmodel = "mlp"\ndataset = "digits"\nbatch_size = 5000\n',
     "batch.toml: batch_size=5000: larger than the digits training set (1437 samples)"),
    ("mode.json", b'{"framework": "torch", "model": "mlp", "dataset": "digits", "mode": "xla"}',
     "mode.json: mode='xla': torch runs in eager, compiled"),
    ("table.toml", b'[run]\nframework = "torch"\n', "table.toml: unknown field 'run'"),
], ids=lambda value: value if isinstance(value, str) and "." in value and " " not in value else None)
def test_a_bad_spec_file_says_what_is_wrong_with_it(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SpecFileError) as caught:
        load(tmp_path / name)
    assert str(caught.value).startswith(f"{tmp_path / name}: ") and message in str(caught.value)


# Patterns and numbers from text ------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("device", "cpu\n"), ("device", "auto\n"), ("device", "cuda:0\n"), ("device", "cuda:٣"),
    ("device", "cuda:" + "9" * 5000), ("synthetic_shape", "32x32x3\n"), ("synthetic_shape", "٣٢x٣٢x٣"),
], ids=["cpu-newline", "auto-newline", "cuda-newline", "cuda-arabic-digit", "cuda-5000-digits", "shape-newline",
        "shape-arabic-digits"])
def test_spec_patterns_match_the_whole_value_in_ascii_digits(field, value):
    dataset, model = ("synthetic_images", "cnn") if field == "synthetic_shape" else ("digits", "mlp")
    with pytest.raises(SpecError) as caught:
        RunSpec("torch", model, dataset, **{field: value})
    assert caught.value.field == field and str(caught.value).startswith(f"{field}={value!r}: expected")


@pytest.mark.parametrize("text, message", [
    ("0", "'0' is not a whole number >= 1"), ("-3", "'-3' is not a whole number >= 1"),
    ("²", "'²' is not a whole number >= 1"), ("٣", "'٣' is not a whole number >= 1"),
    ("1_0", "'1_0' is not a whole number >= 1"), ("2147483648", "'2147483648' is too large: at most 2147483647"),
    ("9" * 30, f"'{'9' * 30}' is too large"), ("9" * 5000, f"'{'9' * 40}'... (5,000 characters) is too large"),
])
def test_a_run_id_is_ascii_digits_within_what_the_database_holds(text, message):
    with pytest.raises(ValueError) as caught:
        parse_run_id(text)
    assert str(caught.value) == message or message in str(caught.value)
    assert parse_run_id("0042") == 42 and parse_run_id(str(MAX_RUN_ID)) == MAX_RUN_ID


def test_run_ids_in_a_link_are_kept_and_the_rest_named():
    assert run_ids.split_run_ids("3,²,#4,x,3," + "9" * 30) == ([3, 4], ["²", "x", "9" * 30])
    assert "runs=²,x are not run ids" in run_ids.not_run_ids_message("runs", ["²", "x"])


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "²", "1_0", "0x10", ""])
def test_a_number_in_a_link_is_a_finite_plain_decimal(text):
    with pytest.raises(ValueError):
        url_state.parse_float(text)
    assert url_state.parse_float("0.25") == 0.25 and url_state.parse_float("1e-3") == 0.001


@pytest.mark.parametrize("text", ["²", "٣", "1.5", "1" * 16, "nan", ""])
def test_a_whole_number_in_a_link_is_ascii_digits(text):
    with pytest.raises(ValueError):
        url_state.parse_int(text)
    assert url_state.parse_int("12") == 12


# Spec files that are not files -----------------------------------------------------------------------------
def test_a_spec_file_past_the_limit_or_a_device_is_refused(tmp_path, monkeypatch):
    """The limit holds for what is read (limit + 1 bytes at most), whatever stat says."""
    from engine import specfile

    path = tmp_path / "run.json"
    path.write_text('{"framework": "torch", "model": "mlp", "dataset": "digits"}' + " " * 100)
    monkeypatch.setattr(specfile, "MAX_SPEC_BYTES", 60)
    with pytest.raises(SpecFileError, match=r"run.json: 1\d\d bytes is too large for a run spec \(at most 60\)"):
        load(path)
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    with pytest.raises(SpecFileError, match=r"zero.json is a character device; expected a .json spec file"):
        load(tmp_path / "zero.json")


@pytest.mark.parametrize("address", ["headnode:²", "headnode:٣٣", "headnode:99999999", "headnode:0", "headnode:"])
def test_a_ray_address_whose_port_is_not_one_is_named(address):
    from engine.executors import ray as arena_ray

    with pytest.raises(RuntimeError, match=rf"ARENA_RAY_ADDRESS='{address}': expected host:port"):
        arena_ray._check_reachable(address, timeout_s=0.1)
