"""`medseg batch`: ledger, resume, skip/retry, crash recovery, and the same results on Ray.

The referees are independent of medseg: pydicom reads the RT-STRUCTs back, nibabel the label
maps, sqlite3 the ledger, and the input tree is compared byte for byte before and after.
"""

from __future__ import annotations

import csv
import hashlib
import html.parser
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pydicom.dataset
import pydicom.uid
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.synthetic import phantom

REPO = Path(__file__).resolve().parents[1]
#: Patient names and IDs written into the inputs; none may reach logs, ledger ids or summary ids.
SECRET_NAMES = (
    "DOE^JANE",
    "SMITH^JOHN",
    "ROE^RICHARD",
    "POE^EDGAR",
    "LEE^ANN",
    "KIM^SUN",
    "PARK^MIN",
    "CHO^YUN",
)
CASE_FILES = (
    "rtstruct.dcm",
    "labels.nii.gz",
    "volumes.json",
    "lesions.csv",
    "case.json",
    "report/report.html",
)


def train_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny U-Net trained for a few seconds on two phantoms (it finds some tumour); trained
    once per test session and shared by the batch and PACS tests (read it, never write it)."""
    from medseg.config import load_config
    from medseg.training.train import train

    cached = tmp_path_factory.getbasetemp() / "tiny-batch-model" / "best.pt"
    if cached.is_file():
        return cached
    config = load_config(REPO / "configs" / "tiny.yaml")
    config = config.model_copy(
        update={"train": config.train.model_copy(update={"epochs": 10, "foreground_fraction": 0.7})}
    )
    cases = [
        phantom.make_case(seed, shape=(32, 64, 64), n_tumours=2, radius_range_mm=(10.0, 16.0))
        for seed in range(2)
    ]
    result = train(config, [(c.image, c.labels) for c in cases], [], cached.parent)
    return Path(result.checkpoint_path)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """See :func:`train_tiny_model`."""
    return train_tiny_model(tmp_path_factory)


def _write_inputs(root: Path, n: int, first_seed: int = 100) -> dict[str, str]:
    """``n`` phantom studies under patient-named folders; returns folder -> SeriesInstanceUID."""
    uids = {}
    for i in range(n):
        case = phantom.make_case(
            first_seed + i, shape=(16, 64, 64), n_tumours=1, radius_range_mm=(7.0, 9.0)
        )
        folder = f"{SECRET_NAMES[i % len(SECRET_NAMES)]}_{i:03d}"
        paths = phantom.write_case(
            case,
            root / folder,
            patient_id=f"MRN-SECRET-{i:03d}",
            patient_name=SECRET_NAMES[i % len(SECRET_NAMES)],
        )
        uids[folder] = paths.series_instance_uid
    return uids


def _truncate_one_slice(series_dir: Path) -> tuple[Path, bytes]:
    """Cut the end off one slice's pixel data (a corrupt file inside a valid series); returns
    the file and its original bytes."""
    victim = sorted(series_dir.iterdir())[5]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 3000])
    return victim, data


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    return {
        p.relative_to(root).as_posix(): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _set_read_only(root: Path, read_only: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        os.chmod(path, mode & ~write if read_only else mode | stat.S_IWUSR)


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as fh:
        return {row["series_instance_uid"] or row["case_id"]: row for row in csv.DictReader(fh)}


class _PageRows(html.parser.HTMLParser):
    """The rows of a summary page: (row class, cells as text)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str | None, list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append((dict(attrs).get("class"), []))
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1][1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _page_statuses(out: Path) -> dict[str, tuple[str, str | None]]:
    """``summary.html``'s case id -> (status shown, row class: the highlight)."""
    parser = _PageRows()
    parser.feed((out / "summary.html").read_text())
    (_, header), *rows = parser.rows
    assert header[:2] == ["case", "status"], header
    return {cells[0]: (cells[1], row_class) for row_class, cells in rows}


def _csv_statuses(out: Path) -> dict[str, tuple[str, str | None]]:
    """``summary.csv``'s case id -> (status, the highlight the page should give it)."""
    highlighted = {"failed", "interrupted"}
    return {
        r["case_id"]: (r["status"], r["status"] if r["status"] in highlighted else None)
        for r in _summary(out).values()
    }


def _ledger(out: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    db = sqlite3.connect(out / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _check_case_folder(case_dir: Path, series_uid: str) -> None:
    """A complete case folder whose RT-STRUCT references the input series (read by pydicom)."""
    for name in CASE_FILES:
        assert (case_dir / name).is_file(), f"{case_dir}: {name} missing"
    rt = pydicom.dcmread(case_dir / "rtstruct.dcm")
    assert rt.Modality == "RTSTRUCT"
    referenced = (
        rt.ReferencedFrameOfReferenceSequence[0]
        .RTReferencedStudySequence[0]
        .RTReferencedSeriesSequence[0]
        .SeriesInstanceUID
    )
    assert referenced == series_uid
    labels: Any = nib.load(case_dir / "labels.nii.gz")
    assert labels.shape == (64, 64, 16)  # NIfTI (x, y, z) of the (16, 64, 64) input


def _labels(case_dir: Path) -> np.ndarray:
    image: Any = nib.load(case_dir / "labels.nii.gz")
    return np.asarray(image.dataobj)


def _hidden_leftovers(out: Path) -> list[str]:
    return [p.name for p in (out / "cases").iterdir() if p.name.startswith(".")]


def _batch(*args: str) -> Any:
    return CliRunner().invoke(app, ["batch", *args])


def test_batch_records_resumes_skips_and_reruns_what_changed(
    tmp_path: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    inputs = tmp_path / "in"
    uids = _write_inputs(inputs, 4)
    folders = sorted(uids)
    bad_folder = folders[1]
    bad_file, original = _truncate_one_slice(inputs / bad_folder / "ct")
    good = [uids[f] for f in folders if f != bad_folder]
    before = _snapshot(inputs)
    _set_read_only(inputs, True)
    out = tmp_path / "out"
    model = str(tiny_model)

    first = _batch(str(inputs), str(out), "--model", model)
    assert first.exit_code == 1, first.output
    rows = _summary(out)
    assert {rows[u]["status"] for u in good} == {"done"}
    assert rows[uids[bad_folder]]["status"] == "failed"
    assert rows[uids[bad_folder]]["error_class"] == "UnreadableScanError"
    assert "truncated" in rows[uids[bad_folder]]["error_message"]
    for uid in good:
        _check_case_folder(Path(rows[uid]["out_dir"]), uid)
    assert not (out / "cases" / rows[uids[bad_folder]]["case_id"]).exists()
    assert _hidden_leftovers(out) == []
    assert _snapshot(inputs) == before  # inputs never written to
    assert "3 done, 0 skipped (unchanged), 1 failed" in first.output
    assert _page_statuses(out) == _csv_statuses(out)  # the page says what summary.csv says
    assert "4 cases: 3 done, 1 failed." in (out / "summary.html").read_text()

    # the ledger: one row per case, an attempt each, the model's content id
    cases = {r["series_instance_uid"]: r for r in _ledger(out, "SELECT * FROM cases")}
    assert set(cases) == set(uids.values())
    assert {cases[u]["status"] for u in good} == {"done"}
    assert cases[uids[bad_folder]]["error_class"] == "UnreadableScanError"
    model_id = "sha256:" + hashlib.sha256(tiny_model.read_bytes()).hexdigest()[:16]
    assert {r["model_id"] for r in cases.values()} == {model_id}
    assert all(r["seconds"] is not None and r["seconds"] > 0 for r in cases.values())
    # where the time went: every stage of a DICOM case, summing to at most the case's time
    from medseg.timing import STAGES

    for uid in good:
        stages = json.loads(cases[uid]["stage_seconds"])
        assert list(stages) == list(STAGES), stages
        assert 0 < sum(stages.values()) <= cases[uid]["seconds"]
        manifest = json.loads((Path(rows[uid]["out_dir"]) / "case.json").read_text())
        volumes = json.loads((Path(rows[uid]["out_dir"]) / "volumes.json").read_text())
        assert manifest["stage_seconds"] == volumes["stage_seconds"] == stages
    assert cases[uids[bad_folder]]["stage_seconds"] is None
    assert "case " in caplog.text and "network " in caplog.text  # the INFO line per case

    # no patient names or IDs in case ids, the ledger or the log
    ledger_text = " ".join(str(v) for r in _ledger(out, "SELECT * FROM cases") for v in tuple(r))
    for secret in (*SECRET_NAMES, "MRN-SECRET"):
        assert secret not in ledger_text
        assert secret not in caplog.text
        assert secret.split("^")[0] not in " ".join(r["case_id"] for r in cases.values())

    # rerun: done cases are skipped, the failed one is kept (not retried) -> still exit 1
    second = _batch(str(inputs), str(out), "--model", model)
    assert second.exit_code == 1, second.output
    rows = _summary(out)
    assert {rows[u]["status"] for u in good} == {"skipped"}
    assert (rows[uids[bad_folder]]["status"], rows[uids[bad_folder]]["ran"]) == ("failed", "no")
    assert _page_statuses(out) == _csv_statuses(out)
    assert "4 cases: 3 skipped, 1 failed." in (out / "summary.html").read_text()
    assert len(_ledger(out, "SELECT * FROM attempts")) == 4

    # --retry-failed runs only the failed case again
    third = _batch(str(inputs), str(out), "--model", model, "--retry-failed")
    assert third.exit_code == 1, third.output
    attempts = _ledger(out, "SELECT case_id, status FROM attempts")
    assert len(attempts) == 5
    assert attempts[-1]["case_id"] == rows[uids[bad_folder]]["case_id"]

    # repairing the bad input (new bytes, new mtime) reruns that case alone: exit 0
    _set_read_only(inputs, False)
    bad_file.write_bytes(original)
    fourth = _batch(str(inputs), str(out), "--model", model)
    assert fourth.exit_code == 0, fourth.output
    rows = _summary(out)
    assert rows[uids[bad_folder]]["status"] == "done"
    assert {rows[u]["status"] for u in good} == {"skipped"}
    _check_case_folder(Path(rows[uids[bad_folder]]["out_dir"]), uids[bad_folder])

    # a different model (other bytes) reruns every case
    from medseg.model import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(tiny_model)
    other_model = save_checkpoint(
        tmp_path / "other.pt", loaded.network, loaded.config, extra={"note": "retrained"}
    )
    fifth = _batch(str(inputs), str(out), "--model", str(other_model))
    assert fifth.exit_code == 0, fifth.output
    assert {r["status"] for r in _summary(out).values()} == {"done"}
    assert {r["model_id"] for r in _ledger(out, "SELECT model_id FROM cases")} != {model_id}


def test_summary_csv_and_page_say_the_same_word_for_each_case(tmp_path: Path) -> None:
    """Every status a run reports, as the driver writes both summaries: the same word for
    each case, counted on the page, failed and interrupted rows highlighted."""
    from medseg.batch import SummaryRow, SummaryStatus, write_summary_csv
    from medseg.batch.driver import _write_summary_page

    def row(case_id: str, status: SummaryStatus, error: str | None = None) -> SummaryRow:
        return SummaryRow(
            case_id, status, True, "1.2.3", None, error, "no slices" if error else None, None,
            None, {},
        )  # fmt: skip

    rows = [
        row("case-1", SummaryStatus.DONE),
        row("case-2", SummaryStatus.SKIPPED),
        row("case-3", SummaryStatus.FAILED, "UnreadableScanError"),
        row("case-4", SummaryStatus.INTERRUPTED),
        row("case-5", SummaryStatus.DONE),
    ]
    write_summary_csv(rows, tmp_path / "summary.csv")
    _write_summary_page(rows, tmp_path)
    assert _page_statuses(tmp_path) == _csv_statuses(tmp_path)
    assert [r["status"] for r in _summary(tmp_path).values()] == [
        "done",
        "skipped",
        "failed",
        "interrupted",
        "done",
    ]
    page = (tmp_path / "summary.html").read_text()
    assert "5 cases: 2 done, 1 skipped, 1 failed, 1 interrupted." in page
    assert "UnreadableScanError: no slices" in page


def test_the_ledger_keeps_its_four_statuses_and_shares_done_and_failed(tmp_path: Path) -> None:
    """Ledgers already written allow only queued, running, done and failed (their CHECK
    constraint): CaseStatus stays those four, and a finished case's word is the summaries'."""
    from medseg.batch import CaseSpec, CaseStatus, Ledger, SummaryStatus

    assert [s.value for s in CaseStatus] == ["queued", "running", "done", "failed"]
    assert {CaseStatus.DONE.value, CaseStatus.FAILED.value} == {
        SummaryStatus.DONE.value,
        SummaryStatus.FAILED.value,
    }
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        for i, status in enumerate(CaseStatus):
            ledger.record(CaseSpec(f"case-{i}", "1.2", None, "sha256:0"), "folder", status, None)
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    try:
        for word in ("skipped", "interrupted"):  # the summaries' words only
            with pytest.raises(sqlite3.IntegrityError):
                db.execute(
                    "INSERT INTO cases (case_id, source, fingerprint, status) VALUES (?, ?, ?, ?)",
                    (word, "folder", "sha256:0", word),
                )
    finally:
        db.close()
    assert [
        r["status"] for r in _ledger(tmp_path, "SELECT status FROM cases ORDER BY case_id")
    ] == [s.value for s in CaseStatus]


def test_batch_usage_errors_exit_2(tmp_path: Path, tiny_model: Path) -> None:
    inputs = tmp_path / "in"
    _write_inputs(inputs, 1)
    missing_input = _batch(
        str(tmp_path / "nope"), str(tmp_path / "out"), "--model", str(tiny_model)
    )
    assert missing_input.exit_code == 2
    bad_model = tmp_path / "bad.pt"
    bad_model.write_bytes(b"not a checkpoint")
    result = _batch(str(inputs), str(tmp_path / "out"), "--model", str(bad_model))
    assert result.exit_code == 2
    assert "bad.pt" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "cases").exists()


def test_discovery_failures_are_named_cases(tmp_path: Path, tiny_model: Path) -> None:
    """A study with only a non-image series, one with a missing slice and an unparseable file
    fail with named errors; the good study is done."""
    inputs = tmp_path / "in"
    uids = _write_inputs(inputs, 2)
    gap_folder = sorted(uids)[1]
    sorted((inputs / gap_folder / "ct").iterdir())[7].unlink()  # a slice missing mid-series
    # an RT-STRUCT alone in its own study: no CT/MR volume to segment
    rt = pydicom.dcmread(str(pydicom.data.get_testdata_file("rtstruct.dcm")), force=True)
    rt.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    rt.PatientName = "DOE^JANE"
    rt.file_meta = pydicom.dataset.FileMetaDataset()
    rt.file_meta.MediaStorageSOPClassUID = rt.SOPClassUID
    rt.file_meta.MediaStorageSOPInstanceUID = rt.SOPInstanceUID
    rt.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    (inputs / "rt_only").mkdir()
    rt.save_as(inputs / "rt_only" / "rs.dcm", enforce_file_format=True)
    (inputs / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10")
    out = tmp_path / "out"
    result = _batch(str(inputs), str(out), "--model", str(tiny_model))
    assert result.exit_code == 1, result.output
    rows = list(_summary(out).values())
    by_status = sorted((r["status"], r["error_class"]) for r in rows)
    assert by_status == [
        ("done", ""),
        ("failed", "InputError"),
        ("failed", "MissingSliceError"),
        ("failed", "UnreadableScanError"),
    ]
    no_volume = next(r for r in rows if r["error_class"] == "InputError")
    assert "not a CT/MR image volume" in no_volume["error_message"]
    done = next(r for r in rows if r["status"] == "done")
    assert done["series_instance_uid"] == uids[min(uids)]
    gap = next(r for r in rows if r["error_class"] == "MissingSliceError")
    assert gap["series_instance_uid"] == uids[gap_folder]
    # summary.html lists every case, links the done case's QA report, and shows the errors
    page = (out / "summary.html").read_text()
    for row in rows:
        assert row["case_id"] in page
    link = f'href="cases/{done["case_id"]}/report/report.html"'
    assert link in page, page
    assert (out / "cases" / done["case_id"] / "report" / "report.html").is_file()
    assert "MissingSliceError" in page and "DOE" not in page


def test_interrupted_run_is_recovered_without_running_twice(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A case finished just before a kill (folder in place, ledger still 'running') is marked
    done without running again; a half-written temporary folder is removed."""
    inputs = tmp_path / "in"
    uids = _write_inputs(inputs, 2)
    out = tmp_path / "out"
    assert _batch(str(inputs), str(out), "--model", str(tiny_model)).exit_code == 0
    rows = _summary(out)
    finished, unfinished = (rows[uids[f]]["case_id"] for f in sorted(uids))
    # what a kill leaves: one case renamed into place but not yet recorded; one half written
    db = sqlite3.connect(out / "ledger.sqlite")
    db.execute(
        "UPDATE cases SET status = 'running' WHERE case_id IN (?, ?)", (finished, unfinished)
    )
    db.execute(
        "UPDATE attempts SET status = 'running' WHERE case_id IN (?, ?)", (finished, unfinished)
    )
    db.commit()
    db.close()
    import shutil

    shutil.move(out / "cases" / unfinished, out / "cases" / f".{unfinished}.abc123.tmp")
    (out / "cases" / f".{unfinished}.abc123.tmp" / "case.json").unlink()
    mtime = (out / "cases" / finished / "case.json").stat().st_mtime_ns

    again = _batch(str(inputs), str(out), "--model", str(tiny_model))
    assert again.exit_code == 0, again.output
    assert (out / "cases" / finished / "case.json").stat().st_mtime_ns == mtime  # not rerun
    statuses = {
        r["case_id"]: r["status"]
        for r in _ledger(out, "SELECT * FROM attempts")
        if r["attempt_id"] > 2
    }
    assert statuses == {unfinished: "done"}
    first_attempts = {
        r["case_id"]: r["status"]
        for r in _ledger(out, "SELECT * FROM attempts WHERE attempt_id <= 2")
    }
    assert first_attempts == {finished: "recovered", unfinished: "interrupted"}
    assert _hidden_leftovers(out) == []
    _check_case_folder(out / "cases" / unfinished, uids[sorted(uids)[1]])


def test_kill_9_mid_run_then_resume(tmp_path: Path, tiny_model: Path) -> None:
    """kill -9 of a running `medseg batch`: only complete case folders, and the rerun finishes
    every case with no case done twice."""
    inputs = tmp_path / "in"
    uids = _write_inputs(inputs, 6)
    out = tmp_path / "out"
    medseg_exe = Path(sys.executable).parent / "medseg"
    proc = subprocess.Popen(
        [str(medseg_exe), "batch", str(inputs), str(out), "--model", str(tiny_model)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if (out / "ledger.sqlite").exists():
                with sqlite3.connect(out / "ledger.sqlite") as db:
                    try:
                        n_done = db.execute(
                            "SELECT count(*) FROM cases WHERE status = 'done'"
                        ).fetchone()[0]
                    except sqlite3.OperationalError:
                        n_done = 0
                if n_done >= 2:
                    break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    states = {r["status"] for r in _ledger(out, "SELECT status FROM cases")}
    assert "done" in states and states - {"done"}, f"the kill did not land mid-run: {states}"
    for case_dir in (out / "cases").iterdir():
        if not case_dir.name.startswith("."):
            for name in CASE_FILES:  # a visible case folder is complete
                assert (case_dir / name).is_file(), f"{case_dir}: {name} missing after the kill"

    again = _batch(str(inputs), str(out), "--model", str(tiny_model))
    assert again.exit_code == 0, again.output
    rows = _summary(out)
    for uid in uids.values():
        assert rows[uid]["status"] in ("done", "skipped")
        _check_case_folder(
            Path(rows[uid]["out_dir"])
            if rows[uid]["out_dir"]
            else out / "cases" / rows[uid]["case_id"],
            uid,
        )
    completions: dict[str, int] = {}
    for attempt in _ledger(out, "SELECT * FROM attempts"):
        if attempt["status"] in ("done", "recovered"):
            completions[attempt["case_id"]] = completions.get(attempt["case_id"], 0) + 1
    assert completions == {rows[uid]["case_id"]: 1 for uid in uids.values()}
    assert _hidden_leftovers(out) == []
    assert not any((out / ".staging").iterdir()) if (out / ".staging").exists() else True


@pytest.mark.slow
@pytest.mark.parametrize(
    "executor_args",
    [
        pytest.param(("--workers", "2"), id="process-pool"),
        pytest.param(("--executor", "ray", "--workers", "2"), id="ray"),
    ],
)
def test_pool_and_ray_executors_give_the_local_results(
    tmp_path: Path, tiny_model: Path, executor_args: tuple[str, ...]
) -> None:
    """A process pool and a local Ray instance: the same statuses, errors and label maps as
    the in-process run, and the same ledger semantics (a rerun skips every done case)."""
    inputs = tmp_path / "in"
    uids = _write_inputs(inputs, 3)
    bad_folder = sorted(uids)[2]
    _truncate_one_slice(inputs / bad_folder / "ct")
    local_out, ray_out = tmp_path / "local", tmp_path / "other"
    local = _batch(str(inputs), str(local_out), "--model", str(tiny_model))
    assert local.exit_code == 1, local.output
    on_ray = _batch(str(inputs), str(ray_out), "--model", str(tiny_model), *executor_args)
    assert on_ray.exit_code == 1, on_ray.output
    local_rows, ray_rows = _summary(local_out), _summary(ray_out)
    for uid in uids.values():
        assert ray_rows[uid]["status"] == local_rows[uid]["status"]
        assert ray_rows[uid]["error_class"] == local_rows[uid]["error_class"]
        if local_rows[uid]["status"] == "done":
            a = _labels(Path(local_rows[uid]["out_dir"]))
            b = _labels(Path(ray_rows[uid]["out_dir"]))
            np.testing.assert_array_equal(a, b)
            _check_case_folder(Path(ray_rows[uid]["out_dir"]), uid)
    executor = "ray" if "ray" in executor_args else "pool"
    assert {r["executor"] for r in _ledger(ray_out, "SELECT executor FROM runs")} == {executor}
    again = _batch(str(inputs), str(ray_out), "--model", str(tiny_model), *executor_args)
    assert again.exit_code == 1
    rows = _summary(ray_out)
    assert sorted(r["status"] for r in rows.values()) == ["failed", "skipped", "skipped"]
    assert len(_ledger(ray_out, "SELECT * FROM attempts")) == 3


@pytest.mark.slow
def test_200_small_cases_with_two_workers(tmp_path: Path, tiny_model: Path) -> None:
    """Load test: 200 reduced-size phantoms through `medseg batch --workers 2`."""
    inputs = tmp_path / "in"
    uids = {}
    for i in range(200):
        case = phantom.make_case(1000 + i, shape=(16, 32, 48), n_tumours=0)
        paths = phantom.write_case(case, inputs / f"p{i:03d}", patient_id=f"PHANTOM-{i:03d}")
        uids[paths.series_instance_uid] = i
    out = tmp_path / "out"
    result = _batch(str(inputs), str(out), "--model", str(tiny_model), "--workers", "2")
    assert result.exit_code == 0, result.output
    rows = _summary(out)
    assert set(rows) == set(uids) and {r["status"] for r in rows.values()} == {"done"}
    ledger = _ledger(out, "SELECT status, count(*) AS n FROM cases GROUP BY status")
    assert [(r["status"], r["n"]) for r in ledger] == [("done", 200)]
    assert len(_ledger(out, "SELECT * FROM attempts WHERE status = 'done'")) == 200
    folders = [p for p in (out / "cases").iterdir()]
    assert len(folders) == 200 and not _hidden_leftovers(out)
    for folder in folders:
        assert all((folder / name).is_file() for name in CASE_FILES), folder
