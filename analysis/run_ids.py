"""Run ids in links and text: "3,4" or "#3, #4" read strictly, the parts that are not run ids named."""
from __future__ import annotations

from typing import Optional, Sequence

from analysis.formatting import escape_markdown
from engine.run_ids import MAX_RUN_ID, parse_run_id

SHOWN_CHARS = 40  # of a bad value from a link, in a message


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
