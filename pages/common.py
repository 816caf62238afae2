"""Pieces every page shares: the database, framework colours, status badges, formatting.

Not a page: app.py registers only launch.py, runs.py and compare.py with st.navigation.
"""
from __future__ import annotations

import math
import statistics
from datetime import datetime, timezone
from typing import Optional, Sequence

import streamlit as st
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import (
    ACTIVE_STATUSES,
    CANCELLED,
    DIVERGED,
    FAILED,
    FINISHED,
    LOST,
    NON_FINITE_LOSS,
    OUT_OF_MEMORY,
    QUEUED,
    RUNNING,
    Run,
)
from db.session import make_sessionmaker
from db.urls import DatabaseURLError
from engine.catalog import FRAMEWORKS, default_mode, framework_label
from engine.launch import default_url_for
from engine.batches import steps_per_epoch
from engine.ray_executor import IN_RAY_QUEUE
from engine.run_ids import MAX_RUN_ID, parse_run_id
from engine.spec import RunSpec, SpecError
from pages.page_errors import escape_markdown, guarded, shown  # noqa: F401 (pages call common.escape_markdown, guarded)

LAUNCH_PAGE, RUNS_PAGE, COMPARE_PAGE = "pages/launch.py", "pages/runs.py", "pages/compare.py"
RUNS_PARAM = "runs"  # query parameter carrying run ids, e.g. /compare?runs=3,4
REFRESH_INTERVAL = "2s"  # how often live views poll the database while a run is active
LAUNCHED_KEY = "launched_run_ids"  # session state: the runs just launched, for Compare to pick up
SHOWN_CHARS = 40  # of a bad value from a link, in a message
TOASTS_KEY = "arena_pending_toasts"  # session state: confirmations to show once the page has rerun

# One colour per framework on every page. Several runs of one framework take the next shades of
# its hue (reds for PyTorch, blues for TensorFlow), so each run keeps a colour of its own and its
# framework still shows at a glance; the line style says the framework too (solid / dashed).
FRAMEWORK_COLORS = {"torch": "#EE4C2C", "tensorflow": "#1A73E8"}
FRAMEWORK_PALETTES = {
    "torch": ("#EE4C2C", "#9F1239", "#F59E0B", "#DB2777", "#7C2D12", "#FB7185"),
    "tensorflow": ("#1A73E8", "#0E7490", "#6366F1", "#0B3D91", "#22D3EE", "#7C3AED"),
}
FRAMEWORK_DASHES = {"torch": "solid", "tensorflow": "dash"}
UNKNOWN_FRAMEWORK_COLOR = "#6B7280"
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "star")

# Plain symbols, not emoji: table cells are drawn on a canvas, where emoji fonts are often missing.
STATUS_BADGES = {QUEUED: "○ queued", RUNNING: "● running", FINISHED: "✓ finished", FAILED: "✗ failed",
                 DIVERGED: "△ diverged", CANCELLED: "■ cancelled", LOST: "? lost"}
# Cancelled is a user's choice, not a fault: slate, not red; lost (a runner that vanished) its own pink.
STATUS_COLORS = {QUEUED: "#6B7280", RUNNING: "#B45309", FINISHED: "#15803D", FAILED: "#B91C1C",
                 DIVERGED: "#7C3AED", CANCELLED: "#475569", LOST: "#BE185D"}
# Why a run ended early, in words; a plain error adds nothing to "failed", so it has none. A lost
# run says whether its process ended (this host saw it go) or its heartbeat stopped (another host's).
REASON_LABELS = {OUT_OF_MEMORY: "out of memory", NON_FINITE_LOSS: "loss not finite",
                 queries.PROCESS_GONE: "process ended", queries.NO_HEARTBEAT: "no heartbeat"}

# Per-epoch metrics: loading only these skips the thousands of per-step losses a run records.
EPOCH_METRICS = (
    "train_loss", "test_loss", "test_accuracy", "phi_estimate", "phi_true", "epoch_time_s", "samples_per_s",
)


# Routing ----------------------------------------------------------------------------------
PAGE_CONFIG = dict(page_title="Arena", page_icon=":material/sports_martial_arts:", layout="wide")
NAVIGATION_POSITION = "top"


