"""Streamlit helpers the pages share: the router, page chrome and failures, URL state, widgets and sections.

Every module here may call st; whatever it computes without st comes from analysis/. Figures are
built in analysis/ (pure functions returning a go.Figure) and drawn here with st.plotly_chart.

- router.py: the page list (the one place pages are registered), the router and the scheduler start.
- page_errors.py: failures shown in words; database.py: the process's sessionmaker.
- url_state.py: widget values kept in the URL; widgets.py: small shared widgets and keys.
- run_picker.py, run_filter_controls.py, run_selection.py, run_actions.py: choosing and acting on runs.
- fairness_panel.py and the *_section.py modules: the Compare page's panel and tabs, one module each,
  imported only when their tab opens.
- device_cards.py: the Devices page's cards.
"""
