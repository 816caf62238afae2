"""Security: no eval, exec, unpickling or shell in Arena's code (read with ast), and a started dashboard that
listens on 127.0.0.1 only, refuses a state-changing request without its XSRF token and cross-origin callers."""
from __future__ import annotations

import ast
import base64
import http.client
import os
import re
import socket
import textwrap
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests import dashboard
from tests.conftest import REPO_ROOT

SCANNED = ["engine", "db", "pages", "ui", "analysis", "bench", "app.py"]
# Modules whose loaders run code from the bytes they read.
UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader"}


class _Finder(ast.NodeVisitor):
    """Calls and imports that can run code from data: eval/exec, unpickling, unsafe yaml, a shell."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.aliases: dict[str, str] = {}  # local name -> module, from `import x as y`

    def _flag(self, node: ast.AST, what: str) -> None:
        self.found.append(f"line {node.lineno}: {what}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.aliases[alias.asname or alias.name.split(".")[0]] = alias.name
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = (node.module or "").split(".")[0]
        if module in UNPICKLING_MODULES:
            self._flag(node, f"from {node.module} import {', '.join(a.name for a in node.names)}")
        if module == "builtins" and {a.name for a in node.names} & {"eval", "exec"}:
            self._flag(node, "eval/exec imported from builtins")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        keywords = {k.arg: k.value for k in node.keywords}
        if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
            self._flag(node, f"{func.id}()")
        if isinstance(func, ast.Attribute):
            owner = self.aliases.get(func.value.id) if isinstance(func.value, ast.Name) else None
            if owner in UNPICKLING_MODULES:
                self._flag(node, f"{owner}.{func.attr}()")
            if owner == "builtins" and func.attr in ("eval", "exec"):
                self._flag(node, f"builtins.{func.attr}()")
            if owner == "yaml" and func.attr in ("unsafe_load", "full_load", "load_all", "unsafe_load_all"):
                self._flag(node, f"yaml.{func.attr}()")
            if owner == "yaml" and func.attr == "load":
                loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
                name = getattr(loader, "attr", getattr(loader, "id", None))
                if name not in SAFE_YAML_LOADERS:
                    self._flag(node, "yaml.load() without a safe Loader")
            if owner == "os" and func.attr in ("system", "popen"):
                self._flag(node, f"os.{func.attr}()")
            if owner == "torch" and func.attr == "load" and not _is_true(keywords.get("weights_only")):
                self._flag(node, "torch.load() without weights_only=True")
            if func.attr == "read_pickle":
                self._flag(node, "read_pickle()")
            if func.attr == "load" and _is_true(keywords.get("allow_pickle")):
                self._flag(node, "load(allow_pickle=True)")
        if _is_true(keywords.get("shell")):
            self._flag(node, "shell=True")
        self.generic_visit(node)


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def dangerous_calls(source: str) -> list[str]:
    finder = _Finder()
    finder.visit(ast.parse(source))
    return finder.found


def python_files() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = REPO_ROOT / entry
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def test_the_finder_sees_each_pattern_and_is_not_fooled_by_comments_or_methods():
    hostile = textwrap.dedent("""
        import pickle as p, marshal, yaml, subprocess, os, torch, numpy as np, pandas as pd
        from builtins import exec
        eval("1")
        exec("x = 1")
        p.loads(b"")
        marshal.loads(b"")
        yaml.load("a: 1")
        yaml.load("a: 1", Loader=yaml.FullLoader)
        subprocess.run("ls", shell=True)
        os.system("ls")
        torch.load("weights.pt")
        np.load("x.npy", allow_pickle=True)
        pd.read_pickle("x.pkl")
    """)
    assert dangerous_calls(hostile) == [
        "line 3: eval/exec imported from builtins", "line 4: eval()", "line 5: exec()", "line 6: pickle.loads()",
        "line 7: marshal.loads()", "line 8: yaml.load() without a safe Loader",
        "line 9: yaml.load() without a safe Loader", "line 10: shell=True", "line 11: os.system()",
        "line 12: torch.load() without weights_only=True", "line 13: load(allow_pickle=True)", "line 14: read_pickle()",
    ]
    harmless = textwrap.dedent('''
        # eval("1"), exec(...) and pickle.loads(data) in a comment are not calls
        import ast, yaml, subprocess, torch, numpy as np
        text = "pickle.loads(b'') and eval('1') in a string"
        model.eval()  # torch.nn.Module.eval: a method, not the builtin
        ast.literal_eval("[1, 2]")
        yaml.load("a: 1", Loader=yaml.SafeLoader)
        yaml.safe_load("a: 1")
        subprocess.run(["ls"], shell=False)
        torch.load("weights.pt", weights_only=True)
        np.load("x.npz", allow_pickle=False)
    ''')
    assert dangerous_calls(harmless) == []


def test_arena_code_has_no_eval_exec_unpickling_or_shell():
    files = python_files()
    assert len(files) > 40 and REPO_ROOT / "engine" / "datafiles.py" in files
    found = {str(path.relative_to(REPO_ROOT)): hits for path in files if (hits := dangerous_calls(path.read_text()))}
    assert found == {}


def test_make_run_binds_localhost_unless_told_otherwise():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^HOST \?= 127\.0\.0\.1$", makefile, re.MULTILINE)
    run_recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "--server.address $(HOST)" in run_recipe


# The started dashboard ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`streamlit run app.py` with only a port on the command line: the rest comes from .streamlit/config.toml."""
    home = tmp_path_factory.mktemp("security")
    env = dashboard.arena_env(home, f"sqlite:///{home / 'arena.db'}")
    env = {k: v for k, v in env.items() if not k.startswith("STREAMLIT_")}  # no option from the environment
    port = dashboard.free_port()
    process, _ = dashboard.start_dashboard(home / "streamlit.log", env, options=(), port=port)
    yield process, port
    dashboard.stop_dashboard(process)


