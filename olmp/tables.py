"""The one markdown table writer: every table under results/ has the same form, so a reader's diff
of a regenerated file shows changed numbers, never changed layout."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def row(cells: Iterable[object]) -> str:
    """One table row; an empty cell is written as an empty string between its bars."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(head: Sequence[str], rows: Iterable[Iterable[object]]) -> list[str]:
    """The table's lines: header, separator, one line per row (cells as given, converted with str)."""
    return [row(head), "|" + "---|" * len(head)] + [row(r) for r in rows]
