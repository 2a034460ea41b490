"""The building blocks of a report document, shared by every section writer (report.py,
latency_report.py, study_figures.py): headings, paragraphs, tables, figures, and how numbers are
written in them. report.py's renderers turn a list of blocks into Markdown and HTML."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    filename: str
    png: bytes
    alt: str


# ----- numbers ------------------------------------------------------------------------
def pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def signed_pct(x) -> str:
    return "–" if x is None else f"{100 * x:+.1f}%"


def nbytes(x) -> str:
    return "–" if x is None else f"{x:,.0f}"


def gflops(x) -> str:
    return "–" if x is None else f"{x / 1e9:.4g}"


def tau(x) -> str:
    if x is None:
        return "–"
    x = float(x)
    return "+∞" if x == math.inf else "−∞" if x == -math.inf else f"{x:.5g}"


def auc(x) -> str:
    return "–" if x is None else f"{x:.3f}"
