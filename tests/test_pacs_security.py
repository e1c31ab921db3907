"""`medseg.pacs` at its trust boundaries: PACS URLs, credentials, staged copies and who may
send to the DICOM listener.

The listener tests open real DICOM associations (pynetdicom, over 127.0.0.1) and, where
results are sent on, use a real Orthanc as the destination; the referee is what the listener
answers, what it keeps under ``.incoming`` and what Orthanc holds.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from typer.testing import CliRunner

from medseg.batch import RunOptions, SummaryStatus, case_id_for
from medseg.batch.listener import listen
from medseg.batch.orthanc import OrthancClient, PacsQuery, PacsSummary, run_pacs
from medseg.cli import app
from medseg.config import PrivacyConfig
from medseg.errors import ConfigError, InputError
from medseg.privacy import load_salt
from medseg.synthetic import phantom
from tests.conftest import OrthancServer, _free_port, require_module
from tests.test_batch import REPO, _summary, train_tiny_model
from tests.test_batch_faults import CANARY as DESCRIPTION
from tests.test_batch_faults import _two_series_study
from tests.test_pacs import _wait_stable

CANARY = "Canary-Pw-7f3e9"
_REFUSED_NOT_AUTHORISED = 0x0124


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_model(tmp_path_factory)


# ---------------------------------------------------------------------------------------------
# PACS URLs (issue 17, item 12) and their credentials (item 22)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:99999", "port"),
        ("http://127.0.0.1:0", "port"),
        ("http://127.0.0.1:http", "port"),
        ("ftp://pacs.example:21/", "scheme"),
        ("127.0.0.1:8042", "scheme"),
        ("http://:8042", "host"),
        ("http://pacs.example:8042/?token=1", "query"),
    ],
    ids=[
        "port-over-65535",
        "port-zero",
        "port-not-a-number",
        "ftp",
        "no-scheme",
        "no-host",
        "query",
    ],
)
def test_a_bad_orthanc_url_is_a_config_error_naming_it(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        OrthancClient(url)
    message = str(caught.value)
    assert "\n" not in message
    assert problem in message
    assert url.split("://")[-1].split("/")[0] in message


@pytest.mark.parametrize(
    ("url", "expected_url", "expected_auth"),
    [
        ("http://127.0.0.1:8042", "http://127.0.0.1:8042", None),
        ("https://pacs.example/orthanc/", "https://pacs.example/orthanc", None),
        ("http://[::1]:65535", "http://[::1]:65535", None),
        (f"http://medseg:{CANARY}@pacs.example:1", "http://pacs.example:1", ("medseg", CANARY)),
        ("http://me%40x:p%2Fw%40d@pacs.example", "http://pacs.example", ("me@x", "p/w@d")),
    ],
    ids=["plain", "https-path", "ipv6", "credentials", "percent-encoded-credentials"],
)
def test_a_good_orthanc_url_keeps_where_and_moves_credentials_to_the_session(
    url: str, expected_url: str, expected_auth: tuple[str, str] | None
) -> None:
    client = OrthancClient(url)
    try:
        assert client.url == expected_url
        assert client._session.auth == expected_auth
    finally:
        client.close()


@pytest.mark.parametrize(
    "url",
    [
        f"ftp://medseg:{CANARY}@pacs.example:21/",
        f"medseg:{CANARY}@pacs.example:8042",
        f"http://medseg:{CANARY}@pacs.example:99999",
        f"http://medseg:{CANARY}@:8042",
        f"http://medseg:pa/{CANARY}@pacs.example:8042",
        f"http://medseg:pa@{CANARY}@pacs.example:0",
        f"http://{CANARY}@pacs.example:99999",
    ],
    ids=["ftp", "no-scheme", "bad-port", "no-host", "slash-in-password", "at-in-password", "token"],
)
def test_a_bad_orthanc_url_never_shows_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        OrthancClient(url)
    assert CANARY not in str(caught.value)
    assert "pacs.example" in str(caught.value) or "://" in str(caught.value)


def test_pacs_run_with_a_port_out_of_range_exits_2_without_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "pacs",
            "run",
            str(tmp_path / "out"),
            "--url",
            f"http://medseg:{CANARY}@127.0.0.1:99999",
            "--model",
            str(tmp_path / "no-model.pt"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "port" in result.output
    assert CANARY not in result.output


def test_an_unreachable_orthanc_with_credentials_logs_no_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"http://medseg:{CANARY}@127.0.0.1:{_free_port()}"
    with pytest.raises(InputError) as caught:
        run_pacs(url, tmp_path / "out", tmp_path / "no-model.pt")
    assert "127.0.0.1" in str(caught.value)
    assert CANARY not in str(caught.value)
    assert CANARY not in str(caught.value.__cause__)
    assert CANARY not in caplog.text


def _upload_phantom(
    server: OrthancServer, tmp_path: Path, seed: int, patient: str, drop_slice: int | None = None
) -> phantom.PhantomPaths:
    case = phantom.make_case(seed, shape=(16, 64, 64), n_tumours=1, radius_range_mm=(7.0, 9.0))
    paths = phantom.write_case(case, tmp_path / f"upload-{seed}", patient_id=patient)
    for i, path in enumerate(sorted(paths.ct_dir.iterdir(), key=_slice_position)):
        if i == drop_slice:
            continue
        requests.post(
            f"{server.url}/instances", data=path.read_bytes(), timeout=10
        ).raise_for_status()
    return paths


def _slice_position(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


def _everything_recorded(out: Path) -> str:
    """The ledger's every table and summary.csv, as one text."""
    db = sqlite3.connect(out / "ledger.sqlite")
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    rows = [str(v) for t in tables for row in db.execute(f"SELECT * FROM {t}") for v in row]
    return " ".join(rows) + (out / "summary.csv").read_text()


