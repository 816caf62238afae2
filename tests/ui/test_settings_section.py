"""ui/settings_section.py: every setting or only the differences, the choice kept in the URL."""
from __future__ import annotations

from dataclasses import fields

from engine.spec import RunSpec
from tests.ui.test_summary_section import open_tables
from ui.settings_section import SPEC_DIFF_PARAM


def spec_shown(at):
    return next(table.value for table in at.table if "framework" in table.value.index)


def test_the_toggle_shows_only_the_differences_or_every_setting_and_keeps_its_state_in_the_url(pair):
    at = open_tables()

    toggle = at.toggle(key="spec_diff_only")
    assert toggle.label == "Only differences" and toggle.value is True
    assert at.query_params[SPEC_DIFF_PARAM] == "diff"
    assert any(s.value == "Settings" for s in at.subheader)
    assert list(spec_shown(at).index) == ["framework", "mode"]
    assert any("differ only in framework and each framework's execution mode" in info.value for info in at.info)

    toggle.set_value(False).run()

    shown = spec_shown(at)
    assert list(shown.index) == [field.name for field in fields(RunSpec)]
    assert shown.loc["batch_size"].nunique() == 1
    assert at.query_params[SPEC_DIFF_PARAM] == "all"


def test_all_settings_in_the_url_turn_the_toggle_off(pair):
    at = open_tables(spec_diff="all")
    assert at.toggle(key="spec_diff_only").value is False
    assert len(spec_shown(at)) == len(fields(RunSpec))
