"""The batch ledger: the SQLite record of cases, attempts, runs and PACS deliveries in
``OUTPUT_ROOT/ledger.sqlite`` (see :mod:`medseg.batch` for the design)."""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from medseg.batch.cases import (
    MANIFEST_NAME,
    CaseOutcome,
    CaseSpec,
    CaseStatus,
    CaseTask,
    SummaryRow,
)

__all__ = ["Ledger", "read_manifest", "utc_timestamp"]


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


def utc_timestamp() -> str:
    """Now, in UTC, ISO 8601 to the millisecond (the ledger's time stamps)."""
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
             spec.fingerprint, model_id, status.value, error_class, error_message, utc_timestamp(),
             None if out_dir is None else str(out_dir)),
        )

    def start(self, run_id: str, task: CaseTask) -> int:
        """Mark a case ``running`` and open an attempt; returns the attempt id."""
        now = utc_timestamp()
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
        now = utc_timestamp()
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
            manifest = read_manifest(cases_dir / row["case_id"])
            finished = manifest is not None and (
                manifest.get("fingerprint"), manifest.get("model_id")
            ) == (row["fingerprint"], row["model_id"])
            status = "done" if finished else "queued"
            attempt = "recovered" if finished else "interrupted"
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE cases SET status = ?, finished_at = ? WHERE case_id = ?",
                (status, utc_timestamp() if finished else None, row["case_id"]),
            )
            self._db.execute(
                "UPDATE attempts SET status = ?, finished_at = ? WHERE case_id = ? AND "
                "status = 'running'", (attempt, utc_timestamp(), row["case_id"]),
            )
            self._db.execute("COMMIT")
            if finished:
                recovered.append(row["case_id"])
        return recovered

    def begin_run(self, run_id: str, executor: str, workers: int, model_id: str) -> None:
        """Open a ``runs`` row."""
        self._db.execute(
            "INSERT INTO runs (run_id, started_at, executor, workers, model_id) VALUES (?, ?, ?, ?, ?)",
            (run_id, utc_timestamp(), executor, workers, model_id),
        )

    def end_run(self, run_id: str, rows: Sequence[SummaryRow]) -> None:
        """Close a ``runs`` row with its counts."""
        counts = {s: sum(r.status == s for r in rows) for s in ("done", "failed", "skipped")}
        self._db.execute(
            "UPDATE runs SET finished_at = ?, n_cases = ?, n_done = ?, n_failed = ?, "
            "n_skipped = ? WHERE run_id = ?",
            (utc_timestamp(), len(rows), counts["done"], counts["failed"], counts["skipped"], run_id),
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
            (case_id, obj, destination, fingerprint, model_id, remote_id, utc_timestamp()),
        )


def read_manifest(case_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((case_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
