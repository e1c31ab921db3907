"""HTML building blocks shared by the case page and the summary page: style, tables, numbers."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

__all__ = ["STYLE", "Markup", "fmt", "html_table"]

STYLE = """body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #111; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
th { background: #eee; }
figure { display: inline-block; margin: 0.3em; }
figure img { max-width: 30vw; height: auto; border: 1px solid #444; }
.note { color: #555; font-size: 0.9em; }
.warning { color: #a00; font-weight: bold; }
tr.failed td { background: #fdd; }
tr.interrupted td { background: #fec; }
tr.outside td { background: #fec; }"""


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else ("inf" if value > 0 else "-inf")


def html_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], row_classes: Sequence[str] = ()
) -> str:
    """An HTML table; cells are escaped, except those given as ``Markup``."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        (f'<tr class="{row_classes[i]}">' if i < len(row_classes) and row_classes[i] else "<tr>")
        + "".join(
            f"<td>{cell if isinstance(cell, Markup) else html.escape(cell)}</td>" for cell in row
        )
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Markup(str):
    """A table cell that is already HTML (built from escaped parts)."""

    __slots__ = ()