def router_pages() -> list:
    """The app's pages, in menu order (app.py routes through these)."""
    return [
        st.Page(LAUNCH_PAGE, title="Launch", icon=":material/rocket_launch:"),
        st.Page(RUNS_PAGE, title="Runs", icon=":material/table_rows:"),
        st.Page(COMPARE_PAGE, title="Compare", icon=":material/compare_arrows:"),
        st.Page("pages/devices.py", title="Devices", icon=":material/memory:"),
    ]


def ensure_router() -> None:
    """Give this page the router's layout, menu and failure messages even when it was served without app.py.

    With a pages/ folder beside the entrypoint, Streamlit starts in its legacy pages-folder mode
    until some session calls st.navigation: a link like /compare?runs=3,4 opened first after a
    server start runs the page alone, in a narrow layout, with every module in pages/ (common,
    charts ...) listed as a page. Calling st.navigation here replaces that menu and turns the
    mode off for the whole process. The page then runs as app.py would run it (routed, its failures
    shown in words) within this same script run, so a click that started it is not lost, and the
    legacy run stops here. Streamlit has no public way to ask for the mode, hence the private flag.
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


# Database ---------------------------------------------------------------------------------
def db_url() -> str:
    """The runner-ready URL of the database ARENA_DB_URL / ARENA_HOME point at right now."""
    return default_url_for(None)


@st.cache_resource(show_spinner=False)
def _sessionmaker_for(url: str) -> sessionmaker[Session]:
    return make_sessionmaker(url)


def sessions() -> sessionmaker[Session]:
    """One sessionmaker (and engine) per process and database URL; a bad URL stops the page with what to fix."""
    try:
        url = db_url()  # validated on the way (engine.launch.default_url_for)
    except DatabaseURLError as exc:
        st.error(f"**The database cannot be used.** {escape_markdown(str(exc))}. Set `ARENA_DB_URL` to a "
                 "SQLite file (`sqlite:////path/to/arena.db`) or a PostgreSQL server "
                 "(`postgresql+psycopg://user@host/arena`), or unset it for the embedded default, and restart.",
                 icon=":material/database:")
        st.stop()
    return _sessionmaker_for(url)


def epoch_metrics(s: Session, run_ids: Sequence[int]) -> dict[int, dict[str, list[float]]]:
    """Per-epoch metric values in epoch order, per run: {run_id: {name: [v1, v2, ...]}}."""
    result: dict[int, dict[str, list[float]]] = {int(r): {} for r in run_ids}
    frame = queries.metric_frame(s, list(run_ids), EPOCH_METRICS) if run_ids else None
    if frame is None or frame.empty:
        return result
    for (run_id, name), group in frame.groupby(["run_id", "name"], sort=False):
        # A diverged metric is stored as NULL: it arrives as NaN and stays NaN (shown as "NaN").
        result[int(run_id)][name] = group.sort_values("epoch")["value"].astype(float).tolist()
    return result


def last(values: dict[str, list[float]], name: str) -> Optional[float]:
    """The final value of a per-epoch metric, or None when it was never recorded."""
    series = values.get(name)
    return series[-1] if series else None


def median(values: dict[str, list[float]], name: str) -> Optional[float]:
    """The median over epochs (throughput: robust to one noisy epoch), or None; NaN epochs are skipped."""
    series = [v for v in values.get(name, []) if math.isfinite(v)]
    return statistics.median(series) if series else None


def any_active(sessions_: sessionmaker[Session], run_ids: Optional[Sequence[int]] = None) -> bool:
    """True while any (of the given) runs is queued or running."""
    with sessions_.begin() as s:
        runs = queries.list_runs(s, statuses=ACTIVE_STATUSES)
    return any(run_ids is None or run.id in run_ids for run in runs)


# Runs -------------------------------------------------------------------------------------
def is_active(run: Run) -> bool:
    return run.status in ACTIVE_STATUSES


def status_badge(status: str) -> str:
    return STATUS_BADGES.get(status, status)


def status_color(status: str) -> str:
    return STATUS_COLORS.get(status, UNKNOWN_FRAMEWORK_COLOR)


def status_words(run: Run) -> str:
    """The status with why it ended early: "failed · out of memory", "diverged at step 12", "lost · no heartbeat"."""
    words = run.status
    if run.status == DIVERGED and (run.summary or {}).get("diverged_at_step") is not None:
        words += f" at step {run.summary['diverged_at_step']}"
    reason = REASON_LABELS.get(run.reason or "")
    if reason and not (run.status == DIVERGED and run.reason == NON_FINITE_LOSS):  # diverged says it already
        words += f" · {reason}"
    return words


def status_text(run: Run) -> str:
    """status_words behind the status's symbol: "✗ failed · out of memory"."""
    return status_badge(run.status).replace(run.status, status_words(run), 1)


