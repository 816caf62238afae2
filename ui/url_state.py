"""Widget settings that live in the URL, so a view can be bookmarked, shared and reloaded as it was.

A widget keyed `key` is seeded once per session from its query parameter (before the widget is
drawn, through session state, so the widget takes no default argument of its own); after it is
drawn, `sync` writes its value back, leaving the parameter out while it holds the default, which
keeps shared links short.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Optional, Sequence

import streamlit as st

_IGNORED_KEY = "url_state_ignored"  # session state: URL values that could not be read, to say so once
# Plain decimal numbers as a link holds them. float() would also take "nan", "inf", "1_0" and other
# scripts' digits; int() the digits too ("²".isdigit() is true, int("٣") is 3).
_NUMBER = re.compile(r"[+-]?([0-9]{1,15}(\.[0-9]{0,15})?|\.[0-9]{1,15})([eE][+-]?[0-9]{1,3})?", re.ASCII)
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,15}", re.ASCII)


def seed(key: str, param: str, default: Any, parse: Callable[[str], Any] = str,
         choices: Optional[Sequence[Any]] = None) -> None:
    """Put the URL's value (else the default) in st.session_state[key] unless the widget has a value already.

    A value that does not parse or is not among `choices` is ignored (the default is used) and
    listed by `ignored()`, so a mistyped link says what it dropped instead of failing.
    """
    if key in st.session_state:
        return
    raw = st.query_params.get(param)
    value = default
    if raw is not None:
        try:
            parsed = parse(raw)
        except (TypeError, ValueError):
            parsed = None
        if parsed is None or (choices is not None and parsed not in choices):
            st.session_state.setdefault(_IGNORED_KEY, []).append(f"{param}={raw}")
        else:
            value = parsed
    st.session_state[key] = value


def seed_list(key: str, param: str, default: Sequence[str], choices: Optional[Sequence[str]] = None) -> None:
    """seed() for a multiselect: a comma-separated list; unknown items are dropped (and listed by ignored())."""
    if key in st.session_state:
        return
    raw = st.query_params.get(param)
    if raw is None:
        st.session_state[key] = list(default)
        return
    items = [item for item in raw.split(",") if item]
    unknown = [item for item in items if choices is not None and item not in choices]
    if unknown:
        st.session_state.setdefault(_IGNORED_KEY, []).append(f"{param}={','.join(unknown)}")
    st.session_state[key] = [item for item in items if item not in unknown]


def sync(param: str, value: Any, default: Any, fmt: Callable[[Any], str] = str) -> None:
    """Write a widget's value to the URL, or drop the parameter while the value is the default."""
    if value == default:
        st.query_params.pop(param, None)
        return
    text = ",".join(str(item) for item in value) if isinstance(value, (list, tuple)) else fmt(value)
    if st.query_params.get(param) != text:
        st.query_params[param] = text


def ignored() -> list[str]:
    """URL values this session could not use, e.g. ["x=banana"]."""
    return list(st.session_state.get(_IGNORED_KEY, []))


def parse_float(text: str) -> float:
    """A finite decimal number ("0.6", "1e-3"); ValueError for "nan", "inf" and anything else."""
    value = float(text) if _NUMBER.fullmatch(text.strip()) else math.nan
    if not math.isfinite(value):  # "1e999" matches, and is inf
        raise ValueError(f"not a finite decimal number: {text!r}")
    return value


def parse_int(text: str) -> int:
    """A whole number in ASCII digits (at most 15 of them); ValueError otherwise."""
    if not _WHOLE_NUMBER.fullmatch(text.strip()):
        raise ValueError(f"not a whole number: {text!r}")
    return int(text)


def parse_bool(text: str) -> bool:
    """"1"/"true"/"on" and "0"/"false"/"off"; ValueError otherwise."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "on", "yes"):
        return True
    if lowered in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"not a switch value: {text!r}")


def format_bool(value: bool) -> str:
    return "1" if value else "0"
