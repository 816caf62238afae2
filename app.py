"""Arena dashboard entrypoint: page config, then the router (ui/router.py), which lists the pages of pages/."""
import streamlit as st

from ui import router

st.set_page_config(**router.PAGE_CONFIG)
router.run_routed()
