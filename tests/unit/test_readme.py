"""README stays true: its first commands, and the tables generated from the code."""

from __future__ import annotations

import re

from server.config import markdown_table as settings_table
from server.metrics import markdown_table as metrics_table
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def _section(name: str) -> str:
    m = re.search(rf"<!-- {name} -->\n(.*?)\n<!-- /{name} -->", README, re.S)
    assert m, f"README lacks the {name} markers"
    return m.group(1)


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make run", "make test"]


def test_settings_table_matches_the_settings_class() -> None:
    assert _section("settings-table") == settings_table()


def test_metrics_table_matches_the_metrics_module() -> None:
    assert _section("metrics-table") == metrics_table()


def test_ci_runs_the_readme_test_command() -> None:
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)
