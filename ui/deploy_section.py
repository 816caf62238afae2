"""The Deploy page's parts: the run choice, the job form, the live job list, and the results with their charts."""
from __future__ import annotations

from functools import partial
from typing import Sequence

import streamlit as st

from analysis import deployment as dep
from analysis.formatting import escape_markdown
from db import deployments, queries
from db.models import ACTIVE_STATUSES, FINISHED
from engine.catalog import FRAMEWORKS, framework_label
from engine.deploy import formats, jobs
from engine.deploy.job import DEFAULT_SETTINGS
from engine.processes import reap_deployments
from ui.database import db_url, sessions
from ui.router import toast_after_rerun
from ui.widgets import RUNS_PARAM, requested_run_ids

RUNS_KEY = "deploy_runs"
TF_SERVING_NOTE = (
    "TensorFlow Serving's own model server (`tensorflow_model_server`) is not installable from PyPI, so it is not "
    "measured here. To serve a SavedModel Arena wrote with it: download the SavedModel (zip) below, unzip it as "
    "`models/arena/1/` (TF Serving wants a numbered version directory), then run "
    "`docker run -p 8501:8501 -v \"$PWD/models/arena:/models/arena\" -e MODEL_NAME=arena tensorflow/serving` and "
    "POST `{\"instances\": [...]}` to `http://127.0.0.1:8501/v1/models/arena:predict` — the same request shape "
    "Arena's server takes.")
TABLE_CONFIG = {
    "run": st.column_config.NumberColumn("Run", format="#%d", width=55),
    "framework": st.column_config.TextColumn("Framework", width=90),
    "format": st.column_config.TextColumn("Format", width=175),
    "status": st.column_config.TextColumn("Status", width=95, help="ok: outputs within the format's tolerance; "
                                                                   "MISMATCH: beyond it (shown, never dropped)"),
    "parity": st.column_config.TextColumn("max |Δ| ≤ tolerance", width=140,
                                          help="Largest output difference from the trained model over the test set"),
    "accuracy_trained": st.column_config.NumberColumn("Acc. trained", format="percent", width=85),
    "accuracy_artifact": st.column_config.NumberColumn("Acc. export", format="percent", width=85),
    "size_kib": st.column_config.NumberColumn("KiB", format="%.0f", width=60),
    "export_s": st.column_config.NumberColumn("Export s", format="%.2f", width=70),
    "load_ms": st.column_config.NumberColumn("Load ms", format="%.1f", width=70,
                                             help="Loading the artifact in a fresh process, its runtime imported"),
    "first_call_ms": st.column_config.NumberColumn("1st call ms", format="%.2f", width=80),
    "p50_batch1_ms": st.column_config.NumberColumn("p50 @1 ms", format="%.3f", width=80),
    "best_samples_per_s": st.column_config.NumberColumn("Samples/s", format="localized", width=90,
                                                        help="The best over the batch sizes timed"),
    "peak_rss_mib": st.column_config.NumberColumn("RSS MiB", format="%.0f", width=70,
                                                  help="Peak resident memory of the measuring process"),
    "why": st.column_config.TextColumn("Why", width="large"),
}
SHOWN_COLUMNS = [c for c in TABLE_CONFIG]  # max_abs_diff stays in the frame, for tests and sorting


def choose_runs() -> list[int]:
    """The finished runs with kept weights to deploy; a link's ?runs= preselects them."""
    with sessions().begin() as s:
        candidates = deployments.deployable_runs(s)
    if not candidates:
        st.info("No finished run has kept its trained weights yet. Train one on Launch (\"Keep the trained "
                "weights\" is on by default), then come back to export, check and time it.", icon=":material/info:")
        st.page_link("pages/launch.py", label="Launch a run", icon=":material/rocket_launch:")
        return []
    by_id = {c["id"]: c for c in candidates}
    if RUNS_KEY not in st.session_state:
        asked = requested_run_ids()
        st.session_state[RUNS_KEY] = [i for i in asked if i in by_id]
        missing = [i for i in asked if i not in by_id]
        if missing:
            st.warning(f"Run{'s' * (len(missing) > 1)} {', '.join(f'#{i}' for i in missing)} cannot be deployed: "
                       "only finished runs that kept their weights can.", icon=":material/warning:")
    chosen = st.multiselect("Runs", list(by_id), key=RUNS_KEY, format_func=lambda i: _run_label(by_id[i]),
                            placeholder="Pick finished runs (both frameworks for a side-by-side)")
    st.query_params[RUNS_PARAM] = ",".join(map(str, chosen)) if chosen else ""
    return chosen


