"""RT Structure Set read: contours -> masks on a reference image grid.

Reading is lenient: contours are matched to slices by their referenced SOP Instance UID when
present and by position along the slice normal otherwise (``lung-gtv-ct`` has no
ContourImageSequence), and filled with the even-odd rule as the standard says.
``medseg.io.rtstruct`` (the writer) re-exports :func:`read`, so ``rtstruct.read`` is the
public name.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medseg import contours
from medseg import geometry as geo
from medseg.errors import GeometryError, MissingReferenceError, UnreadableScanError
from medseg.io.dicom import HEADER_ERRORS, header_value
from medseg.volume import SourceInfo, Volume, VolumeKind

__all__ = [
    "MAX_LISTED",
    "MAX_OFF_PLANE_SLICES",
    "RoiContours",
    "StructureSetContours",
    "read",
    "read_contours",
    "read_roi_names",
]

#: Largest distance (in slices) of a contour point from the slice plane it is assigned to.
MAX_OFF_PLANE_SLICES = 0.5

#: At most this many unplaced contours are listed per ROI in messages.
MAX_LISTED = 10


def read(path: Path, reference: Volume, *, unplaced: str = "error") -> dict[str, Volume]:
    """Rasterise every ROI of an RT Structure Set onto the reference image grid.

    A voxel belongs to a ROI if its centre is inside an odd number of the ROI's closed
    contours on that slice (even-odd rule, so an inner contour makes a hole).

    A contour is placed on the slice its ContourImageSequence references (SOP Instance UID,
    and ReferencedFrameNumber for multi-frame images) when the reference holds it, else by
    its position along the slice normal. A contour that can be placed on no slice of the
    reference (its referenced image is missing and it lies outside the reference's slices)
    is *unplaced*.

    Args:
        path: RT-STRUCT file.
        reference: the image volume the structures were drawn on (array order
            ``(slice, row, column)``).
        unplaced: ``"error"``: unplaced contours raise :class:`MissingReferenceError`, which
            lists them; ``"skip"``: they are left out with one warning that lists them, and
            the masks hold every contour that could be placed (a partial import). The
            config field is ``IngestConfig.unplaced_contours``.

    Returns:
        ROI name -> LABELS volume (uint8, 0/1) on ``reference``'s grid. A ROI without
        contours gives an all-zero volume. Duplicate names get ``" #<ROINumber>"`` appended
        (with a warning).

    Raises:
        UnreadableScanError: not a readable DICOM file, or not an RT Structure Set.
        MissingReferenceError: the structure set references an image series other than the
            reference's (both listed), or (``unplaced="error"``) contours whose referenced
            slices are missing from the reference or that lie outside its slices (each ROI
            with the missing SOP Instance UIDs and positions).
        GeometryError: the structure set's frame of reference differs from the reference's,
            or a contour within the reference's slices lies off every slice plane (by more
            than half a slice) or off its referenced slice.
    """
    ds, placed = _place_contours(Path(path), reference, unplaced)
    g = reference.geometry
    study_uid = header_value(ds, "StudyInstanceUID", str, None, path)
    series_uid = header_value(ds, "SeriesInstanceUID", str, None, path)
    out: dict[str, Volume] = {}
    for roi in placed:
        out[roi.name] = Volume(
            _rasterise(roi.slices, g.shape),
            g,
            VolumeKind.LABELS,
            SourceInfo(
                path=Path(path),
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                frame_of_reference_uid=reference.source.frame_of_reference_uid
                or roi.frame_of_reference_uid,
                sop_instance_uids=reference.source.sop_instance_uids,
                modality="RTSTRUCT",
                frame_numbers=reference.source.frame_numbers,
            ),
        )
    return out


def _rasterise(
    slices: Mapping[int, Sequence[NDArray[np.float64]]], shape: tuple[int, int, int]
) -> NDArray[np.uint8]:
    """0/1 mask of ``shape`` from each slice's polygons (even-odd rule, voxel centres)."""
    mask = np.zeros(shape, dtype=np.uint8)
    for k, polygons in slices.items():
        mask[k] = contours.polygons_to_mask(polygons, shape[1:])
    return mask


