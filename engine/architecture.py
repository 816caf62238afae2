"""A model's layers in both frameworks side by side, and the source of both implementations.

Layer tables come from engine/backends/layers_worker.py, one child process per framework (this
module imports neither), and are cached on disk under $ARENA_HOME/cache/architecture, so only the
first look at a model pays for a framework import. Sources are read from the zoo files with
`ast`, without importing them.
"""
from __future__ import annotations

import ast
import difflib
import hashlib
import io
import json
import os
import subprocess
import sys
import tokenize
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

from engine import PROJECT_ROOT, child_env
from engine.catalog import DATASETS, FRAMEWORKS, MODELS, framework_label
from engine.spec import RunSpec

WORKER_TIMEOUT_S = 180
WORKER_MODULE = "engine.backends.layers_worker"
CACHE_FORMAT = 1  # bump when the worker's JSON changes: older cache files are then recomputed
# The installed versions a cached table depends on (Keras names and counts TensorFlow's layers).
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {"torch": ("torch",), "tensorflow": ("tensorflow", "keras")}
ZOO_FILES: dict[str, Path] = {fw: PROJECT_ROOT / "engine" / "backends" / f"{fw}_models.py" for fw in FRAMEWORKS}
BUILDER = "build_model"  # each zoo's dispatch: one function that branches on the model name
# Files whose edits change a table; their digest is part of the cache key.
_TABLE_SOURCES = (PROJECT_ROOT / "engine" / "weights.py", PROJECT_ROOT / "engine" / "backends" / "layers_worker.py")


@dataclass(frozen=True)
class LayerRow:
    """One layer as its framework reports it; output_shape has the batch dimension as None."""

    layer: str
    type: str
    output_shape: Optional[tuple[Optional[int], ...]]
    params: int  # trainable scalars
    non_trainable: int  # frozen parameters and moving statistics


@dataclass(frozen=True)
class LayerTable:
    framework: str
    model: str
    dataset: str
    input_shape: tuple[int, ...]
    num_outputs: int
    layout: Optional[str]  # image models: "NCHW" (PyTorch) or "NHWC" (TensorFlow); None otherwise
    framework_version: str
    rows: tuple[LayerRow, ...]
    total_params: int
    total_non_trainable: int
    from_cache: bool = field(default=False, compare=False)  # read from disk, no worker started

    def parameterised(self) -> tuple[LayerRow, ...]:
        """The rows holding trainable parameters, in order."""
        return tuple(row for row in self.rows if row.params)


class ArchitectureError(RuntimeError):
    """A layers worker failed; failures maps each framework that failed to a message naming model and fix."""

    def __init__(self, failures: dict[str, str]):
        self.failures = failures
        super().__init__("; ".join(failures.values()))


def layer_table(framework: str, model: str, dataset: str) -> LayerTable:
    """The model's layers as the framework builds them for the dataset's input shape (cached on disk)."""
    return layer_tables([(framework, model, dataset)])[0]


def layer_tables(cases: Sequence[tuple[str, str, str]]) -> list[LayerTable]:
    """layer_table() for several (framework, model, dataset) cases: one worker per framework, run at once.

    Tables a successful worker computed are cached even when another framework's worker fails.
    """
    requests = [_request(*case) for case in cases]  # every case validated before a worker starts
    found: dict[int, LayerTable] = {}
    for index, request in enumerate(requests):
        cached = _read_cache(request)
        if cached is not None:
            found[index] = cached
    missing = {fw: [i for i, r in enumerate(requests) if r["framework"] == fw and i not in found] for fw in FRAMEWORKS}
    computed, failures = _run_workers({fw: [requests[i] for i in idx] for fw, idx in missing.items() if idx})
    for fw, tables in computed.items():
        for index, table in zip(missing[fw], tables, strict=True):
            _write_cache(requests[index], table)
            found[index] = _table(requests[index], table, from_cache=False)
    if failures:
        raise ArchitectureError(failures)
    return [found[index] for index in range(len(requests))]


def _request(framework: str, model: str, dataset: str) -> dict:
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}")
    _check_model(model)
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if dataset not in MODELS[model].datasets:
        raise ValueError(f"dataset {dataset!r} does not fit model {model!r}; it trains on "
                         f"{', '.join(MODELS[model].datasets)}")
    spec = RunSpec(framework=framework, model=model, dataset=dataset)  # the shape a run would get
    return {"framework": framework, "model": model, "dataset": dataset,
            "input_shape": list(spec.input_shape()), "num_outputs": spec.num_outputs()}


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


