"""Voxel grid geometry and every conversion between voxel indices and patient coordinates.

This is the only module that inverts, multiplies or flips affines, or reverses axis order.

Conventions (see ``docs/design.md``):

* World coordinates are DICOM patient **LPS** in millimetres, as ``(x, y, z)``.
* Every per-axis tuple is in **array order** ``(slice, row, column)``: ``shape``,
  ``spacing_mm`` and the columns of ``direction``.
* ``origin_mm`` is the LPS position of the *centre* of voxel ``(0, 0, 0)``.
* ``direction`` is a 3x3 matrix stored row-major; its column ``a`` is the LPS unit vector
  along which array axis ``a`` increases.  So for index ``n = (k, j, i)``::

      world = origin + direction @ (spacing * n)

Other conventions, converted only here:

* SimpleITK: size/spacing/index in ``(x, y, z) = (column, row, slice)`` order, direction
  row-major with column ``c`` the direction of index axis ``c``.  ``GetArrayFromImage``
  already returns arrays in our array order.
* nibabel/NIfTI: array in ``(i, j, k) = (column, row, slice)`` order and a 4x4 affine to
  **RAS**.
* DICOM: ImageOrientationPatient = (row cosine, column cosine), i.e. the direction of
  increasing column index and of increasing row index; PixelSpacing = (row spacing,
  column spacing) = (spacing along axis 1, spacing along axis 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medseg.errors import GeometryError

__all__ = [
    "AXIAL_DIRECTION",
    "DIRECTION_TOLERANCE",
    "LATTICE_TOLERANCE_VOXELS",
    "POSITION_TOLERANCE_MM",
    "SPACING_RELATIVE_TOLERANCE",
    "Geometry",
    "affine_lps",
    "array_to_nifti_order",
    "crop_geometry",
    "dicom_orientation",
    "dicom_pixel_spacing",
    "from_dicom",
    "from_nifti_affine",
    "from_sitk",
    "geometries_equal",
    "index_box_in",
    "index_to_world",
    "lps_to_ras",
    "nifti_array_to_array_order",
    "ras_to_lps",
    "reorder_to_grid",
    "require_same_geometry",
    "slice_normal",
    "slice_positions_mm",
    "to_nifti_affine",
    "to_sitk",
    "voxel_volume_ml",
    "world_to_index",
]

#: Largest deviation from orthonormality accepted in a direction matrix (|D^T D - I|_max).
#: 1e-4 admits the rounding of direction cosines written with 6-8 significant digits in DICOM.
DIRECTION_TOLERANCE = 1e-4

#: Two positions closer than this (mm) are the same point.  1e-3 mm is far below any voxel
#: size in clinical imaging and above float32 rounding of coordinates up to ~1 m.
POSITION_TOLERANCE_MM = 1e-3

#: Two spacings are equal if they differ by less than this fraction.
SPACING_RELATIVE_TOLERANCE = 1e-5

#: The direction of an axial scan in array order: slices along +z (feet to head), rows along +y
#: (anterior to posterior), columns along +x (right to left). SimpleITK's identity direction.
AXIAL_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0)
_LPS_RAS_FLIP = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True, slots=True)
class Geometry:
    """A regular voxel grid in patient space.

    Attributes:
        shape: number of voxels in array order ``(slice, row, column)``.
        spacing_mm: voxel spacing in mm, array order.
        origin_mm: LPS position (mm) of the centre of voxel ``(0, 0, 0)``, as ``(x, y, z)``.
        direction: 3x3 row-major; column ``a`` is the LPS unit vector of array axis ``a``.
            Defaults to :data:`AXIAL_DIRECTION`.

    Raises:
        GeometryError: on a shape that is not 3 positive integers, a spacing that is not 3
            finite positive numbers, a non-finite origin, or a non-orthonormal direction.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...] = AXIAL_DIRECTION

    def __post_init__(self) -> None:
        shape = tuple(self.shape)
        if len(shape) != 3 or any(int(s) != s or s < 1 for s in shape):
            raise GeometryError(f"shape must be 3 positive integers, got {self.shape}")
        spacing = tuple(float(s) for s in self.spacing_mm)
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise GeometryError(f"spacing_mm must be 3 finite values > 0, got {self.spacing_mm}")
        origin = tuple(float(o) for o in self.origin_mm)
        if len(origin) != 3 or not all(math.isfinite(o) for o in origin):
            raise GeometryError(f"origin_mm must be 3 finite values, got {self.origin_mm}")
        direction = tuple(float(d) for d in np.asarray(self.direction, dtype=float).ravel())
        if len(direction) != 9 or not all(math.isfinite(d) for d in direction):
            raise GeometryError(f"direction must be 9 finite values, got {self.direction}")
        d = np.asarray(direction).reshape(3, 3)
        deviation = float(np.abs(d.T @ d - np.eye(3)).max())
        if deviation > DIRECTION_TOLERANCE:
            raise GeometryError(
                f"direction must be orthonormal (tolerance {DIRECTION_TOLERANCE}), "
                f"got {direction} (deviation {deviation:.2e})"
            )
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_mm", origin)
        object.__setattr__(self, "direction", direction)

    @property
    def direction_matrix(self) -> NDArray[np.float64]:
        """The direction as a 3x3 array (column ``a`` = unit vector of array axis ``a``)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def n_voxels(self) -> int:
        """Total number of voxels."""
        return int(np.prod(self.shape))


# ---------------------------------------------------------------------------------------------
# index <-> world


def affine_lps(geometry: Geometry) -> NDArray[np.float64]:
    """4x4 matrix mapping homogeneous array-order indices ``(k, j, i, 1)`` to LPS mm."""
    affine = np.eye(4)
    affine[:3, :3] = geometry.direction_matrix * np.asarray(geometry.spacing_mm)[None, :]
    affine[:3, 3] = geometry.origin_mm
    return affine


def index_to_world(geometry: Geometry, index: ArrayLike) -> NDArray[np.float64]:
    """Map array-order indices (``(..., 3)``, may be fractional) to LPS positions in mm."""
    idx = np.asarray(index, dtype=float)
    if idx.shape[-1] != 3:
        raise GeometryError(f"index must have 3 values in its last axis, got shape {idx.shape}")
    affine = affine_lps(geometry)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def world_to_index(geometry: Geometry, world_mm: ArrayLike) -> NDArray[np.float64]:
    """Map LPS positions (``(..., 3)``, mm) to fractional array-order indices."""
    pts = np.asarray(world_mm, dtype=float)
    if pts.shape[-1] != 3:
        raise GeometryError(f"world_mm must have 3 values in its last axis, got shape {pts.shape}")
    # direction is orthonormal, so its inverse is its transpose; dividing by spacing undoes scaling.
    rel = pts - np.asarray(geometry.origin_mm)
    return (rel @ geometry.direction_matrix) / np.asarray(geometry.spacing_mm)


def index_box_in(
    source: Geometry, first: Sequence[float], last: Sequence[float], target: Geometry
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Fractional ``target`` indices spanned by the ``source`` voxel centres ``first..last``.

    ``first`` and ``last`` are inclusive array-order indices of a box on ``source``; its eight
    corner centres are mapped through world space, so the result is right for any pair of
    grids (on oblique or differently oriented ones it is the bounding box of the corners).
    Returns the per-axis minimum and maximum, in array order.
    """
    corners = np.array(
        [
            [k, j, i]
            for k in (first[0], last[0])
            for j in (first[1], last[1])
            for i in (first[2], last[2])
        ],
        dtype=float,
    )
    reach = world_to_index(target, index_to_world(source, corners))
    return reach.min(axis=0), reach.max(axis=0)


