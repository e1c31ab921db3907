"""What a clinician and an operator look at: the QA page of a case and the batch summary page.

- :func:`write_report` writes a case's ``report.html``: views through every lesion with the
  contours drawn from the exported RT-STRUCT, the volumes, the lesion table and, with a
  reference, the agreement metrics (:mod:`medseg.report.views` draws the PNG views).
- :func:`write_volumes_json` and :func:`write_lesions_csv` write a case's ``volumes.json`` and
  ``lesions.csv`` from the same :class:`~medseg.postprocess.VolumesReport` the page shows.
- :func:`write_summary_page` writes a batch's ``summary.html``: one row per case.
"""

from __future__ import annotations

from medseg.report.case import MAX_LESIONS_PER_LABEL, REPORT_TOLERANCE_MM, write_report
from medseg.report.summary import (
    SUMMARY_PAGE,
    CaseSummary,
    SummaryStatus,
    read_case_summary,
    write_summary_page,
)
from medseg.report.tables import LESION_CSV_COLUMNS, write_lesions_csv, write_volumes_json

__all__ = [
    "LESION_CSV_COLUMNS",
    "MAX_LESIONS_PER_LABEL",
    "REPORT_TOLERANCE_MM",
    "SUMMARY_PAGE",
    "CaseSummary",
    "SummaryStatus",
    "read_case_summary",
    "write_lesions_csv",
    "write_report",
    "write_summary_page",
    "write_volumes_json",
]