# Disk cache ------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """$ARENA_HOME/cache/architecture."""
    from db.session import arena_home  # only here: layer tables need no database stack

    return arena_home() / "cache" / "architecture"


def cache_path(framework: str, model: str, dataset: str) -> Path:
    """Where the table is cached: <framework>-<model>-<shape>-<outputs>.json."""
    request = _request(framework, model, dataset)
    return _cache_path(request)


def _cache_path(request: dict) -> Path:
    # The number of outputs is in the name too: one shape may carry different class counts.
    name = f"{request['framework']}-{request['model']}-{_shape_text(request['input_shape'])}-{request['num_outputs']}"
    return cache_dir() / f"{name}.json"


def _cache_key(request: dict) -> dict:
    framework = request["framework"]
    digest = hashlib.sha256()
    for path in (ZOO_FILES[framework], *_TABLE_SOURCES):  # an edited zoo invalidates its tables
        digest.update(path.read_bytes())
    return {"format": CACHE_FORMAT, "versions": {dist: _version(dist) for dist in DISTRIBUTIONS[framework]},
            "sources": digest.hexdigest(), "model": request["model"], "input_shape": request["input_shape"],
            "num_outputs": request["num_outputs"]}


def _version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # the worker then says what is missing
        return None


def _read_cache(request: dict) -> Optional[LayerTable]:
    try:
        stored = json.loads(_cache_path(request).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, or half-written by a process that died
        return None
    if not isinstance(stored, dict) or stored.get("key") != _cache_key(request):
        return None
    try:
        return _table(request, stored["table"], from_cache=True)
    except (KeyError, TypeError):
        return None


def _write_cache(request: dict, table: dict) -> None:
    path = _cache_path(request)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"key": _cache_key(request), "table": table}), encoding="utf-8")
    os.replace(temporary, path)  # atomic: another session never reads half a file


def _table(request: dict, table: dict, from_cache: bool) -> LayerTable:
    rows = tuple(LayerRow(row["layer"], row["type"],
                          None if row["output_shape"] is None else tuple(row["output_shape"]),
                          int(row["params"]), int(row["non_trainable"])) for row in table["rows"])
    return LayerTable(request["framework"], request["model"], request["dataset"], tuple(request["input_shape"]),
                      request["num_outputs"], table["layout"], table["framework_version"], rows,
                      int(table["total_params"]), int(table["total_non_trainable"]), from_cache)


# Workers ---------------------------------------------------------------------------------------
def worker_command(framework: str, requests: Sequence[dict]) -> list[str]:
    """The command line that lists the requests' layers in one framework."""
    command = [sys.executable, "-m", WORKER_MODULE, "--framework", framework]
    for request in requests:
        command += ["--model", request["model"], "--input-shape", ",".join(map(str, request["input_shape"])),
                    "--classes", str(request["num_outputs"])]
    return command


