"""Run ids and counts typed by people (CLI arguments, ?runs= links): strict, bounded, named when wrong."""
from __future__ import annotations

import argparse

# runs.id is an INTEGER column: PostgreSQL's holds at most 2**31 - 1, so no run has a larger id on
# either database. Bounding ids (and --limit) here keeps a typo from overflowing a query parameter
# (SQLite's int64, PostgreSQL's int4) into a traceback.
MAX_RUN_ID = 2**31 - 1


def parse_run_id(text: str, high: int = MAX_RUN_ID) -> int:
    """A whole number in 1..high written in ASCII digits; ValueError naming the text otherwise.

    Stricter than int(): "²".isdigit() is true and int("٣") is 3, but neither is a run id anyone typed.
    """
    digits = text.strip() if isinstance(text, str) else ""
    if not (digits.isascii() and digits.isdigit()) or not digits.strip("0"):
        raise ValueError(f"{shown(text)} is not a whole number >= 1")
    # Compared as text first: int() of thousands of digits is slow, and refused past 4,300 of them.
    if len(digits.lstrip("0")) > len(str(high)) or int(digits) > high:
        raise ValueError(f"{shown(text)} is too large: at most {high}")
    return int(digits)


def run_id_argument(text: str) -> int:
    """argparse type for run ids and counts: parse_run_id, its error shown by argparse with the value."""
    try:
        return parse_run_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def shown(text: object, limit: int = 40) -> str:
    """repr(text), cut short past `limit` characters (saying how long it was), for a message."""
    if not isinstance(text, str) or len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"
