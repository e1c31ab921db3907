"""RT Structure Set read: contours -> masks on a reference image grid.

Reading is lenient: contours are matched to slices by their referenced SOP Instance UID when
present and by position along the slice normal otherwise (``lung-gtv-ct`` has no
ContourImageSequence), and filled with the even-odd rule as the standard says.
``medseg.io.rtstruct`` (the writer) re-exports :func:`read`, so ``rtstruct.read`` is the
public name.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medseg import contours
from medseg import geometry as geo
from medseg.errors import GeometryError, UnreadableScanError
from medseg.volume import SourceInfo, Volume, VolumeKind

__all__ = ["MAX_OFF_PLANE_SLICES", "read"]

#: Largest distance (in slices) of a contour point from the slice plane it is assigned to.
MAX_OFF_PLANE_SLICES = 0.5




def read(path: Path, reference: Volume) -> dict[str, Volume]:
    """Rasterise every ROI of an RT Structure Set onto the reference image grid.

    A voxel belongs to a ROI if its centre is inside an odd number of the ROI's closed
    contours on that slice (even-odd rule, so an inner contour makes a hole).

    Args:
        path: RT-STRUCT file.
        reference: the image volume the structures were drawn on (array order
            ``(slice, row, column)``).

    Returns:
        ROI name -> LABELS volume (uint8, 0/1) on ``reference``'s grid. A ROI without
        contours gives an all-zero volume. Duplicate names get ``" #<ROINumber>"`` appended
        (with a warning).

    Raises:
        UnreadableScanError: not a readable DICOM file, or not an RT Structure Set.
        GeometryError: the structure set's frame of reference differs from the reference's,
            or a contour lies off every slice plane (by more than half a slice) or off its
            referenced slice.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError) as exc:
        raise UnreadableScanError(f"{path}: cannot be read as DICOM ({exc})") from exc
    if str(ds.get("Modality", "")) != "RTSTRUCT" or "StructureSetROISequence" not in ds:
        raise UnreadableScanError(
            f"{path}: not an RT Structure Set (Modality {ds.get('Modality', '')!r})"
        )
    g = reference.geometry
    ref_frame = reference.source.frame_of_reference_uid
    frames = {
        str(f.FrameOfReferenceUID)
        for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        if "FrameOfReferenceUID" in f
    }
    if "FrameOfReferenceUID" in ds and ds.FrameOfReferenceUID:
        frames.add(str(ds.FrameOfReferenceUID))
    uid_to_slice = {uid: k for k, uid in enumerate(reference.source.sop_instance_uids)}
    contours_by_roi = {
        int(item.ReferencedROINumber): item.get("ContourSequence", [])
        for item in ds.get("ROIContourSequence", [])
        if "ReferencedROINumber" in item
    }
    out: dict[str, Volume] = {}
    for roi in ds.StructureSetROISequence:
        number = int(roi.ROINumber)
        name = str(roi.get("ROIName", "")) or f"ROI {number}"
        roi_frame = str(roi.get("ReferencedFrameOfReferenceUID", "")) or None
        for frame in {roi_frame} if roi_frame else frames:
            if ref_frame and frame and frame != ref_frame:
                raise GeometryError(
                    f"{path}: ROI {name!r} is in frame of reference {frame}, but the "
                    f"reference image {reference.source.describe()} is in {ref_frame}"
                )
        if name in out:
            warnings.warn(
                f"{path}: duplicate ROI name {name!r}; ROI {number} read as "
                f"{name + ' #' + str(number)!r}",
                stacklevel=2,
            )
            name = f"{name} #{number}"
        slices: dict[int, list[NDArray[np.float64]]] = {}
        for contour in contours_by_roi.get(number, []):
            kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR"))
            if kind != "CLOSED_PLANAR":
                warnings.warn(
                    f"{path}: ROI {name!r}: skipping a {kind} contour (only "
                    "CLOSED_PLANAR contours enclose voxels)",
                    stacklevel=2,
                )
                continue
            data = np.asarray([float(v) for v in contour.get("ContourData", [])], dtype=float)
            if data.size < 9 or data.size % 3:
                warnings.warn(
                    f"{path}: ROI {name!r}: skipping a contour with {data.size} "
                    "ContourData values (needs 3 per point, >= 3 points)",
                    stacklevel=2,
                )
                continue
            index = geo.world_to_index(g, data.reshape(-1, 3))
            k = _slice_of(contour, index[:, 0], uid_to_slice, g.shape[0], path, name)
            slices.setdefault(k, []).append(index[:, 1:])
        mask = np.zeros(g.shape, dtype=np.uint8)
        for k, polygons in slices.items():
            mask[k] = contours.polygons_to_mask(polygons, g.shape[1:])
        out[name] = Volume(
            mask,
            g,
            VolumeKind.LABELS,
            SourceInfo(
                path=path,
                study_instance_uid=str(ds.get("StudyInstanceUID", "")) or None,
                series_instance_uid=str(ds.get("SeriesInstanceUID", "")) or None,
                frame_of_reference_uid=ref_frame or roi_frame,
                sop_instance_uids=reference.source.sop_instance_uids,
                modality="RTSTRUCT",
            ),
        )
    return out


def _slice_of(
    contour: Dataset,
    k_values: NDArray[np.float64],
    uid_to_slice: dict[str, int],
    n_slices: int,
    path: Path,
    name: str,
) -> int:
    """The slice index of one contour: its referenced SOP UID, else its position."""
    referenced = [
        uid_to_slice.get(str(image.get("ReferencedSOPInstanceUID", "")))
        for image in contour.get("ContourImageSequence", [])
    ]
    known = [k for k in referenced if k is not None]
    k = known[0] if known else int(np.round(np.median(k_values)))
    off = float(np.abs(k_values - k).max())
    if off > MAX_OFF_PLANE_SLICES or not 0 <= k < n_slices:
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