def voxel_volume_ml(geometry: Geometry) -> float:
    """Volume of one voxel in millilitres (1 mL = 1000 mm^3)."""
    return float(np.prod(geometry.spacing_mm)) / 1000.0


def crop_geometry(geometry: Geometry, start: Sequence[int], stop: Sequence[int]) -> Geometry:
    """Geometry of the sub-grid ``[start:stop]`` (array order); world positions are kept."""
    start_a = np.asarray(start, dtype=int)
    stop_a = np.asarray(stop, dtype=int)
    if np.any(start_a < 0) or np.any(stop_a > geometry.shape) or np.any(stop_a <= start_a):
        raise GeometryError(
            f"crop {tuple(start_a)}..{tuple(stop_a)} outside shape {geometry.shape}"
        )
    origin = index_to_world(geometry, start_a.astype(float))
    return Geometry(
        shape=tuple(int(s) for s in stop_a - start_a),  # type: ignore[arg-type]
        spacing_mm=geometry.spacing_mm,
        origin_mm=tuple(float(o) for o in origin),  # type: ignore[arg-type]
        direction=geometry.direction,
    )


# ---------------------------------------------------------------------------------------------
# equality


def geometries_equal(
    a: Geometry, b: Geometry, *, position_tolerance_mm: float = POSITION_TOLERANCE_MM
) -> bool:
    """True if both grids place every voxel at the same world position (within tolerance)."""
    if a.shape != b.shape:
        return False
    spacing_a, spacing_b = np.asarray(a.spacing_mm), np.asarray(b.spacing_mm)
    if np.any(np.abs(spacing_a - spacing_b) > SPACING_RELATIVE_TOLERANCE * spacing_a):
        return False
    if np.any(np.abs(a.direction_matrix - b.direction_matrix) > DIRECTION_TOLERANCE):
        return False
    # the farthest corner moves most when direction or spacing differ slightly
    corner = np.asarray(a.shape, dtype=float) - 1.0
    probes = np.array([[0.0, 0.0, 0.0], corner])
    return bool(
        np.abs(index_to_world(a, probes) - index_to_world(b, probes)).max() <= position_tolerance_mm
    )


