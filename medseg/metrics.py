"""Segmentation metrics in millimetres: overlap, surface distances and volume errors.

Every metric compares a *prediction* with a *reference* on the same grid (checked first with
:func:`medseg.volume.require_same_geometry`). Distances are in mm and use the anisotropic voxel
spacing of the grid (``Geometry.spacing_mm``, array order ``(slice, row, column)``); volumes are
in mL from :func:`medseg.geometry.voxel_volume_ml`.

Surface conventions: those of DeepMind's ``surface-distance`` (Nikolov et al. 2021), which the
papers medseg's numbers are compared with use, so a surface Dice here is the paper's surface Dice:

* The **surface** of a mask is made of *surfels*: each corner point of the voxel grid whose
  2 x 2 x 2 neighbourhood of voxels is neither all inside nor all outside the mask carries the
  marching-cubes surface piece of that neighbourhood, weighted by its **area** in mm^2 (for a
  2-D slice, the contour piece of a 2 x 2 neighbourhood, weighted by its **length** in mm).
  Outside the array counts as outside the mask. The area of each of the 256 neighbourhood
  codes comes from ``surface-distance``'s own lookup table, scaled to the grid's spacing.
* The **distance** of a surfel to the other mask is the Euclidean distance in mm to the nearest
  surfel corner point of the other mask.
* **HD** is the larger of the two directed maxima; **HD95** the larger of the two directed
  95th percentiles *by area* (the distance below which 95 % of the surface area lies,
  ``compute_robust_hausdorff``); **ASSD** the mean of the two directed area-weighted average
  distances (``compute_average_surface_distance``); **surface Dice** (NSD) at a tolerance tau
  is the area of both surfaces within tau of the other, over the area of both
  (``compute_surface_dice_at_tolerance``).

Until issue 21 medseg counted surface *voxels* instead (MONAI's convention with
``use_subvoxels=False``); that variant differed from the paper's surface Dice by up to 0.21 on
the DeepMind H&N organs and is gone. The tests hold every organ pair of ``hn-oar-labels`` to
``surface-distance`` within 1e-3.

Empty masks (decided here, so a table never silently drops a case):

==========================  ======  ======  ===================  ========  =============
case                        Dice    IoU     HD / HD95 / ASSD     NSD       rel. vol. err.
==========================  ======  ======  ===================  ========  =============
both empty                  1.0     1.0     0.0                  1.0       0.0
reference empty only        0.0     0.0     ``inf``              0.0       ``inf``
prediction empty only       0.0     0.0     ``inf``              0.0       -1.0
==========================  ======  ======  ===================  ========  =============

Both empty means the prediction is exactly right (MONAI returns NaN there and drops it from
means, which hides correct "no tumour" answers). A distance to a surface that does not exist is
``inf``, as in ``surface-distance`` and MONAI's ``get_surface_distance``; summaries report how
many values were not finite instead of averaging them away (see
:func:`medseg.evaluation.evaluate_folder`).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from medseg import geometry as geo
from medseg.errors import ConfigError, InputError
from medseg.volume import Volume, VolumeKind, require_same_geometry

__all__ = [
    "HD_PERCENTILE",
    "METRIC_NAMES",
    "EditingEffort",
    "SegmentationMetrics",
    "compute_label_metrics",
    "compute_metrics",
    "dice_score",
    "editing_effort",
]

#: The percentile of the "robust" Hausdorff distance HD95.
HD_PERCENTILE = 95.0


@dataclass(frozen=True, slots=True)
class SegmentationMetrics:
    """Agreement of one predicted structure with its reference (see the module docstring).

    Attributes:
        dice: ``2|P∩R| / (|P|+|R|)``.
        iou: ``|P∩R| / |P∪R|`` (Jaccard).
        hausdorff_mm: symmetric Hausdorff distance (max of the directed maxima), mm.
        hausdorff95_mm: max of the two directed 95th percentiles of surface distances, mm.
        assd_mm: average symmetric surface distance, mm.
        surface_dice: normalised surface Dice at ``tolerance_mm``, in ``[0, 1]``.
        tolerance_mm: the surface Dice tolerance tau, mm.
        volume_prediction_ml: predicted volume, mL.
        volume_reference_ml: reference volume, mL.
        absolute_volume_error_ml: ``|V_pred - V_ref|``, mL.
        relative_volume_error: ``(V_pred - V_ref) / V_ref``, signed fraction (0.1 = 10 % too
            large).
    """

    dice: float
    iou: float
    hausdorff_mm: float
    hausdorff95_mm: float
    assd_mm: float
    surface_dice: float
    tolerance_mm: float
    volume_prediction_ml: float
    volume_reference_ml: float
    absolute_volume_error_ml: float
    relative_volume_error: float

    def to_dict(self) -> dict[str, float]:
        """Plain ``{name: float}``; JSON writers must allow ``inf`` (see module docstring)."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def both_empty(cls, tolerance_mm: float) -> SegmentationMetrics:
        """The metrics of a structure absent from both prediction and reference (a correct
        "nothing there"; see the module docstring)."""
        return cls(
            dice=1.0, iou=1.0, hausdorff_mm=0.0, hausdorff95_mm=0.0, assd_mm=0.0,
            surface_dice=1.0, tolerance_mm=float(tolerance_mm), volume_prediction_ml=0.0,
            volume_reference_ml=0.0, absolute_volume_error_ml=0.0, relative_volume_error=0.0,
        )  # fmt: skip


#: Metric columns of the per-case table and the summary, in order.
METRIC_NAMES: tuple[str, ...] = tuple(
    f.name for f in fields(SegmentationMetrics) if f.name != "tolerance_mm"
)


def _mask(volume: Volume, label: int, what: str) -> NDArray[np.bool_]:
    if volume.kind is not VolumeKind.LABELS:
        raise InputError(
            f"{volume.source.describe()}: the {what} must be a labels volume, "
            f"got a {volume.kind.value} volume"
        )
    return np.asarray(volume.array == label)


def _union_box(*masks: NDArray[np.bool_]) -> tuple[slice, ...]:
    """The bounding box of the union of the masks (at least one must be non-empty)."""
    union = np.logical_or.reduce(masks)
    box = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        present = np.flatnonzero(union.any(axis=other))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


@functools.lru_cache(maxsize=64)
def _surfel_table(spacing_mm: tuple[float, ...]) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """(area or length of each neighbourhood code, the code's bit weights) for this spacing.

    The 256 (3-D) or 16 (2-D) areas are ``surface-distance``'s lookup table: its marching-cubes
    surfel normals are the definition of the surface Dice the papers report, and no other
    library reproduces them (scikit-image's marching cubes, Lorensen or Lewiner, triangulates
    44 resp. 68 of the 256 neighbourhoods differently; MONAI ports the table but needs torch,
    which STYLE keeps out of this module). Only the table is taken from that package; the
    surfels, distances and aggregates are computed here, so the tests can hold this module to
    the package's own ``compute_surface_distances``.
    """
    from surface_distance import lookup_tables  # the table only (see the docstring)

    if len(spacing_mm) == 3:
        table = lookup_tables.create_table_neighbour_code_to_surface_area(spacing_mm)
        kernel = lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL
    else:
        table = lookup_tables.create_table_neighbour_code_to_contour_length(spacing_mm)
        kernel = lookup_tables.ENCODE_NEIGHBOURHOOD_2D_KERNEL
    return np.asarray(table, dtype=np.float64), np.asarray(kernel, dtype=np.int64)


def _surfels(
    mask: NDArray[np.bool_], spacing_mm: Sequence[float]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Corner positions (mm, array axes scaled by spacing) and areas (mm^2; lengths in mm for a
    2-D mask) of the mask's surfels, as ``surface-distance`` defines them.

    The mask is padded with one layer of background on every side, so each corner point of the
    grid, including those on the array's faces, sees its full neighbourhood; the neighbourhood
    code of corner ``c`` is the sum of the bit weights of the voxels ``c + offset`` (offsets in
    ``{0, 1}^n`` of the padded array) inside the mask, exactly ``scipy.ndimage.correlate`` with
    the package's kernel and zero fill.
    """
    spacing = tuple(float(s) for s in spacing_mm)
    table, kernel = _surfel_table(spacing)
    padded = np.pad(mask, 1)
    n = padded.ndim
    code = np.zeros(tuple(s - 1 for s in padded.shape), dtype=np.int64)
    for offset in itertools.product((0, 1), repeat=n):
        window = tuple(slice(o, o + s - 1) for o, s in zip(offset, padded.shape, strict=True))
        code += kernel[offset] * padded[window]
    full = int(kernel.sum())
    border = (code != 0) & (code != full)
    points = np.argwhere(border).astype(np.float64) * np.asarray(spacing, dtype=np.float64)
    return points, table[code[border]]


def _directed_distances_mm(
    from_points_mm: NDArray[np.float64], to_points_mm: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Distance of every point of ``from`` to its nearest point of ``to`` (mm).

    A k-d tree over surfel points gives the exact Euclidean distance with a cost that grows
    with the number of surfels, not with the bounding box as the distance transform
    ``surface-distance`` uses would; on a lung the tree is several times faster. The package
    itself is not called: its 0.1 release (unmaintained since 2019) fails with NumPy 2 on empty
    masks and uses SciPy's deprecated ``ndimage.filters`` namespace.
    """
    distances, _ = cKDTree(to_points_mm).query(from_points_mm, k=1)
    return np.asarray(distances, dtype=np.float64)


def _area_percentile(
    distances: NDArray[np.float64], areas: NDArray[np.float64], percent: float
) -> float:
    """The distance below which ``percent`` % of the surfel area lies (``surface-distance``'s
    ``compute_robust_hausdorff``: the first distance, in ascending order, whose cumulative area
    fraction reaches ``percent / 100``)."""
    order = np.argsort(distances, kind="stable")
    cumulative = np.cumsum(areas[order]) / np.sum(areas)
    index = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[order][min(index, distances.size - 1)])


