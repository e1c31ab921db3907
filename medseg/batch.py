"""Batch runs: every study under a folder tree (or fetched from a PACS) through the per-case
pipeline, recorded in a ledger so that a run can stop anywhere and the next one picks up.

A *case* is one study. :func:`discover_cases` groups the DICOM files under the input root by
study (``medseg.io.discovery``) and the config's series selection rules pick the series to
segment; :func:`run_cases` runs :func:`medseg.pipeline.predict_case` on each case that needs
it, on one of three executors that run the same function, :func:`run_case`:

* ``local``: in this process, one case after the other;
* ``pool``: ``workers`` processes (``multiprocessing`` spawn), each loading the model once;
* ``ray``: one Ray task per case, with ``batch.cpus_per_case`` / ``batch.gpus_per_case``
  resources, on a local Ray instance or the cluster at ``ray_address``.

Only the driver (the process calling :func:`run_cases`) writes the ledger, so it stays the one
source of truth whatever the executor. Layout of ``OUTPUT_ROOT``::

    ledger.sqlite          cases, attempts, runs and PACS deliveries (SQLite)
    .medseg-salt           the key of this root's case ids (keep it with the ledger)
    summary.csv            one row per case of the latest run
    cases/<case_id>/       rtstruct.dcm, seg.dcm, labels.nii.gz, volumes.json, lesions.csv,
                           report/ and case.json (what produced the folder)
    .staging/<case_id>/    links to (or downloads of) a case's input files while it runs;
                           kept when the case failed, so the files can be looked at
    .lock                  held by the run in progress; a second run on the same root refuses

A case folder is written to a hidden temporary sibling and renamed into place, so it is
complete or absent; a run killed at any point leaves only hidden temporaries, which the next
run removes before it starts. Cases left ``running`` by a killed run are looked at again: if
their folder is complete (its ``case.json`` names the same input fingerprint and model) they
are marked done without running again, otherwise they run. A done case runs again only when
its input fingerprint or the model changed; a failed one when its input changed or with
``retry_failed``.

Case ids are ``case-`` and 16 hex digits of an HMAC-SHA256 of the StudyInstanceUID keyed with
the output root's random salt (``OUTPUT_ROOT/.medseg-salt``, :mod:`medseg.privacy`), so logs
and the ledger carry no patient names, IDs or folder names, and an id cannot be matched to a
guessed UID without the salt. Logs name cases by id and errors by class only; the messages go
to the ledger and ``summary.csv`` and name the numbered links of ``.staging/<case_id>/``, never
input paths. With ``privacy.log_identifiers`` (``--config``), each case's input folder is
logged too.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import datetime as _dt
import enum
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

import medseg
from medseg.config import BatchConfig, PrivacyConfig, SeriesSelection
from medseg.errors import ConfigError, InputError, MedsegError, UnreadableScanError
from medseg.io.discovery import Inventory, scan_folder, select_series
from medseg.io.files import atomic_dir, atomic_path
from medseg.privacy import load_salt, pseudonym

__all__ = [
    "CASES_DIR",
    "LEDGER_NAME",
    "SUMMARY_NAME",
    "BatchProgress",
    "BatchSummary",
    "CaseOutcome",
    "CaseSpec",
    "CaseStatus",
    "CaseTask",
    "Executor",
    "Ledger",
    "ModelRef",
    "SummaryRow",
    "case_id_for",
    "discover_cases",
    "link_inputs",
    "resolve_model_ref",
    "run_batch",
    "run_case",
    "run_cases",
    "write_summary_csv",
]

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.sqlite"
SUMMARY_NAME = "summary.csv"
CASES_DIR = "cases"
MANIFEST_NAME = "case.json"
_STAGING_DIR = ".staging"
_MODEL_DIR = ".model"
_LOCK_NAME = ".lock"


class CaseStatus(str, enum.Enum):
    """A case's status in the ledger (``queued`` -> ``running`` -> ``done`` | ``failed``)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


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
    """One case of a run, as written to ``summary.csv``.

    ``status`` is ``done`` (ran now), ``skipped`` (done before with the same input and model;
    not run) or ``failed`` (now, or before and not retried: then ``ran`` is False).
    """

    case_id: str
    status: str
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
    """The outcome of :func:`run_cases`."""

    run_id: str
    rows: tuple[SummaryRow, ...]
    ledger_path: Path
    summary_path: Path

    @property
    def n_done(self) -> int:
        """Cases done in this run."""
        return sum(r.status == "done" for r in self.rows)

    @property
    def n_skipped(self) -> int:
        """Cases done earlier and unchanged."""
        return sum(r.status == "skipped" for r in self.rows)

    @property
    def n_failed(self) -> int:
        """Cases failed (now, or earlier and not retried)."""
        return sum(r.status == "failed" for r in self.rows)

    @property
    def ok(self) -> bool:
        """True when no case failed."""
        return self.n_failed == 0


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
    selection: SeriesSelection,
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
    with ``salt``; with ``privacy.log_identifiers`` each case's input folder is logged.

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
            entry = select_series(sub, selection)
        except InputError as exc:
            files = [f for s in study.series for f in s.files]
            specs.append(CaseSpec(
                case_id, study.study_instance_uid, None,
                _fingerprint("", files, root, settings.fingerprint),
                error=(type(exc).__name__, str(exc)),
            ))
            continue
        specs.append(CaseSpec(
            case_id, study.study_instance_uid, entry.series_instance_uid,
            _fingerprint(entry.series_instance_uid, entry.files, root, settings.fingerprint),
            files=tuple(entry.files),
        ))
    for problem in inventory.problems:
        # the message would name the file, and folder names may hold patient names
        case_id = pseudonym("\0".join(problem.files), salt, prefix="file-")
        if show:
            log.info("case %s: input %s (privacy.log_identifiers)", case_id, problem.files[0])
        message = (f"{case_id}: a file under the input root looks like DICOM but cannot be "
                   f"parsed; `medseg inspect INPUT_ROOT` names it")
        specs.append(CaseSpec(case_id, "", None, "", error=(UnreadableScanError.__name__, message)))
    return tuple(specs)