def require_same_geometry(a: Geometry, b: Geometry, what: str = "volumes") -> None:
    """Raise :class:`GeometryError` unless ``a`` and ``b`` are the same grid."""
    if not geometries_equal(a, b):
        raise GeometryError(
            f"{what} have different geometry: shape {a.shape} vs {b.shape}, "
            f"spacing_mm {a.spacing_mm} vs {b.spacing_mm}, origin_mm {a.origin_mm} vs "
            f"{b.origin_mm}, direction {a.direction} vs {b.direction}"
        )


# ---------------------------------------------------------------------------------------------
# LPS <-> RAS


def lps_to_ras(points_mm: ArrayLike) -> NDArray[np.float64]:
    """Convert LPS points ``(..., 3)`` to RAS (negate x and y)."""
    pts = np.asarray(points_mm, dtype=float)
    return pts @ _LPS_RAS_FLIP


def ras_to_lps(points_mm: ArrayLike) -> NDArray[np.float64]:
    """Convert RAS points ``(..., 3)`` to LPS (negate x and y)."""
    pts = np.asarray(points_mm, dtype=float)
    return pts @ _LPS_RAS_FLIP


# ---------------------------------------------------------------------------------------------
# nibabel / NIfTI


def to_nifti_affine(geometry: Geometry) -> NDArray[np.float64]:
    """The NIfTI (RAS) affine for the array returned by :func:`array_to_nifti_order`."""
    affine = affine_lps(geometry)
    reordered = np.eye(4)
    reordered[:3, :3] = affine[:3, :3][:, ::-1]  # columns for index (i, j, k)
    reordered[:3, 3] = affine[:3, 3]
    ras = np.eye(4)
    ras[:3, :] = _LPS_RAS_FLIP @ reordered[:3, :]
    return ras


def from_nifti_affine(
    affine: ArrayLike, nifti_shape: Sequence[int], what: str = "image"
) -> Geometry:
    """Geometry of a NIfTI image given its RAS affine and its (i, j, k) shape.

    Raises:
        GeometryError: if the affine has a zero or non-finite column (zero spacing) or is
            sheared (non-orthogonal columns), naming ``what``.
    """
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise GeometryError(f"{what}: affine must be a finite 4x4 matrix, got {a.tolist()}")
    if len(nifti_shape) != 3:
        raise GeometryError(f"{what}: expected a 3D image, got shape {tuple(nifti_shape)}")
    lps = _LPS_RAS_FLIP @ a[:3, :]
    columns_ijk = lps[:, :3]
    spacing_ijk = np.linalg.norm(columns_ijk, axis=0)
    if np.any(spacing_ijk <= 0):
        raise GeometryError(f"{what}: zero spacing in affine (column norms {spacing_ijk.tolist()})")
    direction_ijk = columns_ijk / spacing_ijk[None, :]
    return Geometry(
        shape=tuple(int(s) for s in nifti_shape[::-1]),  # type: ignore[arg-type]
        spacing_mm=tuple(float(s) for s in spacing_ijk[::-1]),  # type: ignore[arg-type]
        origin_mm=tuple(float(o) for o in lps[:, 3]),  # type: ignore[arg-type]
        direction=tuple(direction_ijk[:, ::-1].ravel()),
    )


