"""What is in a DICOM folder tree, whether each series is a regular grid, and which to load.

:func:`scan_folder` walks a tree (any nesting, any file names), parses every DICOM header once
and returns an :class:`Inventory`: studies, their series, and the problems found in each
(missing, duplicate or unevenly spaced slices, mixed orientations or pixel spacings, gantry
tilt). Files that are not DICOM are skipped; files that look like DICOM but cannot be parsed
are problems, not crashes. DICOMDIR files are skipped: the tree itself is scanned, so a
DICOMDIR that lists fewer files than are present cannot hide any.

:func:`select_series` applies a :class:`~medseg.config.SeriesSelection` to an inventory.
``medseg.io.dicom.load_series`` reuses the headers parsed here, so each file is parsed once;
pixel data is deferred (read on first access) and only the selected series' pixels are read.

The slices of each series are sorted and checked by :mod:`medseg.io.dicom`. The inventory holds no patient names, IDs or birth dates: only UIDs,
modality, descriptions, counts, geometry and file paths relative to the scanned folder.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from medseg.config import SeriesSelection
from medseg.errors import GeometryError, InputError, ResourceLimitError, UnreadableScanError
from medseg.io.dicom._headers import HEADER_ERRORS, header_value, integer, read_dicom
from medseg.io.dicom._slices import (
    SLICE_SPACING_RELATIVE_TOLERANCE,
    Orientation,
    Problem,
    ProblemKind,
    _Frame,
    _frames_of,
    _Record,
    _Stack,
    _stack,
)

__all__ = [
    "Inventory",
    "SeriesEntry",
    "SeriesKind",
    "StudyEntry",
    "scan_folder",
    "select_series",
]

#: Pixel data (and any other element) longer than this is not read while scanning; pydicom
#: reads it from the file on first access.
_DEFER_BYTES = 4096

#: Storage SOP classes read as CT/MR image volumes (single-frame and enhanced multi-frame).
_VOLUME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
}
_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (DICOMDIR)
_NON_IMAGE_MODALITIES = {"RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "SEG", "KO", "PR", "REG"}
_LOCALIZER_IMAGE_TYPES = {"LOCALIZER", "SCOUT"}


class SeriesKind(enum.Enum):
    """``VOLUME``: CT/MR slices medseg loads; ``IMAGE``: other images (CR, US, secondary
    capture, ...); ``NON_IMAGE``: RT-STRUCT, RT plan, RT dose, SR, SEG and other objects."""

    VOLUME = "volume"
    IMAGE = "image"
    NON_IMAGE = "non_image"


@dataclass(frozen=True, slots=True)
class SeriesEntry:
    """One series of the inventory: UIDs, descriptions, counts, geometry. Its description is
    free text (clinics put patient names there): :meth:`describe` leaves it out of messages
    unless asked.

    Attributes:
        n_slices: frames of an image series (a multi-frame file counts its frames);
            instances otherwise.
        orientation: slice plane (``None`` for non-images or when geometry is missing).
        pixel_spacing_mm: PixelSpacing ``(row spacing, column spacing)`` of the first slice.
        slice_spacing_mm: median step between consecutive slice positions along the normal.
        files: absolute paths of the series' files (not part of :meth:`to_dict`).
    """

    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str | None
    modality: str | None
    series_description: str | None
    series_number: int | None
    sop_class_uid: str | None
    sop_class_name: str | None
    kind: SeriesKind
    n_files: int
    n_slices: int
    rows: int | None
    columns: int | None
    orientation: Orientation | None
    pixel_spacing_mm: tuple[float, float] | None
    slice_spacing_mm: float | None
    image_type: tuple[str, ...]
    is_localizer: bool
    transfer_syntaxes: tuple[str, ...]
    problems: tuple[Problem, ...]
    files: tuple[Path, ...] = field(default=(), repr=False, compare=False)

    def describe(self, *, log_identifiers: bool = False) -> str:
        """A one-line description for messages: UID, modality, SeriesNumber and size.

        SeriesDescription is free text that clinics fill with anything, patient names
        included, so it is shown only with ``log_identifiers`` (``privacy.log_identifiers``).

        Example:
            ``1.2.3 (CT, series 3, 120 slices)``; with ``log_identifiers``:
            ``1.2.3 (CT, 'CHEST 1mm', series 3, 120 slices)``.
        """
        extra = ", localizer" if self.is_localizer else ""
        unit = "objects" if self.kind is SeriesKind.NON_IMAGE else "slices"
        parts = [self.modality or "?"]
        if log_identifiers:
            parts.append(repr(self.series_description or "no description"))
        if self.series_number is not None:
            parts.append(f"series {self.series_number}")
        parts.append(f"{self.n_slices} {unit}{extra}")
        return f"{self.series_instance_uid} ({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (enums as their values, no file paths except in problems)."""
        return {
            "series_instance_uid": self.series_instance_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "modality": self.modality,
            "series_description": self.series_description,
            "series_number": self.series_number,
            "sop_class_uid": self.sop_class_uid,
            "sop_class_name": self.sop_class_name,
            "kind": self.kind.value,
            "n_files": self.n_files,
            "n_slices": self.n_slices,
            "rows": self.rows,
            "columns": self.columns,
            "orientation": None if self.orientation is None else self.orientation.value,
            "pixel_spacing_mm": None
            if self.pixel_spacing_mm is None
            else list(self.pixel_spacing_mm),
            "slice_spacing_mm": self.slice_spacing_mm,
            "image_type": list(self.image_type),
            "is_localizer": self.is_localizer,
            "transfer_syntaxes": list(self.transfer_syntaxes),
            "problems": [p.to_dict() for p in self.problems],
        }