def test_the_dashboard_listens_on_127_0_0_1_only(server):
    process, port = server
    listening = [c.laddr for c in psutil.Process(process.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert (("127.0.0.1", port) in [(a.ip, a.port) for a in listening]) and {a.ip for a in listening} == {"127.0.0.1"}
    other_addresses = [a.address for addresses in psutil.net_if_addrs().values() for a in addresses
                       if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for address in other_addresses:  # this machine's other interfaces: nothing answers there
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5).close()


def _upload(port: int, headers: dict) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("PUT", "/_stcore/upload_file/some-session/some-file", body=b"payload", headers=headers)
    response = connection.getresponse()
    return response.status, response.read().decode()


def test_an_upload_without_the_xsrf_token_is_refused(server):
    _, port = server
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as response:
        cookie = response.headers["Set-Cookie"].split(";")[0]  # set only while XSRF protection is on
    name, token = cookie.split("=", 1)
    assert name == "_streamlit_xsrf"

    assert _upload(port, {}) == (403, "XSRF token missing or invalid")
    assert _upload(port, {"Cookie": cookie}) == (403, "XSRF token missing or invalid")
    # The control: with the token the request gets past the check, to a session that does not exist.
    status, body = _upload(port, {"Cookie": cookie, "X-Xsrftoken": token})
    assert status == 400 and body.startswith("Invalid session_id")


def _websocket_status(port: int, origin: str) -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall((f"GET /_stcore/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      f"Origin: {origin}\r\n\r\n").encode())
        return sock.recv(1024).split(b"\r\n", 1)[0].decode()


def test_other_origins_get_neither_cors_headers_nor_a_websocket(server):
    _, port = server
    request = urllib.request.Request(f"http://127.0.0.1:{port}/_stcore/health",
                                     headers={"Origin": "http://evil.example"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers.get("Access-Control-Allow-Origin") is None
    assert _websocket_status(port, "http://evil.example").startswith("HTTP/1.1 403")
    assert _websocket_status(port, f"http://127.0.0.1:{port}").startswith("HTTP/1.1 101")  # the app itself may
