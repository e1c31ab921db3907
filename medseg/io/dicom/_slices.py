"""The slices of one DICOM image series: frames, sorting along the normal, geometry checks.

Used by :mod:`medseg.io.dicom` (to list each series' problems) and :mod:`medseg.io.dicom`
(to load a series or raise the named error of its first problem); the underscored names are
shared inside ``medseg.io`` only.

A slice is a single-frame file or one frame of an enhanced multi-frame file (per-frame
functional groups override shared ones). Slices are sorted by ImagePositionPatient projected on
the slice normal, never by InstanceNumber or file name, and the spacing between slices comes
from those positions, never from SliceThickness.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from numpy.typing import NDArray
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from medseg import geometry as geo
from medseg.errors import (
    DuplicateSliceError,
    GantryTiltError,
    GeometryError,
    InputError,
    MissingSliceError,
    MixedOrientationError,
    MixedPixelSpacingError,
    ResourceLimitError,
    UnevenSpacingError,
    UnreadableScanError,
)
from medseg.io.dicom._headers import HEADER_ERRORS, finite, header_value, integer

__all__ = [
    "MISSING_SLICE_RATIO_TOLERANCE",
    "SLICE_SPACING_RELATIVE_TOLERANCE",
    "TILT_TOLERANCE_DEG",
    "Orientation",
    "Problem",
    "ProblemKind",
]

#: Largest deviation of any slice from the regular grid (first position + k x mean step),
#: relative to the mean step, that still counts as uniformly spaced. 1% of a 3 mm step is
#: 0.03 mm, below clinical significance and above positions rounded to 6 significant digits.
SLICE_SPACING_RELATIVE_TOLERANCE = 0.01

#: A step of ``k`` (>= 2) times the typical step, within this fraction of a step, is reported
#: as ``k - 1`` missing slices rather than uneven spacing (both stop loading unless
#: ``IngestConfig.irregular_slices`` is ``"resample"``).
MISSING_SLICE_RATIO_TOLERANCE = 0.1

#: Largest angle (degrees) between the slice-stacking direction and the slice normal that is
#: not reported as gantry tilt; positions are rounded in files, so a tiny angle is noise.
TILT_TOLERANCE_DEG = 0.01


class ProblemKind(enum.Enum):
    """What is wrong with a file or a series; each stops ``load_series`` with its own error."""

    UNREADABLE = "unreadable"
    MISSING_GEOMETRY = "missing_geometry"
    MIXED_ORIENTATION = "mixed_orientation"
    MIXED_SLICE_SIZE = "mixed_slice_size"
    MIXED_PIXEL_SPACING = "mixed_pixel_spacing"
    DUPLICATE_SLICES = "duplicate_slices"
    MISSING_SLICES = "missing_slices"
    UNEVEN_SPACING = "uneven_spacing"
    GANTRY_TILT = "gantry_tilt"
    INVALID_GEOMETRY = "invalid_geometry"
    TOO_LARGE = "too_large"  # over a resource bound: a deflated data set that inflates too far


_ERRORS: dict[ProblemKind, type[InputError]] = {
    ProblemKind.UNREADABLE: UnreadableScanError,
    ProblemKind.MISSING_GEOMETRY: GeometryError,
    ProblemKind.MIXED_ORIENTATION: MixedOrientationError,
    ProblemKind.MIXED_SLICE_SIZE: GeometryError,
    ProblemKind.MIXED_PIXEL_SPACING: MixedPixelSpacingError,
    ProblemKind.DUPLICATE_SLICES: DuplicateSliceError,
    ProblemKind.MISSING_SLICES: MissingSliceError,
    ProblemKind.UNEVEN_SPACING: UnevenSpacingError,
    ProblemKind.GANTRY_TILT: GantryTiltError,
    ProblemKind.INVALID_GEOMETRY: GeometryError,
    ProblemKind.TOO_LARGE: ResourceLimitError,
}


class Orientation(enum.Enum):
    """The slice plane, from ImageOrientationPatient. ``OBLIQUE``: a direction cosine is off
    the patient axes by more than ``geometry.DIRECTION_TOLERANCE``."""

    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"
    OBLIQUE = "oblique"
    MIXED = "mixed"


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem in a file or series; ``files`` are relative to the scanned folder."""

    kind: ProblemKind
    message: str
    files: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"kind": self.kind.value, "message": self.message, "files": list(self.files)}


# ---------------------------------------------------------------------------------------------
# frames and stacks


@dataclass(frozen=True, slots=True)
class _Record:
    path: Path
    name: str  # relative to the scanned folder, for messages
    header: Dataset  # large elements (pixel data) deferred: read from the file on access
    problem: Problem | None = None  # a truncated file


