"""The documents stay true to the code that computes their figures."""

import pathlib

from m3vit.cli import fit_table

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_architecture_shows_the_current_fit_table():
    text = (DOCS / "architecture.md").read_text()
    begin, end = "<!-- fit-table:begin -->\n", "<!-- fit-table:end -->"
    shown = text[text.index(begin) + len(begin):text.index(end)]
    assert shown.strip() == fit_table().strip(), "regenerate with `m3vit fit --table`"