def resolve_model_ref(model: str | Path, output_root: Path) -> ModelRef:
    """A local checkpoint for ``model`` (a path or an MLflow URI) and its content id.

    URIs are downloaded into ``output_root/.model`` so that pool and Ray workers (on a cluster:
    through the shared file system) read the same file.

    Raises:
        ModelError: the path does not exist or the URI cannot be resolved.
    """
    from medseg import tracking

    text = str(model)
    dst = Path(output_root) / _MODEL_DIR if text.startswith(("runs:/", "models:/")) else None
    path = Path(tracking.resolve_model(text, dst_dir=dst)).resolve()
    with open(path, "rb") as fh:
        model_id = "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()[:16]
    return ModelRef(path, model_id)


# ---------------------------------------------------------------------------------------------
# the ledger


_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    fingerprint TEXT NOT NULL,
    model_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    error_class TEXT,
    error_message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    queued_at TEXT,
    started_at TEXT,
    finished_at TEXT,
    seconds REAL,
    out_dir TEXT
);
CREATE TABLE IF NOT EXISTS attempts (
    attempt_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    case_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    model_id TEXT,
    status TEXT NOT NULL,
    error_class TEXT,
    error_message TEXT,
    started_at TEXT,
    finished_at TEXT,
    seconds REAL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    executor TEXT NOT NULL,
    workers INTEGER NOT NULL,
    model_id TEXT,
    n_cases INTEGER,
    n_done INTEGER,
    n_failed INTEGER,
    n_skipped INTEGER
);
CREATE TABLE IF NOT EXISTS deliveries (
    case_id TEXT NOT NULL,
    object TEXT NOT NULL,
    destination TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    model_id TEXT,
    remote_id TEXT,
    sent_at TEXT NOT NULL,
    PRIMARY KEY (case_id, object, destination)
);
"""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


class Ledger:
    """The SQLite ledger in ``OUTPUT_ROOT/ledger.sqlite``; each change is committed at once.

    Tables: ``cases`` (one row per case: status, fingerprint, model id, error class and
    message, timings, output folder), ``attempts`` (one row per time a case was started, with
    its end: done, failed, or ``recovered`` when a killed run had finished it), ``runs`` and
    ``deliveries`` (objects sent to a PACS). Only the driver of a run writes it.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def case(self, case_id: str) -> sqlite3.Row | None:
        """The ``cases`` row of ``case_id``, or None."""
        return self._db.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()

    def cases(self) -> list[sqlite3.Row]:
        """Every ``cases`` row, by case id."""
        return self._db.execute("SELECT * FROM cases ORDER BY case_id").fetchall()

    def attempts(self, case_id: str | None = None) -> list[sqlite3.Row]:
        """``attempts`` rows (of one case, or all), oldest first."""
        if case_id is None:
            return self._db.execute("SELECT * FROM attempts ORDER BY attempt_id").fetchall()
        return self._db.execute(
            "SELECT * FROM attempts WHERE case_id = ? ORDER BY attempt_id", (case_id,)
        ).fetchall()

    def record(self, spec: CaseSpec, source: str, status: CaseStatus, model_id: str | None,
               out_dir: Path | None = None) -> None:
        """Insert or update a case's row with its current input and ``status``."""
        error_class, error_message = spec.error or (None, None)
        self._db.execute(
            """INSERT INTO cases (case_id, source, study_instance_uid, series_instance_uid,
                   fingerprint, model_id, status, error_class, error_message, queued_at, out_dir)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (case_id) DO UPDATE SET source = excluded.source,
                   study_instance_uid = excluded.study_instance_uid,
                   series_instance_uid = excluded.series_instance_uid,
                   fingerprint = excluded.fingerprint, model_id = excluded.model_id,
                   status = excluded.status, error_class = excluded.error_class,
                   error_message = excluded.error_message, queued_at = excluded.queued_at,
                   out_dir = excluded.out_dir""",
            (spec.case_id, source, spec.study_instance_uid, spec.series_instance_uid,
             spec.fingerprint, model_id, status.value, error_class, error_message, _now(),
             None if out_dir is None else str(out_dir)),
        )

    def start(self, run_id: str, task: CaseTask) -> int:
        """Mark a case ``running`` and open an attempt; returns the attempt id."""
        now = _now()
        self._db.execute(
            "UPDATE cases SET status = 'running', started_at = ?, finished_at = NULL, "
            "seconds = NULL, error_class = NULL, error_message = NULL, attempts = attempts + 1 "
            "WHERE case_id = ?", (now, task.case_id),
        )
        cursor = self._db.execute(
            "INSERT INTO attempts (run_id, case_id, fingerprint, model_id, status, started_at) "
            "VALUES (?, ?, ?, ?, 'running', ?)",
            (run_id, task.case_id, task.fingerprint, task.model.model_id, now),
        )
        return int(cursor.lastrowid or 0)

    def finish(self, attempt_id: int, outcome: CaseOutcome) -> None:
        """Close an attempt and set the case's status from ``outcome``."""
        now = _now()
        values = (outcome.status.value, outcome.error_class, outcome.error_message, now,
                  outcome.seconds)
        self._db.execute("BEGIN")
        self._db.execute(
            "UPDATE cases SET status = ?, error_class = ?, error_message = ?, finished_at = ?, "
            "seconds = ? WHERE case_id = ?", (*values, outcome.case_id),
        )
        self._db.execute(
            "UPDATE attempts SET status = ?, error_class = ?, error_message = ?, "
            "finished_at = ?, seconds = ? WHERE attempt_id = ?", (*values, attempt_id),
        )
        self._db.execute("COMMIT")

    def recover(self, cases_dir: Path) -> list[str]:
        """Settle cases a killed run left ``running``; returns the ids marked done.

        A case whose folder holds a ``case.json`` with the row's fingerprint and model id was
        finished before the kill: it is marked done (its attempt ``recovered``). Any other is
        set back to ``queued``, and its attempt to ``interrupted``.
        """
        recovered = []
        for row in self._db.execute("SELECT * FROM cases WHERE status = 'running'").fetchall():
            manifest = _read_manifest(cases_dir / row["case_id"])
            finished = manifest is not None and (
                manifest.get("fingerprint"), manifest.get("model_id")
            ) == (row["fingerprint"], row["model_id"])
            status = "done" if finished else "queued"
            attempt = "recovered" if finished else "interrupted"
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE cases SET status = ?, finished_at = ? WHERE case_id = ?",
                (status, _now() if finished else None, row["case_id"]),
            )
            self._db.execute(
                "UPDATE attempts SET status = ?, finished_at = ? WHERE case_id = ? AND "
                "status = 'running'", (attempt, _now(), row["case_id"]),
            )
            self._db.execute("COMMIT")
            if finished:
                recovered.append(row["case_id"])
        return recovered

    def begin_run(self, run_id: str, executor: str, workers: int, model_id: str) -> None:
        """Open a ``runs`` row."""
        self._db.execute(
            "INSERT INTO runs (run_id, started_at, executor, workers, model_id) VALUES (?, ?, ?, ?, ?)",
            (run_id, _now(), executor, workers, model_id),
        )

    def end_run(self, run_id: str, rows: Sequence[SummaryRow]) -> None:
        """Close a ``runs`` row with its counts."""
        counts = {s: sum(r.status == s for r in rows) for s in ("done", "failed", "skipped")}
        self._db.execute(
            "UPDATE runs SET finished_at = ?, n_cases = ?, n_done = ?, n_failed = ?, "
            "n_skipped = ? WHERE run_id = ?",
            (_now(), len(rows), counts["done"], counts["failed"], counts["skipped"], run_id),
        )

    def delivered(self, case_id: str, obj: str, destination: str) -> sqlite3.Row | None:
        """The ``deliveries`` row of one object of a case sent to ``destination``, or None."""
        return self._db.execute(
            "SELECT * FROM deliveries WHERE case_id = ? AND object = ? AND destination = ?",
            (case_id, obj, destination),
        ).fetchone()

    def record_delivery(self, case_id: str, obj: str, destination: str, fingerprint: str,
                        model_id: str | None, remote_id: str | None) -> None:
        """Record that one object of a case (e.g. ``"rtstruct"``) reached ``destination``."""
        self._db.execute(
            "INSERT OR REPLACE INTO deliveries (case_id, object, destination, fingerprint, "
            "model_id, remote_id, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (case_id, obj, destination, fingerprint, model_id, remote_id, _now()),
        )


