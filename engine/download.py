"""`python -m engine download DATASET`: fetch a file dataset and keep only files whose MD5 matches.

The one place Arena touches the network for data, and only when asked: loading never downloads.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Optional

from engine.datafiles import CIFAR_PYTHON_FOLDER, ENV_DATA_DIR, FILE_DATASETS, OFFICIAL_MD5, data_dir, md5_of

ENV_MIRROR = "ARENA_DATA_MIRROR"
OFFICIAL_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
}
TIMEOUT_S = 60  # per connection attempt and per read, not for the whole file
CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """A download failed or was refused; the message names the URL or file and what to do instead."""


def download(
    dataset: str,
    directory: Optional[str | Path] = None,
    mirror: Optional[str] = None,
    checksums: Mapping[str, Mapping[str, str]] = OFFICIAL_MD5,
    report: Callable[[str], None] = print,
) -> Path:
    """Fetch a dataset into DIRECTORY/DATASET (default: the data directory) and return that path.

    Every file is checked against `checksums[dataset]` (path -> MD5) before it is kept; files already
    present with the right MD5 are not fetched again; archives stay packed (runs read them as they are).
    `report` receives one line per thing done.
    """
    if dataset not in FILE_DATASETS:
        raise DownloadError(f"dataset {dataset!r} is not downloadable; expected one of {', '.join(FILE_DATASETS)}")
    table = dict(checksums[dataset])
    target = (Path(directory).expanduser() if directory else data_dir()) / dataset
    base = _base_url(dataset, mirror)
    _make_directory(target)
    by_hand = f"copy {', '.join(sorted(table))} by hand into {target}"
    for name, md5 in table.items():
        if _verified(target / name, md5, report):
            report(f"kept {target / name} (already present, MD5 verified)")
        else:
            _fetch(base + name, target / name, md5, by_hand, report)
    if dataset == "cifar10" and (target / CIFAR_PYTHON_FOLDER).is_dir():
        report(f"{target / CIFAR_PYTHON_FOLDER} holds CIFAR-10's python version (pickles), which Arena no longer "
               f"reads: delete it")
    return target


def _make_directory(target: Path) -> None:
    """Create the dataset's directory; DownloadError naming the path when it cannot be (a file in the way, no
    permission)."""
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in [target, *target.parents] if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a directory" if blocker is not None else (exc.strerror or str(exc))
        raise DownloadError(f"cannot create the directory {target}: {why}. Give --dir (or {ENV_DATA_DIR}) a "
                            f"directory") from None


def _base_url(dataset: str, mirror: Optional[str]) -> str:
    """The base URL files are fetched from: --mirror, else ARENA_DATA_MIRROR, else the official site."""
    base = (mirror or os.environ.get(ENV_MIRROR) or OFFICIAL_URLS[dataset]).replace("{dataset}", dataset)
    scheme = urllib.parse.urlparse(base).scheme
    if scheme not in ("http", "https", "file"):
        raise DownloadError(f"mirror {base!r}: expected an http://, https:// or file:// base URL")
    return base if base.endswith("/") else base + "/"


def _verified(path: Path, md5: str, report: Callable[[str], None]) -> bool:
    """Whether a file is already present with the expected MD5 (so it needs no download)."""
    if not path.is_file():
        return False
    actual = md5_of(path)
    if actual != md5:
        report(f"will replace {path}: its MD5 {actual} is not the expected {md5}")
    return actual == md5


def _fetch(url: str, destination: Path, md5: str, by_hand: str, report: Callable[[str], None]) -> None:
    """Download url to destination through a temporary file that is renamed only once its MD5 matches."""
    try:
        handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    except OSError as exc:
        raise DownloadError(f"cannot write into {destination.parent}: {exc.strerror or exc}") from None
    try:
        digest, size = hashlib.md5(), 0
        with os.fdopen(handle, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
            except urllib.error.HTTPError as exc:
                raise _network_error(url, f"HTTP {exc.code} {exc.reason}", by_hand) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                raise _network_error(url, str(getattr(exc, "reason", exc)), by_hand) from None
            with response:
                while True:
                    try:
                        chunk = response.read(CHUNK_BYTES)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _network_error(url, f"connection lost after {size} bytes: {exc}", by_hand) from None
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        if digest.hexdigest() != md5:
            raise DownloadError(
                f"{url}: MD5 {digest.hexdigest()} does not match the expected {md5} ({size} bytes); not kept. "
                f"The server sent a different or damaged file: try again, or use --mirror URL."
            )
        os.replace(temporary, destination)
        report(f"fetched {url} -> {destination} ({size:,} bytes, MD5 verified)")
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _network_error(url: str, reason: str, by_hand: str) -> DownloadError:
    return DownloadError(
        f"could not fetch {url}: {reason}. Use --mirror URL (or {ENV_MIRROR}) to fetch from a copy of the files, "
        f"or {by_hand}."
    )


def main(argv: list[str]) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m engine download",
        description="Fetch a dataset's official files, verify their MD5s and keep them in the data directory.",
    )
    parser.add_argument("dataset", choices=FILE_DATASETS)
    parser.add_argument("--dir", help=f"data directory (default: ${ENV_DATA_DIR}, else $ARENA_HOME/data); "
                                      f"files go to DIR/DATASET/")
    parser.add_argument("--mirror", help=f"base URL to fetch from instead of the official site (also ${ENV_MIRROR}); "
                                         f"'{{dataset}}' in it becomes the dataset name")
    args = parser.parse_args(argv)
    try:
        target = download(args.dataset, args.dir, args.mirror)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.dataset} is ready in {target}")
    if args.dir and Path(args.dir).expanduser().resolve() != data_dir().resolve():
        print(f"runs read {data_dir()}: set {ENV_DATA_DIR}={Path(args.dir).expanduser()} so that they find it")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