@dataclass(frozen=True, slots=True)
class _PlacedRoi:
    """One ROI of a structure set with its contours placed on the reference's slices."""

    number: int
    name: str  # unique within the structure set ("<name> #<ROINumber>" for a repeat)
    frame_of_reference_uid: str | None
    roi: Dataset  # its StructureSetROISequence item
    contour_item: Dataset  # its ROIContourSequence item (empty when it has none)
    slices: dict[int, list[NDArray[np.float64]]]  # slice -> (N, 2) (row, column) polygons


def _place_contours(
    path: Path, reference: Volume, unplaced: str
) -> tuple[Dataset, list[_PlacedRoi]]:
    """Read a structure set and place every ROI's contours on ``reference``'s slices.

    The one parser behind :func:`read` and :func:`read_contours`, so masks and drawn
    polygons always come from the same placement, checks and errors.
    """
    if unplaced not in ("error", "skip"):
        raise ValueError(f"unplaced must be 'error' or 'skip', got {unplaced!r}")
    ds = _read_dataset(path)
    try:
        return ds, _placed_rois(ds, path, reference, unplaced)
    except HEADER_ERRORS as exc:
        # pydicom converts values on access: a malformed one is found here, not on read
        raise UnreadableScanError(f"{path}: RT Structure Set cannot be read ({exc})") from exc


def _read_dataset(path: Path) -> Dataset:
    try:
        # parsed from memory: a corrupt element length then cannot make the reader allocate
        # the gigabytes it declares (a file object's read(n) reserves n bytes first)
        ds = pydicom.dcmread(io.BytesIO(path.read_bytes()))
    except (InvalidDicomError, *HEADER_ERRORS) as exc:
        raise UnreadableScanError(f"{path}: cannot be read as DICOM ({exc})") from exc
    try:
        modality, has_rois = str(ds.get("Modality", "")), "StructureSetROISequence" in ds
    except HEADER_ERRORS as exc:
        raise UnreadableScanError(f"{path}: RT Structure Set cannot be read ({exc})") from exc
    if modality != "RTSTRUCT" or not has_rois:
        raise UnreadableScanError(f"{path}: not an RT Structure Set (Modality {modality!r})")
    return ds


def _roi_name(roi: Dataset) -> tuple[int, str]:
    """(ROINumber, ROIName) of a StructureSetROISequence item (``"ROI <n>"`` without a name)."""
    number = int(roi.ROINumber)
    return number, str(roi.get("ROIName", "")) or f"ROI {number}"


def read_roi_names(path: Path) -> tuple[str, ...]:
    """The ROI names of an RT Structure Set, in StructureSetROISequence order, as :func:`read`
    names its masks (a repeated name gets ``" #<ROINumber>"``); no image is needed.

    Raises:
        UnreadableScanError: not a readable DICOM file, or not an RT Structure Set.
    """
    path = Path(path)
    ds = _read_dataset(path)
    names: list[str] = []
    try:
        for roi in ds.StructureSetROISequence:
            number, name = _roi_name(roi)
            names.append(f"{name} #{number}" if name in names else name)
    except HEADER_ERRORS as exc:
        raise UnreadableScanError(f"{path}: RT Structure Set cannot be read ({exc})") from exc
    return tuple(names)


def referenced_series_uids(path: Path) -> tuple[str, ...]:
    """The SeriesInstanceUIDs an RT Structure Set says it was drawn on (its
    ReferencedFrameOfReferenceSequence), in file order, without reading an image; empty when
    the file names none.

    Raises:
        UnreadableScanError: not a readable DICOM file, or not an RT Structure Set.
    """
    path = Path(path)
    ds = _read_dataset(path)
    try:
        return _referenced_series_uids(ds)
    except HEADER_ERRORS as exc:
        raise UnreadableScanError(f"{path}: RT Structure Set cannot be read ({exc})") from exc