def _run_label(run: dict) -> str:
    name = f" {run['name']}" if run["name"] else ""
    return f"#{run['id']}{name} · {framework_label(run['framework'])} {run['mode'] or ''} · {run['model']} / " \
           f"{run['dataset']} · seed {run['seed']}"


def deploy_form(run_ids: list[int], expanded: bool) -> None:
    """Formats and settings for the chosen runs, and the button that queues one job per run (in an expander,
    closed once the runs have results to show)."""
    with sessions().begin() as s:
        runs = [r for r in (queries.get_run(s, i) for i in run_ids) if r is not None]
        frameworks = [f for f in FRAMEWORKS if any(r.framework == f for r in runs)]
        models = {r.framework: sorted({x.model for x in runs if x.framework == r.framework}) for r in runs}
    with st.expander("New deployment of these runs", expanded=expanded, icon=":material/deployed_code:"), \
            st.form("deploy_form", border=False):
        chosen: dict[str, list[str]] = {}
        columns = st.columns(len(frameworks))
        for column, framework in zip(columns, frameworks):
            names = formats.names(framework)
            chosen[framework] = column.multiselect(
                f"{framework_label(framework)} formats", names, default=list(names),
                format_func=lambda n, f=framework: formats.get(f, n).label, key=f"deploy_formats_{framework}")
            notes = [f"{model} → {formats.get(framework, n).label}: {reason}" for model in models[framework]
                     for n in names if (reason := formats.unsupported(framework, n, model))]
            for note in notes:
                column.caption(f":material/block: not exportable: {note}")
        c1, c2, c3 = st.columns(3)
        threads = c1.number_input("Threads per runtime", 1, 64, DEFAULT_SETTINGS["threads"], key="deploy_threads",
                                  help="Intra-op threads of every runtime (inter-op 1): the same for all, recorded.")
        min_time = c2.number_input("Seconds timed per batch size", 0.1, 60.0, DEFAULT_SETTINGS["min_time_s"],
                                   step=0.5, key="deploy_min_time")
        serve = c3.toggle("Serve over HTTP too (Ray Serve)", value=False, key="deploy_serve",
                          help="Each artifact behind one handler, loaded at 1, 8 and 32 concurrent clients, with "
                               "dynamic batching on and off: about a minute per format.")
        submitted = st.form_submit_button("Queue deployment", icon=":material/deployed_code:", type="primary")
    if submitted:
        settings = {"threads": int(threads), "min_time_s": float(min_time), "serve": bool(serve)}
        queue(runs, chosen, settings)


def queue(runs, chosen: dict[str, list[str]], settings: dict) -> None:
    dashboard = sessions()
    empty = [framework_label(f) for f, names in chosen.items() if not names]
    if empty:
        st.error(f"Pick at least one {' and one '.join(empty)} format.", icon=":material/error:")
        return
    try:  # each run gets its framework's formats; all are checked before anything is stored
        job_ids = jobs.launch(dashboard, db_url(), [run.id for run in runs], chosen, settings)
    except jobs.DeployError as exc:
        st.error(f"{exc}. Nothing was queued.", icon=":material/error:")
        return
    toast_after_rerun(f"Queued deployment{'s' * (len(job_ids) > 1)} {', '.join(f'#{j}' for j in job_ids)}")
    st.rerun()