def _run_workers(jobs: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Start every framework's worker, then collect: (tables per framework, failure message per framework)."""
    procs = {fw: subprocess.Popen(worker_command(fw, requests), cwd=PROJECT_ROOT, env=child_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for fw, requests in jobs.items()}
    tables, failures = {}, {}
    try:
        for fw, proc in procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=WORKER_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                failures[fw] = _failure(fw, jobs[fw], f"no answer after {WORKER_TIMEOUT_S} s")
                continue
            if proc.returncode != 0:
                failures[fw] = _failure(fw, jobs[fw], _last_line(stderr) or f"exit status {proc.returncode}")
                continue
            try:
                tables[fw] = json.loads(stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                failures[fw] = _failure(fw, jobs[fw], f"no table printed (stdout ends {stdout[-200:]!r})")
    finally:
        for proc in procs.values():  # a failed or timed-out worker must not outlive the call
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return tables, failures


def _failure(framework: str, requests: Sequence[dict], reason: str) -> str:
    """What failed, why, and where to look: the message the dashboard shows."""
    cases = ", ".join(f"{r['model']!r} on {r['dataset']} ({_shape_text(r['input_shape'])})" for r in requests)
    command = " ".join(["python", *worker_command(framework, requests)[1:]])
    return (f"{framework_label(framework)} could not list the layers of {cases}: {reason}. Check that {framework} "
            f"imports in {sys.executable}; `{command}` in {PROJECT_ROOT} shows the whole error")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# Side by side ----------------------------------------------------------------------------------
# Type names that differ between the frameworks for the same kind of layer.
_KINDS = {"linear": "dense", "maxpool2d": "maxpooling2d", "nhwcflatten": "flatten",
          "batchnorm2d": "batchnormalization", "layernorm": "layernormalization"}


def _kind(row: LayerRow) -> str:
    name = row.type.lower().lstrip("_")
    return _KINDS.get(name, name)


def side_by_side(left: LayerTable, right: LayerTable) -> list[dict]:
    """Rows pairing the two tables' layers: the i-th parameterised layer with the i-th, layers without
    parameters matched by kind in between (a layer one framework lacks gets a row of its own).

    Each row has "<framework>_layer", "_type", "_output_shape", "_params", "_non_trainable" for
    both tables (None on the side without that layer) and "params_differ": the trainable counts
    differ, or a layer with parameters has no counterpart.
    """
    if left.framework == right.framework:
        raise ValueError(f"side_by_side needs two frameworks; both tables are {left.framework!r}")
    pairs: list[tuple[Optional[LayerRow], Optional[LayerRow]]] = []
    a_start = b_start = 0
    anchors = zip([i for i, r in enumerate(left.rows) if r.params], [i for i, r in enumerate(right.rows) if r.params])
    for a_anchor, b_anchor in [*anchors, (len(left.rows), len(right.rows))]:
        pairs += _match(left.rows[a_start:a_anchor], right.rows[b_start:b_anchor])
        if a_anchor < len(left.rows):
            pairs.append((left.rows[a_anchor], right.rows[b_anchor]))
        a_start, b_start = a_anchor + 1, b_anchor + 1
    return [_side_row(left.framework, a, right.framework, b) for a, b in pairs]


def _match(a: Sequence[LayerRow], b: Sequence[LayerRow]) -> list[tuple[Optional[LayerRow], Optional[LayerRow]]]:
    """Pair the layers of two runs of rows by kind; unmatched ones stand alone, left side first."""
    matcher = difflib.SequenceMatcher(None, [_kind(r) for r in a], [_kind(r) for r in b], autojunk=False)
    pairs: list[tuple[Optional[LayerRow], Optional[LayerRow]]] = []
    for tag, a1, a2, b1, b2 in matcher.get_opcodes():
        if tag == "equal":
            pairs += zip(a[a1:a2], b[b1:b2])
        else:
            pairs += [(row, None) for row in a[a1:a2]] + [(None, row) for row in b[b1:b2]]
    return pairs


def _side_row(fw_a: str, a: Optional[LayerRow], fw_b: str, b: Optional[LayerRow]) -> dict:
    out: dict = {}
    for fw, row in ((fw_a, a), (fw_b, b)):
        for key in ("layer", "type", "output_shape", "params", "non_trainable"):
            out[f"{fw}_{key}"] = None if row is None else getattr(row, key)
    out["params_differ"] = (a.params != b.params) if a and b else bool((a or b).params)
    return out


# Source ----------------------------------------------------------------------------------------
def model_source(framework: str, model: str) -> str:
    """The zoo's code that builds the model in the framework, read with `ast` (no framework import).

    build_model() with the branches for other models left out, after the helpers it uses from the
    same file (classes, functions, module constants), in file order, comments kept.
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}")
    _check_model(model)
    path = ZOO_FILES[framework]
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    top = {}
    for node in ast.parse(text).body:
        for name in _defined_names(node):
            top[name] = node
    builder = top.get(BUILDER)
    if not isinstance(builder, ast.FunctionDef):
        raise RuntimeError(f"{path} has no {BUILDER}() to read {model!r} from")
    specialised = _specialise(builder, model, lines)
    helpers, pending = {}, [ast.parse(specialised)]
    while pending:  # helpers of helpers, transitively
        for node in ast.walk(pending.pop()):
            if isinstance(node, ast.Name) and node.id in top and node.id != BUILDER and node.id not in helpers:
                helpers[node.id] = top[node.id]
                pending.append(top[node.id])
    blocks = [(builder.lineno, specialised)]
    blocks += [(node.lineno, _with_comments(node, lines)) for node in {id(n): n for n in helpers.values()}.values()]
    relative = path.relative_to(PROJECT_ROOT).as_posix()
    header = (f"# {relative}: {BUILDER}() as it runs for model={model!r} (other models' branches left out),\n"
              f"# after the helpers it uses from the same file.\n\n")
    return header + "\n\n\n".join(block for _, block in sorted(blocks)) + "\n"


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [t.id for t in targets if isinstance(t, ast.Name)]
    return []


def _first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([d.lineno - 1 for d in decorators] + [node.lineno])  # "@" sits one column before the name


def _comments_above(lines: list[str], lineno: int, floor: int) -> int:
    """The first line of the comment block right above line `lineno` (1-based), not above `floor`."""
    while lineno - 1 > floor and lines[lineno - 2].strip().startswith("#"):
        lineno -= 1
    return lineno


def _with_comments(node: ast.stmt, lines: list[str]) -> str:
    start = _comments_above(lines, _first_line(node), 0)
    return "\n".join(lines[start - 1:node.end_lineno])


def _specialise(func: ast.FunctionDef, model: str, lines: list[str]) -> str:
    """The builder's source as it runs for one model: decided `if model ...` branches flattened, the rest dropped."""
    argument = func.args.args[0].arg  # the model name's parameter
    base = func.body[0].col_offset
    start = _first_line(func)
    header = lines[start - 1:_comments_above(lines, func.body[0].lineno, start) - 1]
    body, _ = _emit(func.body, argument, model, lines, base, start)
    return "\n".join(header + body)


def _emit(stmts: list[ast.stmt], argument: str, model: str, lines: list[str], base: int,
          floor: int) -> tuple[list[str], bool]:
    """Lines for the statements, at indentation `base`; and whether they always return or raise."""
    out: list[str] = []
    for stmt in stmts:
        verdict = _decide(stmt.test, argument, model) if isinstance(stmt, ast.If) else None
        if verdict is None:
            first = _comments_above(lines, stmt.lineno, floor)
            chunk = [_dedent(line, stmt.col_offset - base) for line in lines[first - 1:stmt.end_lineno]]
            own = stmt.lineno - first  # the statement's first line within chunk
            if chunk[own].lstrip().startswith("elif "):  # an undecided elif after a dropped if
                chunk[own] = chunk[own].replace("elif", "if", 1)
            out += chunk
            if isinstance(stmt, (ast.Return, ast.Raise)):
                return out, True  # what follows never runs for this model
        elif taken := (stmt.body if verdict else stmt.orelse):
            above = _comments_above(lines, stmt.lineno, floor)  # a comment on the whole if-chain
            out += [_dedent(line, stmt.col_offset - base) for line in lines[above - 1:stmt.lineno - 1]]
            if not verdict and _is_elif(stmt, lines):
                inner_floor = stmt.body[-1].end_lineno
            else:
                # The branch's own header ("else:  # mnist_cnn ...") may carry a comment worth keeping.
                inner_floor = stmt.test.end_lineno if verdict else _else_line(lines, taken[0].lineno)
                comment = _trailing_comment(lines[inner_floor - 1])
                if comment:
                    out.append(" " * base + comment)
            inner, exits = _emit(taken, argument, model, lines, base, inner_floor)
            out += inner
            if exits:
                return out, True
        floor = stmt.end_lineno
    return out, False


def _is_elif(stmt: ast.If, lines: list[str]) -> bool:
    return (len(stmt.orelse) == 1 and isinstance(stmt.orelse[0], ast.If)
            and lines[stmt.orelse[0].lineno - 1].lstrip().startswith("elif "))


def _decide(test: ast.expr, argument: str, model: str) -> Optional[bool]:
    """True or False for `model == "x"`, `!=`, `in (...)`, `not in (...)`; None for anything else."""
    if not (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == argument
            and len(test.ops) == 1):
        return None
    try:
        value = ast.literal_eval(test.comparators[0])
    except ValueError:
        return None
    op = test.ops[0]
    if isinstance(op, (ast.Eq, ast.NotEq)) and isinstance(value, str):
        return (model == value) == isinstance(op, ast.Eq)
    if isinstance(op, (ast.In, ast.NotIn)) and isinstance(value, (tuple, list, set, frozenset)):
        return (model in value) == isinstance(op, ast.In)
    return None


def _else_line(lines: list[str], lineno: int) -> int:
    """The line of the `else:` that opens the block starting at line `lineno`."""
    lineno -= 1
    while lineno > 1 and (not lines[lineno - 1].strip() or lines[lineno - 1].strip().startswith("#")):
        lineno -= 1
    return lineno


def _trailing_comment(line: str) -> Optional[str]:
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline))
    except (tokenize.TokenError, SyntaxError):
        return None
    return next((t.string for t in tokens if t.type == tokenize.COMMENT), None)


def _dedent(line: str, columns: int) -> str:
    strip = min(columns, len(line) - len(line.lstrip(" ")))
    return line[strip:]
