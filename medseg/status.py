"""The words a batch run uses for what became of each case: ``summary.csv``, ``summary.html``,
:class:`medseg.batch.BatchSummary` and ``medseg batch`` all say them, defined here once.

They sit in the core, below both :mod:`medseg.report` (the summary page) and
:mod:`medseg.batch` (the ledger and ``summary.csv``), so that each imports them without
importing the other. The ledger's own statuses (:class:`medseg.batch.CaseStatus`: ``queued``,
``running``, ``done``, ``failed``) take ``done`` and ``failed`` from here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = ["SummaryStatus", "count_statuses"]


class SummaryStatus(enum.StrEnum):
    """What became of a case in a run, as its summaries say it (``str()`` is the word).

    ``done``: ran in this run and finished. ``skipped``: done in an earlier run with the same
    input and model, so not run again. ``failed``: failed in this run, or in an earlier one
    and not retried (``summary.csv``'s ``ran`` column says which). ``interrupted``: the run
    was stopped (SIGINT, SIGTERM) before the case finished; the next run runs it.
    """

    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    @property
    def ok(self) -> bool:
        """True for a case whose results are there (done now or before)."""
        return self in (SummaryStatus.DONE, SummaryStatus.SKIPPED)


def count_statuses(statuses: Iterable[SummaryStatus]) -> str:
    """``"5 cases: 3 done, 1 skipped, 1 failed"``: the number of cases, then each status that
    occurs, in the order of :class:`SummaryStatus`.

    Example:
        >>> count_statuses([SummaryStatus.FAILED, SummaryStatus.DONE, SummaryStatus.DONE])
        '3 cases: 2 done, 1 failed'
        >>> count_statuses([SummaryStatus.INTERRUPTED])
        '1 case: 1 interrupted'
        >>> count_statuses([])
        '0 cases'
    """
    given = list(statuses)
    cases = "case" if len(given) == 1 else "cases"
    counts = [f"{given.count(s)} {s}" for s in SummaryStatus if s in given]
    return f"{len(given)} {cases}" + (": " + ", ".join(counts) if counts else "")