def live_panel(run_ids: Sequence[int], live: bool) -> None:
    """Active jobs with progress, ETA and cancel; then the chosen runs' newest results."""
    dashboard = sessions()
    reap_deployments(dashboard)
    with dashboard.begin() as s:
        active = deployments.jobs(s, statuses=list(ACTIVE_STATUSES))
        mine = deployments.jobs(s, list(run_ids)) if run_ids else []
    if live and not active:
        st.rerun()  # the last job ended: draw its results once, without the refresh timer
    now = queries.utcnow()
    for job in active:
        with st.container(border=True):
            fraction, text = dep.job_progress(job, now)
            left, right = st.columns([6, 1], vertical_alignment="center")
            left.progress(fraction, text=f"Deployment #{job['id']} of run #{job['run_id']} · {job['status']} · "
                                         f"{text} · {escape_markdown(job['current'] or '')}")
            right.button("Cancel", key=f"cancel_deploy_{job['id']}", icon=":material/stop_circle:",
                         on_click=partial(jobs.cancel, dashboard, job["id"]))
    newest = {}
    for job in mine:  # newest first: the newest job that ended, per run
        if job["status"] not in ACTIVE_STATUSES:
            newest.setdefault(job["run_id"], job)
    for job in mine:
        if job["status"] not in (FINISHED, *ACTIVE_STATUSES) and newest.get(job["run_id"]) is job:
            st.error(f"Deployment #{job['id']} of run #{job['run_id']} {job['status']}: "
                     f"{(job['error'] or '').strip().splitlines()[-1] if job['error'] else 'no reason given'}",
                     icon=":material/error:")
    if run_ids and not newest and not active:
        st.info("No deployment of these runs yet: pick formats above and queue one.", icon=":material/info:")
    if newest:
        results_view(list(newest.values()))


def results_view(shown: list[dict]) -> None:
    with sessions().begin() as s:
        results = deployments.results(s, [j["id"] for j in shown])
    run_of_job = {j["id"]: j["run_id"] for j in shown}
    several = len(shown) > 1
    st.caption("Newest results: " + "; ".join(
        f"deployment #{j['id']} of run #{j['run_id']}, {j['status']}"
        + (f" {j['finished_at']:%Y-%m-%d %H:%M} UTC" if j["finished_at"] else "") for j in shown))
    with st.expander("What was held equal", icon=":material/balance:"):
        for line in dep.held_equal(shown, results):
            st.markdown(f"- {line}")
    table = dep.results_table(results, run_of_job)
    sentence = dep.same_runtime_sentence(results, run_of_job)
    if sentence:
        st.info(sentence, icon=":material/balance:")
    shown = SHOWN_COLUMNS if (table["why"] != "").any() else [c for c in SHOWN_COLUMNS if c != "why"]
    st.dataframe(table, column_config=TABLE_CONFIG, column_order=shown, hide_index=True, key="deploy_table")
    bad = table[table["status"].isin(["MISMATCH", "failed", dep.SERVING_FAILED])]
    for _, row in bad.iterrows():
        st.warning(f"Run #{row['run']} {row['format']}: {row['status']} — {row['why'] or 'see the table'}",
                   icon=":material/warning:")
    left, right = st.columns(2)
    left.plotly_chart(dep.latency_vs_batch(results, run_of_job, several), key="deploy_latency")
    right.plotly_chart(dep.latency_cdf(results, run_of_job, 1, several), key="deploy_cdf")
    served = dep.served_frame(results, run_of_job)
    if not served.empty:
        left, right = st.columns(2)
        left.plotly_chart(dep.served_figure(served, "p50_ms", "Served latency against concurrency (p50)", "ms",
                                            several), key="deploy_served_p50")
        right.plotly_chart(dep.served_figure(served, "requests_per_s", "Served requests per second", "requests / s",
                                             several), key="deploy_served_rps")
    st.caption(TF_SERVING_NOTE)
    downloads(results, run_of_job)


def downloads(results: list[dict], run_of_job: dict[int, int]) -> None:
    """A download button per kept artifact; its bytes are read only when clicked."""
    kept = [r for r in results if r["artifact_name"]]
    if not kept:
        return
    dashboard = sessions()
    with st.container(horizontal=True):
        for r in kept:
            run = run_of_job[r["deployment_id"]]
            st.download_button(f"#{run} {dep.label(r['framework'], r['format'])}",
                               data=partial(_artifact_bytes, dashboard, r["id"]),
                               file_name=f"arena-run-{run}-{r['framework']}-{r['artifact_name']}",
                               mime="application/octet-stream", icon=":material/download:",
                               key=f"deploy_download_{r['id']}", on_click="ignore")


def _artifact_bytes(dashboard, result_id: int) -> bytes:
    with dashboard.begin() as s:
        found = deployments.artifact(s, result_id)
    return found[1] if found else b""