@dataclass(frozen=True, slots=True)
class StudyEntry:
    """One study and its series (sorted by SeriesNumber, then UID)."""

    study_instance_uid: str
    study_description: str | None
    series: tuple[SeriesEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "study_description": self.study_description,
            "series": [s.to_dict() for s in self.series],
        }


@dataclass(frozen=True, slots=True)
class Inventory:
    """Everything :func:`scan_folder` found under ``root``.

    Attributes:
        problems: file-level problems (files that look like DICOM but cannot be parsed).
        n_files: files looked at; ``n_dicom_files``: those parsed as DICOM (DICOMDIRs excluded).
    """

    root: Path
    studies: tuple[StudyEntry, ...]
    problems: tuple[Problem, ...]
    n_files: int
    n_dicom_files: int

    @property
    def series(self) -> tuple[SeriesEntry, ...]:
        """Every series of every study."""
        return tuple(s for study in self.studies for s in study.series)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form without patient names, IDs or birth dates."""
        return {
            "n_files": self.n_files,
            "n_dicom_files": self.n_dicom_files,
            "problems": [p.to_dict() for p in self.problems],
            "studies": [s.to_dict() for s in self.studies],
        }


@dataclass(frozen=True, slots=True)
class _Scan:
    inventory: Inventory
    records: dict[str, list[_Record]]  # by SeriesInstanceUID
    stacks: dict[str, _Stack]  # volume series only


# ---------------------------------------------------------------------------------------------
# scanning


def _iter_files(root: Path) -> Iterable[Path]:
    """Every file under ``root`` but DICOMDIRs, following symbolic links to folders, in the
    order of ``sorted(root.rglob("*"))``: depth first, each folder's entries sorted by name.

    Paths are as seen under ``root`` (``root/link/file``, not resolved). Each real folder is
    entered once (by ``(st_dev, st_ino)``), so a loop of links ends and a folder behind two
    links is walked once, under its first path in this order; likewise a file reached by two
    paths (a link beside its target, a hard link) is yielded once, at its first path. A
    symbolic link to nothing (or in a loop of links) is yielded too, and :func:`_read` reports
    it as a problem. Entries that are neither files nor folders (sockets, FIFOs) are skipped;
    a folder that cannot be listed is skipped with a logged warning.
    """
    seen_folders: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()

    def listing(folder: Path) -> Iterator[os.DirEntry[str]] | None:
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen_folders:
                return None
            seen_folders.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as entries:
                return iter(sorted(entries, key=lambda entry: entry.name))
        except OSError as exc:
            logging.getLogger(__name__).warning(
                "%s: folder cannot be listed, skipped (%s)", folder, exc.strerror or exc
            )
            return None

    top = listing(root)
    stack = [] if top is None else [(root, top)]
    while stack:
        folder, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        path = folder / entry.name
        try:
            is_dir, is_file = entry.is_dir(), entry.is_file()  # both follow links
        except OSError:  # a loop of links (ELOOP)
            is_dir = is_file = False
        if is_dir:
            inner = listing(path)
            if inner is not None:
                stack.append((path, inner))
        elif is_file:
            try:
                info = entry.stat()
            except OSError:  # removed since it was listed
                continue
            if (info.st_dev, info.st_ino) not in seen_files and entry.name.upper() != "DICOMDIR":
                seen_files.add((info.st_dev, info.st_ino))
                yield path
        elif entry.is_symlink() and not path.exists():
            yield path


def _has_dicm_preamble(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _read(path: Path, name: str) -> Dataset | Problem | None:
    """The header (pixel data deferred); a problem for a broken DICOM file, a deflated one over
    the bounds of :func:`~medseg.io.dicom.read_dicom`, or a symbolic link to nothing; None
    for files that are not DICOM."""
    if not path.exists():  # _iter_files yields links whose target is missing
        return Problem(
            ProblemKind.UNREADABLE,
            f"{name}: symbolic link to nothing (its target is missing, or links form a loop)",
            (name,),
        )
    try:
        # deferred elements are read later from ``path`` (pydicom reopens it by name), or,
        # for a deflated file, from the InflatedReader the header keeps
        return read_dicom(path, _DEFER_BYTES, where=name)
    except ResourceLimitError as exc:
        return Problem(ProblemKind.TOO_LARGE, str(exc), (name,))
    except InputError as exc:  # a deflated data set that does not inflate
        return Problem(ProblemKind.UNREADABLE, str(exc), (name,))
    except (InvalidDicomError, zlib.error, *HEADER_ERRORS) as exc:
        try:
            has_preamble = _has_dicm_preamble(path)
        except OSError as error:  # e.g. no permission to read it
            reason = error.strerror or error
            return Problem(ProblemKind.UNREADABLE, f"{name}: cannot be read ({reason})", (name,))
        if has_preamble:
            return Problem(
                ProblemKind.UNREADABLE, f"{name}: DICOM file cannot be parsed ({exc})", (name,)
            )
        if path.suffix.lower() == ".dcm":
            return Problem(
                ProblemKind.UNREADABLE,
                f"{name}: named .dcm but is not a DICOM file ({exc})",
                (name,),
            )
        return None


def _sop_class(header: Dataset) -> str:
    """SOPClassUID, or the file meta's MediaStorageSOPClassUID where an anonymiser blanked it."""
    return _text(header, "SOPClassUID") or _text(_meta(header), "MediaStorageSOPClassUID") or ""


