"""Batch cases: the output root's names, the types a batch passes around, and discovery of
the cases under an input root (see :mod:`medseg.batch` for the design)."""

from __future__ import annotations

import enum
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.config import BatchConfig, PrivacyConfig, SeriesSelection
from medseg.errors import InputError, UnreadableScanError
from medseg.io.dicom import Inventory, scan_folder, select_series
from medseg.privacy import pseudonym
from medseg.status import SummaryStatus

if TYPE_CHECKING:
    from medseg.evaluation import EvaluationSummary

__all__ = [
    "CASES_DIR",
    "LEDGER_NAME",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "STAGING_DIR",
    "SUMMARY_NAME",
    "BatchInterrupted",
    "BatchProgress",
    "BatchSummary",
    "CaseOutcome",
    "CaseSpec",
    "CaseStatus",
    "CaseTask",
    "Executor",
    "ModelRef",
    "SummaryRow",
    "case_id_for",
    "discover_cases",
    "resolve_model_ref",
]

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.sqlite"
SUMMARY_NAME = "summary.csv"
CASES_DIR = "cases"
MANIFEST_NAME = "case.json"
STAGING_DIR = ".staging"
_MODEL_DIR = ".model"
LOCK_NAME = ".lock"


class CaseStatus(str, enum.Enum):
    """A case's status in the ledger (``queued`` -> ``running`` -> ``done`` | ``failed``).

    ``done`` and ``failed`` are the words of :class:`~medseg.status.SummaryStatus`, which the
    summaries use. A case a stopped run did not finish goes back to ``queued`` (the summaries
    say ``interrupted``) rather than to a status of its own, and ``skipped`` is a summary's
    word for a case the ledger keeps ``done``: the CHECK constraint of ledgers already
    written allows only these four values.
    """

    QUEUED = "queued"
    RUNNING = "running"
    DONE = SummaryStatus.DONE.value
    FAILED = SummaryStatus.FAILED.value


class Executor(str, enum.Enum):
    """Where cases run: this process, a local process pool, or Ray."""

    LOCAL = "local"
    POOL = "pool"
    RAY = "ray"


@dataclass(frozen=True, slots=True)
class CaseSpec:
    """One case found by discovery (or a PACS query), before it runs.

    Attributes:
        case_id: PHI-free id (:func:`case_id_for`).
        study_instance_uid: the study; ``series_instance_uid``: the selected series (``None``
            when no series could be selected).
        fingerprint: identifies the input (selected series and its files); a different
            fingerprint makes a done case run again.
        files: the selected series' files (folder input; empty for PACS input).
        error: ``(error class, message)`` when the case already failed at discovery (no
            series matches the selection rules, an unreadable file); such a case never runs.
    """

    case_id: str
    study_instance_uid: str
    series_instance_uid: str | None
    fingerprint: str
    files: tuple[Path, ...] = field(default=(), repr=False)
    error: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model as workers load it: a local checkpoint and the id of its content."""

    path: Path
    model_id: str


@dataclass(frozen=True, slots=True)
class CaseTask:
    """What an executor hands to :func:`run_case` (picklable, no patient data)."""

    case_id: str
    input_dir: Path
    out_dir: Path
    model: ModelRef
    fingerprint: str
    study_instance_uid: str
    series_instance_uid: str | None


@dataclass(frozen=True, slots=True)
class CaseOutcome:
    """What :func:`run_case` returns; the driver records it in the ledger."""

    case_id: str
    status: CaseStatus
    seconds: float
    error_class: str | None = None
    error_message: str | None = None
    #: seconds per stage of the prediction (:mod:`medseg.timing`) of a case that finished
    stage_seconds: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Counts after each case, for a progress display."""

    total: int
    done: int
    failed: int
    skipped: int

    @property
    def finished(self) -> int:
        """Cases accounted for so far (done, failed or skipped)."""
        return self.done + self.failed + self.skipped


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """One case of a run, as written to ``summary.csv`` and ``summary.html``.

    ``status`` is ``done`` (ran now), ``skipped`` (done before with the same input and model;
    not run), ``failed`` (now, or before and not retried: then ``ran`` is False) or
    ``interrupted`` (the run was stopped before the case finished: ``ran`` says whether it had
    started; the next run runs it); see :class:`~medseg.status.SummaryStatus`.
    """

    case_id: str
    status: SummaryStatus
    ran: bool
    study_instance_uid: str
    series_instance_uid: str | None
    error_class: str | None
    error_message: str | None
    seconds: float | None
    out_dir: Path | None
    volumes_ml: dict[str, float]


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """The outcome of :func:`run_cases`; ``evaluation`` is the comparison with the reference
    RT-STRUCTs (``RunOptions.references``), None without references or when no finished case
    had one."""

    run_id: str
    rows: tuple[SummaryRow, ...]
    ledger_path: Path
    summary_path: Path
    evaluation: EvaluationSummary | None = None

    def count(self, status: SummaryStatus) -> int:
        """Cases of this run with ``status``."""
        return sum(r.status is status for r in self.rows)

    @property
    def n_done(self) -> int:
        """Cases done in this run."""
        return self.count(SummaryStatus.DONE)

    @property
    def n_skipped(self) -> int:
        """Cases done earlier and unchanged."""
        return self.count(SummaryStatus.SKIPPED)

    @property
    def n_failed(self) -> int:
        """Cases failed (now, or earlier and not retried)."""
        return self.count(SummaryStatus.FAILED)

    @property
    def n_interrupted(self) -> int:
        """Cases not finished because the run was stopped."""
        return self.count(SummaryStatus.INTERRUPTED)

    @property
    def ok(self) -> bool:
        """True when every case is done (now or before)."""
        return all(r.status.ok for r in self.rows)