def framework_color(framework: str) -> str:
    return FRAMEWORK_COLORS.get(framework, UNKNOWN_FRAMEWORK_COLOR)


def trace_name(run: Run) -> str:
    """Legend name of a run in charts and column name in tables: "#3 PyTorch"."""
    return f"#{run.id} {framework_label(run.framework)}"


def run_label(run: Run) -> str:
    """Picker label: "#3 PyTorch mlp/digits · eager fp32 · seed 0 (finished)"."""
    seed = (run.spec or {}).get("seed")
    return (f"{trace_name(run)} {run.model}/{run.dataset} · {run_mode(run)} {run_precision(run)}"
            + (f" · seed {seed}" if seed is not None else "") + f" ({status_words(run)})")


def trace_styles(runs: Sequence[Run]) -> dict[int, dict]:
    """A colour per run from its framework's palette (by rank among the chosen runs of that framework),
    the framework's line style, a marker per rank.

    The first run of each framework gets the framework's own colour, so a PyTorch/TensorFlow pair
    looks the same on every page. Width and marker size shrink with each run drawn, so curves that
    coincide (a fair pair often does) show as a thin line on a wider one instead of one hiding the other.
    """
    styles, seen = {}, {}
    for index, run in enumerate(sorted(runs, key=lambda r: r.id)):
        rank = seen.get(run.framework, 0)
        seen[run.framework] = rank + 1
        palette = FRAMEWORK_PALETTES.get(run.framework, (UNKNOWN_FRAMEWORK_COLOR,))
        styles[run.id] = {
            "color": palette[rank % len(palette)],
            "dash": FRAMEWORK_DASHES.get(run.framework, "dot"),
            "symbol": SYMBOLS[rank % len(SYMBOLS)],
            "width": max(5.0 - 2.0 * index, 1.5),
            "size": max(12 - 4 * index, 5),
        }
    return styles


def device_text(run: Run, queued_ids: Sequence[int] = ()) -> str:
    """Where a run ran or will run: "cuda:1"; a queued run waits: "waiting for cuda:0 (2nd in queue)".

    queued_ids: the ids of every queued run, for the run's place in the queue (oldest first, as the
    scheduler takes them). Runs stored before placement existed show the device their environment recorded.
    """
    if run.status == QUEUED:
        if run.placed_device in IN_RAY_QUEUE:
            return IN_RAY_QUEUE[run.placed_device]
        if run.placed_device:
            return f"starting on {run.placed_device}"
        asked = (run.spec or {}).get("device") or "auto"
        waiting = f"waiting for {'a free device' if asked == 'auto' else asked}"
        queue = sorted(queued_ids)
        return waiting + (f" ({ordinal(queue.index(run.id) + 1)} in queue)" if run.id in queue else "")
    return run.placed_device or str((run.environment or {}).get("device") or "")


