"""Arena dashboard entrypoint: page config, the router, and this process's scheduler (pages live in pages/)."""
import streamlit as st

from engine.scheduler import ensure_running
from pages import common

st.set_page_config(**common.PAGE_CONFIG)
# Places queued runs while the dashboard runs (or waits while another process holds the lease).
try:
    ensure_running(common.sessions(), common.db_url())
except ValueError as exc:  # a bad ARENA_SCHEDULER value: runs wait, and every page says why
    st.error(f"The scheduler is not running: {exc}. Queued runs wait until it is fixed.", icon=":material/error:")
st.navigation(common.router_pages(), position=common.NAVIGATION_POSITION).run()
