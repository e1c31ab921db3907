"""Segmentation metrics in millimetres: overlap, surface distances and volume errors.

Every metric compares a *prediction* with a *reference* on the same grid (checked first with
:func:`medseg.volume.require_same_geometry`). Distances are in mm and use the anisotropic voxel
spacing of the grid (``Geometry.spacing_mm``, array order ``(slice, row, column)``); volumes are
in mL from :func:`medseg.geometry.voxel_volume_ml`.

Conventions (the same as MONAI's ``HausdorffDistanceMetric``, ``SurfaceDistanceMetric`` and
``SurfaceDiceMetric`` with ``use_subvoxels=False``, so numbers can be compared with papers
that used MONAI):

* The **surface** of a mask is its voxels with at least one face neighbour (6-connectivity)
  outside the mask; a voxel on the array border counts as surface.
* The **distance** of a surface voxel to the other mask is the Euclidean distance in mm between
  voxel centres to the nearest surface voxel of the other mask.
* **HD** is the larger of the two directed maxima; **HD95** the larger of the two directed
  95th percentiles (linear interpolation, as ``numpy.percentile``/``torch.quantile``);
  **ASSD** the mean of all distances of both directions pooled; **surface Dice** (NSD) at a
  tolerance tau is the fraction of surface voxels of both masks, pooled, that lie within tau
  of the other surface.

DeepMind's ``surface-distance`` package instead places surface elements on voxel corners and
weights them by area; the tests show its HD95 and ASSD agree with ours within one voxel
diagonal on real organs (see ``tests/test_metrics.py``).

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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import cKDTree

from medseg import geometry as geo
from medseg.errors import ConfigError, InputError
from medseg.volume import Volume, VolumeKind, require_same_geometry

__all__ = [
    "HD_PERCENTILE",
    "METRIC_NAMES",
    "SegmentationMetrics",
    "compute_label_metrics",
    "compute_metrics",
    "dice_score",
]

#: The percentile of the "robust" Hausdorff distance HD95.
HD_PERCENTILE = 95.0

#: Voxels of margin kept around the union bounding box before surfaces are extracted: one
#: voxel makes every object voxel on the box's face see background, so cropping never changes
#: the surface (MONAI's ``get_mask_edges`` crops the same way).
_CROP_MARGIN_VOXELS = 1


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


def _crop_to_union(
    a: NDArray[np.bool_], b: NDArray[np.bool_]
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Both masks cropped to their union's bounding box plus a margin (clipped to the array)."""
    union = a | b
    slices = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        present = np.flatnonzero(union.any(axis=other))
        lo = max(int(present[0]) - _CROP_MARGIN_VOXELS, 0)
        hi = min(int(present[-1]) + 1 + _CROP_MARGIN_VOXELS, union.shape[axis])
        slices.append(slice(lo, hi))
    window = tuple(slices)
    return a[window], b[window]


def _surface_points_mm(mask: NDArray[np.bool_], spacing_mm: Sequence[float]) -> NDArray[np.float64]:
    """Voxel-centre positions (mm, array axes scaled by spacing) of the mask's surface voxels.

    ``binary_erosion`` with its default cross structure and ``border_value=0`` removes every
    voxel with a face neighbour outside the mask or outside the array: what is removed is the
    surface.
    """
    surface = mask & ~ndimage.binary_erosion(mask)
    return np.argwhere(surface).astype(np.float64) * np.asarray(spacing_mm, dtype=np.float64)


def _directed_distances_mm(
    from_points_mm: NDArray[np.float64], to_points_mm: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Distance of every point of ``from`` to its nearest point of ``to`` (mm).

    A k-d tree over surface points gives the exact Euclidean distance with a cost that grows
    with the number of surface voxels, not with the bounding box as a distance transform
    (``distance_transform_edt(sampling=spacing)``) would; on a lung the tree is several times
    faster. Written here rather than calling ``surface-distance`` (unmaintained since 2019, its
    0.1 release fails with NumPy 2 on empty masks) or MONAI (imports torch, which STYLE keeps
    out of this module); both are used as independent checks in the tests.
    """
    distances, _ = cKDTree(to_points_mm).query(from_points_mm, k=1)
    return np.asarray(distances, dtype=np.float64)


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
    pred_c, ref_c = _crop_to_union(pred, ref)
    spacing = prediction.geometry.spacing_mm
    pred_pts, ref_pts = _surface_points_mm(pred_c, spacing), _surface_points_mm(ref_c, spacing)
    pred_to_ref = _directed_distances_mm(pred_pts, ref_pts)
    ref_to_pred = _directed_distances_mm(ref_pts, pred_pts)
    pooled = np.concatenate([pred_to_ref, ref_to_pred])
    return SegmentationMetrics(
        dice=2.0 * n_both / (n_pred + n_ref),
        iou=n_both / (n_pred + n_ref - n_both),
        hausdorff_mm=float(max(pred_to_ref.max(), ref_to_pred.max())),
        hausdorff95_mm=float(
            max(
                np.percentile(pred_to_ref, HD_PERCENTILE),
                np.percentile(ref_to_pred, HD_PERCENTILE),
            )
        ),
        assd_mm=float(pooled.mean()),
        surface_dice=float(np.count_nonzero(pooled <= tolerance_mm) / pooled.size),
        **volumes,
    )


def compute_label_metrics(
    prediction: Volume,
    reference: Volume,
    labels: Mapping[int, str],
    *,
    tolerance_mm: float,
) -> dict[str, SegmentationMetrics]:
    """:func:`compute_metrics` for every named label: ``{name: metrics}``.

    Args:
        prediction: predicted ``LABELS`` volume, array order ``(slice, row, column)``.
        reference: reference ``LABELS`` volume on the same grid.
        labels: label value -> structure name.
        tolerance_mm: surface Dice tolerance in mm, the same for every label.

    Raises:
        GeometryError, InputError, ConfigError: as :func:`compute_metrics`.
    """
    return {
        name: compute_metrics(prediction, reference, label=value, tolerance_mm=tolerance_mm)
        for value, name in labels.items()
    }
