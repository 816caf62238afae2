"""engine/ and db/ are framework-neutral: importing them loads neither torch nor tensorflow.

Every module is found on disk, not listed by hand (a hand-kept list once missed the scheduler, the
Ray executor, NVML and the recorder). Only the framework backends themselves may import a framework.
"""
import subprocess
import sys

from tests.conftest import REPO_ROOT

# Modules that exist to run one framework: they import it at the top, and nothing neutral imports them.
FRAMEWORK_MODULES = {
    "engine.backends.torch_backend", "engine.backends.torch_models", "engine.backends.tensorflow_backend",
    "engine.backends.tensorflow_models", "engine.backends.tf_xplane",
    # The native input pipelines, DataLoader and tf.data, loaded by their backend only.
    "engine.backends.torch_pipeline", "engine.backends.tensorflow_pipeline",
    # Deployment: each exporter runs in its framework's process, each loader in its runtime's.
    "engine.deploy.torch_formats", "engine.deploy.tensorflow_formats", "engine.deploy.runtime_torch",
    "engine.deploy.runtime_tensorflow",
}


def neutral_modules() -> list[str]:
    names = []
    for package in ("engine", "db"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            if "versions" in parts or parts[-1] == "env":  # Alembic's scripts run inside Alembic, not imported
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if name not in FRAMEWORK_MODULES and parts[-1] != "__main__":
                names.append(name)
    return names


def test_the_module_list_is_found_not_kept():
    names = neutral_modules()
    for expected in ("engine.scheduler", "engine.executors.ray", "engine.executors.local", "engine.processes",
                     "engine.nvml", "engine.recorder", "db.queries", "engine.step_clock", "engine.calibration",
                     "engine.cli"):
        assert expected in names
    assert "engine.backends.parity_worker" in names  # a worker picks its framework at run time
    assert len(names) > 40


def test_engine_and_db_import_no_framework():
    code = ("import importlib, sys\n"
            f"for name in {neutral_modules()!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"
