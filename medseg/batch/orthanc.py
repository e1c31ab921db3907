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

PACS URLs are checked when a client is made (http or https, a host, a port in 1..65535). A
URL's user and password go into the HTTP session, never into a message, a log line or the
ledger: those name the URL without them, or with them masked (``user:***@``).

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
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import requests

from medseg.batch import (
    BatchSummary,
    CaseSpec,
    Ledger,
    RunOptions,
    SummaryRow,
    case_id_for,
    claim_output_root,
    resolve_model_ref,
    run_cases,
)
from medseg.batch.options import options_from_keywords
from medseg.config import SeriesSelection
from medseg.errors import ConfigError, InputError, UnreadableScanError
from medseg.io.dicom import scan_folder, select_series
from medseg.privacy import load_salt, redact_credentials

__all__ = [
    "DELIVERED_OBJECTS",
    "Delivery",
    "OrthancClient",
    "PacsQuery",
    "PacsSummary",
    "StudyRef",
    "deliver_results",
    "parse_url",
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


def _masked_url(url: str) -> str:
    """``url`` as a message may show it: what precedes its last ``@`` masked, and its query.

    Stricter than :func:`medseg.privacy.redact_credentials`, which needs a ``scheme://`` and
    stops at a ``/`` or ``@`` in a password: a URL the user typed may have neither right.

    Example:
        >>> _masked_url("pacs:s3/cr@t@host:8042/x?token=1")
        'pacs:***@host:8042/x?***'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    credentials, at, location = rest.rpartition("@")
    if at:
        user = credentials.split(":", 1)[0]
        rest = (f"{user}:***" if ":" in credentials else "***") + "@" + location
    if "?" in rest:
        rest = rest.split("?", 1)[0] + "?***"
    return redact_credentials(f"{scheme}{sep}{rest}")


def _one_line(text: str) -> str:
    """``text`` with its credentials masked and its whitespace runs made single spaces."""
    return " ".join(redact_credentials(text).split())


def parse_url(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without user and password, and the (user, password) it held, if any.

    Raises:
        ConfigError: not ``http(s)://HOST[:PORT][/PATH]`` with a port in 1..65535; the
            message shows the URL with its credentials masked.
    """
    shown = _masked_url(url)
    if "://" not in url:
        raise ConfigError(f"PACS URL {shown!r} has no scheme: expected http:// or https://")
    parts = urlsplit(url.rstrip("/"))
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"PACS URL {shown!r}: the scheme must be http or https")
    if parts.query or parts.fragment or url.rstrip("/").endswith(("?", "#")):
        raise ConfigError(f"PACS URL {shown!r} must not have a query (?...) or fragment (#...)")
    if "@" in url.partition("://")[2] and "@" not in parts.netloc:
        # the user or password holds a raw '/', '?' or '#' (or the path an '@')
        raise ConfigError(
            f"PACS URL {shown!r} has an '@' after its host: a '/', '?' or '#' "
            "in a user or password must be percent-encoded"
        )
    hostport = parts.netloc.rpartition("@")[2]
    port_text = hostport.rpartition("]")[2].partition(":")[2]
    if port_text and not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
        raise ConfigError(f"PACS URL {shown!r}: port must be a number in 1..65535")
    host = parts.hostname
    if not host:
        raise ConfigError(f"PACS URL {shown!r} has no host")
    netloc = (f"[{host}]" if ":" in host else host) + (f":{int(port_text)}" if port_text else "")
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")), auth


class OrthancClient:
    """A small client for Orthanc's REST API.

    Args:
        url: ``http(s)://HOST[:PORT][/PATH]``, e.g. ``http://127.0.0.1:8042``; a user and
            password may be in the URL (percent-encoded where they hold ``/ ? # @ %``). They
            go into the HTTP session; :attr:`url`, messages and logs never show them.
        timeout_s: per-request timeout in seconds.

    Raises:
        ConfigError: the URL is not http(s), has no host, or a port outside 1..65535.
    """

    def __init__(self, url: str, *, timeout_s: float = 60.0) -> None:
        safe_url, auth = parse_url(url)
        self._session = requests.Session()
        if auth is not None:
            self._session.auth = auth
        #: the URL without credentials, safe to log and record
        self.url = safe_url
        self._timeout_s = timeout_s

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self._session.request(
                method, f"{self.url}{path}", timeout=self._timeout_s, **kwargs
            )
        except requests.RequestException as exc:
            # requests' text names the URL (without credentials: they are in the session)
            raise InputError(_one_line(f"{self.url}: {method} {path} failed: {exc}")) from exc
        if response.status_code >= 400:
            raise InputError(
                _one_line(
                    f"{self.url}: {method} {path} answered HTTP "
                    f"{response.status_code}: {response.text[:200]}"
                )
            )
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
        studies = self._json(
            "POST", "/tools/find", json={"Level": "Study", "Query": dicom_query, "Expand": True}
        )
        found = []
        for study in studies:
            series = self._json("GET", f"/studies/{study['ID']}/series")
            wanted = tuple(
                s for s in series if s.get("MainDicomTags", {}).get("Modality") in query.modalities
            )
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
            raise InputError(
                _one_line(f"{self.url}: STOW-RS of {path.name} was refused: {str(answer)[:200]}")
            )
        uid = stored[0].get("00081155", {}).get("Value", [""])[0]
        return {"ID": uid, "Status": "Success"}


