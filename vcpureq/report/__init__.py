"""Text and HTML output of verdicts and counterexamples."""

from .html import counterexample_html, write_reports
from .text import counterexample_text, verdict_table, what_broke

__all__ = ["counterexample_html", "counterexample_text", "verdict_table", "what_broke",
           "write_reports"]
