"""Orthanc as the PACS: find studies, retrieve them, segment them through the batch ledger and
send the RT-STRUCT and SEG back into the same study.

Everything goes through Orthanc's REST API (``requests``): ``POST /tools/find`` finds studies
(by StudyDate range), ``GET /studies/{id}/series`` lists their series (filtered by modality),
``GET /instances/{id}/file`` retrieves each file, and results go back by STOW-RS
(``POST /dicom-web/studies``, Orthanc's DICOMweb plugin).

:func:`run_pacs` is :func:`medseg.batch.run_cases` with a PACS source: a case is a study, its
fingerprint is built from the UIDs, instance ids and last-update times of its CT/MR series
*as Orthanc reports them*, so an unchanged, done study is skipped without downloading
anything. A study runs when its input or the model changed, or when it failed before and
``retry_failed``. The series to segment is chosen by the same selection rules as in a folder
(after the study's image series are downloaded into ``OUTPUT_ROOT/.staging/<case_id>``).

Sending is idempotent: each object sent is recorded in the ledger's ``deliveries`` table with
the case's fingerprint and model id, so a second run sends nothing new; a case that ran again
(new model, new input) sends its new objects. Orthanc itself also answers ``AlreadyStored``
for a SOP instance it has (STOW-RS lists it as stored again, without a duplicate).

:func:`listen` is the DICOM listener: a C-STORE SCP (pynetdicom) that keeps what it receives
under ``OUTPUT_ROOT/.incoming/<case_id>/``, and once a study has had no new instance for a
quiet period, runs it through the same ledger and sends the results to a destination Orthanc.

Only studies whose CT/MR series Orthanc reports as stable (no new instance for its
``StableAge``) are taken, unless ``include_unstable``: a series still arriving would be
segmented half-complete.
Messages and logs name studies by case id (keyed with the output root's salt, as in
:mod:`medseg.batch`), never by patient name or ID; received files are named by hashes of
their UIDs, never by anything a sender chose.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from medseg.batch import (
    BatchProgress,
    BatchSummary,
    CaseSpec,
    Executor,
    Ledger,
    SummaryRow,
    case_id_for,
    discover_cases,
    link_inputs,
    resolve_model_ref,
    run_cases,
)
from medseg.config import BatchConfig, SeriesSelection
from medseg.errors import ConfigError, InputError, UnreadableScanError
from medseg.io.discovery import scan_folder, select_series
from medseg.io.files import atomic_path
from medseg.privacy import load_salt

__all__ = [
    "DELIVERED_OBJECTS",
    "Delivery",
    "OrthancClient",
    "PacsQuery",
    "PacsSummary",
    "StudyRef",
    "listen",
    "run_pacs",
]

log = logging.getLogger(__name__)

#: Result files sent back, by the name they have in a case folder.
DELIVERED_OBJECTS = ("rtstruct", "seg")
_DATE = re.compile(r"^\d{8}$")


@dataclass(frozen=True, slots=True)
class PacsQuery:
    """Which studies to process.

    Attributes:
        modalities: series modalities to consider (a study needs at least one such series).
        date_from: first StudyDate, ``YYYYMMDD`` (``None``: no lower bound).
        date_to: last StudyDate, ``YYYYMMDD`` (``None``: no upper bound).
        include_unstable: also take studies Orthanc does not yet report as stable.
    """

    modalities: tuple[str, ...] = ("CT", "MR")
    date_from: str | None = None
    date_to: str | None = None
    include_unstable: bool = False

    def __post_init__(self) -> None:
        for name, value in (("date_from", self.date_from), ("date_to", self.date_to)):
            if value is not None and not _DATE.match(value):
                raise ConfigError(f"{name} must be a date YYYYMMDD, got {value!r}")
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ConfigError(f"date_from {self.date_from} is after date_to {self.date_to}")


@dataclass(frozen=True, slots=True)
class StudyRef:
    """A study found in Orthanc: its Orthanc id, UID and candidate image series (PHI-free)."""

    orthanc_id: str
    study_instance_uid: str
    series: tuple[dict[str, Any], ...]
    stable: bool

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the candidate series' UIDs, instance ids and last-update times."""
        digest = hashlib.sha256()
        for series in sorted(self.series, key=lambda s: s["ID"]):
            uid = series.get("MainDicomTags", {}).get("SeriesInstanceUID", "")
            digest.update(f"{uid}|{series.get('LastUpdate', '')}|".encode())
            digest.update("|".join(sorted(series.get("Instances", []))).encode())
        return "sha256:" + digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One result object of a case and what happened to it in this run.

    ``status``: ``sent``, ``already_sent`` (recorded earlier, not sent again) or ``failed``.
    """

    case_id: str
    object: str
    status: str
    remote_id: str | None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class PacsSummary:
    """The batch summary of the cases and what was sent."""

    batch: BatchSummary
    deliveries: tuple[Delivery, ...]
    n_unstable: int

    @property
    def n_sent(self) -> int:
        """Objects sent in this run."""
        return sum(d.status == "sent" for d in self.deliveries)

    @property
    def ok(self) -> bool:
        """No case failed and every object was delivered."""
        return self.batch.ok and not any(d.status == "failed" for d in self.deliveries)


class OrthancClient:
    """A small client for Orthanc's REST API.

    Args:
        url: e.g. ``http://127.0.0.1:8042`` (user and password may be in the URL).
        timeout_s: per-request timeout in seconds.
    """

    def __init__(self, url: str, *, timeout_s: float = 60.0) -> None:
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"PACS URL must be http(s)://HOST:PORT, got {url!r}")
        self._session = requests.Session()
        if parts.username is not None:
            self._session.auth = (parts.username, parts.password or "")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        #: the URL without credentials, safe to log and record
        self.url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        self._timeout_s = timeout_s

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self._session.request(method, f"{self.url}{path}",
                                             timeout=self._timeout_s, **kwargs)
        except requests.RequestException as exc:
            raise InputError(f"{self.url}: {method} {path} failed: {exc}") from exc
        if response.status_code >= 400:
            raise InputError(f"{self.url}: {method} {path} answered HTTP "
                             f"{response.status_code}: {response.text[:200]}")
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise InputError(f"{self.url}: {method} {path} did not answer JSON") from exc

    def system(self) -> dict[str, Any]:
        """``GET /system``: name and version (checks that Orthanc answers)."""
        answer = self._json("GET", "/system")
        if not isinstance(answer, dict) or "Version" not in answer:
            raise InputError(f"{self.url}: /system does not look like Orthanc's")
        return answer

    def find_studies(self, query: PacsQuery) -> list[StudyRef]:
        """Studies with a StudyDate in range and at least one series of the modalities."""
        dicom_query: dict[str, str] = {}
        if query.date_from or query.date_to:
            dicom_query["StudyDate"] = f"{query.date_from or ''}-{query.date_to or ''}"
        studies = self._json("POST", "/tools/find",
                             json={"Level": "Study", "Query": dicom_query, "Expand": True})
        found = []
        for study in studies:
            series = self._json("GET", f"/studies/{study['ID']}/series")
            wanted = tuple(s for s in series
                           if s.get("MainDicomTags", {}).get("Modality") in query.modalities)
            if wanted:
                uid = study.get("MainDicomTags", {}).get("StudyInstanceUID", "")
                # the series' stability, not the study's: results sent back into a study
                # make the study itself unstable for a while
                stable = all(bool(s.get("IsStable")) for s in wanted)
                found.append(StudyRef(study["ID"], uid, wanted, stable))
        return found

    def download_instance(self, instance_id: str, path: Path) -> None:
        """``GET /instances/{id}/file`` into ``path``."""
        path.write_bytes(self._request("GET", f"/instances/{instance_id}/file").content)

    def store(self, path: Path) -> dict[str, Any]:
        """STOW-RS (``POST /dicom-web/studies``, Orthanc's DICOMweb plugin): store one file.

        Returns ``{"ID": SOPInstanceUID, "Status": "Success"}``. A refused instance (listed in
        the answer's FailedSOPSequence) or an HTTP error raises :class:`InputError`.
        """
        boundary = f"medseg-{uuid.uuid4().hex}"
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        answer = self._json(
            "POST", "/dicom-web/studies", data=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        )  # fmt: skip
        failed = answer.get("00081198", {}).get("Value") if isinstance(answer, dict) else None
        stored = answer.get("00081199", {}).get("Value") if isinstance(answer, dict) else None
        if failed or not stored:
            raise InputError(f"{self.url}: STOW-RS of {path.name} was refused: {answer}")
        uid = stored[0].get("00081155", {}).get("Value", [""])[0]
        return {"ID": uid, "Status": "Success"}


def _retrieve(client: OrthancClient, studies: dict[str, StudyRef],
              selection: SeriesSelection) -> Callable[[CaseSpec, Path], Path]:
    def prepare(spec: CaseSpec, folder: Path) -> Path:
        """Download the study's candidate series, then select one as in a folder."""
        if folder.exists():
            shutil.rmtree(folder)
        download = folder / "download"
        for i, series in enumerate(sorted(studies[spec.case_id].series, key=lambda s: s["ID"])):
            series_dir = download / f"series{i:03d}"
            series_dir.mkdir(parents=True)
            for j, instance in enumerate(sorted(series.get("Instances", []))):
                client.download_instance(instance, series_dir / f"{j:05d}.dcm")
        inventory = scan_folder(download)
        if inventory.problems:
            raise UnreadableScanError(f"{spec.case_id}: {inventory.problems[0].message}")
        entry = select_series(inventory, selection)
        return download / Path(entry.files[0]).relative_to(download).parts[0]

    return prepare


def _deliver(client: OrthancClient, ledger: Ledger, rows: Sequence[SummaryRow],
             send: bool) -> list[Delivery]:
    deliveries = []
    for row in rows:
        if row.status not in ("done", "skipped") or row.out_dir is None:
            continue
        case = ledger.case(row.case_id)
        if case is None:
            continue
        for obj in DELIVERED_OBJECTS:
            path = row.out_dir / f"{obj}.dcm"
            if not path.is_file():
                continue
            sent = ledger.delivered(row.case_id, obj, client.url)
            if sent is not None and (sent["fingerprint"], sent["model_id"]) == (
                case["fingerprint"], case["model_id"]
            ):
                deliveries.append(Delivery(row.case_id, obj, "already_sent", sent["remote_id"]))
                continue
            if not send:
                continue
            try:
                answer = client.store(path)
            except InputError as exc:
                log.warning("case %s: sending %s failed", row.case_id, obj)
                deliveries.append(Delivery(row.case_id, obj, "failed", None, str(exc)))
                continue
            ledger.record_delivery(row.case_id, obj, client.url, case["fingerprint"],
                                   case["model_id"], str(answer.get("ID")))
            log.info("case %s: %s sent (%s)", row.case_id, obj, answer.get("Status"))
            deliveries.append(Delivery(row.case_id, obj, "sent", str(answer.get("ID"))))
    return deliveries


def run_pacs(
    url: str,
    output_root: Path,
    model: str | Path,
    *,
    query: PacsQuery | None = None,
    selection: SeriesSelection | None = None,
    settings: BatchConfig | None = None,
    executor: Executor = Executor.LOCAL,
    workers: int = 1,
    retry_failed: bool = False,
    ray_address: str | None = None,
    send: bool = True,
    progress: Callable[[BatchProgress], None] | None = None,
) -> PacsSummary:
    """Find studies in Orthanc, segment those that need it, send their results back.

    Args:
        url: Orthanc's REST API, ``http://HOST:PORT``.
        output_root: case folders, ledger and ``summary.csv`` (as ``medseg batch``).
        model: checkpoint path or MLflow model URI.
        query: which studies (default: every stable study with a CT or MR series).
        selection: series selection rules (default: the model's config).
        settings: batch settings (default: the model's config).
        executor, workers, retry_failed, ray_address, progress: as
            :func:`medseg.batch.run_cases`.
        send: send RT-STRUCT and SEG back (``False``: only segment).

    Raises:
        InputError: Orthanc does not answer.
        ModelError: the model cannot be loaded (nothing runs).
        ConfigError: a bad query or URL, or another run holds ``output_root``.
    """
    from medseg.pipeline import load_model

    query = query or PacsQuery()
    client = OrthancClient(url)
    try:
        client.system()
        output_root = Path(output_root)
        output_root.mkdir(parents=True, exist_ok=True)
        ref = resolve_model_ref(model, output_root)
        loaded = load_model(ref.path)
        selection = selection or loaded.config.series_selection
        settings = settings or loaded.config.batch
        found = client.find_studies(query)
        salt = load_salt(output_root)
        studies = {case_id_for(s.study_instance_uid, salt): s for s in found
                   if s.stable or query.include_unstable}
        n_unstable = len(found) - len(studies)
        if n_unstable:
            log.info("%d studies still arriving (not stable yet) are left for a later run",
                     n_unstable)
        specs = [
            CaseSpec(case_id, study.study_instance_uid,
                     study.series[0]["MainDicomTags"].get("SeriesInstanceUID")
                     if len(study.series) == 1 else None,
                     study.fingerprint)
            for case_id, study in sorted(studies.items())
        ]
        delivered: list[Delivery] = []

        def deliver(rows: Sequence[SummaryRow], ledger: Ledger) -> None:
            delivered.extend(_deliver(client, ledger, rows, send))

        summary = run_cases(
            specs, output_root, ref, _retrieve(client, studies, selection), source="pacs",
            executor=executor, workers=workers, retry_failed=retry_failed,
            ray_address=ray_address, settings=settings, progress=progress,
            loaded_model=loaded if executor is Executor.LOCAL and workers == 1 else None,
            after=deliver,
        )
    finally:
        client.close()
    return PacsSummary(summary, tuple(delivered), n_unstable)


_INCOMING_DIR = ".incoming"
_SUCCESS = 0x0000
_CANNOT_UNDERSTAND = 0xC000
_OUT_OF_RESOURCES = 0xA700


def _uid_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:16]


def listen(
    output_root: Path,
    model: str | Path,
    *,
    aet: str = "MEDSEG",
    port: int = 11112,
    host: str = "0.0.0.0",
    destination: str | None = None,
    quiet_period_s: float = 30.0,
    selection: SeriesSelection | None = None,
    settings: BatchConfig | None = None,
    stop: threading.Event | None = None,
    poll_s: float = 0.5,
    on_study: Callable[[PacsSummary], None] | None = None,
) -> None:
    """Receive DICOM with C-STORE and segment each study once it has gone quiet.

    Received instances are stored (atomically) as
    ``OUTPUT_ROOT/.incoming/<case_id>/<series hash>/<instance hash>.dcm``. A study that has
    received nothing for ``quiet_period_s`` runs as a one-study batch through the ledger in
    ``OUTPUT_ROOT`` (so a study sent twice is segmented once, and a study that receives more
    instances later runs again); its RT-STRUCT and SEG then go to ``destination`` (an Orthanc
    REST URL) with the same bookkeeping as :func:`run_pacs`. Studies already in
    ``.incoming`` when the listener starts (received before a stop) are looked at too.

    Runs until ``stop`` is set (or KeyboardInterrupt).

    Args:
        output_root: received files, case folders, ledger and ``summary.csv``.
        model: checkpoint path or MLflow model URI.
        aet: the listener's AE title; ``port`` and ``host``: where it listens.
        destination: Orthanc URL to send results to (``None``: keep them in ``output_root``).
        quiet_period_s: seconds without a new instance after which a study is complete.
        selection, settings: as :func:`run_pacs` (default: the model's config).
        stop: set it to stop the listener (after the study being processed, if any).
        poll_s: how often quiet studies are looked for, in seconds.
        on_study: called with each study's summary (for a caller's display or tests).

    Raises:
        ModelError: the model cannot be loaded; ConfigError: the output root is in use.
    """
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from medseg.pipeline import load_model

    output_root = Path(output_root)
    incoming = output_root / _INCOMING_DIR
    incoming.mkdir(parents=True, exist_ok=True)
    ref = resolve_model_ref(model, output_root)
    loaded = load_model(ref.path)
    selection = selection or loaded.config.series_selection
    settings = settings or loaded.config.batch
    salt = load_salt(output_root)
    stop = stop or threading.Event()
    arrivals: dict[str, float] = {d.name: time.monotonic() for d in incoming.iterdir() if d.is_dir()}
    lock = threading.Lock()

    def on_c_store(event: Any) -> int:
        try:
            dataset = event.dataset
            study, series = str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID)
            sop = str(dataset.SOPInstanceUID)
        except (AttributeError, ValueError, KeyError):
            return _CANNOT_UNDERSTAND
        case_id = case_id_for(study, salt)
        folder = incoming / case_id / _uid_hash(series)
        target = folder / f"{_uid_hash(sop)}.dcm"
        try:
            data = event.encoded_dataset(include_meta=True)
            folder.mkdir(parents=True, exist_ok=True)
            # an identical resend leaves the file (and so the study's fingerprint) untouched
            if not target.is_file() or target.read_bytes() != data:
                with atomic_path(target) as tmp:
                    tmp.write_bytes(data)
        except OSError:
            log.warning("case %s: could not store a received instance", case_id)
            return _OUT_OF_RESOURCES
        with lock:
            arrivals[case_id] = time.monotonic()
        return _SUCCESS

    def process(case_id: str) -> None:
        study_dir = incoming / case_id
        specs = discover_cases(study_dir, selection, settings, salt=salt)
        delivered: list[Delivery] = []

        def deliver(rows: Sequence[SummaryRow], ledger: Ledger) -> None:
            if destination is not None:
                client = OrthancClient(destination)
                try:
                    delivered.extend(_deliver(client, ledger, rows, True))
                finally:
                    client.close()

        summary = run_cases(specs, output_root, ref, link_inputs(study_dir), source="listener",
                            settings=settings, loaded_model=loaded, after=deliver)
        log.info("case %s: %d done, %d failed, %d objects sent", case_id, summary.n_done,
                 summary.n_failed, sum(d.status == "sent" for d in delivered))
        if on_study is not None:
            on_study(PacsSummary(summary, tuple(delivered), 0))

    ae = AE(ae_title=aet)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    server = ae.start_server((host, port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_c_store)])
    log.info("listening as %s on %s:%d", aet, host, port)
    try:
        while not stop.wait(poll_s):
            now = time.monotonic()
            with lock:
                due = [c for c, t in arrivals.items() if now - t >= quiet_period_s]
                for case_id in due:
                    del arrivals[case_id]
            for case_id in due:
                process(case_id)
    finally:
        if server is not None:
            server.shutdown()