def test_pacs_run_with_credentials_in_the_url_records_and_logs_no_password(
    tmp_path: Path,
    tiny_model: Path,
    orthanc_server: OrthancServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    _upload_phantom(orthanc_server, tmp_path, 220, "PHANTOM-CANARY")
    _wait_stable(orthanc_server)
    out = tmp_path / "out"
    url = orthanc_server.url.replace("http://", f"http://medseg:{CANARY}@")
    summary = run_pacs(url, out, tiny_model)
    assert summary.batch.n_done == 1 and summary.n_sent >= 1
    assert CANARY not in caplog.text
    assert CANARY not in _everything_recorded(out)
    assert all(CANARY not in str(d) for d in summary.deliveries)


def _only_study(server: OrthancServer, out: Path) -> tuple[OrthancClient, str, Any]:
    """A client of ``server`` (with a canary password) and the one study it holds."""
    from medseg.batch.orthanc import StudyRef

    client = OrthancClient(server.url.replace("http://", f"http://medseg:{CANARY}@"))
    (study,) = client.find_studies(PacsQuery(include_unstable=True))
    assert isinstance(study, StudyRef)
    out.mkdir(parents=True, exist_ok=True)
    return client, case_id_for(study.study_instance_uid, load_salt(out)), study


def test_a_failed_download_leaves_no_dicom_copy_in_staging(
    tmp_path: Path, orthanc_server: OrthancServer
) -> None:
    """Orthanc answers 404 for the last instance, after the others were downloaded: the
    error names the case (without the password) and the case's staging folder is gone."""
    from dataclasses import replace

    from medseg.batch import CaseSpec
    from medseg.batch.orthanc import _retrieve
    from medseg.config import SeriesSelection

    _upload_phantom(orthanc_server, tmp_path, 221, "PHANTOM-STAGING")
    out = tmp_path / "out"
    client, case_id, study = _only_study(orthanc_server, out)
    series = dict(study.series[0])
    series["Instances"] = [*series["Instances"], "ffffffff-deleted-instance"]
    broken = replace(study, series=(series,))
    prepare = _retrieve(client, {case_id: broken}, SeriesSelection())
    folder = out / ".staging" / case_id
    try:
        with pytest.raises(InputError) as caught:
            prepare(CaseSpec(case_id, study.study_instance_uid, None, study.fingerprint), folder)
    finally:
        client.close()
    assert "404" in str(caught.value) and CANARY not in str(caught.value)
    assert not folder.exists()
    assert not list((out / ".staging").rglob("*.dcm"))


def test_a_failed_study_leaves_no_dicom_copy_in_staging(
    tmp_path: Path, tiny_model: Path, orthanc_server: OrthancServer
) -> None:
    """A CT with a missing slice downloads fine and fails in the pipeline (MissingSliceError):
    the batch driver removes the case's staged download once the case failed."""
    _upload_phantom(orthanc_server, tmp_path, 222, "PHANTOM-GAP", drop_slice=8)
    _wait_stable(orthanc_server)
    out = tmp_path / "out"
    summary = run_pacs(orthanc_server.url, out, tiny_model)
    assert summary.batch.n_failed == 1, summary.batch.rows
    assert [p for p in (out / ".staging").rglob("*") if p.is_file()] == []


def _two_series_files(root: Path) -> list[Path]:
    """The CT files of one study with two series described as a patient's name, which both
    match the default selection rules (so the case fails, and its message lists them)."""
    _two_series_study(root, DESCRIPTION)
    files = sorted(root.glob("*/s*/ct/*.dcm"))
    assert len({pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in files}) == 2
    return files


def test_pacs_run_shows_series_descriptions_only_with_log_identifiers_from_the_config(
    tmp_path: Path, tiny_model: Path, orthanc_server: OrthancServer
) -> None:
    """``privacy.log_identifiers`` in ``--config`` reaches a PACS run as it reaches
    ``medseg batch``: the message listing the study's series names their descriptions."""
    for path in _two_series_files(tmp_path / "two"):
        requests.post(
            f"{orthanc_server.url}/instances", data=path.read_bytes(), timeout=10
        ).raise_for_status()
    _wait_stable(orthanc_server)
    opted = tmp_path / "opted-in.yaml"
    opted.write_text(
        (REPO / "configs" / "tiny.yaml").read_text() + "privacy: {log_identifiers: true}\n"
    )
    messages = {}
    for name, config in (("default", ()), ("opted", ("--config", str(opted)))):
        out = tmp_path / name
        result = CliRunner().invoke(
            app,
            ["pacs", "run", str(out), "--url", orthanc_server.url, "--model", str(tiny_model)]
            + list(config),
        )
        assert result.exit_code == 1, result.output
        (row,) = _summary(out).values()
        assert row["status"] == "failed" and "2 series match" in row["error_message"], row
        messages[name] = row["error_message"]
    assert DESCRIPTION not in messages["default"]
    assert f"(CT, {DESCRIPTION!r}, series 1, 16 slices)" in messages["opted"]


# ---------------------------------------------------------------------------------------------
# The C-STORE listener (item 20)


def test_listen_refuses_to_start_without_allowed_calling_aets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        listen(tmp_path / "out", tmp_path / "no-model.pt", port=_free_port())
    assert "allowed_calling_aets" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"allowed_calling_aets": ("MUCH-TOO-LONG-AE-TITLE",)},
        {"allowed_calling_aets": ("BACK\\SLASH",)},
        {"allowed_calling_aets": ("   ",)},
        {"allowed_calling_aets": ("*", "TESTSCU")},
        {"allowed_calling_aets": ("TESTSCU",), "aet": "MUCH-TOO-LONG-AE-TITLE"},
        {"allowed_calling_aets": ("TESTSCU",), "port": 70000},
        {"allowed_calling_aets": ("TESTSCU",), "destination": "http://127.0.0.1:99999"},
    ],
    ids=[
        "calling-too-long",
        "calling-backslash",
        "calling-blank",
        "star-with-others",
        "own-aet-too-long",
        "port",
        "destination",
    ],
)
def test_listen_refuses_bad_settings_before_loading_the_model(
    tmp_path: Path, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError):
        listen(tmp_path / "out", tmp_path / "no-model.pt", **kwargs)


