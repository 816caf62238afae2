"""`python -m engine download`: files come from a real local HTTP server and are kept only when their MD5 matches."""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from engine.data import load
from engine.datafiles import CIFAR_ARCHIVE, CIFAR_PYTHON_FOLDER, OFFICIAL_MD5, DataFileError
from engine.download import DownloadError, download
from tests.conftest import REPO_ROOT
from tests.engine.test_datafiles import make_tar_gz, write_cifar, write_mnist


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class _QuietHandler(SimpleHTTPRequestHandler):
    requested: list[str]

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self.requested.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/served; yields (base URL, served dir, requested paths)."""
    served = tmp_path / "served"
    served.mkdir()
    requested: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requested": requested})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, requested
    httpd.shutdown()
    httpd.server_close()


def mnist_checksums(directory: Path) -> dict:
    return {"mnist": {name: md5(directory / name) for name in OFFICIAL_MD5["mnist"]}}


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def test_download_fetches_verifies_and_the_files_load(server, tmp_path, monkeypatch):
    url, served, requested = server
    raw = write_mnist(served)
    checksums = mnist_checksums(served)
    lines: list[str] = []
    target = download("mnist", tmp_path / "data", url, checksums=checksums, report=lines.append)
    assert target == tmp_path / "data" / "mnist"
    assert [p.name for p in files_under(target)] == sorted(checksums["mnist"])  # nothing else, no .part left
    assert sum("fetched" in line and "MD5 verified" in line for line in lines) == 4
    monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ARENA_DATA_VERIFY", "0")
    np.testing.assert_array_equal(load("mnist", 0).y_test, raw["t10k-labels-idx1-ubyte"])

    requested.clear()
    lines.clear()
    download("mnist", tmp_path / "data", url, checksums=checksums, report=lines.append)
    assert requested == [] and sum("already present, MD5 verified" in line for line in lines) == 4


def test_a_present_file_with_the_wrong_md5_is_fetched_again(server, tmp_path):
    url, served, _ = server
    write_mnist(served)
    checksums = mnist_checksums(served)
    stale = tmp_path / "data" / "mnist" / "train-labels-idx1-ubyte.gz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    lines: list[str] = []
    download("mnist", tmp_path / "data", url, checksums=checksums, report=lines.append)
    assert md5(stale) == checksums["mnist"][stale.name]
    assert any(line.startswith(f"will replace {stale}") for line in lines)


def test_mirror_may_name_the_dataset_and_defaults_to_the_environment(server, tmp_path, monkeypatch):
    url, served, _ = server
    write_mnist(served / "mnist")
    monkeypatch.setenv("ARENA_DATA_MIRROR", url + "{dataset}/")
    download("mnist", tmp_path / "data", checksums=mnist_checksums(served / "mnist"), report=lambda line: None)
    assert len(files_under(tmp_path / "data" / "mnist")) == 4


def cifar_archive(served: Path) -> dict:
    """cifar-10-binary.tar.gz of small batches in served/; returns the checksum table that matches it."""
    write_cifar(served)
    return {"cifar10": {CIFAR_ARCHIVE: md5(served / CIFAR_ARCHIVE)}}


def test_cifar_archive_is_fetched_verified_and_kept_packed(server, tmp_path, monkeypatch):
    url, served, requested = server
    checksums = cifar_archive(served)
    (tmp_path / "data" / "cifar10" / CIFAR_PYTHON_FOLDER).mkdir(parents=True)  # left from an older Arena
    lines: list[str] = []
    target = download("cifar10", tmp_path / "data", url, checksums=checksums, report=lines.append)
    assert [p.relative_to(target).as_posix() for p in files_under(target)] == [CIFAR_ARCHIVE]  # nothing unpacked
    assert md5(target / CIFAR_ARCHIVE) == checksums["cifar10"][CIFAR_ARCHIVE]
    assert f"{target / CIFAR_PYTHON_FOLDER} holds CIFAR-10's python version (pickles)" in lines[-1]
    monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ARENA_DATA_VERIFY", "0")
    assert load("cifar10", 0).x_train.shape == (15, 32, 32, 3)

    requested.clear()
    download("cifar10", tmp_path / "data", url, checksums=checksums, report=lines.append)
    assert requested == [] and any("already present" in line for line in lines[-2:])


def test_an_archive_is_never_unpacked_so_a_member_cannot_escape(server, tmp_path, monkeypatch):
    url, served, _ = server
    make_tar_gz(served / CIFAR_ARCHIVE, {"../escaped": b"x"}, {"cifar-10-batches-bin/link": "/etc/passwd"})
    checksums = {"cifar10": {CIFAR_ARCHIVE: md5(served / CIFAR_ARCHIVE)}}
    target = download("cifar10", tmp_path / "data", url, checksums=checksums, report=lambda line: None)
    assert files_under(tmp_path) == [target / CIFAR_ARCHIVE] + sorted(files_under(served))  # no escaped file
    monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ARENA_DATA_VERIFY", "0")
    with pytest.raises(DataFileError, match=r"data_batch_1.bin.* not in the archive; it is not CIFAR-10's binary"):
        load("cifar10", 0)


def test_http_errors_and_bad_mirrors_name_the_url(server, tmp_path):
    url, served, _ = server
    with pytest.raises(DownloadError, match=rf"could not fetch {url}train-images-idx3-ubyte.gz: HTTP 404"):
        download("mnist", tmp_path / "data", url, report=lambda line: None)
    with pytest.raises(DownloadError, match=r"mirror 'ftp://example.org/': expected an http://, https:// or file://"):
        download("mnist", tmp_path / "data", "ftp://example.org/")
    with pytest.raises(DownloadError, match=r"dataset 'digits' is not downloadable"):
        download("digits", tmp_path / "data")


def run_download(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ARENA_DATA_MIRROR"}
    return subprocess.run([sys.executable, "-m", "engine.download", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, env=env)


def test_command_refuses_files_that_do_not_match_the_official_md5s_and_keeps_none(server, tmp_path):
    url, served, _ = server
    write_mnist(served)  # real IDX files, but not the official ones
    out = run_download("mnist", "--mirror", url, "--dir", str(tmp_path / "data"))
    assert out.returncode == 1, out.stdout + out.stderr
    official = OFFICIAL_MD5["mnist"]["train-images-idx3-ubyte.gz"]
    assert f"{url}train-images-idx3-ubyte.gz: MD5 {md5(served / 'train-images-idx3-ubyte.gz')}" in out.stderr
    assert f"does not match the expected {official}" in out.stderr and "not kept" in out.stderr
    assert files_under(tmp_path / "data") == []


def test_command_reports_an_unreachable_mirror_clearly(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on: bound, then released
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = run_download("cifar10", "--mirror", f"http://127.0.0.1:{port}/", "--dir", str(tmp_path / "data"))
    assert out.returncode == 1
    assert f"could not fetch http://127.0.0.1:{port}/cifar-10-binary.tar.gz" in out.stderr
    assert "--mirror" in out.stderr
    assert f"copy cifar-10-binary.tar.gz by hand into {tmp_path / 'data' / 'cifar10'}" in out.stderr
    assert files_under(tmp_path / "data") == []


def test_command_help_names_the_datasets():
    out = run_download("--help")
    assert out.returncode == 0 and "python -m engine download" in out.stdout
    assert "{mnist,fashion_mnist,cifar10}" in out.stdout


def test_data_modules_import_no_framework():
    code = ("import sys, engine.data, engine.datafiles, engine.download\n"
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