@dataclass(frozen=True, slots=True)
class _Frame:
    """One 2D slice: a single-frame file, or one frame of an enhanced multi-frame file."""

    record: _Record
    index: int | None  # 0-based frame in a multi-frame file; None for a single-frame file
    position: NDArray[np.float64]
    orientation: NDArray[np.float64]
    pixel_spacing: NDArray[np.float64]
    rows: int
    columns: int
    slope: float
    intercept: float

    @property
    def name(self) -> str:
        return (
            self.record.name if self.index is None else f"{self.record.name} frame {self.index + 1}"
        )


@dataclass(frozen=True, slots=True)
class _Stack:
    """A series' frames, sorted along the normal when its geometry could be worked out."""

    frames: tuple[_Frame, ...]
    problems: tuple[Problem, ...]
    geometry: geo.Geometry | None
    orientation: Orientation | None
    slice_spacing_mm: float | None

    def require_geometry(self, where: Path) -> geo.Geometry:
        """The grid, or the named error of the first problem (message names folder and files)."""
        if self.problems or self.geometry is None:
            _raise_first(self.problems, where)
        assert self.geometry is not None
        return self.geometry


def _raise_first(problems: Sequence[Problem], where: Path) -> NoReturn:
    """Raise the named error of the first problem; its message names the folder and files."""
    problem = (
        problems[0] if problems else Problem(ProblemKind.MISSING_GEOMETRY, "no slice geometry")
    )
    raise _ERRORS[problem.kind](f"{where}: {problem.message}")


_DS_TAGS = {
    "ImagePositionPatient": 0x00200032,
    "ImageOrientationPatient": 0x00200037,
    "PixelSpacing": 0x00280030,
}


def _floats(item: Dataset, keyword: str, count: int, where: str) -> NDArray[np.float64]:
    tag = _DS_TAGS.get(keyword)
    if tag is not None and tag in item:
        # pydicom's DS conversion costs ~0.1 ms per value; parse the raw text when we can
        raw = item.get_item(tag)
        if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
            try:
                parsed = np.array([float(v) for v in raw.value.split(b"\\")], dtype=float)
            except ValueError:
                parsed = None
            if parsed is not None and parsed.shape == (count,) and np.all(np.isfinite(parsed)):
                return parsed
    try:
        value = item.get(keyword)
    except HEADER_ERRORS as exc:
        raise GeometryError(f"{where}: {keyword} cannot be read ({exc})") from exc
    if value is None or value == "":
        raise GeometryError(f"{where}: missing {keyword}")
    try:
        arr = np.asarray([float(v) for v in (value if count > 1 else [value])], dtype=float)
    except HEADER_ERRORS as exc:
        raise GeometryError(f"{where}: {keyword} is not numeric: {value!r}") from exc
    if arr.shape != (count,) or not np.all(np.isfinite(arr)):
        raise GeometryError(f"{where}: {keyword} must have {count} finite values, got {value!r}")
    return arr


def _orientation_of(item: Dataset, where: str) -> NDArray[np.float64]:
    """ImageOrientationPatient, refused (naming ``where``) when it spans no plane."""
    iop = _floats(item, "ImageOrientationPatient", 6, where)
    try:
        geo.slice_normal(iop)
    except GeometryError as exc:
        raise GeometryError(f"{where}: {exc}") from exc
    return iop


def _rescale(item: Dataset, where: str) -> tuple[float, float]:
    return (
        header_value(item, "RescaleSlope", finite, 1.0, where),
        header_value(item, "RescaleIntercept", finite, 0.0, where),
    )


def _frames_of(record: _Record) -> list[_Frame]:
    """The slices of one file; enhanced multi-frame files give one per frame.

    Raises:
        GeometryError: a slice without ImagePositionPatient, ImageOrientationPatient,
            PixelSpacing, Rows or Columns.
        UnreadableScanError: NumberOfFrames, the rescale or the functional groups cannot
            be read.
    """
    ds = record.header
    where = record.name
    try:
        rows, columns = (
            header_value(ds, "Rows", integer, 0, where),
            header_value(ds, "Columns", integer, 0, where),
        )
    except UnreadableScanError as exc:
        raise GeometryError(f"{where}: missing or invalid Rows/Columns ({exc.__cause__})") from exc
    if rows < 1 or columns < 1:
        raise GeometryError(f"{where}: missing or invalid Rows/Columns ({rows} x {columns})")
    n_frames = header_value(ds, "NumberOfFrames", integer, 1, where) or 1
    if n_frames < 1:
        raise UnreadableScanError(f"{where}: NumberOfFrames is {n_frames}")
    try:
        return _frames_with_groups(record, rows, columns, n_frames)
    except HEADER_ERRORS as exc:
        raise UnreadableScanError(f"{where}: functional groups cannot be read ({exc})") from exc


