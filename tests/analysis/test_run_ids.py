"""analysis/run_ids.py: run ids read from links, in order and once each."""
from __future__ import annotations

import pytest

from analysis.run_ids import parse_run_ids


@pytest.mark.parametrize("text, ids", [("3,4", [3, 4]), ("#3, #4", [3, 4]), ("4,x,4,", [4]), ("", []), (None, [])])
def test_parse_run_ids_keeps_numbers_in_order_once(text, ids):
    assert parse_run_ids(text) == ids
