"""A database URL the dashboard cannot use stops every page with a message naming it, and creates nothing."""
import pytest

from streamlit.testing.v1 import AppTest

from ui.router import COMPARE_PAGE, RUNS_PAGE
from tests.pages.conftest import APP_PATH
from tests.pages.helpers import failures


@pytest.mark.parametrize("page", [RUNS_PAGE, COMPARE_PAGE])
@pytest.mark.parametrize("url, words", [
    ("mysql://arena:secret@db/arena", "mysql"),
    ("sqlite:///{dir}", "directory"),
])
def test_a_bad_database_url_is_named_on_every_page(tmp_path, monkeypatch, open_page, page, url, words):
    url = url.format(dir=tmp_path)
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARENA_DB_URL", url)
    monkeypatch.setenv("ARENA_SCHEDULER", "off")

    at = open_page(page)

    message = next(e.value for e in at.error if "database cannot be used" in e.value)
    assert words in message and "ARENA_DB_URL" in message
    assert "secret" not in message  # the password is masked
    assert not (tmp_path / "home").exists() or not list((tmp_path / "home").glob("*.db"))


def test_the_entry_point_stops_before_any_page_with_the_message(tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARENA_DB_URL", "postgresql://arena:secret@db/arena")

    at = AppTest.from_file(str(APP_PATH), default_timeout=30).run()

    (error,) = [e.value for e in at.error]
    assert "postgresql+psycopg" in error and "secret" not in error
    assert not failures(at) and not at.button  # no page below it