def array_to_nifti_order(array: NDArray[Any]) -> NDArray[Any]:
    """Reorder an array-order ``(slice, row, column)`` array to NIfTI ``(i, j, k)`` order."""
    return np.ascontiguousarray(np.transpose(array, (2, 1, 0)))


def nifti_array_to_array_order(array: NDArray[Any]) -> NDArray[Any]:
    """Reorder a NIfTI ``(i, j, k)`` array to array order ``(slice, row, column)``."""
    return np.ascontiguousarray(np.transpose(array, (2, 1, 0)))


# ---------------------------------------------------------------------------------------------
# SimpleITK


def from_sitk(
    size_xyz: Sequence[int],
    spacing_xyz: Sequence[float],
    origin_xyz: Sequence[float],
    direction_xyz: Sequence[float],
) -> Geometry:
    """Geometry from SimpleITK's ``GetSize/GetSpacing/GetOrigin/GetDirection`` values."""
    d = np.asarray(direction_xyz, dtype=float).reshape(3, 3)
    return Geometry(
        shape=tuple(int(s) for s in size_xyz)[::-1],  # type: ignore[arg-type]
        spacing_mm=tuple(float(s) for s in spacing_xyz)[::-1],  # type: ignore[arg-type]
        origin_mm=tuple(float(o) for o in origin_xyz),  # type: ignore[arg-type]
        direction=tuple(d[:, ::-1].ravel()),
    )


def to_sitk(
    geometry: Geometry,
) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(size, spacing, origin, direction)`` in SimpleITK's (x, y, z) conventions."""
    d = geometry.direction_matrix[:, ::-1]
    return (
        tuple(geometry.shape[::-1]),
        tuple(geometry.spacing_mm[::-1]),
        tuple(geometry.origin_mm),
        tuple(float(v) for v in d.ravel()),
    )


# ---------------------------------------------------------------------------------------------
# DICOM


def slice_normal(image_orientation: ArrayLike) -> NDArray[np.float64]:
    """Unit normal (row cosine x column cosine) of an ImageOrientationPatient."""
    iop = np.asarray(image_orientation, dtype=float)
    if iop.shape != (6,) or not np.all(np.isfinite(iop)):
        raise GeometryError(f"ImageOrientationPatient must be 6 finite values, got {list(iop)}")
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise GeometryError(f"ImageOrientationPatient has parallel cosines: {list(iop)}")
    return normal / norm


def from_dicom(
    image_orientation: ArrayLike,
    positions_mm: ArrayLike,
    pixel_spacing: ArrayLike,
    rows: int,
    columns: int,
) -> Geometry:
    """Geometry of a DICOM series whose slices are already sorted along the slice normal.

    Args:
        image_orientation: ImageOrientationPatient (row cosine, column cosine).
        positions_mm: ImagePositionPatient of every slice, in array (sorted) order.
        pixel_spacing: PixelSpacing as stored (row spacing, column spacing).
        rows: Rows.
        columns: Columns.

    The slice axis is the *sorted* direction of the positions, so a series stored head-first
    or feet-first gives a right-handed or left-handed grid exactly as SimpleITK does. The
    spacing between slices is the mean step between consecutive positions; uniformity is the
    caller's (``io.dicom``) responsibility.
    """
    iop = np.asarray(image_orientation, dtype=float)
    normal = slice_normal(iop)
    pos = np.asarray(positions_mm, dtype=float).reshape(-1, 3)
    pixel = np.asarray(pixel_spacing, dtype=float)
    row_cos = iop[:3] / np.linalg.norm(iop[:3])
    col_cos = iop[3:] / np.linalg.norm(iop[3:])
    if len(pos) > 1:
        step = (pos[-1] - pos[0]) / (len(pos) - 1)
        slice_spacing = float(np.linalg.norm(step))
        slice_dir = step / slice_spacing if slice_spacing > 0 else normal
    else:
        slice_spacing = 1.0
        slice_dir = normal
    # A slice direction that is not along the normal is a gantry tilt or a shear; the grid
    # is then not orthonormal and Geometry refuses it with a GeometryError.
    direction = np.stack([slice_dir, col_cos, row_cos], axis=1)
    return Geometry(
        shape=(len(pos), int(rows), int(columns)),
        spacing_mm=(slice_spacing, float(pixel[0]), float(pixel[1])),
        origin_mm=tuple(float(v) for v in pos[0]),  # type: ignore[arg-type]
        direction=tuple(direction.ravel()),
    )