def _frames_with_groups(record: _Record, rows: int, columns: int, n_frames: int) -> list[_Frame]:
    ds = record.header
    where = record.name
    if "PerFrameFunctionalGroupsSequence" not in ds:
        if n_frames > 1:
            raise GeometryError(
                f"{where}: {n_frames} frames but no PerFrameFunctionalGroupsSequence, so the "
                "frames have no positions"
            )
        slope, intercept = _rescale(ds, where)
        return [
            _Frame(
                record,
                None,
                _floats(ds, "ImagePositionPatient", 3, where),
                _orientation_of(ds, where),
                _floats(ds, "PixelSpacing", 2, where),
                rows,
                columns,
                slope,
                intercept,
            )
        ]
    per_frame = ds.PerFrameFunctionalGroupsSequence
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else Dataset()
    if len(per_frame) != n_frames:
        raise GeometryError(
            f"{where}: NumberOfFrames is {n_frames} but PerFrameFunctionalGroupsSequence has "
            f"{len(per_frame)} items"
        )
    frames = []
    for i, item in enumerate(per_frame):
        here = f"{where} frame {i + 1}"

        def group(keyword: str, item: Dataset = item) -> Dataset:
            # a per-frame macro overrides the shared one (PS3.3 C.7.6.16)
            for source in (item, shared):
                seq = source.get(keyword)
                if seq:
                    return seq[0]
            return Dataset()

        slope, intercept = _rescale(group("PixelValueTransformationSequence"), here)
        frames.append(
            _Frame(
                record,
                i,
                _floats(group("PlanePositionSequence"), "ImagePositionPatient", 3, here),
                _orientation_of(group("PlaneOrientationSequence"), here),
                _floats(group("PixelMeasuresSequence"), "PixelSpacing", 2, here),
                rows,
                columns,
                slope,
                intercept,
            )
        )
    return frames


def _orientation(iop: NDArray[np.float64]) -> Orientation:
    normal = geo.slice_normal(iop)
    axis = int(np.argmax(np.abs(normal)))
    cosines = np.concatenate([iop[:3], iop[3:], normal])
    off_axis = np.minimum(np.abs(cosines), np.abs(np.abs(cosines) - 1.0)).max()
    if off_axis > geo.DIRECTION_TOLERANCE:
        return Orientation.OBLIQUE
    return (Orientation.SAGITTAL, Orientation.CORONAL, Orientation.AXIAL)[axis]


def _stack(frames: Sequence[_Frame]) -> _Stack:
    """Sort frames along the normal and find every reason they are not one regular grid."""
    first = frames[0]
    iop, spacing = first.orientation, first.pixel_spacing
    for f in frames[1:]:
        if np.abs(f.orientation - iop).max() > geo.DIRECTION_TOLERANCE:
            message = (
                f"mixed orientations in one series: ImageOrientationPatient "
                f"{f.orientation.tolist()} in {f.name} differs from {iop.tolist()} in {first.name}"
            )
            problem = Problem(ProblemKind.MIXED_ORIENTATION, message, (first.name, f.name))
            return _Stack(tuple(frames), (problem,), None, Orientation.MIXED, None)
    problems: list[Problem] = []
    for f in frames[1:]:
        if (f.rows, f.columns) != (first.rows, first.columns):
            problems.append(
                Problem(
                    ProblemKind.MIXED_SLICE_SIZE,
                    f"mixed slice sizes in one series: {f.rows}x{f.columns} pixels in {f.name}, "
                    f"{first.rows}x{first.columns} in {first.name}",
                    (first.name, f.name),
                )
            )
            break
    for f in frames[1:]:
        if np.abs(f.pixel_spacing - spacing).max() > geo.SPACING_RELATIVE_TOLERANCE * spacing.max():
            problems.append(
                Problem(
                    ProblemKind.MIXED_PIXEL_SPACING,
                    f"mixed pixel spacings in one series: PixelSpacing {f.pixel_spacing.tolist()} in "
                    f"{f.name}, {spacing.tolist()} in {first.name}",
                    (first.name, f.name),
                )
            )
            break
    normal = geo.slice_normal(iop)
    distance = np.array([f.position @ normal for f in frames])
    order = np.argsort(distance, kind="stable")
    ordered = tuple(frames[i] for i in order)
    distance = distance[order]
    positions = np.stack([f.position for f in ordered])
    slice_spacing = None
    if len(ordered) > 1:
        steps = np.diff(distance)
        problems += _spacing_problems(ordered, distance, steps)
        regular = steps[steps >= geo.POSITION_TOLERANCE_MM]
        slice_spacing = float(np.median(regular)) if regular.size else None
        stack = positions[-1] - positions[0]
        if np.linalg.norm(stack) > geo.POSITION_TOLERANCE_MM:
            cos_angle = float(abs(stack @ normal) / np.linalg.norm(stack))
            tilt_deg = math.degrees(math.acos(min(1.0, cos_angle)))
            if tilt_deg > TILT_TOLERANCE_DEG:
                try:
                    header_tilt = first.record.header.get("GantryDetectorTilt")
                except HEADER_ERRORS:
                    header_tilt = None  # only quoted in the message
                said = (
                    "" if header_tilt in (None, "") else f"; GantryDetectorTilt says {header_tilt}"
                )
                problems.append(
                    Problem(
                        ProblemKind.GANTRY_TILT,
                        f"gantry tilt or sheared stack of {tilt_deg:.2f} degrees: slices from "
                        f"{ordered[0].name} to {ordered[-1].name} are not stacked along their "
                        f"normal{said}",
                        (ordered[0].name, ordered[-1].name),
                    )
                )
    geometry = None
    if not problems:
        try:
            geometry = geo.from_dicom(iop, positions, spacing, first.rows, first.columns)
        except GeometryError as exc:
            problems.append(Problem(ProblemKind.INVALID_GEOMETRY, str(exc), (first.name,)))
    return _Stack(ordered, tuple(problems), geometry, _orientation(iop), slice_spacing)