def ordinal(n: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th", 23 -> "23rd"."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def unix_time(moment: Optional[datetime]) -> Optional[float]:
    """Seconds since the epoch of a naive-UTC database timestamp."""
    return moment.replace(tzinfo=timezone.utc).timestamp() if moment else None


def utc_now() -> datetime:
    return queries.utcnow()


def elapsed_s(run: Run, now: Optional[datetime] = None) -> Optional[float]:
    """Seconds the run has trained: start to finish, or start to now while running."""
    if run.started_at is None:
        return None
    end = run.finished_at or (now or utc_now())
    return max((end - run.started_at).total_seconds(), 0.0)


def total_steps(run: Run) -> Optional[int]:
    """Optimizer steps the whole run will take: stored when queued, else derived from its spec."""
    if run.total_steps:
        return run.total_steps
    try:
        spec = RunSpec.from_dict(run.spec)
    except (SpecError, TypeError):
        return None
    return steps_per_epoch(spec, spec.train_size()) * run.total_epochs


def run_mode(run: Run) -> str:
    """Execution mode id ("eager", "graph" ...); runs stored before modes existed ran in the default one."""
    mode = (run.summary or {}).get("mode") or (run.spec or {}).get("mode")
    if mode:
        return mode
    return default_mode(run.framework) if run.framework in FRAMEWORKS else "—"


def run_precision(run: Run) -> str:
    """"fp32" or "mixed"; runs stored before precisions existed trained in fp32."""
    return (run.spec or {}).get("precision") or "fp32"


def progress_fraction(run: Run) -> float:
    """Fraction of the run done, by optimizer steps (finer than epochs); 1.0 once finished."""
    if run.status == FINISHED:
        return 1.0
    steps = total_steps(run)
    if steps:
        return min(run.step / steps, 1.0)
    return min(run.epoch / run.total_epochs, 1.0) if run.total_epochs else 0.0


def eta_s(run: Run, now: Optional[datetime] = None) -> Optional[float]:
    """Seconds left for a running run, extrapolated from its elapsed time and fraction done."""
    if run.status != RUNNING:
        return None
    fraction, elapsed = progress_fraction(run), elapsed_s(run, now)
    if not elapsed or fraction <= 0.0:
        return None
    return elapsed * (1.0 - fraction) / fraction


def error_summary(error: Optional[str]) -> str:
    """The last non-empty line of a traceback: usually the exception and its message."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


# Run ids across pages -----------------------------------------------------------------------
def split_run_ids(text: Optional[str]) -> tuple[list[int], list[str]]:
    """Run ids from "3,4" or "#3, #4" (in order, once each), and the parts that are not run ids.

    Strict: ASCII digits within engine.run_ids.MAX_RUN_ID ("²".isdigit() is true, int("²") fails).
    """
    ids: list[int] = []
    bad: list[str] = []
    for part in (text or "").replace(" ", "").split(","):
        if not part:
            continue
        try:
            run_id = parse_run_id(part.removeprefix("#"))
        except ValueError:
            bad.append(part)
            continue
        if run_id not in ids:
            ids.append(run_id)
    return ids, bad


def parse_run_ids(text: Optional[str]) -> list[int]:
    """Run ids from "3,4" or "#3, #4"; anything that is not a run id is left out (split_run_ids names it)."""
    return split_run_ids(text)[0]


def not_run_ids_message(param: str, bad: Sequence[str]) -> str:
    """Markdown naming the parts of a link's parameter that are not run ids."""
    listed = ",".join(part if len(part) <= SHOWN_CHARS else part[:SHOWN_CHARS] + "…" for part in bad[:5])
    listed += f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    verb = "is not a run id" if len(bad) == 1 else "are not run ids"
    return f"Ignored in the link: {escape_markdown(f'{param}={listed}')} {verb} (whole numbers 1 to {MAX_RUN_ID:,})."


def format_run_ids(run_ids: Sequence[int]) -> str:
    return ",".join(str(i) for i in run_ids)


def requested_run_ids(say_ignored: bool = True) -> list[int]:
    """Run ids this page was opened with (?runs=3,4); a warning names the parts that are not run ids."""
    ids, bad = split_run_ids(st.query_params.get(RUNS_PARAM))
    if bad and say_ignored:
        st.warning(not_run_ids_message(RUNS_PARAM, bad), icon=":material/warning:")
    return ids


# Formatting ---------------------------------------------------------------------------------
def format_duration(seconds: Optional[float]) -> str:
    """Human duration: "35 ms", "4.2 s", "42 s", "3 min 05 s", "1 h 02 min"; "—" when unknown."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_number(value: Optional[float], digits: int = 4) -> str:
    """Significant-digit formatting for metrics; "—" when missing."""
    if value is None:
        return "—"
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else str(value)
    return f"{value:,.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"


def format_rate(samples_per_s: Optional[float]) -> str:
    return "—" if samples_per_s is None else f"{samples_per_s:,.0f} samples/s"


def format_percent(fraction: Optional[float]) -> str:
    if fraction is None:
        return "—"
    return f"{100 * fraction:.1f} %" if math.isfinite(fraction) else format_number(fraction)


# Shared widgets -----------------------------------------------------------------------------
def no_runs_yet(what: str) -> None:
    """Empty state: nothing is stored yet, so say what to do next."""
    st.info(f"No runs yet. {what}", icon=":material/info:")
    st.page_link(LAUNCH_PAGE, label="Launch your first run", icon=":material/rocket_launch:")
