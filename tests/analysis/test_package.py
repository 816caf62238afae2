"""analysis/ is the dashboard's logic without Streamlit: importing all of it imports no streamlit."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_importing_every_analysis_module_imports_no_streamlit():
    check = ("import importlib, pkgutil, sys, analysis\n"
             "for module in pkgutil.iter_modules(analysis.__path__):\n"
             "    importlib.import_module(f'analysis.{module.name}')\n"
             "print('streamlit' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr

