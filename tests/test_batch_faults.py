"""`medseg batch` under hostile use (issue 17): a ledger that is not one, symlinks out of the
input root, SIGTERM and Ctrl-C mid-run, a case that never ends, staging links left behind,
and SeriesDescription text (clinics put patient names there) in messages.

The referees are independent of medseg where it matters: sqlite3 reads the ledger, the file
system is listed directly, and ``medseg batch`` runs as a real process for the signals.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from medseg.batch import (
    BatchInterrupted,
    CaseSpec,
    CaseStatus,
    Executor,
    Ledger,
    ModelRef,
    RunOptions,
    discover_cases,
    link_inputs,
    resolve_model_ref,
    run_cases,
)
from medseg.config import BatchConfig, PrivacyConfig, SeriesSelection
from medseg.errors import ConfigError, InputError
from medseg.io.dicom import SeriesEntry, SeriesKind, scan_folder, select_series
from medseg.privacy import load_salt
from tests.test_batch import (
    SECRET_NAMES,
    _batch,
    _check_case_folder,
    _csv_statuses,
    _hidden_leftovers,
    _ledger,
    _page_statuses,
    _summary,
    _truncate_one_slice,
    _write_inputs,
    train_tiny_model,
)

#: A SeriesDescription as clinics write it: a patient's name.
CANARY = "DOE^JOHN"
#: A model that is never loaded (runs where no case reaches an executor).
UNUSED_MODEL = ModelRef(Path("unused.pt"), "sha256:0000000000000000")
MEDSEG = Path(sys.executable).parent / "medseg"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The batch tests' tiny U-Net (see :func:`tests.test_batch.train_tiny_model`)."""
    return train_tiny_model(tmp_path_factory)


def _never(spec: CaseSpec, folder: Path) -> Path:
    raise AssertionError(f"{spec.case_id}: no case should be prepared")


