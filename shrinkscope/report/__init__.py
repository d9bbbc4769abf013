"""Reports of codebook health: terminal text, PNG plots, self-contained HTML, JSONL timelines.

matplotlib/umap are imported only inside the plotting functions.
"""

from .html import write_analysis_report, write_comparison_report
from .text import analysis_text, comparison_text, health_table
from .timeline import Timeline, TimelineError, read_timeline, timeline_text, write_timeline_report

__all__ = [
    "analysis_text", "comparison_text", "health_table", "read_timeline", "Timeline", "TimelineError",
    "timeline_text", "write_analysis_report", "write_comparison_report", "write_timeline_report"
]