def _retrieve(
    client: OrthancClient,
    studies: dict[str, StudyRef],
    selection: SeriesSelection | None,
    *,
    log_identifiers: bool = False,
) -> Callable[[CaseSpec, Path], Path]:
    def prepare(spec: CaseSpec, folder: Path) -> Path:
        """Download the study's candidate series into ``folder`` (the case's staging folder),
        then select one as in a folder (its errors show SeriesDescription only with
        ``log_identifiers``). If any of it fails, ``folder`` is removed: a failed download or
        selection leaves no copy of the study behind."""
        if folder.exists():
            shutil.rmtree(folder)
        ready = False
        try:
            download = folder / "download"
            series_list = sorted(studies[spec.case_id].series, key=lambda s: s["ID"])
            for i, series in enumerate(series_list):
                series_dir = download / f"series{i:03d}"
                series_dir.mkdir(parents=True)
                for j, instance in enumerate(sorted(series.get("Instances", []))):
                    client.download_instance(instance, series_dir / f"{j:05d}.dcm")
            inventory = scan_folder(download)
            if inventory.problems:
                raise UnreadableScanError(f"{spec.case_id}: {inventory.problems[0].message}")
            entry = select_series(inventory, selection, log_identifiers=log_identifiers)
            ready = True
            return download / Path(entry.files[0]).relative_to(download).parts[0]
        finally:
            if not ready:
                shutil.rmtree(folder, ignore_errors=True)

    return prepare


def deliver_results(
    client: OrthancClient, ledger: Ledger, rows: Sequence[SummaryRow], send: bool
) -> list[Delivery]:
    """Send each done (or skipped) case's RT-STRUCT and SEG to ``client``'s Orthanc, unless
    the ledger says this object of this input and model reached it already (``send`` False:
    only report those).

    Returns:
        One :class:`Delivery` per object sent, already sent, or failed.
    """
    deliveries = []
    for row in rows:
        if not row.status.ok or row.out_dir is None:
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
                case["fingerprint"],
                case["model_id"],
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
            ledger.record_delivery(
                row.case_id,
                obj,
                client.url,
                case["fingerprint"],
                case["model_id"],
                str(answer.get("ID")),
            )
            log.info("case %s: %s sent (%s)", row.case_id, obj, answer.get("Status"))
            deliveries.append(Delivery(row.case_id, obj, "sent", str(answer.get("ID"))))
    return deliveries


#: The loose keyword arguments :func:`run_pacs` took before RunOptions (until 0.2).
_RUN_PACS_KEYWORDS = (
    "selection",
    "settings",
    "executor",
    "workers",
    "retry_failed",
    "ray_address",
    "progress",
)


def run_pacs(
    url: str,
    output_root: Path,
    model: str | Path,
    *,
    query: PacsQuery | None = None,
    options: RunOptions | None = None,
    send: bool = True,
    **deprecated: Any,
) -> PacsSummary:
    """Find studies in Orthanc, segment those that need it, send their results back.

    Args:
        url: Orthanc's REST API, ``http(s)://[USER:PASSWORD@]HOST[:PORT]`` (see
            :class:`OrthancClient`; the password appears in no message, log or ledger row).
        output_root: case folders, ledger and ``summary.csv`` (as ``medseg batch``).
        model: checkpoint path or MLflow model URI.
        query: which studies (default: every stable study with a CT or MR series).
        options: as for :func:`medseg.batch.run_batch`: ``selection`` and ``settings``
            default to the model's config, ``privacy`` (SeriesDescription in messages) does
            not.
        send: send RT-STRUCT and SEG back (``False``: only segment).
        **deprecated: the loose keywords ``selection``, ``settings``, ``executor``,
            ``workers``, ``retry_failed``, ``ray_address``, ``progress`` of 0.1.0
            development, instead of ``options`` (a DeprecationWarning; removed in 0.2).

    Raises:
        InputError: Orthanc does not answer.
        ModelError: the model cannot be loaded (nothing runs).
        ConfigError: a bad query or URL, or another run holds ``output_root``.
    """
    from medseg.pipeline import load_model

    options = options_from_keywords("run_pacs", options, deprecated, _RUN_PACS_KEYWORDS)
    query = query or PacsQuery()
    client = OrthancClient(url)
    try:
        client.system()
        output_root = claim_output_root(output_root, inputs=(model,))
        ref = resolve_model_ref(model, output_root)
        loaded = load_model(ref.path)
        options = options.with_defaults_from(loaded.config)
        found = client.find_studies(query)
        salt = load_salt(output_root)
        studies = {
            case_id_for(s.study_instance_uid, salt): s
            for s in found
            if s.stable or query.include_unstable
        }
        n_unstable = len(found) - len(studies)
        if n_unstable:
            log.info(
                "%d studies still arriving (not stable yet) are left for a later run", n_unstable
            )
        specs = [
            CaseSpec(
                case_id,
                study.study_instance_uid,
                study.series[0]["MainDicomTags"].get("SeriesInstanceUID")
                if len(study.series) == 1
                else None,
                study.fingerprint,
            )
            for case_id, study in sorted(studies.items())
        ]
        delivered: list[Delivery] = []

        def deliver(rows: Sequence[SummaryRow], ledger: Ledger) -> None:
            delivered.extend(deliver_results(client, ledger, rows, send))

        prepare = _retrieve(
            client,
            studies,
            options.selection,
            log_identifiers=options.privacy.log_identifiers,
        )
        summary = run_cases(
            specs,
            output_root,
            ref,
            prepare,
            options=options,
            source="pacs",
            loaded_model=loaded if options.in_this_process else None,
            after=deliver,
        )
    finally:
        client.close()
    return PacsSummary(summary, tuple(delivered), n_unstable)