@contextlib.contextmanager
def _listening(out: Path, model: Path, **kwargs: Any) -> Iterator[tuple[int, list[PacsSummary]]]:
    """A listener in a thread, on a free port, until the block ends; yields (port, studies)."""
    import socket

    port = _free_port()
    stop = threading.Event()
    studies: list[PacsSummary] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            listen(out, model, port=port, stop=stop, poll_s=0.1, on_study=studies.append, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while True:  # the model loads before the listener binds its port
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise AssertionError(f"the listener never listened: {errors}") from None
                time.sleep(0.1)
        yield port, studies
    finally:
        stop.set()
        thread.join(30)
    if errors:
        raise errors[0]


def _associate(port: int, calling: str = "TESTSCU", called: str = "MEDSEG") -> Any:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title=called)


def _store(port: int, datasets: list[pydicom.Dataset]) -> list[int]:
    assoc = _associate(port)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _incoming_files(out: Path) -> list[Path]:
    incoming = out / ".incoming"
    return sorted(p for p in incoming.rglob("*") if p.is_file()) if incoming.exists() else []


def _phantom_series(tmp_path: Path, seed: int, patient: str) -> list[pydicom.Dataset]:
    case = phantom.make_case(seed, shape=(16, 64, 64), n_tumours=1, radius_range_mm=(7.0, 9.0))
    paths = phantom.write_case(case, tmp_path / f"ct-{seed}", patient_id=patient)
    return [pydicom.dcmread(p) for p in sorted(paths.ct_dir.iterdir())]


