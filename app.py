"""Arena dashboard entrypoint: page config and the router, nothing else (pages live in pages/)."""
import streamlit as st

from pages import common

st.set_page_config(**common.PAGE_CONFIG)
st.navigation(common.router_pages(), position=common.NAVIGATION_POSITION).run()