def slice_positions_mm(geometry: Geometry) -> NDArray[np.float64]:
    """ImagePositionPatient of every slice (``(n_slices, 3)``), array order."""
    k = np.arange(geometry.shape[0], dtype=float)
    idx = np.stack([k, np.zeros_like(k), np.zeros_like(k)], axis=1)
    return index_to_world(geometry, idx)


def dicom_orientation(geometry: Geometry) -> tuple[float, ...]:
    """ImageOrientationPatient (row cosine, column cosine) of the grid's slices."""
    d = geometry.direction_matrix
    return tuple(float(v) for v in np.concatenate([d[:, 2], d[:, 1]]))


def dicom_pixel_spacing(geometry: Geometry) -> tuple[float, float]:
    """PixelSpacing (row spacing, column spacing) of the grid's slices."""
    return (geometry.spacing_mm[1], geometry.spacing_mm[2])


# ---------------------------------------------------------------------------------------------
# the same lattice in another axis order

#: Largest distance (in voxels) of a voxel centre of one grid from a voxel centre of the other
#: for two grids to count as the same lattice stored in another axis order (float32 NIfTI
#: affines round positions to ~1e-5 of their magnitude).
LATTICE_TOLERANCE_VOXELS = 1e-3


def reorder_to_grid(array: NDArray[Any], source: Geometry, target: Geometry) -> NDArray[Any]:
    """``array`` (on ``source``) gathered onto ``target`` when both are the same voxel lattice.

    Both grids are regular, so the map from target indices to source indices is affine; it is
    measured at the origin and one step along each axis. Only a signed permutation with an
    integer offset (the same voxels stored in another axis order or direction, as dcm2niix
    stores rows bottom-up) is accepted; the array is then gathered, never interpolated, so
    label volumes are kept exactly.

    Raises:
        GeometryError: the grids are not the same lattice (another spacing, a sub-voxel shift,
            a rotation) or ``target`` reaches outside ``source``.
    """
    if geometries_equal(source, target):
        return np.asarray(array)
    probes = np.vstack([np.zeros(3), np.eye(3)])
    mapped = world_to_index(source, index_to_world(target, probes))
    offset = mapped[0]
    steps = mapped[1:] - offset  # row a: source-index step for one step along target axis a
    permutation = np.argmax(np.abs(steps), axis=1)
    signs = np.sign(steps[np.arange(3), permutation])
    exact = np.zeros((3, 3))
    exact[np.arange(3), permutation] = signs
    ok = (
        sorted(permutation.tolist()) == [0, 1, 2]
        and np.abs(steps - exact).max() <= LATTICE_TOLERANCE_VOXELS
        and np.abs(offset - np.round(offset)).max() <= LATTICE_TOLERANCE_VOXELS
    )
    index: list[NDArray[np.intp]] = []
    if ok:
        start = np.round(offset).astype(int)
        index = [
            (start[permutation[a]] + signs[a] * np.arange(target.shape[a])).astype(np.intp)
            for a in range(3)
        ]
        ok = all(
            idx.min() >= 0 and idx.max() < source.shape[permutation[a]]
            for a, idx in enumerate(index)
        )
    if not ok:
        raise GeometryError(
            f"not the same voxel lattice: shape {source.shape} vs {target.shape}, spacing_mm "
            f"{source.spacing_mm} vs {target.spacing_mm}, origin_mm {source.origin_mm} vs "
            f"{target.origin_mm}, direction {source.direction} vs {target.direction}"
        )
    # axis a of the result reads source axis permutation[a]
    reordered = np.transpose(np.asarray(array), permutation.tolist())
    return np.ascontiguousarray(reordered[np.ix_(*index)])