def _meta(header: Dataset) -> Dataset:
    meta = getattr(header, "file_meta", None)
    return meta if isinstance(meta, Dataset) else Dataset()


def _truncation(header: Dataset, path: Path, name: str) -> Problem | None:
    """A problem if the file ends inside its last element (pydicom stops there silently)."""
    if not len(header):
        return Problem(
            ProblemKind.UNREADABLE, f"{name}: DICOM file with an empty data set", (name,)
        )
    last = header.get_item(max(header.keys()), keep_deferred=True)
    if not isinstance(last, RawDataElement) or last.length == 0xFFFFFFFF:
        return None
    if _text(_meta(header), "TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return None  # offsets are in the inflated stream; a cut stream fails to inflate
    if last.value is None:  # deferred: it must fit in the file
        have, size = path.stat().st_size - last.value_tell, last.length
    else:
        have, size = len(last.value), last.length
    if have >= size:
        return None
    return Problem(
        ProblemKind.UNREADABLE,
        f"{name}: truncated DICOM file: element {last.tag} declares {size} bytes, the file "
        f"holds {max(have, 0)}",
        (name,),
    )


def _kind(header: Dataset) -> SeriesKind:
    sop_class = _sop_class(header)
    modality = _text(header, "Modality") or ""
    if sop_class in _VOLUME_SOP_CLASSES or (
        "ImagePositionPatient" in header and modality in ("CT", "MR")
    ):
        return SeriesKind.VOLUME
    if modality in _NON_IMAGE_MODALITIES or "Rows" not in header:
        return SeriesKind.NON_IMAGE
    return SeriesKind.IMAGE


def _text(header: Dataset, keyword: str) -> str | None:
    """A header value as text for the inventory; None where absent, empty or unreadable."""
    try:
        value = header.get(keyword)
        return None if value in (None, "") else str(value)
    except HEADER_ERRORS:
        return None


def _number(header: Dataset, keyword: str) -> int | None:
    """An integer header value for the inventory; None where absent, empty or unreadable."""
    try:
        return header_value(header, keyword, integer, None, "")  # type: ignore[no-any-return]
    except InputError:
        return None


def _scan(root: Path) -> _Scan:
    root = Path(root)
    if not root.is_dir():
        raise UnreadableScanError(f"{root}: not a directory")
    problems: list[Problem] = []
    by_series: dict[str, list[_Record]] = defaultdict(list)
    n_files = n_dicom = 0
    for path in _iter_files(root):
        n_files += 1
        name = path.relative_to(root).as_posix()
        header = _read(path, name)
        if isinstance(header, Problem):
            problems.append(header)
        elif header is not None:
            if _text(_meta(header), "MediaStorageSOPClassUID") == _DIRECTORY_SOP_CLASS:
                continue  # a DICOMDIR under another name
            truncated = _truncation(header, path, name)
            try:
                series_uid = str(header.get("SeriesInstanceUID", "") or "")
            except HEADER_ERRORS as exc:
                problems.append(
                    Problem(
                        ProblemKind.UNREADABLE,
                        f"{name}: SeriesInstanceUID cannot be read ({exc})",
                        (name,),
                    )
                )
                continue
            if truncated is not None and not series_uid:
                problems.append(truncated)  # belongs to no known series: it may be any slice
                continue
            n_dicom += 1
            by_series[series_uid].append(_Record(path, name, header, truncated))
    stacks: dict[str, _Stack] = {}
    studies: dict[str, list[SeriesEntry]] = defaultdict(list)
    study_descriptions: dict[str, str | None] = {}
    for uid, records in by_series.items():
        entry, stack = _series_entry(uid, records)
        if stack is not None:
            stacks[uid] = stack
        studies[entry.study_instance_uid].append(entry)
        study_descriptions.setdefault(
            entry.study_instance_uid, _text(records[0].header, "StudyDescription")
        )
    study_entries = tuple(
        StudyEntry(
            uid,
            study_descriptions[uid],
            tuple(
                sorted(
                    series,
                    key=lambda s: (
                        s.series_number is None,
                        s.series_number or 0,
                        s.series_instance_uid,
                    ),
                )
            ),
        )
        for uid, series in sorted(studies.items())
    )
    inventory = Inventory(root, study_entries, tuple(problems), n_files, n_dicom)
    return _Scan(inventory, dict(by_series), stacks)


def _series_entry(uid: str, records: list[_Record]) -> tuple[SeriesEntry, _Stack | None]:
    first = records[0].header
    kind = _kind(first)
    problems: list[Problem] = []
    stack = None
    n_slices = len(records)
    broken = [r.problem for r in records if r.problem is not None]
    problems.extend(broken)
    if kind is SeriesKind.VOLUME:
        frames: list[_Frame] = []
        lacking: list[tuple[str, str]] = []
        for record in records:
            if record.problem is not None:
                continue
            try:
                frames.extend(_frames_of(record))
            except GeometryError as exc:
                lacking.append((record.name, str(exc)))
            except InputError as exc:
                broken.append(Problem(ProblemKind.UNREADABLE, str(exc), (record.name,)))
                problems.append(broken[-1])
        if lacking:
            problems.append(
                Problem(
                    ProblemKind.MISSING_GEOMETRY,
                    f"{len(lacking)} of {len(records)} files lack slice geometry (first: {lacking[0][1]})",
                    tuple(name for name, _ in lacking),
                )
            )
        n_slices = len(frames) + len(lacking) + len(broken)
        if frames:
            stack = _stack(frames)
            problems.extend(stack.problems)
            stack = _Stack(
                stack.frames,
                tuple(problems),
                stack.geometry if not problems else None,
                stack.orientation,
                stack.slice_spacing_mm,
            )
    try:
        image_type = tuple(str(v) for v in (first.get("ImageType") or ()))
    except HEADER_ERRORS:
        image_type = ()
    sop_class = _sop_class(first) or None
    spacing = stack.frames[0].pixel_spacing if stack is not None else None
    syntaxes = sorted({_text(_meta(r.header), "TransferSyntaxUID") or "" for r in records} - {""})
    entry = SeriesEntry(
        series_instance_uid=uid,
        study_instance_uid=_text(first, "StudyInstanceUID") or "",
        frame_of_reference_uid=_text(first, "FrameOfReferenceUID"),
        modality=_text(first, "Modality"),
        series_description=_text(first, "SeriesDescription"),
        series_number=_number(first, "SeriesNumber"),
        sop_class_uid=sop_class,
        sop_class_name=None if sop_class is None else UID(sop_class).name,
        kind=kind,
        n_files=len(records),
        n_slices=n_slices,
        rows=_number(first, "Rows"),
        columns=_number(first, "Columns"),
        orientation=None if stack is None else stack.orientation,
        pixel_spacing_mm=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        slice_spacing_mm=None if stack is None else stack.slice_spacing_mm,
        image_type=image_type,
        is_localizer=bool(_LOCALIZER_IMAGE_TYPES & {t.upper() for t in image_type}),
        transfer_syntaxes=tuple(UID(s).name for s in syntaxes),
        problems=tuple(problems),
        files=tuple(r.path for r in records),
    )
    return entry, stack


def scan_folder(root: Path) -> Inventory:
    """Inventory of every DICOM object under ``root`` (any nesting, any file names).

    Only headers are parsed (pixel data is not read). Non-DICOM files are skipped; a file with
    a DICOM preamble (or named ``.dcm``) that cannot be parsed is an inventory-level problem.

    Raises:
        UnreadableScanError: ``root`` is not a directory.
    """
    return _scan(root).inventory


# ---------------------------------------------------------------------------------------------
# selection


def _rejection(series: SeriesEntry, rules: SeriesSelection) -> str | None:
    if series.kind is not SeriesKind.VOLUME:
        return f"not a CT/MR image volume ({series.sop_class_name or series.modality or '?'})"
    if series.modality not in rules.modalities:
        return f"modality {series.modality} not in {list(rules.modalities)}"
    if series.n_slices < rules.min_slices:
        return f"{series.n_slices} slices < min_slices {rules.min_slices}"
    if rules.exclude_localizers and series.is_localizer:
        return f"localizer (ImageType {'/'.join(series.image_type)})"
    description = series.series_description or ""
    if rules.include_description is not None and not re.search(
        rules.include_description, description
    ):
        return f"description does not match include_description {rules.include_description!r}"
    if rules.exclude_description is not None and re.search(rules.exclude_description, description):
        return f"description matches exclude_description {rules.exclude_description!r}"
    return None


def _preference(series: SeriesEntry, prefer: str | None) -> float:
    if prefer == "thinnest":
        return series.slice_spacing_mm if series.slice_spacing_mm is not None else math.inf
    if prefer == "most_slices":
        return -float(series.n_slices)
    return 0.0


def select_series(
    inventory: Inventory, rules: SeriesSelection | None = None, *, log_identifiers: bool = False
) -> SeriesEntry:
    """The one series of ``inventory`` that ``rules`` select.

    Filters (kind, modality, min_slices, localizer, descriptions) leave the candidates;
    ``prefer`` keeps only the best of them (ties within ``SLICE_SPACING_RELATIVE_TOLERANCE``
    are kept); ``require="exactly_one"`` then needs exactly one, ``"first"`` takes the first
    by preference, SeriesNumber and UID. Errors list series by :meth:`SeriesEntry.describe`,
    with their SeriesDescription only if ``log_identifiers``.

    Raises:
        InputError: no series matches (every series is listed with the reason it was
            rejected), or several remain and the rules require exactly one (they are listed).
    """
    rules = rules or SeriesSelection()
    candidates: list[SeriesEntry] = []
    rejected: list[str] = []
    for series in inventory.series:
        reason = _rejection(series, rules)
        if reason is None:
            candidates.append(series)
        else:
            rejected.append(f"{series.describe(log_identifiers=log_identifiers)}: {reason}")
    if not candidates:
        found = "; ".join(rejected) if rejected else "no DICOM series at all"
        raise InputError(f"{inventory.root}: no series matches the selection rules. Found: {found}")
    candidates.sort(
        key=lambda s: (
            _preference(s, rules.prefer),
            s.series_number is None,
            s.series_number or 0,
            s.series_instance_uid,
        )
    )
    best_score = _preference(candidates[0], rules.prefer)
    best = [
        s
        for s in candidates
        if math.isclose(
            _preference(s, rules.prefer), best_score, rel_tol=SLICE_SPACING_RELATIVE_TOLERANCE
        )
        or _preference(s, rules.prefer) == best_score
    ]
    if len(best) > 1 and rules.require == "exactly_one":
        listed = "; ".join(s.describe(log_identifiers=log_identifiers) for s in best)
        how = f" equally good by prefer={rules.prefer}" if rules.prefer else ""
        raise InputError(
            f"{inventory.root}: {len(best)} series match the selection rules{how}, expected "
            f"exactly one (narrow the rules, set prefer, or require: first): {listed}"
        )
    return best[0]