def _placed_rois(ds: Dataset, path: Path, reference: Volume, unplaced: str) -> list[_PlacedRoi]:
    g = reference.geometry
    ref_frame = reference.source.frame_of_reference_uid
    frames = {
        str(f.FrameOfReferenceUID)
        for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        if "FrameOfReferenceUID" in f
    }
    if "FrameOfReferenceUID" in ds and ds.FrameOfReferenceUID:
        frames.add(str(ds.FrameOfReferenceUID))
    _require_referenced_series(ds, reference, path)
    lookup = _slice_lookup(reference)
    contour_items = {
        int(item.ReferencedROINumber): item
        for item in ds.get("ROIContourSequence", [])
        if "ReferencedROINumber" in item
    }
    placed: list[_PlacedRoi] = []
    names: set[str] = set()
    missing: dict[str, list[tuple[str, float]]] = {}
    for roi in ds.StructureSetROISequence:
        number, name = _roi_name(roi)
        roi_frame = str(roi.get("ReferencedFrameOfReferenceUID", "")) or None
        for frame in {roi_frame} if roi_frame else frames:
            if ref_frame and frame and frame != ref_frame:
                raise GeometryError(
                    f"{path}: ROI {name!r} is in frame of reference {frame}, but the "
                    f"reference image {reference.source.describe()} is in {ref_frame}"
                )
        if name in names:
            warnings.warn(
                f"{path}: duplicate ROI name {name!r}; ROI {number} read as "
                f"{name + ' #' + str(number)!r}",
                stacklevel=4,
            )
            name = f"{name} #{number}"
        names.add(name)
        item = contour_items.get(number, Dataset())
        slices: dict[int, list[NDArray[np.float64]]] = {}
        for contour in item.get("ContourSequence", []):
            kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR"))
            if kind != "CLOSED_PLANAR":
                warnings.warn(
                    f"{path}: ROI {name!r}: skipping a {kind} contour (only "
                    "CLOSED_PLANAR contours enclose voxels)",
                    stacklevel=4,
                )
                continue
            data = np.asarray([float(v) for v in contour.get("ContourData", [])], dtype=float)
            if not np.all(np.isfinite(data)):
                warnings.warn(
                    f"{path}: ROI {name!r}: skipping a contour with non-finite ContourData "
                    "values (NaN or infinity)",
                    stacklevel=4,
                )
                continue
            if data.size < 9 or data.size % 3:
                warnings.warn(
                    f"{path}: ROI {name!r}: skipping a contour with {data.size} "
                    "ContourData values (needs 3 per point, >= 3 points)",
                    stacklevel=4,
                )
                continue
            index = geo.world_to_index(g, data.reshape(-1, 3))
            k = _place(contour, index[:, 0], lookup, g.shape[0], path, name)
            if isinstance(k, str):
                # where the contour is along the reference's slice axis, in mm from slice 0
                along_mm = float(np.median(index[:, 0])) * g.spacing_mm[0]
                missing.setdefault(name, []).append((k, along_mm))
                continue
            slices.setdefault(k, []).append(index[:, 1:])
        placed.append(_PlacedRoi(number, name, roi_frame, roi, item, slices))
    if missing:
        what = f"{path}: " + _describe_unplaced(missing, reference)
        if unplaced == "error":
            raise MissingReferenceError(
                f"{what}. Load the whole referenced series, or import what can be placed "
                "with unplaced='skip' (config ingest.unplaced_contours: skip)"
            )
        warnings.warn(f"{what}; these contours were skipped (partial import)", stacklevel=4)
    return placed


def _describe_unplaced(missing: dict[str, list[tuple[str, float]]], reference: Volume) -> str:
    """What cannot be placed: the missing images (with positions), and the count per ROI."""
    n = sum(len(items) for items in missing.values())
    images: dict[str, float] = {}
    outside: list[float] = []
    for items in missing.values():
        for refs, along_mm in items:
            if refs:
                images.setdefault(refs, along_mm)
            else:
                outside.append(along_mm)
    n_slices = reference.geometry.shape[0]
    parts = []
    if images:
        shown = sorted(images.items(), key=lambda item: item[1])
        listed = ", ".join(f"{uid} ({mm:+.2f} mm)" for uid, mm in shown[:MAX_LISTED])
        more = f", and {len(shown) - MAX_LISTED} more" if len(shown) > MAX_LISTED else ""
        parts.append(
            f"they reference {len(images)} image(s) the reference series lacks: {listed}{more}"
        )
    if outside:
        parts.append(
            f"{len(outside)} contour(s) without a resolvable reference lie outside its "
            f"slices, from {min(outside):+.2f} to {max(outside):+.2f} mm"
        )
    per_roi = ", ".join(f"{name!r}: {len(items)}" for name, items in missing.items())
    return (
        f"{n} contour(s) of {len(missing)} ROI(s) cannot be placed on the reference image "
        f"{reference.source.describe()} ({n_slices} slice(s); positions are along its slice "
        f"axis from slice 0, which spans 0 to "
        f"{(n_slices - 1) * reference.geometry.spacing_mm[0]:.2f} mm): {'; '.join(parts)}. "
        f"Unplaced contours per ROI: {per_roi}"
    )


