"""Tables of results: Markdown and CSV of analyses, and the side-by-side comparison of runs."""

from .tables import (
    COMPARE_METRICS,
    DEFAULT_COMPARE_METRICS,
    analysis_markdown,
    analysis_rows,
    compare_markdown,
    markdown_table,
    result_markdown,
    result_rows,
    write_analysis,
    write_csv,
)

__all__ = [
    "COMPARE_METRICS",
    "DEFAULT_COMPARE_METRICS",
    "analysis_markdown",
    "analysis_rows",
    "compare_markdown",
    "markdown_table",
    "result_markdown",
    "result_rows",
    "write_analysis",
    "write_csv",
]
