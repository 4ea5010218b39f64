"""Markdown reports from a benchmark's data: tables from rows, sections, notes, figures.

A report is a function of the JSON a benchmark writes, so that a committed report can be
rendered again from its committed data. Each helper returns lines to join with newlines; a
table is one such line that ends in a newline, so that it stands apart from what follows.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["bullets", "doc_paragraphs", "figures", "md_table", "paragraphs", "section"]


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table (with its trailing newline) of ``rows`` under ``header``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def paragraphs(*texts: str) -> list[str]:
    """Each text (a table is a text) followed by a blank line."""
    return [line for text in texts for line in (text, "")]


def section(heading: str, *texts: str, level: int = 2) -> list[str]:
    """A heading (``level`` 1 for a report's title) and its paragraphs, each after a blank
    line."""
    return [f"{'#' * level} {heading}", "", *paragraphs(*texts)]


def bullets(heading: str, items: Sequence[str]) -> list[str]:
    """A section of one bullet per item."""
    return [f"## {heading}", "", *[f"- {item}" for item in items], ""]


def figures(files: Sequence[str], heading: str = "Plots") -> list[str]:
    """A section that shows each image file (none where there are no files)."""
    return [f"## {heading}", "", *[f"![{f}]({f})" for f in files], ""] if files else []


def doc_paragraphs(doc: str | None) -> list[str]:
    """The prose of a script's docstring, each paragraph on one line: what follows its
    summary line, less the indented command lines."""
    return [p.replace("\n", " ") for p in (doc or "").strip().split("\n\n")[1:]
            if not p.startswith(" ")]
