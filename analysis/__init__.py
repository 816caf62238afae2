"""The dashboard's logic, testable without Streamlit: frames and runs in, frames, numbers, words and figures out.

Nothing here imports streamlit (tests/analysis checks it). pages/ draws what these functions compute,
through the widgets in ui/.

The rule for charts: a plotly figure builder is a pure function (data in, a go.Figure out), so it
lives here beside the numbers it draws (memory.py, layer_stats.py, speed_figures.py ...); only ui/
hands a figure to st.plotly_chart.

- run_facts.py: per-run facts as vectorised columns (status text, mode, device or queue state,
  progress, elapsed time, ETA) for a frame of runs; a single run is a one-row frame.
- runs_table.py, run_filters.py: the Runs table's and the run picker's rows, and their filters.
- formatting.py, run_ids.py, run_styles.py: display text, run ids in links, colours per framework and run.
- run_settings.py, fairness.py, spec_diff.py: a run's settings as text; what a comparison held equal.
- machine_load.py: which runs trained beside other busy processes (import-light: the CLI uses it).
- series.py, learning_figures.py: metric series (x axes, smoothing, downsampling, seed-group bands).
- step_times.py, speed_ratio.py, speed_figures.py, step_profile.py, compile_table.py: speed.
- memory.py, layer_stats.py, summary.py, architecture_tables.py: memory, layers, the summary table, models.
- launch_plan.py: the Launch form's values as a validated run matrix.
- device_tables.py: the Devices page's tables and GPU history.
- figure_layout.py: the layout every figure shares.
"""
