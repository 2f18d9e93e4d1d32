"""The documents stay true to the code that computes their figures."""

import pathlib

from golden.config import accelerator_preset, model_preset
from hw.flow.interfaces import interface_table
from m3vit.cli import fit_table

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_architecture_shows_the_current_fit_table():
    text = (DOCS / "architecture.md").read_text()
    begin, end = "<!-- fit-table:begin -->\n", "<!-- fit-table:end -->"
    shown = text[text.index(begin) + len(begin):text.index(end)]
    assert shown.strip() == fit_table().strip(), "regenerate with `m3vit fit --table`"


def _shown(name):
    text = (DOCS / "architecture.md").read_text()
    begin, end = f"<!-- {name}:begin -->\n", f"<!-- {name}:end -->"
    return text[text.index(begin) + len(begin):text.index(end)]


def test_architecture_shows_the_interfaces_of_the_signatures():
    expected = interface_table(model_preset("m3vit-tiny-cityscapes"), accelerator_preset("16x16"))
    assert _shown("interfaces").strip() == expected.strip(), "regenerate with `m3vit interfaces`"


def test_architecture_shows_the_instruction_set_and_registers():
    from hw.flow.interfaces import instruction_table
    expected = instruction_table(model_preset("m3vit-tiny-cityscapes"), accelerator_preset("16x16"))
    assert _shown("instructions").strip() == expected.strip(), "regenerate with `m3vit interfaces --instructions`"