# ---------------------------------------------------------------------------------------------
# canonical orientation

#: World axis (LPS index) each array axis points along on a canonical grid: slices along z
#: (towards S), rows along y (towards P), columns along x (towards L), as SimpleITK's
#: ``DICOMOrient(image, "LPS")`` orders its (x, y, z) axes.
_CANONICAL_WORLD_AXIS = (2, 1, 0)


@dataclass(frozen=True, slots=True)
class Reorientation:
    """The same voxels stored in canonical axis order and direction, and the way back.

    Axis ``a`` of the canonical array is axis ``permutation[a]`` of the source array, reversed
    where ``flips[a]``. Both directions are views (a transpose and flips), never copies or
    interpolation, so labels survive the round trip exactly.

    Attributes:
        source: the grid as stored.
        target: the canonical grid (the same voxel centres).
        permutation: source axis of each canonical axis.
        flips: whether each canonical axis runs opposite to its source axis.
    """

    source: Geometry
    target: Geometry
    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        """True when the source grid is already canonical."""
        return self.permutation == (0, 1, 2) and not any(self.flips)

    def apply(self, array: NDArray[Any]) -> NDArray[Any]:
        """A view of ``array`` (source order, spatial axes last) in canonical order."""
        lead = array.ndim - 3
        axes = [*range(lead), *(lead + p for p in self.permutation)]
        view = np.transpose(array, axes)
        flipped = tuple(lead + a for a in range(3) if self.flips[a])
        return np.flip(view, flipped) if flipped else view

    def restore(self, array: NDArray[Any]) -> NDArray[Any]:
        """A view of ``array`` (canonical order, spatial axes last) in the source order."""
        lead = array.ndim - 3
        flipped = tuple(lead + a for a in range(3) if self.flips[a])
        view = np.flip(array, flipped) if flipped else array
        inverse = np.argsort(self.permutation)
        return np.transpose(view, [*range(lead), *(lead + int(i) for i in inverse)])


def canonical_reorientation(geometry: Geometry) -> Reorientation:
    """How to store ``geometry``'s voxels with slices towards S, rows towards P, columns
    towards L (each array axis assigned to the world axis it is closest to).

    Oblique grids stay oblique (no interpolation): the canonical grid is the signed axis
    permutation of the source closest to the axial direction. The choice maximises the sum of
    the matched direction components over the 6 permutations, so 45-degree ties are resolved
    the same way every time.

    Example:
        >>> feet_first = Geometry((3, 4, 5), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0),
        ...                       (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0))
        >>> r = canonical_reorientation(feet_first)
        >>> r.permutation, r.flips, r.target.origin_mm
        ((0, 1, 2), (True, False, False), (0.0, 0.0, -4.0))
    """
    import itertools

    d = geometry.direction_matrix
    best = max(
        itertools.permutations(range(3)),
        key=lambda perm: sum(abs(d[_CANONICAL_WORLD_AXIS[c], perm[c]]) for c in range(3)),
    )
    permutation = (int(best[0]), int(best[1]), int(best[2]))
    flips = tuple(bool(d[_CANONICAL_WORLD_AXIS[c], permutation[c]] < 0) for c in range(3))
    first = [0, 0, 0]  # source index of the canonical voxel (0, 0, 0)
    for c in range(3):
        if flips[c]:
            first[permutation[c]] = geometry.shape[permutation[c]] - 1
    columns = [d[:, permutation[c]] * (-1.0 if flips[c] else 1.0) for c in range(3)]
    target = Geometry(
        shape=tuple(geometry.shape[p] for p in permutation),  # type: ignore[arg-type]
        spacing_mm=tuple(geometry.spacing_mm[p] for p in permutation),  # type: ignore[arg-type]
        origin_mm=tuple(float(v) for v in index_to_world(geometry, first)),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in np.column_stack(columns).ravel()),
    )
    return Reorientation(geometry, target, permutation, (flips[0], flips[1], flips[2]))