def _one_line(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message, message


def _staging_left(out: Path) -> list[str]:
    staging = out / ".staging"
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


# ---------------------------------------------------------------------------------------------
# 8. ledger.sqlite that is corrupt, foreign or locked


def _real_ledger(path: Path, n_cases: int = 300) -> None:
    """A medseg ledger with ``n_cases`` rows (several pages, so a cut loses some)."""
    with Ledger(path) as ledger:
        for i in range(n_cases):
            spec = CaseSpec(f"case-{i:016x}", f"1.2.{i}", f"1.2.{i}.1", "sha256:" + "0" * 32)
            ledger.record(spec, "folder", CaseStatus.QUEUED, "sha256:0")


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is no database " * 300)


def _cut_header(path: Path) -> None:
    _real_ledger(path)
    path.write_bytes(path.read_bytes()[:60])


def _cut_pages(path: Path) -> None:
    _real_ledger(path)
    data = path.read_bytes()
    assert len(data) > 8 * 4096
    path.write_bytes(data[: len(data) // 2])


def _foreign(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE patients (name TEXT, mrn TEXT)")
    db.execute("INSERT INTO patients VALUES ('DOE^JANE', 'MRN-1')")
    db.commit()
    db.close()


def _foreign_cases_table(path: Path) -> None:
    """Another program's database that happens to have a ``cases`` table."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE cases (id INTEGER PRIMARY KEY, court TEXT)")
    db.commit()
    db.close()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(_garbage, "file is not a database", id="garbage"),
        pytest.param(_cut_header, None, id="truncated-header"),
        pytest.param(_cut_pages, None, id="truncated-pages"),
        pytest.param(_foreign, "another program's SQLite database", id="foreign-sqlite"),
        pytest.param(
            _foreign_cases_table,
            "another program's SQLite database",
            id="foreign-with-a-cases-table",
        ),
    ],
)
def test_a_ledger_that_is_not_medseg_s_is_named_and_left_untouched(
    tmp_path: Path, make: Callable[[Path], None], reason: str | None
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path = out / "ledger.sqlite"
    make(path)
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        run_cases((), out, UNUSED_MODEL, _never)
    message = str(info.value)
    _one_line(message)
    assert message.startswith(f"{path.resolve()}: not a medseg ledger ("), message
    if reason is not None:
        assert f"({reason}" in message
    assert "DOE" not in message and "MRN" not in message
    assert path.read_bytes() == before  # never repaired, never deleted
    assert not list(out.glob("ledger.sqlite-*"))  # no journal written beside it
    assert not (out / "summary.csv").exists()


def test_a_ledger_written_before_the_application_id_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _real_ledger(path, 3)
    db = sqlite3.connect(path)
    db.execute("PRAGMA application_id = 0")
    db.commit()
    db.close()
    with Ledger(path) as ledger:
        assert len(ledger.cases()) == 3


def test_a_ledger_of_an_earlier_medseg_gets_the_new_columns_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    """A ledger written before ``stage_seconds`` existed (its tables without that last
    column) opens, gains the column, and keeps every row."""
    path = tmp_path / "ledger.sqlite"
    _real_ledger(path, 3)
    db = sqlite3.connect(path)
    for table in ("cases", "attempts"):
        db.execute(f"ALTER TABLE {table} DROP COLUMN stage_seconds")
    db.commit()
    db.close()
    with Ledger(path) as ledger:
        assert len(ledger.cases()) == 3
    db = sqlite3.connect(path)
    try:
        for table in ("cases", "attempts"):
            columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            assert columns[-1] == "stage_seconds"
    finally:
        db.close()


def test_a_corrupt_ledger_is_exit_2_with_one_line_from_the_cli(
    tmp_path: Path, tiny_model: Path
) -> None:
    inputs = tmp_path / "in"
    _write_inputs(inputs, 1)
    out = tmp_path / "out"
    out.mkdir()
    _garbage(out / "ledger.sqlite")
    result = _batch(str(inputs), str(out), "--model", str(tiny_model))
    assert result.exit_code == 2, result.output
    ledger = (out / "ledger.sqlite").resolve()
    assert f"{ledger}: not a medseg ledger (file is not a database)" in result.output
    assert "Traceback" not in result.output
    assert not (out / "cases").exists() or not any((out / "cases").iterdir())


def _hold_write_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the database's write lock for ``seconds``."""
    code = (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "db.execute('COMMIT')\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_locked_ledger_is_waited_for_then_named(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path = out / "ledger.sqlite"
    _real_ledger(path, 3)
    holder = _hold_write_lock(path, 120)
    try:
        start = time.monotonic()
        with pytest.raises(ConfigError) as info:
            run_cases(
                (),
                out,
                UNUSED_MODEL,
                _never,
                options=RunOptions(settings=BatchConfig(ledger_timeout_s=1.0)),
            )
        waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait(10)
    message = str(info.value)
    _one_line(message)
    assert message.startswith(f"{path.resolve()}: ")
    assert "locked by another process" in message and "ledger_timeout_s" in message
    assert 1.0 <= waited < 20, waited
    assert len(_ledger(out, "SELECT * FROM cases")) == 3  # unchanged


def test_a_ledger_locked_for_a_moment_is_waited_for(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _real_ledger(out / "ledger.sqlite", 3)
    holder = _hold_write_lock(out / "ledger.sqlite", 1.5)
    try:
        summary = run_cases(
            (),
            out,
            UNUSED_MODEL,
            _never,
            options=RunOptions(settings=BatchConfig(ledger_timeout_s=60.0)),
        )
    finally:
        holder.wait(30)
    assert summary.rows == () and (out / "summary.csv").is_file()


@pytest.mark.parametrize("value", [0, -1.0, float("inf")], ids=["zero", "negative", "infinite"])
def test_batch_timeouts_must_be_positive_and_finite(value: float) -> None:
    from pydantic import ValidationError

    for field in ("ledger_timeout_s", "case_timeout_s"):
        with pytest.raises(ValidationError):
            BatchConfig.model_validate({field: value})


# ---------------------------------------------------------------------------------------------
# 13. symlinks out of the input root


@pytest.mark.parametrize("relative_root", [False, True], ids=["absolute-root", "relative-root"])
def test_link_inputs_links_the_paths_as_seen_under_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative_root: bool
) -> None:
    """A file symlink to outside the root and a file under a symlinked directory: the staged
    links point at the paths under the root (as the walker saw them), never at the targets."""
    outside = tmp_path / "archive" / "DOE^JOHN"
    outside.mkdir(parents=True)
    (outside / "a.dcm").write_bytes(b"A")
    (outside / "b.dcm").write_bytes(b"B")
    root = tmp_path / "in"
    (root / "SMITH^JOHN").mkdir(parents=True)
    (root / "SMITH^JOHN" / "1.dcm").symlink_to(outside / "a.dcm")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    if relative_root:
        monkeypatch.chdir(tmp_path)
        given = Path("in")
    else:
        given = root
    files = (given / "linked" / "b.dcm", given / "SMITH^JOHN" / "1.dcm")
    spec = CaseSpec("case-0123456789abcdef", "1.2", "1.2.3", "sha256:0", files=files)
    folder = link_inputs(given)(spec, tmp_path / "staging" / spec.case_id)
    links = sorted(folder.iterdir())
    assert [p.name for p in links] == ["00001", "00002"]  # sorted by path under the root
    assert [os.readlink(p) for p in links] == [
        str(root / "SMITH^JOHN" / "1.dcm"),
        str(root / "linked" / "b.dcm"),
    ]
    assert [p.read_bytes() for p in links] == [b"A", b"B"]


def test_link_inputs_refuses_a_file_outside_the_root_without_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    stray = tmp_path / "DOE^JOHN" / "x.dcm"
    spec = CaseSpec("case-0123456789abcdef", "1.2", "1.2.3", "sha256:0", files=(stray,))
    with pytest.raises(InputError) as info:
        link_inputs(root)(spec, tmp_path / "staging" / spec.case_id)
    _one_line(str(info.value))
    assert spec.case_id in str(info.value) and "DOE" not in str(info.value)


def test_a_study_of_symlinks_to_files_outside_the_root_is_segmented(
    tmp_path: Path, tiny_model: Path
) -> None:
    """One study's files are links to files outside the root, another's folder is a link to a
    folder outside it: both are segmented, and nothing names the targets."""
    inputs = tmp_path / "in"
    uids = _write_inputs(inputs, 1)
    archive = tmp_path / "archive"
    archived = _write_inputs(archive, 2, first_seed=200)
    by_file, by_folder = sorted(archived)
    linked = inputs / "LINKED" / "ct"
    linked.mkdir(parents=True)
    for file in sorted((archive / by_file / "ct").iterdir()):
        (linked / file.name).symlink_to(file)
    (inputs / "LINKED_FOLDER").symlink_to(archive / by_folder, target_is_directory=True)
    out = tmp_path / "out"
    result = _batch(str(inputs), str(out), "--model", str(tiny_model))
    assert result.exit_code == 0, result.output
    rows = _summary(out)
    for uid in (*uids.values(), *archived.values()):
        assert rows[uid]["status"] == "done"
        _check_case_folder(Path(rows[uid]["out_dir"]), uid)
    text = (out / "summary.csv").read_text() + result.output
    assert str(archive) not in text and by_file not in text and by_folder not in text
    assert _staging_left(out) == []
    again = _batch(str(inputs), str(out), "--model", str(tiny_model))  # same fingerprints
    assert again.exit_code == 0 and {r["status"] for r in _summary(out).values()} == {"skipped"}


# ---------------------------------------------------------------------------------------------
# 19. staging links (whose targets name patient folders) never outlive a case


def test_staging_is_emptied_at_the_start_and_after_a_failed_case(
    tmp_path: Path, tiny_model: Path
) -> None:
    inputs = tmp_path / "in"
    uids = _write_inputs(inputs, 2)
    bad_folder = min(uids)
    _truncate_one_slice(inputs / bad_folder / "ct")
    out = tmp_path / "out"
    stale = out / ".staging" / "case-00000000000000ff"
    stale.mkdir(parents=True)
    (out / ".medseg-output").write_text("written by medseg\n")  # a root a killed run left
    (stale / "00001").symlink_to(inputs / bad_folder / "ct")  # a link naming a patient folder
    result = _batch(str(inputs), str(out), "--model", str(tiny_model))
    assert result.exit_code == 1, result.output
    assert _summary(out)[uids[bad_folder]]["status"] == "failed"
    assert _staging_left(out) == []
    assert (inputs / bad_folder / "ct").is_dir()  # the link's target was not followed


def test_staging_is_removed_when_preparing_a_case_fails(tmp_path: Path) -> None:
    """The PACS download (or any ``prepare``) failing half-way leaves nothing staged."""
    out = tmp_path / "out"
    spec = CaseSpec("case-00000000000000aa", "1.2", "1.2.3", "sha256:0")

    def prepare(spec: CaseSpec, folder: Path) -> Path:
        folder.mkdir(parents=True)
        (folder / "00001").symlink_to(tmp_path / "DOE^JOHN")
        raise InputError(f"{spec.case_id}: the download stopped")

    summary = run_cases((spec,), out, UNUSED_MODEL, prepare)
    assert [r.status for r in summary.rows] == ["failed"]
    assert _staging_left(out) == []


# ---------------------------------------------------------------------------------------------
# 15. a per-case time limit


def _signal_worker_inside(case_dir: Path, signum: int) -> threading.Thread:
    """Send ``signum`` to the worker processes once the case's hidden temporary folder exists:
    SIGSTOP is a case that hangs half-written (as on a dead network mount), SIGKILL a worker
    the kernel killed for memory."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if list(case_dir.parent.glob(f".{case_dir.name}.*.tmp")):
                for child in multiprocessing.active_children():
                    os.kill(child.pid or 0, signum)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_a_case_over_the_time_limit_fails_and_the_next_one_runs(
    tmp_path: Path, tiny_model: Path
) -> None:
    inputs = tmp_path / "in"
    _write_inputs(inputs, 2)
    out = tmp_path / "out"
    out.mkdir()
    specs = discover_cases(inputs, SeriesSelection(), salt=load_salt(out))
    hang, good = specs
    link = link_inputs(inputs)
    watchers = []

    def prepare(spec: CaseSpec, folder: Path) -> Path:
        if spec is hang:
            watchers.append(_signal_worker_inside(out / "cases" / spec.case_id, signal.SIGSTOP))
        return link(spec, folder)

    limit_s = 8.0
    start = time.monotonic()
    summary = run_cases(
        specs,
        out,
        resolve_model_ref(tiny_model, out),
        prepare,
        options=RunOptions(settings=BatchConfig(case_timeout_s=limit_s)),
    )
    took = time.monotonic() - start
    rows = {r.case_id: r for r in summary.rows}
    assert watchers and not watchers[0].is_alive()  # the hanging case did hang
    assert rows[hang.case_id].status == "failed"
    assert rows[hang.case_id].error_class == "CaseTimeoutError"
    message = rows[hang.case_id].error_message or ""
    _one_line(message)
    assert hang.case_id in message and "case_timeout_s" in message
    assert rows[good.case_id].status == "done"
    _check_case_folder(out / "cases" / good.case_id, good.series_instance_uid or "")
    assert not (out / "cases" / hang.case_id).exists()  # no partial output folder
    assert _hidden_leftovers(out) == []
    assert _staging_left(out) == []
    assert limit_s <= took < 120, took
    assert _ledger(out, "SELECT * FROM cases WHERE status = 'running'") == []
    assert multiprocessing.active_children() == []  # no stopped worker left behind


@pytest.mark.slow
def test_a_worker_that_dies_fails_its_own_case_only(tmp_path: Path, tiny_model: Path) -> None:
    inputs = tmp_path / "in"
    _write_inputs(inputs, 2)
    out = tmp_path / "out"
    out.mkdir()
    specs = discover_cases(inputs, SeriesSelection(), salt=load_salt(out))
    victim, good = specs
    link = link_inputs(inputs)
    watchers = []

    def prepare(spec: CaseSpec, folder: Path) -> Path:
        if spec is victim:
            watchers.append(_signal_worker_inside(out / "cases" / spec.case_id, signal.SIGKILL))
        return link(spec, folder)

    summary = run_cases(
        specs,
        out,
        resolve_model_ref(tiny_model, out),
        prepare,
        options=RunOptions(executor=Executor.POOL, workers=1),
    )
    rows = {r.case_id: r for r in summary.rows}
    assert watchers and not watchers[0].is_alive()
    assert (rows[victim.case_id].status, rows[victim.case_id].error_class) == (
        "failed",
        "ChildProcessError",
    )
    message = rows[victim.case_id].error_message or ""
    _one_line(message)
    assert victim.case_id in message and "killed by signal 9" in message
    assert rows[good.case_id].status == "done"
    assert not (out / "cases" / victim.case_id).exists()
    assert _hidden_leftovers(out) == [] and _staging_left(out) == []


# ---------------------------------------------------------------------------------------------
# 16. SIGTERM and Ctrl-C


def _wait_for_done(
    proc: subprocess.Popen[bytes], out: Path, n: int, timeout_s: float = 180
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (out / "ledger.sqlite").exists():
            try:
                with sqlite3.connect(out / "ledger.sqlite") as db:
                    sql = "SELECT count(*) FROM cases WHERE status = 'done'"
                    done = db.execute(sql).fetchone()[0]
            except sqlite3.OperationalError:
                done = 0
            if done >= n:
                return
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"the batch ended before the signal: {stderr}")
        time.sleep(0.02)
    pytest.fail("no case was done in time")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "executor_args"),
    [
        pytest.param(signal.SIGTERM, (), id="sigterm-local"),
        pytest.param(signal.SIGINT, (), id="ctrl-c-local"),
        pytest.param(signal.SIGTERM, ("--workers", "2"), id="sigterm-pool"),
        pytest.param(signal.SIGINT, ("--workers", "2"), id="ctrl-c-pool"),
    ],
)
def test_a_signal_stops_the_batch_cleanly_and_a_rerun_finishes(
    tmp_path: Path, tiny_model: Path, signum: int, executor_args: tuple[str, ...]
) -> None:
    """SIGTERM to the process (a service manager, ``kill``) or SIGINT to its whole process
    group (Ctrl-C in a terminal): exit 128 + signal, one line naming what was not finished,
    no traceback, nothing left ``running``, a summary; the rerun finishes the rest."""
    inputs = tmp_path / "in"
    uids = _write_inputs(inputs, 6)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [str(MEDSEG), "batch", str(inputs), str(out), "--model", str(tiny_model), *executor_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _wait_for_done(proc, out, 1)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)  # the terminal signals every process of the group
        else:
            os.kill(proc.pid, signum)
        _, stderr_bytes = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    stderr = stderr_bytes.decode()
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(r"interrupted: (\d+) cases? not finished; summary: (.+)", last)
    assert match is not None, stderr
    assert Path(match[2]) == (out / "summary.csv").resolve()
    assert _ledger(out, "SELECT * FROM cases WHERE status = 'running'") == []
    assert _ledger(out, "SELECT * FROM attempts WHERE status = 'running'") == []
    rows = _summary(out)
    statuses = sorted(r["status"] for r in rows.values())
    assert set(statuses) <= {"done", "interrupted"} and "done" in statuses, statuses
    assert statuses.count("interrupted") == int(match[1]) >= 1
    assert _page_statuses(out) == _csv_statuses(out)  # interrupted rows highlighted too
    assert _hidden_leftovers(out) == [] and _staging_left(out) == []

    again = _batch(str(inputs), str(out), "--model", str(tiny_model))
    assert again.exit_code == 0, again.output
    rows = _summary(out)
    completions: dict[str, int] = {}
    for attempt in _ledger(out, "SELECT * FROM attempts"):
        if attempt["status"] in ("done", "recovered"):
            completions[attempt["case_id"]] = completions.get(attempt["case_id"], 0) + 1
    assert completions == {rows[uid]["case_id"]: 1 for uid in uids.values()}
    for uid in uids.values():
        _check_case_folder(out / "cases" / rows[uid]["case_id"], uid)


def _pool_workers(pid: int) -> list[int]:
    """The batch worker processes of process ``pid`` (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.mark.slow
def test_pool_workers_leave_stop_signals_to_the_driver(tmp_path: Path, tiny_model: Path) -> None:
    """Ctrl-C reaches the terminal's whole process group, and a service manager may signal
    every process of a service: workers ignore SIGINT and SIGTERM (the driver stops them), so
    such a signal never cuts a case in half or fails it."""
    inputs = tmp_path / "in"
    uids = _write_inputs(inputs, 4)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [str(MEDSEG), "batch", str(inputs), str(out), "--model", str(tiny_model), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _wait_for_done(proc, out, 1)
        workers = _pool_workers(proc.pid)
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGINT)
            os.kill(pid, signal.SIGTERM)
        _, stderr_bytes = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    stderr = stderr_bytes.decode()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    rows = _summary(out)
    assert {rows[uid]["status"] for uid in uids.values()} == {"done"}


def test_batch_interrupted_says_what_the_cli_prints() -> None:
    from medseg.batch import BatchSummary

    summary = BatchSummary("run", (), Path("/out/ledger.sqlite"), Path("/out/summary.csv"))
    stop = BatchInterrupted(signal.SIGTERM, summary, 3)
    assert stop.exit_code == 143
    assert str(stop) == "interrupted: 3 cases not finished; summary: /out/summary.csv"
    assert BatchInterrupted(signal.SIGINT, None, 0).exit_code == 130
    assert isinstance(stop, KeyboardInterrupt) and not isinstance(stop, Exception)


# ---------------------------------------------------------------------------------------------
# 21. SeriesDescription is identifying


def _entry(description: str | None) -> SeriesEntry:
    return SeriesEntry(
        "1.2.3",
        "1.2",
        None,
        "CT",
        description,
        3,
        None,
        None,
        SeriesKind.VOLUME,
        120,
        120,
        512,
        512,
        None,
        None,
        None,
        (),
        False,
        (),
        (),
    )


def test_describe_names_a_series_without_its_description() -> None:
    assert _entry(CANARY).describe() == "1.2.3 (CT, series 3, 120 slices)"
    shown = _entry(CANARY).describe(log_identifiers=True)
    assert shown == f"1.2.3 (CT, {CANARY!r}, series 3, 120 slices)"
    none = _entry(None).describe(log_identifiers=True)
    assert none == "1.2.3 (CT, 'no description', series 3, 120 slices)"


def _two_series_study(root: Path, description: str) -> None:
    """One study (one patient folder) with two CT series that both match the default rules."""
    from medseg.synthetic import phantom

    study_uid = None
    for i in range(2):
        case = phantom.make_case(300 + i, shape=(16, 64, 64), n_tumours=0)
        paths = phantom.write_case(
            case,
            root / "ROE^RICHARD" / f"s{i}",
            patient_id="MRN-SECRET-900",
            patient_name="ROE^RICHARD",
            series_description=description,
        )
        for file in sorted((root / "ROE^RICHARD" / f"s{i}" / "ct").iterdir()):
            ds = pydicom.dcmread(file)
            study_uid = study_uid or str(ds.StudyInstanceUID)
            ds.StudyInstanceUID = study_uid
            ds.save_as(file)
        assert paths.series_instance_uid


def test_select_series_lists_descriptions_only_with_log_identifiers(tmp_path: Path) -> None:
    _two_series_study(tmp_path / "in", CANARY)
    inventory = scan_folder(tmp_path / "in")
    with pytest.raises(InputError) as hidden:
        select_series(inventory)
    assert "2 series match" in str(hidden.value) and CANARY not in str(hidden.value)
    assert "(CT, series 1, 16 slices)" in str(hidden.value)
    with pytest.raises(InputError) as shown:
        select_series(inventory, log_identifiers=True)
    assert f"(CT, {CANARY!r}, series 1, 16 slices)" in str(shown.value)
    out = tmp_path / "out"
    out.mkdir()
    salt = load_salt(out)
    (spec,) = discover_cases(tmp_path / "in", SeriesSelection(), salt=salt)
    assert spec.error is not None and CANARY not in spec.error[1]
    (spec,) = discover_cases(
        tmp_path / "in", SeriesSelection(), salt=salt, privacy=PrivacyConfig(log_identifiers=True)
    )
    assert spec.error is not None and CANARY in spec.error[1]


def _files_holding(root: Path, text: str) -> list[str]:
    """Files under ``root`` whose bytes hold ``text``, except DICOM files (whose attributes
    are meant to be there)."""
    found = []
    for path in sorted(root.rglob("*")):
        if (
            path.is_file()
            and not path.is_symlink()
            and path.suffix != ".dcm"
            and text.encode() in path.read_bytes()
        ):
            found.append(path.relative_to(root).as_posix())
    return found


def test_series_description_stays_out_of_the_ledger_summaries_and_logs(
    tmp_path: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    inputs = tmp_path / "in"
    _two_series_study(inputs, CANARY)  # fails: two series match
    from medseg.synthetic import phantom

    case = phantom.make_case(400, shape=(16, 64, 64), n_tumours=1, radius_range_mm=(7.0, 9.0))
    phantom.write_case(
        case,
        inputs / "LEE^ANN",
        patient_id="MRN-SECRET-901",
        patient_name=SECRET_NAMES[4],
        series_description=CANARY,
    )  # done
    (inputs / "lone").mkdir()  # a lone unparseable file: a third, failed case
    (inputs / "lone" / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10")
    out = tmp_path / "out"
    result = _batch(str(inputs), str(out), "--model", str(tiny_model))
    assert result.exit_code == 1, result.output
    rows = list(_summary(out).values())
    assert sorted(r["status"] for r in rows) == ["done", "failed", "failed"]
    two = next(r for r in rows if "2 series match" in r["error_message"])
    assert "(CT, series 1, 16 slices)" in two["error_message"]
    assert CANARY not in result.output and CANARY not in caplog.text
    assert _files_holding(out, CANARY) == []
