"""ui/export_buttons.py: three download buttons whose files are built on click (engine/export.py tests the files)."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from db import queries
from db.session import make_sessionmaker
from engine.spec import RunSpec
from tests.pages.conftest import RENDER_TIMEOUT_S
from tests.pages.helpers import failures

SCRIPT = "from ui.export_buttons import export_buttons\nexport_buttons({run_ids!r})\n"


@pytest.fixture
def two_runs(arena_db, monkeypatch) -> list[int]:
    """Two made-up runs in the dashboard's database."""
    monkeypatch.setenv("ARENA_SCHEDULER", "off")  # made-up runs: nothing here may start a runner
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        ids = []
        for framework in ("torch", "tensorflow"):
            run_id = queries.create_run(s, RunSpec.with_model_defaults(framework, "mlp", "digits").to_dict()).id
            queries.add_metric_points(s, [dict(run_id=run_id, name="step/train_loss", step=step, epoch=1,
                                               wall_time=1.7e9 + step, value=1 / step) for step in range(1, 20)])
            queries.finish_run(s, run_id, {})
            ids.append(run_id)
    sessions.kw["bind"].dispose()
    return ids


def test_three_download_buttons_for_the_runs_built_on_click(two_runs):
    at = AppTest.from_string(SCRIPT.format(run_ids=two_runs), default_timeout=RENDER_TIMEOUT_S).run()
    assert not failures(at), failures(at)
    buttons = at.get("download_button")
    assert [b.label for b in buttons] == ["CSV (zip)", "JSON", "TensorBoard (zip)"]
    assert all(b.proto.deferred_file_id for b in buttons)  # built lazily: nothing was exported to render them
    caption = at.caption[0].value
    assert "no downsampling" in caption.lower()
    name = f"arena-runs-{two_runs[0]}-{two_runs[1]}"
    assert f"`unzip {name}.tensorboard.zip -d {name} && tensorboard --logdir {name} --samples_per_plugin" in caption


def test_no_runs_no_buttons(arena_db, monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    at = AppTest.from_string(SCRIPT.format(run_ids=[]), default_timeout=RENDER_TIMEOUT_S).run()
    assert not failures(at) and len(at.get("download_button")) == 0
