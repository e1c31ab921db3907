"""The DICOM listener: a C-STORE SCP that segments each study once it has gone quiet.

A C-STORE SCP (pynetdicom) that keeps what it receives
under ``OUTPUT_ROOT/.incoming/<case_id>/``, and once a study has had no new instance for a
quiet period, runs it through the same ledger and sends the results to a destination Orthanc.
It listens on the loopback address unless told otherwise, accepts associations only from the
calling AE titles it is given and only when called by its own AE title, and refuses an
instance that would replace one of a study it already processed (see :func:`listen`).

Results go back to a destination Orthanc through :mod:`medseg.batch.orthanc`; received files
are named by hashes of their UIDs, never by anything a sender chose.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medseg.batch import (
    LEDGER_NAME,
    Ledger,
    RunOptions,
    SummaryRow,
    case_id_for,
    claim_output_root,
    discover_cases,
    link_inputs,
    resolve_model_ref,
    run_cases,
)
from medseg.batch.options import options_from_keywords
from medseg.batch.orthanc import Delivery, OrthancClient, PacsSummary, deliver_results, parse_url
from medseg.errors import ConfigError
from medseg.io.files import atomic_path
from medseg.privacy import load_salt

__all__ = ["listen"]

log = logging.getLogger(__name__)

_INCOMING_DIR = ".incoming"
_SUCCESS = 0x0000
_CANNOT_UNDERSTAND = 0xC000
_OUT_OF_RESOURCES = 0xA700
# PS3.7 C.4 "Refused: Not Authorized": the sender may not replace an instance already used
_REFUSED_NOT_AUTHORISED = 0x0124
# ``allowed_calling_aets=("*",)``: accept any calling AE title
_ANY_CALLING_AET = "*"
_AE_TITLE_MAX = 16


def _ae_title(name: str, value: str) -> str:
    """``value`` as an AE title (PS3.5 VR AE, surrounding spaces dropped), or ConfigError."""
    title = value.strip() if isinstance(value, str) else ""
    if (
        not title
        or len(title) > _AE_TITLE_MAX
        or "\\" in title
        or not title.isascii()
        or not title.isprintable()
    ):
        raise ConfigError(
            f"{name} must be an AE title of 1 to {_AE_TITLE_MAX} printable ASCII "
            f"characters without '\\', got {value!r}"
        )
    return title


def _calling_aets(allowed: Sequence[str]) -> tuple[str, ...]:
    """The allowed calling AE titles, checked; ``()`` stands for any (``"*"``)."""
    if isinstance(allowed, str):
        raise ConfigError(
            f"allowed_calling_aets must be a sequence of AE titles, got the string {allowed!r}"
        )
    titles = tuple(allowed)
    if not titles:
        raise ConfigError(
            "allowed_calling_aets is empty: name the calling AE titles that may "
            f"send, or {_ANY_CALLING_AET!r} to accept any"
        )
    if _ANY_CALLING_AET in titles:
        if len(titles) > 1:
            raise ConfigError(
                f"allowed_calling_aets: {_ANY_CALLING_AET!r} (any) cannot be "
                f"combined with AE titles, got {titles}"
            )
        return ()
    return tuple(_ae_title("allowed_calling_aets", t) for t in titles)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _uid_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:16]


def listen(
    output_root: Path,
    model: str | Path,
    *,
    aet: str = "MEDSEG",
    port: int = 11112,
    host: str = "127.0.0.1",
    allowed_calling_aets: Sequence[str] = (),
    reprocess_changed: bool = False,
    destination: str | None = None,
    quiet_period_s: float = 30.0,
    options: RunOptions | None = None,
    stop: threading.Event | None = None,
    poll_s: float = 0.5,
    on_study: Callable[[PacsSummary], None] | None = None,
    **deprecated: Any,
) -> None:
    """Receive DICOM with C-STORE and segment each study once it has gone quiet.

    Received instances are stored (atomically) as
    ``OUTPUT_ROOT/.incoming/<case_id>/<series hash>/<instance hash>.dcm``. A study that has
    received nothing for ``quiet_period_s`` runs as a one-study batch through the ledger in
    ``OUTPUT_ROOT`` (so a study sent twice is segmented once, and a study that receives more
    instances later runs again); its RT-STRUCT and SEG then go to ``destination`` (an Orthanc
    REST URL) with the same bookkeeping as :func:`run_pacs`. Studies already in
    ``.incoming`` when the listener starts (received before a stop) are looked at too.

    Who may send: the listener binds the loopback address unless ``host`` says otherwise, and
    accepts an association only when its *called* AE title is ``aet`` and its *calling* AE
    title is one of ``allowed_calling_aets``. There is no default list: an empty one is a
    :class:`ConfigError`, and ``("*",)`` accepts any calling AE title (explicitly; a warning
    is logged when the host is not loopback). AE titles are not authentication (a sender
    chooses its own); on a network, restrict who reaches the port too.

    An instance is *changed* when a file with its SOPInstanceUID is already stored for its
    study with other bytes. Before the study ran, the new one replaces the old (the sender
    corrected it). Once the study was processed (by this listener or an earlier one on the
    same ``output_root``), a changed instance is refused with C-STORE status 0x0124 (Refused:
    Not Authorized), is not stored, and the study does not run again, unless
    ``reprocess_changed``; either way a warning names the case id. An identical resend is
    stored as it was (nothing changes; the study is looked at again and skipped). The same
    instance sent in another transfer syntax has other bytes, and so counts as changed.

    Runs until ``stop`` is set (or KeyboardInterrupt).

    Args:
        output_root: received files, case folders, ledger and ``summary.csv``.
        model: checkpoint path or MLflow model URI.
        aet: the listener's AE title, which callers must call; ``port`` and ``host``: where it
            listens (``host`` default ``127.0.0.1``; ``0.0.0.0`` listens on every interface).
        allowed_calling_aets: the calling AE titles accepted, or ``("*",)`` for any.
        reprocess_changed: store a changed instance of a processed study and run it again.
        destination: Orthanc URL to send results to (``None``: keep them in ``output_root``).
        quiet_period_s: seconds without a new instance after which a study is complete.
        options: as for :func:`~medseg.batch.orthanc.run_pacs` (``selection`` and
            ``settings`` default to the model's config; ``privacy`` does not); each study
            runs with them.
        stop: set it to stop the listener (after the study being processed, if any).
        poll_s: how often quiet studies are looked for, in seconds.
        on_study: called with each study's summary (for a caller's display or tests).
        **deprecated: the loose keywords ``selection`` and ``settings`` of 0.1.0
            development, instead of ``options`` (a DeprecationWarning; removed in 0.2).

    Raises:
        ConfigError: no allowed calling AE titles, an invalid AE title, port or destination
            URL (all checked before the model loads), the address cannot be bound, or the
            output root is in use.
        ModelError: the model cannot be loaded.
    """
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from medseg.pipeline import load_model

    options = options_from_keywords("listen", options, deprecated, ("selection", "settings"))
    aet = _ae_title("aet", aet)
    calling_aets = _calling_aets(allowed_calling_aets)
    if not 1 <= port <= 65535:
        raise ConfigError(f"port must be in 1..65535, got {port}")
    if quiet_period_s < 0 or poll_s <= 0:
        raise ConfigError(
            f"quiet_period_s must be >= 0 and poll_s > 0, got {quiet_period_s} and {poll_s}"
        )
    if destination is not None:
        parse_url(destination)
    output_root = claim_output_root(output_root, inputs=(model,))
    incoming = output_root / _INCOMING_DIR
    incoming.mkdir(parents=True, exist_ok=True)
    ref = resolve_model_ref(model, output_root)
    loaded = load_model(ref.path)
    options = options.with_defaults_from(loaded.config)
    salt = load_salt(output_root)
    stop = stop or threading.Event()
    arrivals: dict[str, float] = {
        d.name: time.monotonic() for d in incoming.iterdir() if d.is_dir()
    }
    # studies processed (or being processed): a changed instance of one is refused
    with Ledger(output_root / LEDGER_NAME) as ledger:
        processed = {c for c in arrivals if ledger.case(c) is not None}
    lock = threading.Lock()

    def store(case_id: str, target: Path, data: bytes) -> int:
        """Write ``data`` to ``target`` unless it replaces an instance already used."""
        if target.is_file():
            if target.read_bytes() == data:
                return _SUCCESS  # an identical resend leaves the file and the fingerprint
            if case_id in processed:
                if not reprocess_changed:
                    log.warning(
                        "case %s: refused a changed instance (same SOPInstanceUID, "
                        "other content) of a study already processed; the stored one "
                        "stays (reprocess_changed is off)",
                        case_id,
                    )
                    return _REFUSED_NOT_AUTHORISED
                log.warning(
                    "case %s: a changed instance (same SOPInstanceUID, other "
                    "content) replaces the stored one of a study already processed; "
                    "it runs again (reprocess_changed)",
                    case_id,
                )
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
        return _SUCCESS

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
        data = event.encoded_dataset(include_meta=True)
        with lock:  # against process() marking the study processed meanwhile
            try:
                folder.mkdir(parents=True, exist_ok=True)
                status = store(case_id, target, data)
            except OSError:
                log.warning("case %s: could not store a received instance", case_id)
                return _OUT_OF_RESOURCES
            if status == _SUCCESS:
                arrivals[case_id] = time.monotonic()
        return status

    def process(case_id: str) -> None:
        study_dir = incoming / case_id
        with lock:
            processed.add(case_id)
        specs = discover_cases(
            study_dir, options.selection, options.settings, salt=salt, privacy=options.privacy
        )
        delivered: list[Delivery] = []

        def deliver(rows: Sequence[SummaryRow], ledger: Ledger) -> None:
            if destination is not None:
                client = OrthancClient(destination)
                try:
                    delivered.extend(deliver_results(client, ledger, rows, True))
                finally:
                    client.close()

        summary = run_cases(
            specs,
            output_root,
            ref,
            link_inputs(study_dir),
            options=options,
            source="listener",
            loaded_model=loaded if options.in_this_process else None,
            after=deliver,
        )
        log.info(
            "case %s: %d done, %d failed, %d objects sent",
            case_id,
            summary.n_done,
            summary.n_failed,
            sum(d.status == "sent" for d in delivered),
        )
        if on_study is not None:
            on_study(PacsSummary(summary, tuple(delivered), 0))

    ae = AE(ae_title=aet)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    ae.require_calling_aet = list(calling_aets)  # empty: any (allowed_calling_aets "*")
    try:
        server = ae.start_server(
            (host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_c_store)]
        )
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    if not calling_aets and not _is_loopback(host):
        log.warning(
            "listening on %s for any calling AE title: whoever reaches port %d may send", host, port
        )
    log.info(
        "listening as %s on %s:%d for calling AE titles %s",
        aet,
        host,
        port,
        ", ".join(calling_aets) or "any",
    )
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
