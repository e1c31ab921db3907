"""The batch ledger: the SQLite record of cases, attempts, runs and PACS deliveries in
``OUTPUT_ROOT/ledger.sqlite`` (see :mod:`medseg.batch` for the design).

A file at that path that is not a medseg ledger (not SQLite, cut short, damaged, or another
program's database) is refused with a :class:`~medseg.errors.ConfigError` naming it, before
anything is written to it: it is never repaired, replaced or deleted. A ledger another
process holds locked is waited for ``batch.ledger_timeout_s`` seconds, then refused too.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from medseg.batch.cases import (
    MANIFEST_NAME,
    CaseOutcome,
    CaseSpec,
    CaseStatus,
    CaseTask,
    SummaryRow,
)
from medseg.errors import ConfigError, MedsegError, OutputError
from medseg.status import SummaryStatus

__all__ = ["Ledger", "read_manifest", "utc_timestamp"]

#: ``PRAGMA application_id`` of a medseg ledger ("msLg"), so that a ledger is recognised as
#: one by its header; ledgers written before it was set are recognised by their tables.
APPLICATION_ID = 0x6D734C67
#: What an SQLite file starts with (https://www.sqlite.org/fileformat.html).
_SQLITE_MAGIC = b"SQLite format 3\x00"
#: The longest quick_check finding quoted in a message.
_MAX_FINDING_CHARS = 120


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
    out_dir TEXT,
    stage_seconds TEXT
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
    seconds REAL,
    stage_seconds TEXT
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


def _schema_column_types() -> dict[str, dict[str, str]]:
    """Each table of :data:`_SCHEMA`: column -> declared type, in order (read from SQLite
    itself)."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: {r[1]: r[2] for r in db.execute(f"PRAGMA table_info({t})")} for t in tables}
    finally:
        db.close()


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _named_errors(
    method: Callable[Concatenate[Ledger, _P], _T],
) -> Callable[Concatenate[Ledger, _P], _T]:
    """Turn SQLite's errors in ``method`` into medseg errors naming the ledger file (a
    traceback from sqlite3 names neither the file nor what to do), rolling back a
    transaction left open."""

    @functools.wraps(method)
    def wrapper(self: Ledger, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                try:
                    self._db.rollback()
                except sqlite3.Error:
                    pass  # the error below is the one to report
            raise self._error(exc) from None

    return wrapper


def utc_timestamp() -> str:
    """Now, in UTC, ISO 8601 to the millisecond (the ledger's time stamps)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


class Ledger:
    """The SQLite ledger in ``OUTPUT_ROOT/ledger.sqlite``; each change is committed at once.

    Tables: ``cases`` (one row per case: status, fingerprint, model id, error class and
    message, timings, output folder), ``attempts`` (one row per time a case was started, with
    its end: done, failed, or ``recovered`` when a killed run had finished it), ``runs`` and
    ``deliveries`` (objects sent to a PACS). Only the driver of a run writes it.

    Args:
        path: ``OUTPUT_ROOT/ledger.sqlite``; created when absent (or empty).
        timeout_s: how long to wait for a lock another process holds on it (every statement
            waits as long) before giving up (``batch.ledger_timeout_s``).

    Raises:
        ConfigError: ``path`` is not a medseg ledger (not SQLite, cut short, damaged, another
            program's database; left as it is), or another process held it locked for
            ``timeout_s``. Methods raise it too, or an
            :class:`~medseg.errors.OutputError` (disk full, read-only), when SQLite fails.
    """

    def __init__(self, path: Path, *, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._timeout_s = timeout_s
        self._refuse_foreign_header()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=timeout_s)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _refuse_foreign_header(self) -> None:
        """Refuse, from its first 100 bytes and before SQLite opens it, a file that is not
        SQLite, or that another program marked as its own (the header's application id)."""
        try:
            with open(self.path, "rb") as fh:
                header = fh.read(100)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: cannot read the ledger ({exc.strerror or type(exc).__name__})"
            ) from None
        if not header:
            return  # empty: a new ledger
        if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
            raise self._not_a_ledger("file is not a database")
        application_id = int.from_bytes(header[68:72], "big")
        if application_id not in (0, APPLICATION_ID):
            raise self._not_a_ledger("another program's SQLite database")

    @_named_errors
    def _open(self) -> None:
        self._db.row_factory = sqlite3.Row
        (application_id,) = self._db.execute("PRAGMA application_id").fetchone()
        tables = {
            r[0]
            for r in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        types = _schema_column_types()
        expected = {table: tuple(columns) for table, columns in types.items()}
        if application_id != APPLICATION_ID:  # a new ledger, or one older than the id
            columns = {
                t: tuple(r[1] for r in self._db.execute(f"PRAGMA table_info({t})"))
                for t in tables & set(expected)
            }
            if tables - set(expected) or any(
                columns[t] != expected[t][: len(columns[t])] for t in columns
            ):
                raise self._not_a_ledger("another program's SQLite database")
        finding = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if finding != "ok":
            finding = " ".join(str(finding).split())[:_MAX_FINDING_CHARS]
            raise self._not_a_ledger(f"damaged: {finding}")
        # only now is anything written to the file
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("BEGIN IMMEDIATE")  # waits for another process's lock, up to timeout_s
        self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)
        # a ledger of an earlier medseg lacks the columns added since (at the end): add them
        for table, declared in types.items():
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for column, kind in declared.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self._db.execute("COMMIT")

    def _not_a_ledger(self, reason: str) -> ConfigError:
        return ConfigError(
            f"{self.path}: not a medseg ledger ({reason}); move it away or "
            "choose another OUTPUT_ROOT"
        )

    def _error(self, exc: sqlite3.Error) -> MedsegError:
        """The medseg error for an SQLite error on this ledger."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, sqlite3.OperationalError):
            if "locked" in text or "busy" in text:
                return ConfigError(
                    f"{self.path}: locked by another process for longer than "
                    f"batch.ledger_timeout_s = {self._timeout_s:g} s ({text}); wait for it to "
                    "finish or stop it"
                )
            return OutputError(f"{self.path}: cannot use the ledger ({text})")
        return self._not_a_ledger(text)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @_named_errors
    def case(self, case_id: str) -> sqlite3.Row | None:
        """The ``cases`` row of ``case_id``, or None."""
        return self._db.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()

    @_named_errors
    def cases(self) -> list[sqlite3.Row]:
        """Every ``cases`` row, by case id."""
        return self._db.execute("SELECT * FROM cases ORDER BY case_id").fetchall()

    @_named_errors
    def attempts(self, case_id: str | None = None) -> list[sqlite3.Row]:
        """``attempts`` rows (of one case, or all), oldest first."""
        if case_id is None:
            return self._db.execute("SELECT * FROM attempts ORDER BY attempt_id").fetchall()
        return self._db.execute(
            "SELECT * FROM attempts WHERE case_id = ? ORDER BY attempt_id", (case_id,)
        ).fetchall()

    @_named_errors
    def record(
        self,
        spec: CaseSpec,
        source: str,
        status: CaseStatus,
        model_id: str | None,
        out_dir: Path | None = None,
    ) -> None:
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
            (
                spec.case_id,
                source,
                spec.study_instance_uid,
                spec.series_instance_uid,
                spec.fingerprint,
                model_id,
                status.value,
                error_class,
                error_message,
                utc_timestamp(),
                None if out_dir is None else str(out_dir),
            ),
        )

    @_named_errors
    def start(self, run_id: str, task: CaseTask) -> int:
        """Mark a case ``running`` and open an attempt; returns the attempt id."""
        now = utc_timestamp()
        self._db.execute(
            "UPDATE cases SET status = 'running', started_at = ?, finished_at = NULL, "
            "seconds = NULL, stage_seconds = NULL, error_class = NULL, error_message = NULL, "
            "attempts = attempts + 1 "
            "WHERE case_id = ?",
            (now, task.case_id),
        )
        cursor = self._db.execute(
            "INSERT INTO attempts (run_id, case_id, fingerprint, model_id, status, started_at) "
            "VALUES (?, ?, ?, ?, 'running', ?)",
            (run_id, task.case_id, task.fingerprint, task.model.model_id, now),
        )
        return int(cursor.lastrowid or 0)

    @_named_errors
    def finish(self, attempt_id: int, outcome: CaseOutcome) -> None:
        """Close an attempt and set the case's status from ``outcome``."""
        now = utc_timestamp()
        values = (
            outcome.status.value,
            outcome.error_class,
            outcome.error_message,
            now,
            outcome.seconds,
            None if outcome.stage_seconds is None else json.dumps(outcome.stage_seconds),
        )
        self._db.execute("BEGIN")
        self._db.execute(
            "UPDATE cases SET status = ?, error_class = ?, error_message = ?, finished_at = ?, "
            "seconds = ?, stage_seconds = ? WHERE case_id = ?",
            (*values, outcome.case_id),
        )
        self._db.execute(
            "UPDATE attempts SET status = ?, error_class = ?, error_message = ?, "
            "finished_at = ?, seconds = ?, stage_seconds = ? WHERE attempt_id = ?",
            (*values, attempt_id),
        )
        self._db.execute("COMMIT")

    @_named_errors
    def recover(self, cases_dir: Path) -> list[str]:
        """Settle cases a killed run left ``running``; returns the ids marked done.

        A case whose folder holds a ``case.json`` with the row's fingerprint and model id was
        finished before the kill: it is marked done (its attempt ``recovered``). Any other is
        set back to ``queued``, and its attempt to ``interrupted``.
        """
        recovered = []
        for row in self._db.execute("SELECT * FROM cases WHERE status = 'running'").fetchall():
            manifest = read_manifest(cases_dir / row["case_id"])
            finished = manifest is not None and (
                manifest.get("fingerprint"),
                manifest.get("model_id"),
            ) == (row["fingerprint"], row["model_id"])
            status = (CaseStatus.DONE if finished else CaseStatus.QUEUED).value
            attempt = "recovered" if finished else "interrupted"
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE cases SET status = ?, finished_at = ? WHERE case_id = ?",
                (status, utc_timestamp() if finished else None, row["case_id"]),
            )
            self._db.execute(
                "UPDATE attempts SET status = ?, finished_at = ? WHERE case_id = ? AND "
                "status = 'running'",
                (attempt, utc_timestamp(), row["case_id"]),
            )
            self._db.execute("COMMIT")
            if finished:
                recovered.append(row["case_id"])
        return recovered

    @_named_errors
    def begin_run(self, run_id: str, executor: str, workers: int, model_id: str) -> None:
        """Open a ``runs`` row."""
        self._db.execute(
            "INSERT INTO runs (run_id, started_at, executor, workers, model_id) VALUES (?, ?, ?, ?, ?)",
            (run_id, utc_timestamp(), executor, workers, model_id),
        )

    @_named_errors
    def end_run(self, run_id: str, rows: Sequence[SummaryRow]) -> None:
        """Close a ``runs`` row with its counts (``runs`` has no column for ``interrupted``
        cases: they are the rest of ``n_cases``)."""
        counts = {s: sum(r.status is s for r in rows) for s in SummaryStatus}
        self._db.execute(
            "UPDATE runs SET finished_at = ?, n_cases = ?, n_done = ?, n_failed = ?, "
            "n_skipped = ? WHERE run_id = ?",
            (
                utc_timestamp(),
                len(rows),
                counts[SummaryStatus.DONE],
                counts[SummaryStatus.FAILED],
                counts[SummaryStatus.SKIPPED],
                run_id,
            ),
        )

    @_named_errors
    def delivered(self, case_id: str, obj: str, destination: str) -> sqlite3.Row | None:
        """The ``deliveries`` row of one object of a case sent to ``destination``, or None."""
        return self._db.execute(
            "SELECT * FROM deliveries WHERE case_id = ? AND object = ? AND destination = ?",
            (case_id, obj, destination),
        ).fetchone()

    @_named_errors
    def record_delivery(
        self,
        case_id: str,
        obj: str,
        destination: str,
        fingerprint: str,
        model_id: str | None,
        remote_id: str | None,
    ) -> None:
        """Record that one object of a case (e.g. ``"rtstruct"``) reached ``destination``."""
        self._db.execute(
            "INSERT OR REPLACE INTO deliveries (case_id, object, destination, fingerprint, "
            "model_id, remote_id, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (case_id, obj, destination, fingerprint, model_id, remote_id, utc_timestamp()),
        )


def read_manifest(case_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((case_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
