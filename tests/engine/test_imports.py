"""engine/ and db/ are framework-neutral: importing them loads neither torch nor tensorflow."""
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_engine_and_db_import_no_framework():
    code = (
        "import sys, engine, engine.spec, engine.catalog, engine.data, engine.launch, engine.cli, "
        "engine.loop, engine.runner, engine.monitor, engine.devices, engine.backends, engine.datafiles, "
        "engine.download, engine.matrix, engine.parity, engine.inference, engine.weights, engine.export, "
        "engine.architecture, engine.layer_stats, engine.calibration, engine.traces, db.queries, db.session, "
        "db.chunks, db.run_table\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
