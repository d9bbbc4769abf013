"""Reports of codebook health: terminal text, Display objects for plots, self-contained HTML, JSONL timelines.

Plots follow scikit-learn's Display pattern: ``CodebookDisplay.from_entry(entry)`` (or ``from_health``,
``from_comparison``) computes what will be drawn, ``.plot(ax=...)`` draws it and returns the display with
``figure_`` / ``ax_``. matplotlib (and umap, only when a UMAP projection is asked for) are imported only when
something is drawn.
"""

from .codebook import CodebookDisplay
from .depth import DepthDisplay
from .distances import DistanceDisplay
from .html import write_analysis_report, write_comparison_report
from .projection import ProjectionDisplay
from .spectrum import SpectrumDisplay
from .text import analysis_text, comparison_text, health_table
from .timeline import Timeline, TimelineDisplay, TimelineError, read_timeline, timeline_text
from .timeline_page import write_timeline_report
from .usage import UsageDisplay

__all__ = [
    "analysis_text",
    "CodebookDisplay",
    "comparison_text",
    "DepthDisplay",
    "DistanceDisplay",
    "health_table",
    "ProjectionDisplay",
    "read_timeline",
    "SpectrumDisplay",
    "Timeline",
    "TimelineDisplay",
    "TimelineError",
    "timeline_text",
    "UsageDisplay",
    "write_analysis_report",
    "write_comparison_report",
    "write_timeline_report",
]