def _spacing_problems(
    ordered: Sequence[_Frame], distance: NDArray[np.float64], steps: NDArray[np.float64]
) -> list[Problem]:
    problems = []
    dup = [int(i) for i in np.nonzero(steps < geo.POSITION_TOLERANCE_MM)[0]]
    if dup:
        pairs = [(ordered[i].name, ordered[i + 1].name) for i in dup]
        shown = "; ".join(f"{a} and {b} at {distance[i]:.3f} mm" for (a, b), i in zip(pairs, dup))
        problems.append(
            Problem(
                ProblemKind.DUPLICATE_SLICES,
                f"{len(pairs)} duplicate slice position(s) along the normal: {shown}",
                tuple(name for pair in pairs for name in pair),
            )
        )
        return problems  # the steps around a duplicate say nothing about gaps
    nominal = float(np.median(steps))
    ratio = steps / nominal
    k = np.rint(ratio)
    gaps = [
        int(i)
        for i in np.nonzero((k >= 2) & (np.abs(ratio - k) <= MISSING_SLICE_RATIO_TOLERANCE))[0]
    ]
    if gaps:
        shown = "; ".join(
            f"{int(k[i]) - 1} missing between {ordered[i].name} and {ordered[i + 1].name} "
            f"(step {steps[i]:.3f} mm)"
            for i in gaps
        )
        problems.append(
            Problem(
                ProblemKind.MISSING_SLICES,
                f"missing slice(s), spacing {nominal:.3f} mm: {shown}",
                tuple(name for i in gaps for name in (ordered[i].name, ordered[i + 1].name)),
            )
        )
        regular = np.ones(len(steps), bool)
        regular[gaps] = False
        steps = steps[regular]
        if not steps.size:
            return problems
    mean_step = (distance[-1] - distance[0]) / (len(distance) - 1)
    residual = np.abs(distance - (distance[0] + mean_step * np.arange(len(distance))))
    if not gaps and residual.max() > SLICE_SPACING_RELATIVE_TOLERANCE * mean_step:
        worst = int(np.argmax(np.abs(np.diff(distance) - nominal)))
        problems.append(
            Problem(
                ProblemKind.UNEVEN_SPACING,
                f"uneven slice spacing: step {np.diff(distance)[worst]:.3f} mm between "
                f"{ordered[worst].name} and {ordered[worst + 1].name}, typical step {nominal:.3f} mm; "
                f"a slice is {residual.max():.3f} mm off the regular grid",
                (ordered[worst].name, ordered[worst + 1].name),
            )
        )
    elif gaps and np.abs(steps - nominal).max() > SLICE_SPACING_RELATIVE_TOLERANCE * nominal:
        problems.append(
            Problem(
                ProblemKind.UNEVEN_SPACING,
                f"uneven slice spacing besides the gaps: steps from {steps.min():.3f} to "
                f"{steps.max():.3f} mm, typical {nominal:.3f} mm",
            )
        )
    return problems