def _forged(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` with the same SOPInstanceUID and other pixels."""
    forged = copy.deepcopy(ds)
    pixels = bytearray(forged.PixelData)
    pixels[: len(pixels) // 2] = b"\xff" * (len(pixels) // 2)
    forged.PixelData = bytes(pixels)
    return forged


def test_listen_binds_loopback_by_default(tmp_path: Path, tiny_model: Path) -> None:
    import inspect

    # psutil: pinned in requirements.lock, installed with the test extra (ipykernel -> ipython)
    psutil = require_module("psutil")
    assert inspect.signature(listen).parameters["host"].default == "127.0.0.1"
    with _listening(tmp_path / "out", tiny_model, allowed_calling_aets=("TESTSCU",)) as (port, _):
        process = psutil.Process()
        connections = (
            process.net_connections if hasattr(process, "net_connections") else process.connections
        )(kind="tcp")
        bound = {
            c.laddr.ip
            for c in connections
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        }
    assert bound == {"127.0.0.1"}


def test_listen_rejects_an_association_from_a_calling_aet_not_allowed(
    tmp_path: Path, tiny_model: Path
) -> None:
    out = tmp_path / "out"
    with _listening(out, tiny_model, allowed_calling_aets=("TESTSCU", "CT1")) as (port, studies):
        intruder = _associate(port, calling="INTRUDER")
        assert intruder.is_rejected and not intruder.is_established
        allowed = _associate(port, calling="CT1")
        assert allowed.is_established
        allowed.release()
    assert _incoming_files(out) == [] and studies == []


def test_listen_rejects_an_association_called_for_another_aet(
    tmp_path: Path, tiny_model: Path
) -> None:
    out = tmp_path / "out"
    with _listening(out, tiny_model, allowed_calling_aets=("*",)) as (port, _):
        wrong = _associate(port, called="ORTHANC")
        assert wrong.is_rejected and not wrong.is_established
        any_calling = _associate(port, calling="ANYONE")
        assert any_calling.is_established  # "*": any calling AE title
        any_calling.release()
    assert _incoming_files(out) == []


def test_listen_shows_series_descriptions_only_with_log_identifiers(
    tmp_path: Path, tiny_model: Path
) -> None:
    datasets = [pydicom.dcmread(f) for f in _two_series_files(tmp_path / "two")]
    opted = RunOptions(privacy=PrivacyConfig(log_identifiers=True))
    with _listening(
        tmp_path / "out",
        tiny_model,
        allowed_calling_aets=("TESTSCU",),
        quiet_period_s=0.5,
        options=opted,
    ) as (port, studies):
        assert _store(port, datasets) == [0] * len(datasets)
        deadline = time.monotonic() + 60
        while not studies and time.monotonic() < deadline:
            time.sleep(0.1)
    assert studies, "the study never ran"
    (row,) = studies[0].batch.rows
    assert row.status is SummaryStatus.FAILED and "2 series match" in (row.error_message or "")
    assert f"(CT, {DESCRIPTION!r}, series 1, 16 slices)" in (row.error_message or "")


def test_listen_refuses_a_changed_instance_of_a_processed_study(
    tmp_path: Path,
    tiny_model: Path,
    orthanc_server: OrthancServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A forged resend (same SOPInstanceUID, other pixels) after the study was segmented is
    refused with a failure status: the stored file stays, nothing runs, nothing is sent."""
    caplog.set_level(logging.WARNING, logger="medseg.batch.listener")
    datasets = _phantom_series(tmp_path, 230, "PHANTOM-FORGE")
    out = tmp_path / "out"
    with _listening(
        out,
        tiny_model,
        allowed_calling_aets=("TESTSCU",),
        quiet_period_s=1.0,
        destination=orthanc_server.url,
    ) as (port, studies):
        assert _store(port, datasets) == [0] * len(datasets)
        deadline = time.monotonic() + 60
        while not studies and time.monotonic() < deadline:
            time.sleep(0.2)
        assert studies and studies[0].batch.n_done == 1 and studies[0].n_sent >= 1
        stored = {p: p.read_bytes() for p in _incoming_files(out)}
        n_instances = len(requests.get(f"{orthanc_server.url}/instances", timeout=10).json())

        assert _store(port, [_forged(datasets[3])]) == [_REFUSED_NOT_AUTHORISED]
        time.sleep(2.5)  # more than the quiet period: a study that had changed would run
        assert len(studies) == 1
        assert {p: p.read_bytes() for p in _incoming_files(out)} == stored
        # an identical resend is still accepted (and changes nothing)
        assert _store(port, [datasets[3]]) == [0]
        deadline = time.monotonic() + 30
        while len(studies) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert len(studies) == 2 and studies[1].batch.n_skipped == 1 and studies[1].n_sent == 0
    assert {p: p.read_bytes() for p in _incoming_files(out)} == stored
    assert len(requests.get(f"{orthanc_server.url}/instances", timeout=10).json()) == n_instances
    case_id = studies[0].batch.rows[0].case_id
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(case_id in w and "changed" in w for w in warnings), warnings
    assert not any("PHANTOM-FORGE" in w or datasets[3].SOPInstanceUID in w for w in warnings)


def test_listen_with_reprocess_changed_takes_a_changed_instance_and_runs_again(
    tmp_path: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="medseg.batch.listener")
    datasets = _phantom_series(tmp_path, 231, "PHANTOM-REPROCESS")
    out = tmp_path / "out"
    with _listening(
        out,
        tiny_model,
        allowed_calling_aets=("TESTSCU",),
        quiet_period_s=1.0,
        reprocess_changed=True,
    ) as (port, studies):
        assert _store(port, datasets) == [0] * len(datasets)
        deadline = time.monotonic() + 60
        while not studies and time.monotonic() < deadline:
            time.sleep(0.2)
        assert studies and studies[0].batch.n_done == 1
        before = {p: p.read_bytes() for p in _incoming_files(out)}
        assert _store(port, [_forged(datasets[3])]) == [0]
        deadline = time.monotonic() + 60
        while len(studies) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert len(studies) == 2 and studies[1].batch.n_done == 1
    after = {p: p.read_bytes() for p in _incoming_files(out)}
    assert after.keys() == before.keys() and sum(after[p] != before[p] for p in after) == 1
    case_id = studies[0].batch.rows[0].case_id
    assert any(
        case_id in r.getMessage() and "changed" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
    )
