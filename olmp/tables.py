"""The one markdown table writer: every table under results/ has the same form, so a reader's diff
of a regenerated file shows changed numbers, never changed layout."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def row(cells: Iterable[object]) -> str:
    """One table row. An empty string is an empty cell between its bars (``|  |``); None is a cell
    with nothing in it (``| |``), the form the benchmark tables have always written for a missing value."""
    return "|" + "|".join(" " if c is None else f" {c} " for c in cells) + "|"


def markdown(head: Sequence[object], rows: Iterable[Iterable[object]]) -> list[str]:
    """The table's lines: header, separator, one line per row (cells as given, converted with str)."""
    return [row(head), "|" + "---|" * len(head)] + [row(r) for r in rows]
