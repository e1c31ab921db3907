"""The core data type: an array with its geometry, kind and provenance."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medseg import geometry as geo
from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry

__all__ = ["MAX_REPR_CHARACTERS", "SourceInfo", "Volume", "VolumeKind", "require_same_geometry"]

#: Longest repr of a :class:`Volume` or :class:`SourceInfo`: one line, whatever the array's
#: size or the number of slices, so a repr in a log or traceback stays readable.
MAX_REPR_CHARACTERS = 200

# A UID in a repr shows this many leading and trailing characters ("1.2.840…3521"): enough to
# tell series apart by eye, short enough for one line.
_UID_HEAD, _UID_TAIL = 7, 4
# Spacings in a repr carry this many significant digits (0.9765625 mm -> 0.977).
_SPACING_DIGITS = 3


class VolumeKind(enum.Enum):
    """What the voxels mean; it decides interpolation (labels are always nearest-neighbour)."""

    IMAGE = "image"
    LABELS = "labels"
    PROBABILITIES = "probabilities"


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """Where a volume came from.

    Attributes:
        path: file or folder it was read from (``None`` for computed volumes).
        study_instance_uid: StudyInstanceUID, when read from DICOM.
        series_instance_uid: SeriesInstanceUID, when read from DICOM.
        frame_of_reference_uid: FrameOfReferenceUID, when known.
        sop_instance_uids: SOP Instance UID of every slice, in array order (DICOM only).
        modality: e.g. ``"CT"`` or ``"MR"``.
        frame_numbers: for slices taken from enhanced multi-frame files, the 1-based frame
            number (DICOM ReferencedFrameNumber) of every slice in array order, ``None`` for
            a slice that is its own single-frame file; empty when every slice is a
            single-frame file. A reference to slice ``k`` is then the pair
            ``(sop_instance_uids[k], frame_numbers[k])``.
        dicom_header: an opaque header (a pydicom ``Dataset`` without pixel data) that
            ``io.rtstruct`` uses to write derived objects into the same study. Only ``io``
            modules look inside it.
    """

    path: Path | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    sop_instance_uids: tuple[str, ...] = ()
    modality: str | None = None
    frame_numbers: tuple[int | None, ...] = ()
    dicom_header: Any = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        """A short, PHI-free description for messages: the path or the series UID."""
        if self.path is not None:
            return str(self.path)
        if self.series_instance_uid:
            return f"series {self.series_instance_uid}"
        return "<in-memory volume>"

    def __repr__(self) -> str:
        """Modality, abbreviated UIDs and counts, never the header (patient attributes) or
        the SOP Instance UIDs themselves (thousands on a long series). The path is left
        out too: folder names may be patient names (``privacy.redact`` exists for them)."""
        frames = sum(f is not None for f in self.frame_numbers)
        return (
            f"SourceInfo(modality={self.modality}, study={_short_uid(self.study_instance_uid)}, "
            f"series={_short_uid(self.series_instance_uid)}, "
            f"frame_of_reference={_short_uid(self.frame_of_reference_uid)}, "
            f"slices={len(self.sop_instance_uids)}"
            + (f", frames={frames}" if frames else "")
            + f", header={'yes' if self.dicom_header is not None else 'no'})"
        )


def _short_uid(uid: str | None) -> str:
    """A UID cut to its first and last few characters for a repr (``None`` as is)."""
    if not uid:
        return "None"
    if len(uid) <= _UID_HEAD + _UID_TAIL + 1:
        return uid
    return f"{uid[:_UID_HEAD]}…{uid[-_UID_TAIL:]}"


@dataclass(frozen=True, slots=True, eq=False)
class Volume:
    """A 3D array on a patient-space grid.

    ``array`` is in array order ``(slice, row, column)``; for ``PROBABILITIES`` it has a
    leading class axis ``(class, slice, row, column)``. The array is made read-only.

    Two volumes are equal only if they are the same object (and hash by identity), as
    TorchIO's ``Image``: a generated ``==`` would compare arrays, whose elementwise answer
    has no truth value. Compare contents explicitly (``np.array_equal`` on the arrays, ``==``
    on the geometries). The repr is one short line without voxels or patient attributes.

    Raises:
        GeometryError: if the array's spatial shape does not match ``geometry.shape``.
        InputError: if the array has the wrong number of dimensions for its kind, or a
            ``LABELS`` array is not of an integer type.
    """

    array: NDArray[Any]
    geometry: Geometry
    kind: VolumeKind = VolumeKind.IMAGE
    source: SourceInfo = field(default_factory=SourceInfo)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        where = self.source.describe()
        expected_ndim = 4 if self.kind is VolumeKind.PROBABILITIES else 3
        if arr.ndim != expected_ndim:
            raise InputError(
                f"{where}: a {self.kind.value} volume needs a {expected_ndim}D array, "
                f"got shape {arr.shape}"
            )
        if tuple(arr.shape[-3:]) != self.geometry.shape:
            raise GeometryError(
                f"{where}: array shape {arr.shape} does not match geometry shape "
                f"{self.geometry.shape}"
            )
        if self.kind is VolumeKind.LABELS and not (
            np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_
        ):
            raise InputError(f"{where}: a labels volume needs an integer array, got {arr.dtype}")
        # frozen=True does not stop writes into the array; a read-only view does.
        arr = arr.view()
        arr.flags.writeable = False
        object.__setattr__(self, "array", arr)

    def __repr__(self) -> str:
        """Kind, array shape, spacing (mm, array order), dtype and abbreviated series UID."""
        spacing = tuple(float(f"{s:.{_SPACING_DIGITS}g}") for s in self.geometry.spacing_mm)
        return (
            f"Volume(kind={self.kind.value}, shape={tuple(self.array.shape)}, "
            f"spacing={spacing}, dtype={self.array.dtype.name}, "
            f"series={_short_uid(self.source.series_instance_uid)})"
        )

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL, from the geometry."""
        return geo.voxel_volume_ml(self.geometry)

    def with_array(self, array: NDArray[Any], kind: VolumeKind | None = None) -> Volume:
        """A new volume on the same grid and source with another array (and optionally kind)."""
        return replace(self, array=array, kind=self.kind if kind is None else kind)


def require_same_geometry(a: Volume, b: Volume) -> None:
    """Raise :class:`GeometryError` unless ``a`` and ``b`` share grid and frame of reference.

    Two volumes whose FrameOfReferenceUIDs are both known and differ are never combined, even
    on identical grids: the same numbers mean different places in different frames.
    """
    fa, fb = a.source.frame_of_reference_uid, b.source.frame_of_reference_uid
    if fa and fb and fa != fb:
        raise GeometryError(
            f"{a.source.describe()} and {b.source.describe()} are in different frames of "
            f"reference ({fa} vs {fb})"
        )
    geo.require_same_geometry(
        a.geometry, b.geometry, what=f"{a.source.describe()} and {b.source.describe()}"
    )