# ---------------------------------------------------------------------------------------------
# resampling an irregular or tilted stack onto a regular orthogonal grid (when config allows)

#: A source slice whose in-plane offset from the target grid is below this (pixels) is not
#: shifted; positions in files are rounded to a few micrometres.
SHIFT_TOLERANCE_PX = 1e-3


@dataclass(frozen=True, slots=True)
class _Regrid:
    """How to interpolate a sorted stack onto a regular orthogonal grid.

    Target slice ``t`` is ``(1 - weight[t]) * S'[lower[t]] + weight[t] * S'[lower[t] + 1]``,
    where ``S'[k]`` is source slice ``k`` shifted in-plane by ``shift_px[k]`` (rows, columns).
    """

    geometry: geo.Geometry
    lower: NDArray[np.intp]
    weight: NDArray[np.float64]
    shift_px: NDArray[np.float64]
    interpolated: tuple[int, ...]  # target slices that lie on no source slice
    summary: str


def _regrid(
    stack: _Stack, allow: set[ProblemKind], max_interpolated_slices: int, where: Path
) -> _Regrid:
    """The resampling plan of ``stack`` when every problem is one of ``allow``.

    Raises:
        The named error of the first problem not in ``allow``, or MissingSliceError for a gap
        of more than ``max_interpolated_slices`` slices.
    """
    refused = [p for p in stack.problems if p.kind not in allow]
    if refused or not stack.problems:
        _raise_first(refused or stack.problems, where)
    frames = stack.frames
    first = frames[0]
    if len(frames) < 2:
        _raise_first(stack.problems, where)
    normal = geo.slice_normal(first.orientation)
    positions = np.stack([f.position for f in frames])
    distance = positions @ normal
    steps = np.diff(distance)
    nominal = float(np.median(steps))
    too_wide = [
        int(i)
        for i in np.nonzero(
            steps > (max_interpolated_slices + 1 + MISSING_SLICE_RATIO_TOLERANCE) * nominal
        )[0]
    ]
    if too_wide:
        shown = "; ".join(
            f"{frames[i].name} to {frames[i + 1].name} ({steps[i]:.3f} mm)" for i in too_wide
        )
        raise MissingSliceError(
            f"{where}: gap(s) wider than {max_interpolated_slices} missing slice(s) of "
            f"{nominal:.3f} mm are not interpolated: {shown}"
        )
    n_target = round(float(distance[-1] - distance[0]) / nominal) + 1
    step = (distance[-1] - distance[0]) / (n_target - 1)
    grid_positions = positions[0] + np.outer(np.arange(n_target) * step, normal)
    target = geo.from_dicom(
        first.orientation, grid_positions, first.pixel_spacing, first.rows, first.columns
    )
    # each source slice's origin in target indices: (slice coordinate, row and column offset)
    source_index = geo.world_to_index(target, positions)
    along = source_index[:, 0]
    shift_px = source_index[:, 1:]
    shift_px[np.abs(shift_px) < SHIFT_TOLERANCE_PX] = 0.0
    t = np.arange(n_target, dtype=float)
    lower = np.clip(np.searchsorted(along, t + 1e-6, side="right") - 1, 0, len(frames) - 2)
    weight = np.clip((t - along[lower]) / (along[lower + 1] - along[lower]), 0.0, 1.0)
    on_source = np.min(np.abs(t[:, None] - along[None, :]), axis=1) * step
    interpolated = tuple(int(i) for i in np.nonzero(on_source > geo.POSITION_TOLERANCE_MM)[0])
    exact = on_source <= geo.POSITION_TOLERANCE_MM
    nearest = np.argmin(np.abs(t[:, None] - along[None, :]), axis=1)
    # a target slice on a source slice takes it unchanged (weight exactly 0 or 1)
    lower[exact] = np.minimum(nearest[exact], len(frames) - 2)
    weight[exact] = (nearest[exact] > lower[exact]).astype(float)
    reasons = "; ".join(p.message for p in stack.problems)
    summary = (
        f"{where}: resampled {len(frames)} slices onto a regular orthogonal grid of "
        f"{n_target} slices {step:.3f} mm apart (linear interpolation along the slice "
        f"normal"
        + (
            f", slices shifted in-plane by up to {np.abs(shift_px).max():.2f} pixels"
            if np.any(shift_px)
            else ""
        )
        + f") because {reasons}. Interpolated target slices (on no acquired slice): "
        + (", ".join(str(i) for i in interpolated) if interpolated else "none")
        + ". The volume has no per-slice SOP Instance UIDs, so exports cannot reference "
        "the acquired slices"
    )
    return _Regrid(target, lower.astype(np.intp), weight, shift_px, interpolated, summary)
