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
many values were not finite instead of averaging them away (see :func:`evaluate_folder`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import cKDTree

from medseg import geometry as geo
from medseg.errors import ConfigError, InputError, MedsegError
from medseg.io import nifti
from medseg.io.files import atomic_path
from medseg.volume import Volume, VolumeKind, require_same_geometry

__all__ = [
    "HD_PERCENTILE",
    "METRIC_NAMES",
    "CaseFailure",
    "EvaluationSummary",
    "SegmentationMetrics",
    "compute_label_metrics",
    "compute_metrics",
    "dice_score",
    "evaluate_folder",
]

#: The percentile of the "robust" Hausdorff distance HD95.
HD_PERCENTILE = 95.0

#: Voxels of margin kept around the union bounding box before surfaces are extracted: one
#: voxel makes every object voxel on the box's face see background, so cropping never changes
#: the surface (MONAI's ``get_mask_edges`` crops the same way).
_CROP_MARGIN_VOXELS = 1

#: Suffixes :func:`evaluate_folder` reads (longest first so ``.nii.gz`` wins over ``.gz``).
_CASE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

_PER_CASE_CSV = "metrics_per_case.csv"
_SUMMARY_CSV = "metrics_summary.csv"
_SUMMARY_JSON = "metrics_summary.json"


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
        return _both_empty(tolerance_mm)
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


# ---------------------------------------------------------------------------------------------
# a folder of cases


@dataclass(frozen=True, slots=True)
class CaseFailure:
    """A case that could not be evaluated.

    Attributes:
        case: the case name (file name without its image suffix).
        reason: what went wrong, naming the file(s).
    """

    case: str
    reason: str


@dataclass(frozen=True, slots=True)
class EvaluationSummary:
    """What :func:`evaluate_folder` computed and wrote.

    Attributes:
        cases: names of the cases evaluated successfully, sorted.
        failures: cases missing on one side or unreadable / on different grids.
        labels: label value -> name, as evaluated.
        tolerance_mm: surface Dice tolerance, mm.
        statistics: ``{label name: {metric: {"n", "n_not_finite", "mean", "median", "q1",
            "q3", "iqr"}}}``; statistics are over the finite values (``None`` if there are
            none), ``n_not_finite`` counts cases with ``inf`` (an empty mask on one side).
        per_case_csv: the per-case table (one row per case and label).
        summary_csv: the summary table (one row per label and metric).
        summary_json: the same summary with failures, as JSON.
    """

    cases: tuple[str, ...]
    failures: tuple[CaseFailure, ...]
    labels: Mapping[int, str]
    tolerance_mm: float
    statistics: Mapping[str, Mapping[str, Mapping[str, float | int | None]]]
    per_case_csv: Path
    summary_csv: Path
    summary_json: Path

    @property
    def ok(self) -> bool:
        """True if every case was evaluated."""
        return not self.failures


def _case_files(folder: Path) -> dict[str, Path]:
    """Case name -> file for every NIfTI/NRRD/MetaImage file directly in ``folder``."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        lower = path.name.lower()
        suffix = next((s for s in _CASE_SUFFIXES if lower.endswith(s)), None)
        if suffix is None or not path.is_file():
            continue
        case = path.name[: -len(suffix)]
        if case in found:
            raise InputError(
                f"{folder}: case {case!r} has two files: {found[case].name}, {path.name}"
            )
        found[case] = path
    return found


def _present_labels(*volumes: Volume) -> dict[int, str]:
    values: set[int] = set()
    for volume in volumes:
        values.update(int(v) for v in np.unique(volume.array) if v != 0)
    return {v: f"label_{v}" for v in sorted(values)}


def _statistics(values: Sequence[float]) -> dict[str, float | int | None]:
    array = np.asarray(values, dtype=float)
    finite = array[np.isfinite(array)]
    stats: dict[str, float | int | None] = {
        "n": int(array.size),
        "n_not_finite": int(array.size - finite.size),
    }
    if finite.size == 0:
        return stats | dict.fromkeys(("mean", "median", "q1", "q3", "iqr"))
    q1, median, q3 = (float(q) for q in np.percentile(finite, [25.0, 50.0, 75.0]))
    return stats | {
        "mean": float(finite.mean()),
        "median": median,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
    }


def _json_number(value: Any) -> Any:
    """JSON has no ``inf``: write it as the string ``"inf"`` (and NaN as ``None``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_number(v) for v in value]
    return value


def evaluate_folder(
    pred_dir: Path,
    ref_dir: Path,
    out_dir: Path,
    *,
    labels: Mapping[int, str] | None,
    tolerance_mm: float,
) -> EvaluationSummary:
    """Compare every predicted label map in a folder with the reference of the same name.

    A case is a file ``NAME.nii.gz`` / ``.nii`` / ``.nrrd`` / ``.nhdr`` / ``.mha`` / ``.mhd``;
    ``NAME`` must match between the folders (the formats may differ). A case that is missing
    on one side, unreadable, or on another grid is recorded as a failure and the rest go on,
    so one bad scan never stops an evaluation.

    Args:
        pred_dir: folder of predicted label maps.
        ref_dir: folder of reference label maps.
        out_dir: created if missing; receives ``metrics_per_case.csv`` (one row per case and
            label), ``metrics_summary.csv`` (one row per label and metric) and
            ``metrics_summary.json``, each written atomically.
        labels: label value -> name; ``None`` evaluates every non-zero value found in any
            case, named ``label_<value>``.
        tolerance_mm: surface Dice tolerance in mm.

    Returns:
        The summary; ``summary.ok`` is False if any case failed.

    Raises:
        InputError: if a folder does not exist or holds two files for one case.
        ConfigError: on a negative tolerance or two labels sharing a name.
    """
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ConfigError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm}")
    if labels is not None and len(set(labels.values())) != len(labels):
        raise ConfigError(f"label names must be unique, got {dict(labels)}")
    pred_files, ref_files = _case_files(Path(pred_dir)), _case_files(Path(ref_dir))
    failures = [
        CaseFailure(case, f"no prediction in {pred_dir}")
        for case in sorted(set(ref_files) - set(pred_files))
    ] + [
        CaseFailure(case, f"no reference in {ref_dir}")
        for case in sorted(set(pred_files) - set(ref_files))
    ]
    results: dict[str, dict[int, SegmentationMetrics]] = {}
    found_labels: dict[int, str] = {}
    for case in sorted(set(pred_files) & set(ref_files)):
        try:
            prediction = nifti.load(pred_files[case], VolumeKind.LABELS)
            reference = nifti.load(ref_files[case], VolumeKind.LABELS)
            case_labels = labels if labels is not None else _present_labels(prediction, reference)
            found_labels.update(case_labels)
            results[case] = {
                value: compute_metrics(
                    prediction, reference, label=value, tolerance_mm=tolerance_mm
                )
                for value in case_labels
            }
        except MedsegError as exc:  # one bad case is recorded, the others are still evaluated
            failures.append(CaseFailure(case, str(exc)))
    names = dict(labels) if labels is not None else dict(sorted(found_labels.items()))
    if labels is None:
        # a label absent from a whole case is "both empty" there, which compute_metrics defines
        for case, per_label in results.items():
            for value in names:
                if value not in per_label:
                    per_label[value] = _both_empty(tolerance_mm)
    statistics = {
        name: {
            metric: _statistics([getattr(results[c][value], metric) for c in sorted(results)])
            for metric in METRIC_NAMES
        }
        for value, name in names.items()
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_case_csv, summary_csv, summary_json = (
        out / _PER_CASE_CSV,
        out / _SUMMARY_CSV,
        out / _SUMMARY_JSON,
    )
    with atomic_path(per_case_csv) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "label", "name", *METRIC_NAMES, "tolerance_mm"])
        for case in sorted(results):
            for value, name in names.items():
                m = results[case][value]
                writer.writerow(
                    [case, value, name, *(repr(getattr(m, k)) for k in METRIC_NAMES), tolerance_mm]
                )
    stat_keys = ("n", "n_not_finite", "mean", "median", "q1", "q3", "iqr")
    with atomic_path(summary_csv) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "metric", *stat_keys])
        for name, per_metric in statistics.items():
            for metric, stats in per_metric.items():
                writer.writerow(
                    [name, metric, *("" if stats[k] is None else stats[k] for k in stat_keys)]
                )
    document = {
        "tolerance_mm": tolerance_mm,
        "labels": {str(v): n for v, n in names.items()},
        "cases": sorted(results),
        "failures": [{"case": f.case, "reason": f.reason} for f in failures],
        "statistics": statistics,
        "note": "statistics are over finite values; n_not_finite counts cases with an empty mask "
        "on one side (distances inf)",
    }
    with atomic_path(summary_json) as tmp:
        tmp.write_text(json.dumps(_json_number(document), indent=2), encoding="utf-8")
    return EvaluationSummary(
        cases=tuple(sorted(results)),
        failures=tuple(failures),
        labels=names,
        tolerance_mm=float(tolerance_mm),
        statistics=statistics,
        per_case_csv=per_case_csv,
        summary_csv=summary_csv,
        summary_json=summary_json,
    )


def _both_empty(tolerance_mm: float) -> SegmentationMetrics:
    """The metrics of a structure absent from both prediction and reference."""
    return SegmentationMetrics(
        dice=1.0, iou=1.0, hausdorff_mm=0.0, hausdorff95_mm=0.0, assd_mm=0.0, surface_dice=1.0,
        tolerance_mm=float(tolerance_mm), volume_prediction_ml=0.0, volume_reference_ml=0.0,
        absolute_volume_error_ml=0.0, relative_volume_error=0.0,
    )  # fmt: skip