def dice_score(prediction: Volume, reference: Volume, label: int = 1) -> float:
    """Dice of one label between two label volumes on the same grid, without distances.

    The cheap check used during training validation and by the demo; both masks empty gives
    1.0 (nothing to find, nothing found), as in :func:`compute_metrics`.

    Raises:
        GeometryError: if the volumes are on different grids or frames of reference.
        InputError: if either volume is not a labels volume.
    """
    require_same_geometry(prediction, reference)
    pred = _mask(prediction, label, "prediction")
    ref = _mask(reference, label, "reference")
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(pred & ref)) / total


def compute_metrics(
    prediction: Volume, reference: Volume, *, label: int = 1, tolerance_mm: float
) -> SegmentationMetrics:
    """Compare one label of a predicted label map with the same label of a reference.

    Args:
        prediction: predicted ``LABELS`` volume, array order ``(slice, row, column)``.
        reference: reference ``LABELS`` volume on the same grid.
        label: the label value compared (``array == label`` in both).
        tolerance_mm: surface Dice tolerance tau in mm (e.g. the inter-observer variation of
            the structure, as in Nikolov et al. 2018).

    Returns:
        The metrics, distances in mm and volumes in mL; empty masks follow the table in the
        module docstring.

    Raises:
        GeometryError: if the volumes are on different grids or frames of reference.
        InputError: if either volume is not a labels volume.
        ConfigError: if ``tolerance_mm`` is negative or not finite.
    """
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ConfigError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm}")
    require_same_geometry(prediction, reference)
    pred = _mask(prediction, label, "prediction")
    ref = _mask(reference, label, "reference")
    voxel_ml = geo.voxel_volume_ml(prediction.geometry)
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    volume_pred_ml, volume_ref_ml = n_pred * voxel_ml, n_ref * voxel_ml
    if n_ref:
        relative_error = (volume_pred_ml - volume_ref_ml) / volume_ref_ml
    else:
        relative_error = 0.0 if n_pred == 0 else math.inf
    volumes = {
        "tolerance_mm": float(tolerance_mm),
        "volume_prediction_ml": volume_pred_ml,
        "volume_reference_ml": volume_ref_ml,
        "absolute_volume_error_ml": abs(volume_pred_ml - volume_ref_ml),
        "relative_volume_error": relative_error,
    }
    if n_pred == 0 and n_ref == 0:
        return SegmentationMetrics.both_empty(tolerance_mm)
    if n_pred == 0 or n_ref == 0:
        return SegmentationMetrics(
            dice=0.0, iou=0.0, hausdorff_mm=math.inf, hausdorff95_mm=math.inf,
            assd_mm=math.inf, surface_dice=0.0, **volumes,
        )  # fmt: skip
    n_both = int(np.count_nonzero(pred & ref))
    box = _union_box(pred, ref)
    spacing = prediction.geometry.spacing_mm
    pred_pts, pred_area = _surfels(pred[box], spacing)
    ref_pts, ref_area = _surfels(ref[box], spacing)
    pred_to_ref = _directed_distances_mm(pred_pts, ref_pts)
    ref_to_pred = _directed_distances_mm(ref_pts, pred_pts)
    within = float(
        pred_area[pred_to_ref <= tolerance_mm].sum() + ref_area[ref_to_pred <= tolerance_mm].sum()
    )
    return SegmentationMetrics(
        dice=2.0 * n_both / (n_pred + n_ref),
        iou=n_both / (n_pred + n_ref - n_both),
        hausdorff_mm=float(max(pred_to_ref.max(), ref_to_pred.max())),
        hausdorff95_mm=max(
            _area_percentile(pred_to_ref, pred_area, HD_PERCENTILE),
            _area_percentile(ref_to_pred, ref_area, HD_PERCENTILE),
        ),
        assd_mm=float(
            (
                np.sum(pred_to_ref * pred_area) / np.sum(pred_area)
                + np.sum(ref_to_pred * ref_area) / np.sum(ref_area)
            )
            / 2
        ),
        surface_dice=within / float(pred_area.sum() + ref_area.sum()),
        **volumes,
    )


