"""Markdown reports from a benchmark's data: tables from rows, sections, notes, figures.

A report is a function of the JSON a benchmark writes, so that a committed report can be
rendered again from its committed data. Each helper returns lines to join with newlines.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["bullets", "figures", "md_table", "section"]


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table (with its trailing newline) of ``rows`` under ``header``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def section(heading: str, *paragraphs: str) -> list[str]:
    """A ``##`` heading and its paragraphs (a table is a paragraph), each after a blank line."""
    out = [f"## {heading}", ""]
    for paragraph in paragraphs:
        out += [paragraph, ""]
    return out


def bullets(heading: str, items: Sequence[str]) -> list[str]:
    """A section of one bullet per item."""
    return [f"## {heading}", "", *[f"- {item}" for item in items], ""]


def figures(files: Sequence[str], heading: str = "Plots") -> list[str]:
    """A section that shows each image file (none where there are no files)."""
    return [f"## {heading}", "", *[f"![{f}]({f})" for f in files], ""] if files else []
