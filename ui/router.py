"""The router: the app's pages (listed here and nowhere else), page config, and what runs before every page.

app.py calls run_routed(); every page calls ensure_router() first, for the case where Streamlit
served it without app.py (see there).
"""
from __future__ import annotations

import streamlit as st

from ui.database import db_url, sessions
from ui.page_errors import shown

LAUNCH_PAGE, RUNS_PAGE, COMPARE_PAGE, DEPLOY_PAGE, DEVICES_PAGE = (
    "pages/launch.py", "pages/runs.py", "pages/compare.py", "pages/deploy.py", "pages/devices.py")
# (script, menu title, icon), in menu order: the five pages of pages/.
PAGES = (
    (LAUNCH_PAGE, "Launch", ":material/rocket_launch:"),
    (RUNS_PAGE, "Runs", ":material/table_rows:"),
    (COMPARE_PAGE, "Compare", ":material/compare_arrows:"),
    (DEPLOY_PAGE, "Deploy", ":material/deployed_code:"),
    (DEVICES_PAGE, "Devices", ":material/memory:"),
)
PAGE_CONFIG = dict(page_title="Arena", page_icon=":material/sports_martial_arts:", layout="wide")
NAVIGATION_POSITION = "top"
TOASTS_KEY = "arena_pending_toasts"  # session state: confirmations to show once the page has rerun


def router_pages() -> list:
    """The app's pages, in menu order (app.py routes through these)."""
    return [st.Page(script, title=title, icon=icon) for script, title, icon in PAGES]


def ensure_router() -> None:
    """Give this page the router's layout, menu and failure messages even when it was served without app.py.

    With a pages/ folder beside the entrypoint, Streamlit starts in its legacy pages-folder mode
    until some session calls st.navigation: a link like /compare?runs=3,4 opened first after a
    server start runs the page alone, in a narrow layout, with every script in pages/ listed as a
    page. Calling st.navigation here replaces that menu and turns the mode off for the whole
    process. The page then runs as app.py would run it (routed, its failures shown in words) within
    this same script run, so a click that started it is not lost, and the legacy run stops here.

    Why a private flag: Streamlit (1.67, runtime/pages_manager.py) sets
    PagesManager.uses_pages_directory when the first session starts, to whether a folder named
    "pages" exists beside the entrypoint, and while it is set runs the pages-folder app instead of
    app.py (runtime/scriptrunner/script_runner.py, _mpa_v1). Only st.navigation clears it
    (commands/navigation.py). No config option turns the mode off: client.showSidebarNavigation
    only hides its menu, and the folder's name is the project's. So the flag is read here, where
    the mode is left.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager  # the flag has no public accessor
    except ImportError:  # a Streamlit without the legacy mode: nothing to correct
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        st.set_page_config(**PAGE_CONFIG)
        run_routed()
        st.stop()


def run_routed() -> None:
    """What app.py does: the router, then this process's scheduler and the chosen page, failures shown in words."""
    page = st.navigation(router_pages(), position=NAVIGATION_POSITION)
    with shown():
        show_pending_toasts()
        start_scheduler()
        page.run()


def toast_after_rerun(message: str) -> None:
    """Confirm an action whose handler calls st.rerun(): a toast sent in the run a rerun cuts short may never
    reach the browser, so it is kept in session state and shown by the next run."""
    st.session_state.setdefault(TOASTS_KEY, []).append(message)


def show_pending_toasts() -> None:
    for message in st.session_state.pop(TOASTS_KEY, []):
        st.toast(message)


def start_scheduler() -> None:
    """Start this dashboard's scheduler: it places queued runs (or waits while another process holds the lease)."""
    from engine.scheduler import ensure_running

    try:
        ensure_running(sessions(), db_url())
    except ValueError as exc:  # a bad ARENA_SCHEDULER / ARENA_EXECUTOR value: runs wait, and every page says why
        st.error(f"The scheduler is not running: {exc}. Queued runs wait until it is fixed.", icon=":material/error:")
