"""Arena's framework-neutral core. Importing it imports neither torch nor tensorflow."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """Environment for an engine child process (runner, parity or count worker): `engine` importable from anywhere."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env
