"""Run specs from files: `python -m engine run --spec FILE` with FILE a .json or .toml table of RunSpec fields.

A file holds one run: framework, model and dataset, and any other RunSpec field; fields it leaves
out take the model's defaults, as the CLI's flags do. A run's stored spec (RunSpec.to_dict, as the
JSON export holds it) is a valid spec file. Every problem is named with the file, and the spec is
validated by RunSpec before anything is queued.
"""
from __future__ import annotations

import difflib
import json
import os
import stat
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from engine.matrix import check_installed
from engine.spec import RunSpec, SpecError

FORMATS = (".json", ".toml")
REQUIRED = ("framework", "model", "dataset")
MAX_SPEC_BYTES = 1 << 20  # a spec is a few hundred bytes; a bigger file is not one
MAX_NESTING = 8  # a spec's fields hold single values; brackets nested deeper are not a spec (and parsers recurse)


class SpecFileError(ValueError):
    """A spec file that cannot be run: missing, unreadable, malformed or invalid; the message names file and problem."""


def load(path: str | Path) -> RunSpec:
    """The validated spec a .json or .toml file describes; SpecFileError naming the file and the problem."""
    path = Path(path).expanduser()
    values = read(path)
    unknown = sorted(set(values) - {f.name for f in fields(RunSpec)})
    if unknown:
        raise SpecFileError(f"{path}: unknown field {unknown[0]!r}{_suggestion(unknown[0])}; "
                            f"a spec's fields are RunSpec's: {', '.join(f.name for f in fields(RunSpec))}")
    absent = [name for name in REQUIRED if name not in values]
    if absent:
        raise SpecFileError(f"{path}: missing {', '.join(map(repr, absent))}; a spec names at least "
                            f"{', '.join(REQUIRED)}")
    try:
        spec = RunSpec.with_model_defaults(**values)
        check_installed([spec.framework])
    except SpecError as exc:
        raise SpecFileError(f"{path}: {exc}") from None
    return spec


def read(path: Path) -> dict[str, Any]:
    """The file's table of fields, parsed as its suffix says; SpecFileError for anything that is not one."""
    if path.suffix.lower() not in FORMATS:
        raise SpecFileError(f"{path}: expected a {' or '.join(FORMATS)} spec file, not {path.suffix or 'no suffix'!r}")
    if path.is_dir():
        raise SpecFileError(f"{path} is a directory; expected a {path.suffix} spec file")
    try:
        data = _read_bytes(path)
    except FileNotFoundError:
        raise SpecFileError(f"{path}: no such file (working directory {Path.cwd()})") from None
    except OSError as exc:
        raise SpecFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecFileError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r})") \
            from None
    too_deep = SpecFileError(f"{path}: brackets nested more than {MAX_NESTING} deep; a spec's fields hold single "
                             f"values")
    try:
        values = _parse_json(text, path) if path.suffix.lower() == ".json" else _parse_toml(text, path)
    except RecursionError:  # both parsers recurse once per bracket
        raise too_deep from None
    if _nesting(values) > MAX_NESTING:
        raise too_deep
    if not isinstance(values, dict):
        raise SpecFileError(f"{path}: holds a JSON {type(values).__name__}; expected an object of spec fields")
    return values


def _read_bytes(path: Path) -> bytes:
    """At most MAX_SPEC_BYTES of a regular file; SpecFileError for a larger one or a device, FIFO or socket.

    Checked on the opened file, with at most one byte more than the limit read: stat's size says
    nothing of /dev/zero (endless) or a FIFO (open() would wait for a writer, hence O_NONBLOCK).
    """
    handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(handle, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a character device" if stat.S_ISCHR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                    else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "not a regular file")
            raise SpecFileError(f"{path} is {kind}; expected a {path.suffix} spec file")
        data = file.read(MAX_SPEC_BYTES + 1)
        size = os.fstat(file.fileno()).st_size
    if len(data) > MAX_SPEC_BYTES:
        said = f"{size:,} bytes" if size > MAX_SPEC_BYTES else f"more than {MAX_SPEC_BYTES:,} bytes"
        raise SpecFileError(f"{path}: {said} is too large for a run spec (at most {MAX_SPEC_BYTES:,})")
    return data


def _nesting(value: Any) -> int:
    """How deep lists and tables nest in a parsed value (a flat table is 1), without recursing."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)  # NaN and Infinity parse; RunSpec then names the field that is not finite
    except json.JSONDecodeError as exc:
        raise SpecFileError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def _parse_toml(text: str, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
        raise SpecFileError(f"{path}: not valid TOML: {exc}") from None


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name, [f.name for f in fields(RunSpec)], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