def _referenced_series_uids(ds: Dataset) -> tuple[str, ...]:
    """The SeriesInstanceUIDs the structure set says it was drawn on, in file order."""
    return tuple(
        str(series.SeriesInstanceUID)
        for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
        for study in frame.get("RTReferencedStudySequence", [])
        for series in study.get("RTReferencedSeriesSequence", [])
        if series.get("SeriesInstanceUID")
    )


def _require_referenced_series(ds: Dataset, reference: Volume, path: Path) -> None:
    """Refuse a structure set that names its image series, when that is not the reference's."""
    named = sorted(set(_referenced_series_uids(ds)))
    ours = reference.source.series_instance_uid
    if named and ours and ours not in named:
        raise MissingReferenceError(
            f"{path}: the structure set was drawn on series {', '.join(named)}, which is "
            f"missing: the reference image {reference.source.describe()} is series {ours}"
        )


def _slice_lookup(reference: Volume) -> dict[tuple[str, int | None], int]:
    """(SOP Instance UID, frame number or None) -> slice index of the reference volume."""
    uids = reference.source.sop_instance_uids
    numbers: tuple[int | None, ...] = reference.source.frame_numbers or (None,) * len(uids)
    lookup: dict[tuple[str, int | None], int] = {}
    for k, (uid, number) in enumerate(zip(uids, numbers, strict=True)):
        lookup[(uid, number)] = k
        if number == 1:  # a single-frame reference without ReferencedFrameNumber
            lookup.setdefault((uid, None), k)
    return lookup


def _place(
    contour: Dataset,
    k_values: NDArray[np.float64],
    lookup: dict[tuple[str, int | None], int],
    n_slices: int,
    path: Path,
    name: str,
) -> int | str:
    """The slice index of one contour, or a description of why it has none.

    Its referenced image (SOP Instance UID and frame) when the reference holds it, else its
    position along the slice normal. A contour within the slices but off every slice plane,
    or off its referenced slice, is a :class:`GeometryError`.
    """
    referenced: list[tuple[str, int | None]] = []
    for image in contour.get("ContourImageSequence", []):
        number = image.get("ReferencedFrameNumber")
        if isinstance(number, (list, tuple)) or type(number).__name__ == "MultiValue":
            number = number[0] if len(number) else None
        frame = None if number in (None, "") else int(number)
        referenced.append((str(image.get("ReferencedSOPInstanceUID", "")), frame))
    known = [lookup[r] for r in referenced if r in lookup]
    k = known[0] if known else int(np.round(np.median(k_values)))
    off = float(np.abs(k_values - k).max())
    if not known and not 0 <= k < n_slices:
        # "" marks a contour without references that lies outside the slices
        return ", ".join(uid + ("" if f is None else f" frame {f}") for uid, f in referenced)
    if off > MAX_OFF_PLANE_SLICES:
        where = (
            f"its referenced slice {k}"
            if known
            else f"any slice plane (nearest slice {k} of 0..{n_slices - 1})"
        )
        raise GeometryError(
            f"{path}: ROI {name!r}: a contour lies {off:.3f} slices off {where}; the "
            "structure set does not fit the reference image series"
        )
    return k


# ---------------------------------------------------------------------------------------------
# contours as polygons (what medseg.report draws)


@dataclass(frozen=True, slots=True)
class RoiContours:
    """The closed planar contours of one ROI, in the reference image's index space.

    Attributes:
        number: ROINumber.
        name: ROIName, made unique as :func:`read` does (``"<name> #<ROINumber>"`` for a
            repeated name), so it is also the key of ``read``'s result.
        colour_rgb: ROIDisplayColor as ``(red, green, blue)``, 0-255, or None when absent.
        generation_description: ROIGenerationDescription (algorithm, version and model, for
            structures medseg wrote), or None when absent.
        interpreted_type: RTROIInterpretedType of its RTROIObservationsSequence item (e.g.
            ``"GTV"``, ``"ORGAN"``), or None when the file gives none.
        polygons: slice index (array axis 0) -> the contours on that slice, each an ``(N, 2)``
            float array of ``(row, column)`` index positions (array axes 1 and 2, continuous:
            a voxel's centre is at integer positions); the closing edge is implied.
    """

    number: int
    name: str
    colour_rgb: tuple[int, int, int] | None
    generation_description: str | None
    polygons: dict[int, tuple[NDArray[np.float64], ...]]
    interpreted_type: str | None = None