def compute_label_metrics(
    prediction: Volume,
    reference: Volume,
    labels: Mapping[int, str],
    *,
    tolerance_mm: float | Mapping[str, float],
) -> dict[str, SegmentationMetrics]:
    """:func:`compute_metrics` for every named label: ``{name: metrics}``.

    Args:
        prediction: predicted ``LABELS`` volume, array order ``(slice, row, column)``.
        reference: reference ``LABELS`` volume on the same grid.
        labels: label value -> structure name.
        tolerance_mm: surface Dice tolerance in mm, the same for every label, or structure
            name -> tolerance with one for every name of ``labels``.

    Raises:
        GeometryError, InputError, ConfigError: as :func:`compute_metrics`.
    """
    return {
        name: compute_metrics(
            prediction,
            reference,
            label=value,
            tolerance_mm=tolerance_mm[name] if isinstance(tolerance_mm, Mapping) else tolerance_mm,
        )
        for value, name in labels.items()
    }


@dataclass(frozen=True, slots=True)
class EditingEffort:
    """How much of a reference contour a clinician had to draw or move, slice by slice.

    The *added path length* (APL, Vaassen et al. 2020, Phys. Imaging Radiat. Oncol. 13:1-6) of
    a slice is the length of the reference (edited) contour lying farther than the tolerance
    from the predicted contour of the same slice: what had to be drawn anew. A slice *needs no
    edit* when every contour piece of both the prediction and the reference is within the
    tolerance of the other's (nothing drawn, moved or deleted). Contours are the 2-D surfels of
    each slice (``surface-distance``'s contour pieces, weighted by length in mm).

    Attributes:
        added_path_length_mm: APL summed over the slices, mm.
        per_slice_mm: slice index (array axis 0) -> APL of that slice, mm, for every slice
            where the prediction or the reference holds the structure.
        slices_with_structure: number of such slices.
        slices_without_edit: how many of them need no edit.
        tolerance_mm: the distance within which a contour counts as unedited.
    """

    added_path_length_mm: float
    per_slice_mm: Mapping[int, float]
    slices_with_structure: int
    slices_without_edit: int
    tolerance_mm: float

    @property
    def fraction_without_edit(self) -> float:
        """Share of the structure's slices that need no edit (1.0 when there are none)."""
        if self.slices_with_structure == 0:
            return 1.0
        return self.slices_without_edit / self.slices_with_structure


def editing_effort(
    prediction: Volume, reference: Volume, *, label: int = 1, tolerance_mm: float
) -> EditingEffort:
    """Added path length and slices needing no edit of one label (see :class:`EditingEffort`).

    Slices are the planes of array axis 0 (the acquired slices, as a clinician edits them);
    in-plane distances use the row and column spacing.

    Raises:
        GeometryError, InputError, ConfigError: as :func:`compute_metrics`.
    """
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ConfigError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm}")
    require_same_geometry(prediction, reference)
    pred = _mask(prediction, label, "prediction")
    ref = _mask(reference, label, "reference")
    in_plane = tuple(float(s) for s in prediction.geometry.spacing_mm[1:])
    present = np.flatnonzero(pred.any(axis=(1, 2)) | ref.any(axis=(1, 2)))
    per_slice: dict[int, float] = {}
    unedited = 0
    for k in present.tolist():
        p, r = pred[k], ref[k]
        if not r.any():  # a predicted contour to delete, nothing to draw
            per_slice[k] = 0.0
            continue
        box = _union_box(p, r)
        r_pts, r_len = _surfels(r[box], in_plane)
        if not p.any():  # all of the reference contour had to be drawn
            per_slice[k] = float(r_len.sum())
            continue
        p_pts, _ = _surfels(p[box], in_plane)
        far_r = _directed_distances_mm(r_pts, p_pts) > tolerance_mm
        far_p = _directed_distances_mm(p_pts, r_pts) > tolerance_mm
        per_slice[k] = float(r_len[far_r].sum())
        unedited += int(not (far_r.any() or far_p.any()))
    return EditingEffort(
        added_path_length_mm=float(sum(per_slice.values())),
        per_slice_mm=per_slice,
        slices_with_structure=len(per_slice),
        slices_without_edit=unedited,
        tolerance_mm=float(tolerance_mm),
    )
