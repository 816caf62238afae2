"""Arena dashboard entrypoint: page config, the router, and this process's scheduler (pages live in pages/)."""
import streamlit as st

from pages import common

st.set_page_config(**common.PAGE_CONFIG)
common.run_routed()