def _read_manifest(case_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((case_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------
# the per-case function, run by every executor


_MODELS: dict[ModelRef, Any] = {}


def _model(ref: ModelRef) -> Any:
    """The loaded model, once per process (workers keep it between cases)."""
    if ref not in _MODELS:
        from medseg.pipeline import load_model

        _MODELS.clear()
        _MODELS[ref] = load_model(ref.path)
    return _MODELS[ref]


def run_case(task: CaseTask) -> CaseOutcome:
    """Run one case: predict, export, and rename the complete folder into ``task.out_dir``.

    Never raises for a bad case: the error's class and message are returned, so one bad scan
    (corrupt file, missing slices, out of memory) never stops the batch.
    """
    from medseg.pipeline import predict_case

    start = time.monotonic()
    try:
        model = _model(task.model)
        with atomic_dir(task.out_dir, overwrite=True) as tmp:
            result = predict_case(model, task.input_dir, tmp, overwrite=True)
            manifest = {
                "case_id": task.case_id,
                "fingerprint": task.fingerprint,
                "model_id": task.model.model_id,
                "study_instance_uid": task.study_instance_uid,
                "series_instance_uid": task.series_instance_uid,
                "medseg_version": medseg.__version__,
                "finished_at": _now(),
                "volumes_ml": result.volumes_ml,
            }
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    # The night's run must go on whatever one case raises (MedsegError for bad input,
    # MemoryError, or a bug met only by this scan): the class and message are recorded.
    except Exception as exc:  # noqa: BLE001
        return CaseOutcome(task.case_id, CaseStatus.FAILED, time.monotonic() - start,
                           type(exc).__name__, str(exc))
    return CaseOutcome(task.case_id, CaseStatus.DONE, time.monotonic() - start)


# ---------------------------------------------------------------------------------------------
# executors


class _Runner(Protocol):
    capacity: int

    def submit(self, task: CaseTask) -> None: ...

    def next_done(self) -> CaseOutcome: ...

    def close(self) -> None: ...


class _LocalRunner:
    """Runs each case in this process when its result is asked for."""

    capacity = 1

    def __init__(self) -> None:
        self._queue: deque[CaseTask] = deque()

    def submit(self, task: CaseTask) -> None:
        self._queue.append(task)

    def next_done(self) -> CaseOutcome:
        return run_case(self._queue.popleft())

    def close(self) -> None:
        self._queue.clear()


def _init_pool_worker() -> None:
    """Die with the driver: a killed batch must not leave workers writing case folders."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _PoolRunner:
    """A spawn-context process pool; a worker that dies fails only the cases it had."""

    def __init__(self, workers: int) -> None:
        self.capacity = workers
        self._workers = workers
        self._pool = self._new_pool()
        self._futures: dict[cf.Future[CaseOutcome], CaseTask] = {}

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        # spawn, not fork: forking a process that has torch's thread pools can deadlock
        return cf.ProcessPoolExecutor(
            self._workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_pool_worker,
        )

    def submit(self, task: CaseTask) -> None:
        self._futures[self._pool.submit(run_case, task)] = task

    def next_done(self) -> CaseOutcome:
        done, _ = cf.wait(self._futures, return_when=cf.FIRST_COMPLETED)
        future = next(iter(done))
        task = self._futures.pop(future)
        try:
            return future.result()
        except cf.process.BrokenProcessPool as exc:
            # a worker was killed (out of memory, signal): the pool is unusable; start another
            pending = list(self._futures.values())
            self._futures.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            for other in pending:
                self.submit(other)
            return CaseOutcome(task.case_id, CaseStatus.FAILED, 0.0, type(exc).__name__,
                               f"{task.case_id}: a worker process died while running this "
                               f"case or another one (killed, e.g. out of memory): {exc}")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _RayRunner:
    """One Ray task per case; the driver alone writes the ledger."""

    def __init__(self, address: str | None, workers: int, settings: BatchConfig) -> None:
        import ray

        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False)
            self._started = True
        self._remote = ray.remote(
            num_cpus=settings.cpus_per_case, num_gpus=settings.gpus_per_case, max_retries=0
        )(run_case)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        # queue a little more than the cluster runs at once, so it never idles
        self.capacity = max(1, int(2 * cpus // settings.cpus_per_case))
        self._refs: dict[Any, CaseTask] = {}

    def submit(self, task: CaseTask) -> None:
        self._refs[self._remote.remote(task)] = task

    def next_done(self) -> CaseOutcome:
        ready, _ = self._ray.wait(list(self._refs), num_returns=1)
        task = self._refs.pop(ready[0])
        try:
            return self._ray.get(ready[0])  # type: ignore[no-any-return]
        except self._ray.exceptions.RayError as exc:  # the worker died or the task was lost
            return CaseOutcome(task.case_id, CaseStatus.FAILED, 0.0, type(exc).__name__,
                               f"{task.case_id}: Ray task failed: {exc}")

    def close(self) -> None:
        for ref in self._refs:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)
        self._refs.clear()
        if self._started:
            self._ray.shutdown()


def _runner(executor: Executor, workers: int, ray_address: str | None,
            settings: BatchConfig) -> _Runner:
    if executor is Executor.RAY:
        return _RayRunner(ray_address, workers, settings)
    if executor is Executor.POOL:
        return _PoolRunner(workers)
    return _LocalRunner()


# ---------------------------------------------------------------------------------------------
# the driver


@contextlib.contextmanager
def _locked(output_root: Path) -> Iterator[None]:
    with open(output_root / _LOCK_NAME, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ConfigError(f"{output_root}: another batch run is using this output folder") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_partial(cases_dir: Path) -> None:
    """Remove what a killed run left half written: hidden temporaries of case folders."""
    if cases_dir.is_dir():
        for path in cases_dir.iterdir():
            if path.name.startswith(".") and path.is_dir():
                shutil.rmtree(path)


def _remove_done_staging(staging: Path, ledger: Ledger) -> None:
    """Remove the inputs staged for cases that are done (a killed run may have left them)."""
    if staging.is_dir():
        for path in staging.iterdir():
            row = ledger.case(path.name)
            if row is not None and row["status"] == CaseStatus.DONE.value:
                shutil.rmtree(path, ignore_errors=True)


Prepare = Callable[[CaseSpec, Path], Path]


def _decide(spec: CaseSpec, row: Any, model_id: str, out_dir: Path, retry_failed: bool) -> str:
    """``run``, ``skip`` (done, unchanged) or ``keep_failed`` (failed, unchanged, no retry)."""
    if row is None or row["fingerprint"] != spec.fingerprint or row["model_id"] != model_id:
        return "run"
    if row["status"] == CaseStatus.DONE.value:
        manifest = _read_manifest(out_dir)
        same = manifest is not None and manifest.get("fingerprint") == spec.fingerprint
        return "skip" if same else "run"
    if row["status"] == CaseStatus.FAILED.value and not retry_failed:
        return "keep_failed"
    return "run"


def run_cases(
    specs: Sequence[CaseSpec],
    output_root: Path,
    model: ModelRef,
    prepare: Prepare,
    *,
    source: str = "folder",
    executor: Executor = Executor.LOCAL,
    workers: int = 1,
    retry_failed: bool = False,
    ray_address: str | None = None,
    settings: BatchConfig | None = None,
    progress: Callable[[BatchProgress], None] | None = None,
    loaded_model: Any = None,
    after: Callable[[Sequence[SummaryRow], Ledger], None] | None = None,
) -> BatchSummary:
    """Run every case of ``specs`` that needs it, record each in the ledger, write summary.csv.

    Args:
        specs: the cases (from :func:`discover_cases` or a PACS query).
        output_root: where the ledger, ``summary.csv`` and ``cases/<case_id>/`` go.
        model: the checkpoint workers load, and its id.
        prepare: ``prepare(spec, folder)`` puts the case's input files into ``folder`` (links
            or downloads) and returns the folder to segment; it runs in the driver.
        source: recorded in the ledger (``"folder"``, ``"pacs"``).
        executor: ``local`` (this process; ``workers > 1`` means a pool), ``pool`` or ``ray``.
        workers: processes of the pool; with Ray, the CPUs of a local instance it starts.
        retry_failed: run failed cases again even when their input did not change.
        ray_address: the Ray cluster to join (``None``: start a local instance).
        settings: fingerprint mode and Ray resources.
        progress: called after each case with the counts so far.
        loaded_model: ``model`` already loaded (the local executor then reuses it).
        after: called with the rows and the ledger once every case is settled, while the
            run still holds the output root (e.g. to send results to a PACS).

    Raises:
        ConfigError: another run holds ``output_root``.
    """
    settings = settings or BatchConfig()
    if executor is Executor.LOCAL and workers > 1:
        executor = Executor.POOL
    output_root = Path(output_root).resolve()
    cases_dir = output_root / CASES_DIR
    cases_dir.mkdir(parents=True, exist_ok=True)
    if loaded_model is not None:
        _MODELS.clear()
        _MODELS[model] = loaded_model
    with _locked(output_root), Ledger(output_root / LEDGER_NAME) as ledger:
        _remove_partial(cases_dir)
        for case_id in ledger.recover(cases_dir):
            log.info("case %s: finished by an interrupted run; marked done", case_id)
        _remove_done_staging(output_root / _STAGING_DIR, ledger)
        run_id = uuid.uuid4().hex
        ledger.begin_run(run_id, executor.value, workers, model.model_id)
        outcomes: dict[str, SummaryRow] = {}
        to_run: deque[CaseSpec] = deque()
        for spec in specs:
            out_dir = cases_dir / spec.case_id
            if spec.error is not None:
                ledger.record(spec, source, CaseStatus.FAILED, model.model_id)
                log.warning("case %s: failed before running (%s)", spec.case_id, spec.error[0])
                outcomes[spec.case_id] = _row(spec, "failed", True, *spec.error, None, None)
                continue
            decision = _decide(spec, ledger.case(spec.case_id), model.model_id, out_dir,
                               retry_failed)
            if decision == "skip":
                outcomes[spec.case_id] = _row(spec, "skipped", False, None, None, None, out_dir)
            elif decision == "keep_failed":
                old: Any = ledger.case(spec.case_id)
                outcomes[spec.case_id] = _row(spec, "failed", False, old["error_class"],
                                              old["error_message"], old["seconds"], None)
            else:
                ledger.record(spec, source, CaseStatus.QUEUED, model.model_id, out_dir)
                to_run.append(spec)
        counts = {s: sum(r.status == s for r in outcomes.values())
                  for s in ("done", "failed", "skipped")}
        total = len(specs)

        def report(status: str) -> None:
            counts[status] += 1
            if progress is not None:
                progress(BatchProgress(total, counts["done"], counts["failed"], counts["skipped"]))

        if progress is not None:
            progress(BatchProgress(total, 0, counts["failed"], counts["skipped"]))
        log.info("%d cases: %d to run, %d unchanged", total, len(to_run), len(outcomes))
        if to_run:
            _drive(to_run, ledger, run_id, model, prepare, output_root, outcomes, report,
                   _runner(executor, workers, ray_address, settings))
        rows = tuple(outcomes[s.case_id] for s in specs)
        if after is not None:
            after(rows, ledger)
        ledger.end_run(run_id, rows)
        summary_path = write_summary_csv(rows, output_root / SUMMARY_NAME)
        _write_summary_page(rows, output_root)
    return BatchSummary(run_id, rows, output_root / LEDGER_NAME, summary_path)


def _write_summary_page(rows: Sequence[SummaryRow], output_root: Path) -> None:
    """``summary.html`` beside ``summary.csv``: one row per case, linking its QA report.

    Done and skipped (done before) cases count as "ok"; the message of a failed case is its
    error class and medseg's message, which names no patient data.
    """
    from medseg.report import CaseSummary, write_summary_page

    cases = [
        CaseSummary(
            case=row.case_id,
            status="ok" if row.status in ("done", "skipped") else row.status,
            report_path=(
                row.out_dir / "report" / "report.html" if row.out_dir is not None else None
            ),
            volumes_ml=row.volumes_ml,
            message=(
                f"{row.error_class}: {row.error_message}" if row.error_class else row.status
            ),
        )
        for row in rows
    ]
    write_summary_page(output_root, cases)


def _drive(to_run: deque[CaseSpec], ledger: Ledger, run_id: str, model: ModelRef,
           prepare: Prepare, output_root: Path, outcomes: dict[str, SummaryRow],
           report: Callable[[str], None], runner: _Runner) -> None:
    specs = {spec.case_id: spec for spec in to_run}
    attempts: dict[str, int] = {}
    staging = output_root / _STAGING_DIR
    in_flight = 0

    def settle(spec: CaseSpec, outcome: CaseOutcome, attempt_id: int) -> None:
        ledger.finish(attempt_id, outcome)
        out_dir = output_root / CASES_DIR / spec.case_id
        if outcome.status is CaseStatus.DONE:
            shutil.rmtree(staging / spec.case_id, ignore_errors=True)
            log.info("case %s: done in %.1f s", spec.case_id, outcome.seconds)
            outcomes[spec.case_id] = _row(spec, "done", True, None, None, outcome.seconds, out_dir)
        else:
            log.warning("case %s: failed (%s)", spec.case_id, outcome.error_class)
            outcomes[spec.case_id] = _row(spec, "failed", True, outcome.error_class,
                                          outcome.error_message, outcome.seconds, None)
        report(outcome.status.value)

    try:
        while to_run or in_flight:
            while to_run and in_flight < runner.capacity:
                spec = to_run.popleft()
                task = CaseTask(spec.case_id, staging / spec.case_id,
                                output_root / CASES_DIR / spec.case_id, model, spec.fingerprint,
                                spec.study_instance_uid, spec.series_instance_uid)
                attempt_id = ledger.start(run_id, task)
                try:
                    input_dir = prepare(spec, staging / spec.case_id)
                except (MedsegError, OSError) as exc:  # a download or link failed: this case only
                    settle(spec, CaseOutcome(spec.case_id, CaseStatus.FAILED, 0.0,
                                             type(exc).__name__, str(exc)), attempt_id)
                    continue
                attempts[spec.case_id] = attempt_id
                runner.submit(CaseTask(task.case_id, input_dir, task.out_dir, model,
                                       task.fingerprint, task.study_instance_uid,
                                       task.series_instance_uid))
                in_flight += 1
            if in_flight:
                outcome = runner.next_done()
                in_flight -= 1
                settle(specs[outcome.case_id], outcome, attempts.pop(outcome.case_id))
    finally:
        runner.close()


def _row(spec: CaseSpec, status: str, ran: bool, error_class: str | None,
         error_message: str | None, seconds: float | None, out_dir: Path | None) -> SummaryRow:
    volumes: dict[str, float] = {}
    if out_dir is not None:
        manifest = _read_manifest(out_dir) or {}
        volumes = {str(k): float(v) for k, v in (manifest.get("volumes_ml") or {}).items()}
    return SummaryRow(spec.case_id, status, ran, spec.study_instance_uid,
                      spec.series_instance_uid, error_class, error_message, seconds, out_dir,
                      volumes)


def write_summary_csv(rows: Sequence[SummaryRow], path: Path) -> Path:
    """Write ``summary.csv`` (atomically): one row per case, a ``<structure>_ml`` column each."""
    names = sorted({name for row in rows for name in row.volumes_ml})
    header = ["case_id", "status", "ran", "error_class", "error_message", "seconds",
              "study_instance_uid", "series_instance_uid", "out_dir",
              *[f"{name}_ml" for name in names]]
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow([
                row.case_id, row.status, "yes" if row.ran else "no", row.error_class or "",
                row.error_message or "",
                "" if row.seconds is None else f"{row.seconds:.3f}",
                row.study_instance_uid, row.series_instance_uid or "",
                "" if row.out_dir is None else str(row.out_dir),
                *["" if n not in row.volumes_ml else f"{row.volumes_ml[n]:.4f}" for n in names],
            ])
    return Path(path)


def link_inputs(input_root: Path) -> Prepare:
    """The ``prepare`` of :func:`run_cases` for cases found under ``input_root``."""
    root = Path(input_root).resolve()

    def prepare(spec: CaseSpec, folder: Path) -> Path:
        """Links ``00001``, ``00002``, ... to the selected series' files (sorted by path).

        The links are numbered, not named after the inputs, because input folder names often
        hold patient names and error messages name the files; ``ls -l`` shows the targets.
        """
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        targets = sorted(Path(p).resolve() for p in spec.files)
        for i, target in enumerate(targets, start=1):
            target.relative_to(root)  # a file outside the input root is a bug: raise
            (folder / f"{i:05d}").symlink_to(target)
        return folder

    return prepare


def run_batch(
    input_root: Path,
    output_root: Path,
    model: str | Path,
    *,
    selection: SeriesSelection | None = None,
    settings: BatchConfig | None = None,
    executor: Executor = Executor.LOCAL,
    workers: int = 1,
    retry_failed: bool = False,
    ray_address: str | None = None,
    progress: Callable[[BatchProgress], None] | None = None,
    privacy: PrivacyConfig | None = None,
) -> BatchSummary:
    """Segment every study under ``input_root`` into ``output_root`` (see the module doc).

    ``input_root`` is only read. ``selection`` and ``settings`` default to the model's own
    config (``series_selection``, ``batch``); ``privacy`` does not (a model may come from
    anywhere): its default logs no input folders.

    Raises:
        ModelError: the model cannot be resolved or loaded (nothing runs).
        UnreadableScanError: ``input_root`` is not a directory.
        ConfigError: another run holds ``output_root``.
    """
    from medseg.pipeline import load_model

    output_root = Path(output_root)
    output_root.mkdir(parents=True, exist_ok=True)
    ref = resolve_model_ref(model, output_root)
    loaded = load_model(ref.path)  # fail early, before any case, on a bad model
    selection = selection or loaded.config.series_selection
    settings = settings or loaded.config.batch
    specs = discover_cases(Path(input_root), selection, settings,
                           salt=load_salt(output_root), privacy=privacy)
    return run_cases(
        specs, output_root, ref, link_inputs(Path(input_root)), source="folder",
        executor=executor, workers=workers, retry_failed=retry_failed,
        ray_address=ray_address, settings=settings, progress=progress,
        loaded_model=loaded if executor is Executor.LOCAL and workers == 1 else None,
    )