@dataclass(frozen=True, slots=True)
class StructureSetContours:
    """Every ROI's contours of one RT Structure Set, placed on a reference image.

    Attributes:
        path: the RT-STRUCT file.
        rois: the ROIs, in StructureSetROISequence order.
        referenced_series_uids: the SeriesInstanceUIDs the structure set says it was drawn on
            (RTReferencedSeriesSequence), in file order.
        image_series_description: SeriesDescription of the reference image series, from its
            DICOM header (None when it has none or was not read from DICOM); a QA page shows
            it so the reader can tell which scan the contours were placed on.
    """

    path: Path
    rois: tuple[RoiContours, ...]
    referenced_series_uids: tuple[str, ...]
    image_series_description: str | None

    def masks(self, reference: Volume) -> dict[str, Volume]:
        """ROI name -> its rasterisation on ``reference`` (the image these contours were
        placed on), as :func:`read` gives it, without reading the file again."""
        return {
            roi.name: reference.with_array(
                _rasterise(roi.polygons, reference.geometry.shape), kind=VolumeKind.LABELS
            )
            for roi in self.rois
        }

    def by_name(self) -> dict[str, RoiContours]:
        """ROI name -> contours."""
        return {roi.name: roi for roi in self.rois}


def read_contours(
    path: Path, reference: Volume, *, unplaced: str = "error"
) -> StructureSetContours:
    """The closed planar contours of every ROI as polygons in ``reference``'s index space.

    :func:`read` turns contours into masks; this keeps them as the polygons the file holds,
    converted with :func:`medseg.geometry.world_to_index`, so a QA page can draw exactly what
    a planning system imports. Contours are placed on slices and checked exactly as in
    :func:`read` (same checks, same errors, same ``unplaced`` choice) and the same contours
    are skipped with a warning: non-CLOSED_PLANAR ones and those with fewer than 3 points.
    Rasterising slice ``k``'s polygons with :func:`medseg.contours.polygons_to_mask` gives
    ``read(path, reference)[name].array[k]``.

    Args:
        path: RT-STRUCT file.
        reference: the image volume the structures were drawn on (array order
            ``(slice, row, column)``).
        unplaced: ``"error"`` or ``"skip"``, as in :func:`read`.

    Returns:
        The contours of every ROI (a ROI without contours has no polygons) and what the
        file says about its reference series.

    Raises:
        UnreadableScanError, MissingReferenceError, GeometryError: as :func:`read`.
    """
    ds, placed = _place_contours(Path(path), reference, unplaced)
    try:
        return _contours(ds, placed, Path(path), reference)
    except HEADER_ERRORS as exc:
        raise UnreadableScanError(f"{path}: RT Structure Set cannot be read ({exc})") from exc


def _contours(
    ds: Dataset, placed: list[_PlacedRoi], path: Path, reference: Volume
) -> StructureSetContours:
    series_uids = _referenced_series_uids(ds)
    types: dict[int, str] = {}
    for observation in ds.get("RTROIObservationsSequence", []):
        number, kind = (
            observation.get("ReferencedROINumber"),
            observation.get("RTROIInterpretedType"),
        )
        if number is not None and kind:
            types.setdefault(int(number), str(kind))
    rois = []
    for roi in placed:
        colour = roi.contour_item.get("ROIDisplayColor")
        rois.append(
            RoiContours(
                number=roi.number,
                name=roi.name,
                colour_rgb=(
                    (int(colour[0]), int(colour[1]), int(colour[2]))
                    if colour is not None and len(colour) == 3
                    else None
                ),
                generation_description=str(roi.roi.get("ROIGenerationDescription", "")) or None,
                polygons={k: tuple(polygons) for k, polygons in sorted(roi.slices.items())},
                interpreted_type=types.get(roi.number),
            )
        )
    header = reference.source.dicom_header
    description = str(header.get("SeriesDescription", "")) if header is not None else ""
    return StructureSetContours(
        path=Path(path),
        rois=tuple(rois),
        referenced_series_uids=series_uids,
        image_series_description=description or None,
    )
