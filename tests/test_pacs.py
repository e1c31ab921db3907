"""`medseg pacs run` against a real Orthanc: find, retrieve, segment, send back, idempotently.

The referee is Orthanc itself (its REST API says what it stores and in which study) and
pydicom, which reads the RT-STRUCT Orthanc holds.
"""

from __future__ import annotations

import io
import sqlite3
import time
from pathlib import Path

import pydicom
import pytest
import requests
from typer.testing import CliRunner, Result

from medseg.cli import app
from medseg.synthetic import phantom
from tests.conftest import OrthancServer
from tests.test_batch import train_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_model(tmp_path_factory)


def _upload_phantom(server: OrthancServer, tmp_path: Path, seed: int, patient: str) -> str:
    """Write a phantom CT and store it in Orthanc; returns its SeriesInstanceUID."""
    case = phantom.make_case(seed, shape=(16, 64, 64), n_tumours=1, radius_range_mm=(7.0, 9.0))
    paths = phantom.write_case(case, tmp_path / f"upload-{seed}", patient_id=patient)
    for path in sorted(paths.ct_dir.iterdir()):
        answer = requests.post(f"{server.url}/instances", data=path.read_bytes(), timeout=10)
        answer.raise_for_status()
    return paths.series_instance_uid


def _wait_stable(server: OrthancServer, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        studies = requests.get(f"{server.url}/studies?expand", timeout=10).json()
        if studies and all(s["IsStable"] for s in studies):
            return
        time.sleep(0.2)
    pytest.fail("Orthanc never reported the uploaded studies as stable")


def _series_by_modality(server: OrthancServer) -> dict[str, list[dict[str, object]]]:
    found: dict[str, list[dict[str, object]]] = {}
    for series in requests.get(f"{server.url}/series?expand", timeout=10).json():
        found.setdefault(series["MainDicomTags"]["Modality"], []).append(series)
    return found


def _pacs(*args: str) -> Result:
    return CliRunner().invoke(app, ["pacs", "run", *args])


def test_pacs_run_sends_rtstruct_and_seg_into_the_study_once(
    tmp_path: Path, tiny_model: Path, orthanc_server: OrthancServer
) -> None:
    server = orthanc_server
    ct_uids = {
        _upload_phantom(server, tmp_path, seed, f"PHANTOM-PACS-{seed}") for seed in (200, 201)
    }
    _wait_stable(server)
    out = tmp_path / "out"
    # a date range that matches nothing processes nothing
    none = _pacs(str(out), "--url", server.url, "--model", str(tiny_model), "--date-to", "19991231")
    assert none.exit_code == 0, none.output
    assert "0 cases" in none.output

    first = _pacs(
        str(out),
        "--url",
        server.url,
        "--model",
        str(tiny_model),
        "--modality",
        "CT",
        "--date-from",
        "20000101",
    )
    assert first.exit_code == 0, first.output
    series = _series_by_modality(server)
    assert {s["MainDicomTags"]["SeriesInstanceUID"] for s in series["CT"]} == ct_uids  # type: ignore[index]
    assert len(series["RTSTRUCT"]) == 2
    for rt_series in series["RTSTRUCT"]:
        instance = rt_series["Instances"][0]  # type: ignore[index]
        data = requests.get(f"{server.url}/instances/{instance}/file", timeout=10).content
        rt = pydicom.dcmread(io.BytesIO(data))
        referenced = (
            rt.ReferencedFrameOfReferenceSequence[0]
            .RTReferencedStudySequence[0]
            .RTReferencedSeriesSequence[0]
            .SeriesInstanceUID
        )
        assert referenced in ct_uids
        # it lands in the study of the CT it references
        ct_series = next(
            s for s in series["CT"] if s["MainDicomTags"]["SeriesInstanceUID"] == referenced
        )  # type: ignore[index]
        assert rt_series["ParentStudy"] == ct_series["ParentStudy"]
    # the tiny model finds tumour in these phantoms, so a SEG goes with each RT-STRUCT
    assert len(series.get("SEG", [])) == 2
    n_instances = len(requests.get(f"{server.url}/instances", timeout=10).json())
    deliveries = (
        sqlite3.connect(out / "ledger.sqlite")
        .execute("SELECT count(*) FROM deliveries")
        .fetchone()[0]
    )
    assert deliveries == 4

    # a second run finds the same studies unchanged: nothing runs, nothing is sent
    second = _pacs(str(out), "--url", server.url, "--model", str(tiny_model))
    assert second.exit_code == 0, second.output
    assert "sent 0 objects" in second.output
    assert "0 done, 2 skipped" in second.output
    assert len(requests.get(f"{server.url}/instances", timeout=10).json()) == n_instances
    db = sqlite3.connect(out / "ledger.sqlite")
    assert db.execute("SELECT count(*) FROM attempts").fetchone()[0] == 2
    # no patient IDs in the ledger
    dump = " ".join(str(v) for row in db.execute("SELECT * FROM cases") for v in row)
    assert "PHANTOM-PACS" not in dump


def test_pacs_run_leaves_studies_still_arriving(
    tmp_path: Path, tiny_model: Path, orthanc_server: OrthancServer
) -> None:
    _upload_phantom(orthanc_server, tmp_path, 202, "PHANTOM-PACS-202")
    out = tmp_path / "out"
    result = _pacs(str(out), "--url", orthanc_server.url, "--model", str(tiny_model))
    assert result.exit_code == 0, result.output
    assert "1 studies still arriving" in result.output
    assert "RTSTRUCT" not in _series_by_modality(orthanc_server)


def test_pacs_run_unreachable_server_exits_2(tmp_path: Path, tiny_model: Path) -> None:
    from tests.conftest import _free_port

    result = _pacs(
        str(tmp_path / "out"),
        "--url",
        f"http://127.0.0.1:{_free_port()}",
        "--model",
        str(tiny_model),
    )
    assert result.exit_code == 2
    assert "failed" in result.output and "Traceback" not in result.output


def test_listener_receives_a_series_from_storescu_and_sends_rtstruct_to_orthanc(
    tmp_path: Path, tiny_model: Path, orthanc_server: OrthancServer
) -> None:
    """`medseg pacs listen`: dcmtk's storescu sends a CT series; once quiet, its RT-STRUCT
    arrives in Orthanc, in the CT's study (the CT itself is never sent to Orthanc)."""
    import subprocess
    import threading

    from medseg.batch.listener import listen
    from medseg.batch.orthanc import PacsSummary
    from tests.conftest import _free_port, require_tool

    storescu = require_tool("storescu")
    case = phantom.make_case(210, shape=(16, 64, 64), n_tumours=1, radius_range_mm=(7.0, 9.0))
    paths = phantom.write_case(case, tmp_path / "ct-case", patient_id="PHANTOM-LISTEN")
    port = _free_port()
    stop = threading.Event()
    studies: list[PacsSummary] = []
    out = tmp_path / "out"
    listener = threading.Thread(
        target=listen,
        args=(out, tiny_model),
        kwargs={
            "aet": "MEDSEG",
            "port": port,
            "host": "127.0.0.1",
            "destination": orthanc_server.url,
            "allowed_calling_aets": ("TESTSCU",),
            "quiet_period_s": 1.0,
            "stop": stop,
            "poll_s": 0.2,
            "on_study": studies.append,
        },
    )
    listener.start()
    try:
        deadline = time.monotonic() + 30
        while True:  # the model loads before the listener binds its port
            sent = subprocess.run(
                [
                    storescu,
                    "-aec",
                    "MEDSEG",
                    "-aet",
                    "TESTSCU",
                    "+sd",
                    "+r",
                    "127.0.0.1",
                    str(port),
                    str(paths.ct_dir),
                ],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if sent.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        deadline = time.monotonic() + 60
        while not studies and time.monotonic() < deadline:
            time.sleep(0.2)
        assert studies, "the listener never processed the study"
        # a sender whose AE title is not allowed is refused (storescu's own AE title)
        stranger = subprocess.run(
            [storescu, "-aec", "MEDSEG", "+sd", "+r", "127.0.0.1", str(port), str(paths.ct_dir)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stranger.returncode != 0, stranger.stdout + stranger.stderr
        # the same series again (a resend): segmented once only, nothing new sent
        again = subprocess.run(
            [
                storescu,
                "-aec",
                "MEDSEG",
                "-aet",
                "TESTSCU",
                "+sd",
                "+r",
                "127.0.0.1",
                str(port),
                str(paths.ct_dir),
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 0, again.stdout + again.stderr
        deadline = time.monotonic() + 30
        while len(studies) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        listener.join(30)
    assert studies[0].batch.n_done == 1 and studies[0].n_sent >= 1
    assert len(studies) == 2 and studies[1].batch.n_skipped == 1 and studies[1].n_sent == 0
    series = _series_by_modality(orthanc_server)
    assert "CT" not in series and len(series["RTSTRUCT"]) == 1
    instance = series["RTSTRUCT"][0]["Instances"][0]  # type: ignore[index]
    rt = pydicom.dcmread(
        io.BytesIO(
            requests.get(f"{orthanc_server.url}/instances/{instance}/file", timeout=10).content
        )
    )
    assert rt.StudyInstanceUID == case_study_uid(paths.ct_dir)
    referenced = (
        rt.ReferencedFrameOfReferenceSequence[0]
        .RTReferencedStudySequence[0]
        .RTReferencedSeriesSequence[0]
        .SeriesInstanceUID
    )
    assert referenced == paths.series_instance_uid


def case_study_uid(ct_dir: Path) -> str:
    return str(pydicom.dcmread(next(ct_dir.iterdir()), stop_before_pixels=True).StudyInstanceUID)


def test_pacs_run_on_a_real_ct_study(
    tmp_path: Path, tiny_model: Path, orthanc_server: OrthancServer
) -> None:
    """A real lung CT (with its clinical RT-STRUCT in the same study) in Orthanc: our RT-STRUCT
    for the CT series arrives next to the clinical one, and a rerun sends nothing."""
    from tests.conftest import require_data

    folder = require_data("lung-gtv-ct/pat_2")
    ct_uids: set[str] = set()
    clinical: set[str] = set()
    for path in sorted(folder.glob("*.dcm")):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        (ct_uids if header.Modality == "CT" else clinical).add(
            str(header.SeriesInstanceUID if header.Modality == "CT" else header.SOPInstanceUID)
        )
        requests.post(
            f"{orthanc_server.url}/instances", data=path.read_bytes(), timeout=10
        ).raise_for_status()
    _wait_stable(orthanc_server)
    out = tmp_path / "out"
    first = _pacs(str(out), "--url", orthanc_server.url, "--model", str(tiny_model))
    assert first.exit_code == 0, first.output
    ours = []
    for rt_series in _series_by_modality(orthanc_server)["RTSTRUCT"]:
        for instance in rt_series["Instances"]:  # type: ignore[attr-defined]
            rt = pydicom.dcmread(
                io.BytesIO(
                    requests.get(
                        f"{orthanc_server.url}/instances/{instance}/file", timeout=10
                    ).content
                )
            )
            if str(rt.SOPInstanceUID) not in clinical:
                ours.append(rt)
    assert len(ours) == 1
    referenced = (
        ours[0]
        .ReferencedFrameOfReferenceSequence[0]
        .RTReferencedStudySequence[0]
        .RTReferencedSeriesSequence[0]
        .SeriesInstanceUID
    )
    assert {str(referenced)} == ct_uids
    second = _pacs(str(out), "--url", orthanc_server.url, "--model", str(tiny_model))
    assert second.exit_code == 0 and "sent 0 objects" in second.output, second.output
