"""Numbers, durations and texts as the dashboard shows them: "4.2 s", "1,234 samples/s", "NaN", "2nd"."""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Optional

MIB, GIB = 2**20, 2**30


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


def format_ms(milliseconds: Optional[float]) -> Optional[str]:
    """Step and inference latencies: "0.412 ms", "3.21 ms", "42.7 ms", "1,204 ms"; None stays None."""
    if milliseconds is None or not isinstance(milliseconds, (int, float)) or not math.isfinite(milliseconds):
        return None
    if milliseconds < 1:
        return f"{milliseconds:.3f} ms"
    if milliseconds < 10:
        return f"{milliseconds:.2f} ms"
    if milliseconds < 100:
        return f"{milliseconds:.1f} ms"
    return f"{milliseconds:,.0f} ms"


def format_bytes(value: float) -> str:
    """"38.2 KiB", "812.4 MiB", "3.21 GiB"."""
    if value >= GIB:
        return f"{value / GIB:,.2f} GiB"
    return f"{value / MIB:,.1f} MiB" if value >= MIB else f"{value / 1024:,.1f} KiB"


def format_energy(joules: float) -> str:
    return f"{joules / 3.6e6:.3f} kWh" if joules >= 3.6e5 else (f"{joules / 1e3:.2f} kJ" if joules >= 1e3
                                                                  else f"{joules:.1f} J")


def ordinal(n: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th", 23 -> "23rd"."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def error_summary(error: Optional[str]) -> str:
    """The last non-empty line of a traceback: usually the exception and its message."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def escape_markdown(text: str) -> str:
    """Text from a traceback or a driver shown in a markdown label without turning __init__ into bold."""
    for char in "\\`*_{}[]<>()#+-.!|$~:":
        text = text.replace(char, "\\" + char)
    return text


def unix_time(moment: Optional[datetime]) -> Optional[float]:
    """Seconds since the epoch of a naive-UTC database timestamp."""
    return moment.replace(tzinfo=timezone.utc).timestamp() if moment else None
