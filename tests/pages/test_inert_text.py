"""Run names, tags, notes and error texts are shown as the text they are: never as HTML, never as markdown.

A run carries a `<script>`, an `<img onerror>`, `javascript:` markdown links and bold markup in every
field a user or a failing runner can fill. The Runs and Compare pages must show them literally:
table cells as plain text, markdown bodies escaped, tracebacks in code blocks. Last, a real browser
must find none of them live in the page's DOM, and no dialog may open.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from db import queries
from db.models import FINISHED, RUNNING
from db.session import make_sessionmaker
from engine.spec import RunSpec
from analysis.formatting import escape_markdown
from ui.router import COMPARE_PAGE, RUNS_PAGE
from tests.e2e.test_browser import CHROMIUM, dashboard, page  # noqa: F401  (fixtures for the browser test)
from tests.pages.test_runs_page import click_and_settle, shown
from tests.pages.helpers import failures

NAME = "<script>alert(1)</script>"
TAGS = ["<img src=x onerror=alert(1)>", "[click](javascript:alert(1))"]
NOTES = "**bold** <b>x</b>"
ERROR = ('Traceback (most recent call last):\n  File "<script>alert(2)</script>", line 1, in <module>\n'
         "RuntimeError: <script>alert(3)</script> see [docs](javascript:alert(4)) **now**")
LAST_LINE = ERROR.splitlines()[-1]
# Markup a markdown body would bring to life if it carried it unescaped (a backslash in front makes it text).
LIVE_MARKUP = re.compile(r"(?<!\\)<(script|img|b)\b|(?<!\\)\]\(javascript|(?<!\\)\*\*(bold|now)")


def store_runs(url: str) -> tuple[int, int]:
    """(a failed run carrying the payloads in every field, a plain finished run), both with a few points."""
    sessions = make_sessionmaker(url)
    with sessions.begin() as s:
        payload = queries.create_run(s, RunSpec("torch", "mlp", "digits").to_dict()).id
        plain = queries.create_run(s, RunSpec("tensorflow", "mlp", "digits").to_dict()).id
        queries.update_run(s, payload, status=RUNNING)
        queries.update_run(s, plain, status=FINISHED)
        queries.annotate_run(s, payload, name=NAME, tags=TAGS, notes=NOTES)
        assert queries.fail_run(s, payload, ERROR)
        queries.add_metric_points(s, [
            dict(run_id=run_id, name=name, step=10 * epoch, epoch=epoch, wall_time=float(epoch), value=value)
            for run_id in (payload, plain) for name in ("train_loss", "test_accuracy")
            for epoch, value in ((1, 0.5), (2, 0.4))])
    sessions.kw["bind"].dispose()
    return payload, plain


def markdown_bodies(at) -> list[str]:
    """Every text on the page that Streamlit renders as markdown."""
    kinds = ("markdown", "caption", "warning", "info", "error", "success", "title", "header", "subheader")
    return [e.value for kind in kinds for e in getattr(at, kind)] + [e.label for e in at.expander]


def assert_nothing_live(at) -> None:
    bodies = markdown_bodies(at)
    assert bodies and [body for body in bodies if LIVE_MARKUP.search(body)] == []
    assert not at.get("html")  # st.html renders HTML as it is: none on these pages
    for element in (*at.markdown, *at.caption):  # unsafe_allow_html is for the app's own fixed markup only
        assert not (element.proto.allow_html and "alert(" in element.value), element.value


@pytest.fixture
def payload_runs(arena_db, monkeypatch) -> tuple[int, int]:
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    return store_runs(arena_db)


def test_runs_page_shows_names_tags_and_errors_as_text(payload_runs, open_page):
    payload, _ = payload_runs
    at = open_page(RUNS_PAGE, runs=str(payload))

    row = shown(at).loc[payload]
    assert (row["name"], list(row["tags"])) == (NAME, TAGS)  # table cells are text, never markup
    assert row["error"] == LAST_LINE
    (failure,) = [e for e in at.expander if "RuntimeError" in e.label]
    assert failure.label.endswith(escape_markdown(LAST_LINE))  # the label is markdown: escaped, so shown as typed
    (code,) = [c for c in at.code if "Traceback" in c.value]
    assert code.value.strip() == ERROR and code.proto.language == "plaintext"  # whole, in a plain code block
    assert_nothing_live(at)

    click_and_settle(at, "runs_edit_open")
    assert at.text_input(key=f"runs_edit_name_{payload}").value == NAME
    assert at.multiselect(key=f"runs_edit_tags_{payload}").value == TAGS
    assert at.text_area(key=f"runs_edit_notes_{payload}").value == NOTES
    assert_nothing_live(at)


def test_compare_page_shows_names_and_tags_as_text(payload_runs, open_page):
    payload, plain = payload_runs
    at = open_page(COMPARE_PAGE, runs=f"{payload},{plain}")
    assert not failures(at) and at.get("plotly_chart")  # the comparison itself is drawn
    assert_nothing_live(at)

    at.session_state["compare_selected"] = []  # nothing chosen: the picker opens with its table
    at.run()
    (table,) = at.dataframe
    row = table.value.set_index("id").loc[payload]
    assert (row["name"], list(row["tags"])) == (NAME, TAGS)
    assert_nothing_live(at)


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_in_a_browser_no_payload_is_live_and_no_dialog_opens(dashboard, page):  # noqa: F811
    from playwright.sync_api import expect

    base, db_url = dashboard
    payload, _ = store_runs(db_url)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{base}/runs?runs={payload}")
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible(timeout=30_000)

    expect(page.get_by_test_id("stDataFrame").first).to_contain_text(NAME, timeout=30_000)  # the cells, as text
    failure = page.get_by_test_id("stExpander").filter(has_text="RuntimeError")
    expect(failure).to_contain_text(LAST_LINE)
    failure.locator("summary").click()
    expect(failure.locator("code")).to_contain_text('File "<script>alert(2)</script>"')
    page.get_by_role("button", name="Edit…").click()
    expect(page.get_by_label("Name", exact=True)).to_have_value(NAME)
    expect(page.get_by_label("Notes", exact=True)).to_have_value(NOTES)

    live = page.evaluate("""() => ({
        scripts: [...document.querySelectorAll('script')].filter(s => s.textContent.includes('alert(')).length,
        images: document.querySelectorAll('img[onerror]').length,
        links: document.querySelectorAll('a[href^="javascript:"]').length,
        bold: [...document.querySelectorAll('b, strong')].filter(b => /^(x|bold|now)$/.test(b.textContent)).length,
    })""")
    assert live == {"scripts": 0, "images": 0, "links": 0, "bold": 0}
    assert dialogs == []
