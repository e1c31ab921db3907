"""Batch runs: every study under a folder tree (or fetched from a PACS) through the per-case
pipeline, recorded in a ledger so that a run can stop anywhere and the next one picks up.

A *case* is one study. :func:`discover_cases` groups the DICOM files under the input root by
study (``medseg.io.dicom``) and the config's series selection rules pick the series to
segment; :func:`run_cases` runs :func:`medseg.pipeline.predict_case` on each case that needs
it, on one of three executors that run the same function, :func:`run_case`:

* ``local``: in this process, one case after the other;
* ``pool``: ``workers`` processes (``multiprocessing`` spawn), each loading the model once;
* ``ray``: one Ray task per case, with ``batch.cpus_per_case`` / ``batch.gpus_per_case``
  resources, on a local Ray instance or the cluster at ``ray_address``.

Every run of the family (:func:`run_batch`, :func:`run_cases`,
:func:`medseg.batch.orthanc.run_pacs`, :func:`medseg.batch.listener.listen`) takes its
run-wide options as one :class:`RunOptions`: series selection, batch settings, privacy,
executor, workers, ``retry_failed``, Ray address and a progress callback.

What became of each case is said in the words of :class:`SummaryStatus` (``done``,
``skipped``, ``failed``, ``interrupted``), the same in ``summary.csv``, ``summary.html`` and
:class:`BatchSummary`; the ledger keeps its own :class:`CaseStatus` (``queued``, ``running``,
``done``, ``failed``).

``batch.case_timeout_s`` (default: none) limits each case, counted from when its worker has
the model loaded and starts it: the worker is killed, the case fails with
:class:`~medseg.errors.CaseTimeoutError`, its half-written temporary folder is removed and a
new worker takes the next case. Only a process can be stopped safely mid-case, so with a
limit ``local`` runs its cases in one worker process; Ray does not apply the limit. A pool
worker that dies (out of memory) fails its own case only.

Only the driver (the process calling :func:`run_cases`) writes the ledger, so it stays the one
source of truth whatever the executor. Layout of ``OUTPUT_ROOT``::

    ledger.sqlite          cases, attempts, runs and PACS deliveries (SQLite)
    .medseg-salt           the key of this root's case ids (keep it with the ledger)
    summary.csv            one row per case of the latest run
    cases/<case_id>/       rtstruct.dcm, seg.dcm, labels.nii.gz, volumes.json, lesions.csv,
                           report/ and case.json (what produced the folder)
    .staging/<case_id>/    links to (or downloads of) a case's input files while it runs;
                           removed when the case ends, done or failed, and all of .staging
                           when a run starts and ends: the links' targets name input folders
    .lock                  held by the run in progress; a second run on the same root refuses

A ``ledger.sqlite`` that is not a medseg ledger (not SQLite, cut short, damaged, another
program's database) stops the run with a :class:`~medseg.errors.ConfigError` naming it, and
is left as it is; one that another process holds locked is waited for
``batch.ledger_timeout_s`` seconds (default 30), then refused the same way.

A case folder is written to a hidden temporary sibling and renamed into place, so it is
complete or absent; a run killed at any point leaves only hidden temporaries, which the next
run removes before it starts. Cases left ``running`` by a killed run are looked at again: if
their folder is complete (its ``case.json`` names the same input fingerprint and model) they
are marked done without running again, otherwise they run. A done case runs again only when
its input fingerprint or the model changed; a failed one when its input changed or with
``retry_failed``.

SIGINT (Ctrl-C) and SIGTERM stop a run cleanly (from the main thread: the handlers are
installed while :func:`run_batch` / :func:`run_cases` run, and the previous ones restored).
The cases in flight are abandoned, not waited for: pool workers are killed (they ignore both
signals themselves, so Ctrl-C to the terminal's process group cannot cut a case in half), a
case running in this process is interrupted, and half-written folders are removed. Those
cases go back to ``queued`` in the ledger (their attempt ``interrupted``), unless a case's
folder was complete, which counts as done, exactly as after a kill. ``summary.csv`` and
``summary.html`` list every case not finished as ``interrupted``, then
:class:`BatchInterrupted` is raised: ``medseg batch`` prints its one line
(``interrupted: N cases not finished; summary: PATH``) and exits 128 + the signal number
(130 for SIGINT, 143 for SIGTERM). The next run runs the unfinished cases. A signal while
the ledger or the summaries are written waits for them.

Case ids are ``case-`` and 16 hex digits of an HMAC-SHA256 of the StudyInstanceUID keyed with
the output root's random salt (``OUTPUT_ROOT/.medseg-salt``, :mod:`medseg.privacy`), so logs
and the ledger carry no patient names, IDs or folder names, and an id cannot be matched to a
guessed UID without the salt. Logs name cases by id and errors by class only; the messages go
to the ledger and ``summary.csv`` and name the numbered links of ``.staging/<case_id>/``, never
input paths (``medseg inspect INPUT_ROOT`` names the files). Series are named by UID,
modality, number and size: SeriesDescription is free text that clinics fill with anything,
patient names included. With ``privacy.log_identifiers`` (``--config``), each case's input
folder is logged too and messages show series descriptions.

Input files reached through symlinks under the input root (a file link, a linked folder) are
part of the input, named by their paths under the root as the walk found them, never by their
targets.
"""

from __future__ import annotations

from medseg.batch.cases import (
    CASES_DIR,
    LEDGER_NAME,
    SUMMARY_NAME,
    BatchInterrupted,
    BatchProgress,
    BatchSummary,
    CaseOutcome,
    CaseSpec,
    CaseStatus,
    CaseTask,
    Executor,
    ModelRef,
    SummaryRow,
    case_id_for,
    discover_cases,
    resolve_model_ref,
)
from medseg.batch.driver import (
    claim_output_root,
    link_inputs,
    run_batch,
    run_cases,
    write_summary_csv,
)
from medseg.batch.executors import run_case
from medseg.batch.ledger import Ledger
from medseg.batch.options import RunOptions
from medseg.status import SummaryStatus

__all__ = [
    "CASES_DIR",
    "LEDGER_NAME",
    "SUMMARY_NAME",
    "BatchInterrupted",
    "BatchProgress",
    "BatchSummary",
    "CaseOutcome",
    "CaseSpec",
    "CaseStatus",
    "CaseTask",
    "Executor",
    "Ledger",
    "ModelRef",
    "RunOptions",
    "SummaryRow",
    "SummaryStatus",
    "case_id_for",
    "claim_output_root",
    "discover_cases",
    "link_inputs",
    "resolve_model_ref",
    "run_batch",
    "run_case",
    "run_cases",
    "write_summary_csv",
]