class BatchInterrupted(KeyboardInterrupt):
    """A batch stopped by SIGINT (Ctrl-C) or SIGTERM, raised once the stop is recorded.

    By then the cases in flight were abandoned (their workers stopped, their half-written
    folders removed) and set back to ``queued``, and ``summary.csv`` and ``summary.html`` list
    them as ``interrupted``. It is a KeyboardInterrupt (for SIGTERM too) so that no ``except
    Exception`` swallows it and code that stops on Ctrl-C (the PACS listener) stops on it.
    ``str()`` is the one line the CLI prints; :attr:`exit_code` is its exit status.

    Attributes:
        signal_number: the signal received.
        summary: the run's summary (``None`` when stopped before the cases were known).
        n_unfinished: cases not finished (they run next time).
    """

    def __init__(self, signal_number: int, summary: BatchSummary | None, n_unfinished: int) -> None:
        super().__init__(signal_number, summary, n_unfinished)
        self.signal_number = signal_number
        self.summary = summary
        self.n_unfinished = n_unfinished

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended: 130 for
        SIGINT, 143 for SIGTERM."""
        return 128 + self.signal_number

    def __str__(self) -> str:
        if self.summary is None:
            return "interrupted before the cases were found: nothing ran; no summary written"
        cases = "case" if self.n_unfinished == 1 else "cases"
        return (
            f"interrupted: {self.n_unfinished} {cases} not finished; "
            f"summary: {self.summary.summary_path}"
        )


# ---------------------------------------------------------------------------------------------
# discovery and fingerprints


def case_id_for(uid: str, salt: bytes) -> str:
    """The PHI-free case id of a study: ``case-`` + 16 hex digits of HMAC-SHA256(salt, UID).

    ``salt`` is the output root's (:func:`medseg.privacy.load_salt`).

    Example:
        >>> case_id_for("1.2.3", b"0" * 32)
        'case-bff0413eec9998a5'
    """
    return pseudonym(uid, salt)


def _fingerprint(series_uid: str, files: Sequence[Path], root: Path, mode: str) -> str:
    digest = hashlib.sha256(series_uid.encode())
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        digest.update(b"\0" + path.relative_to(root).as_posix().encode())
        if mode == "content":
            with open(path, "rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
        else:
            stat = path.stat()
            digest.update(f":{stat.st_size}:{stat.st_mtime_ns}".encode())
    return "sha256:" + digest.hexdigest()[:32]


def discover_cases(
    input_root: Path,
    selection: SeriesSelection | None,
    settings: BatchConfig | None = None,
    *,
    salt: bytes,
    privacy: PrivacyConfig | None = None,
) -> tuple[CaseSpec, ...]:
    """One :class:`CaseSpec` per study under ``input_root`` (headers only; pixels unread).

    A study where the selection rules find no series (or several) is a case that already
    failed with the :class:`~medseg.errors.InputError` that lists its series; a file that
    looks like DICOM but cannot be parsed (and so belongs to no known study) is a failed case
    ``file-<hash>`` with an :class:`~medseg.errors.UnreadableScanError`. Case ids are keyed
    with ``salt``; ``selection`` ``None`` applies the default rules. Series are named by UID,
    modality, number and size, not by SeriesDescription (clinics put patient names there);
    with ``privacy.log_identifiers`` each case's input folder is logged and messages show
    descriptions too.

    Files are named by their paths under ``input_root`` as the walk found them (a file reached
    through a symlink is named by its path under the root, not by its target); the
    fingerprint hashes these paths and the size and time (or bytes) of the file each reaches.
    A study whose files cannot be read for the fingerprint (removed since the walk, no
    permission) is a failed case too.

    Raises:
        UnreadableScanError: ``input_root`` is not a directory.
    """
    settings = settings or BatchConfig()
    show = (privacy or PrivacyConfig()).log_identifiers
    root = Path(input_root)
    inventory = scan_folder(root)
    specs: list[CaseSpec] = []
    for study in inventory.studies:
        key = study.study_instance_uid or study.series[0].series_instance_uid
        case_id = case_id_for(key, salt)
        if show:
            folder = os.path.commonpath([str(f) for s in study.series for f in s.files])
            log.info("case %s: input %s (privacy.log_identifiers)", case_id, folder)
        # the case id stands in for the folder in messages: folder names may hold names
        sub = Inventory(Path(case_id), (study,), (), 0, 0)
        try:
            entry = select_series(sub, selection, log_identifiers=show)
        except InputError as exc:
            files = [f for s in study.series for f in s.files]
            try:
                fingerprint = _fingerprint("", files, root, settings.fingerprint)
            except OSError:
                fingerprint = ""
            specs.append(
                CaseSpec(
                    case_id,
                    study.study_instance_uid,
                    None,
                    fingerprint,
                    error=(type(exc).__name__, str(exc)),
                )
            )
            continue
        try:
            fingerprint = _fingerprint(
                entry.series_instance_uid, entry.files, root, settings.fingerprint
            )
        except OSError as exc:
            # the message would name the file (folder names may hold patient names)
            message = (
                f"{case_id}: a file of the selected series cannot be read "
                f"({exc.strerror or type(exc).__name__})"
            )
            specs.append(
                CaseSpec(
                    case_id,
                    study.study_instance_uid,
                    entry.series_instance_uid,
                    "",
                    error=(UnreadableScanError.__name__, message),
                )
            )
            continue
        specs.append(
            CaseSpec(
                case_id,
                study.study_instance_uid,
                entry.series_instance_uid,
                fingerprint,
                files=tuple(entry.files),
            )
        )
    for problem in inventory.problems:
        # the message would name the file, and folder names may hold patient names
        case_id = pseudonym("\0".join(problem.files), salt, prefix="file-")
        if show:
            log.info("case %s: input %s (privacy.log_identifiers)", case_id, problem.files[0])
        message = (
            f"{case_id}: a file under the input root looks like DICOM but cannot be "
            f"parsed; `medseg inspect INPUT_ROOT` names it"
        )
        specs.append(CaseSpec(case_id, "", None, "", error=(UnreadableScanError.__name__, message)))
    return tuple(specs)


def resolve_model_ref(model: str | Path, output_root: Path) -> ModelRef:
    """A local checkpoint (or k-fold ensemble folder) for ``model`` (a path or an MLflow URI)
    and its content id (of an ensemble: of its folds' checkpoints, in fold order).

    URIs are downloaded into ``output_root/.model`` so that pool and Ray workers (on a cluster:
    through the shared file system) read the same file.

    Raises:
        ModelError: the path does not exist or the URI cannot be resolved.
    """
    from medseg import tracking

    text = str(model)
    dst = Path(output_root) / _MODEL_DIR if text.startswith(("runs:/", "models:/")) else None
    path = Path(tracking.resolve_model(text, dst_dir=dst)).resolve()
    digests = []
    for checkpoint in tracking.model_checkpoints(path):  # a k-fold ensemble: every fold's
        with open(checkpoint, "rb") as fh:
            digests.append(hashlib.file_digest(fh, "sha256"))
    # one checkpoint keeps the id it always had, its file's digest
    digest = (
        digests[0] if len(digests) == 1 else hashlib.sha256(b"".join(d.digest() for d in digests))
    )
    return ModelRef(path, "sha256:" + digest.hexdigest()[:16])
