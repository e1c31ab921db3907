"""Tests of medseg.metrics against independent implementations and analytic shapes.

References: DeepMind's ``surface-distance`` (PyPI ``surface-distance`` 0.1), whose definitions
medseg's HD, HD95, ASSD and surface Dice follow (surfels with areas on the voxel-corner mesh),
and MONAI: ``DiceMetric`` and ``SurfaceDiceMetric(use_subvoxels=True)``, which agree with
those definitions (MONAI's Hausdorff and surface-distance metrics count voxels instead and are
used only to show that difference). Agreement required with ``surface-distance``: 1e-6 (the
issue asks 1e-3; the implementations agree to 1e-14) on every radiographer-vs-oncologist organ
pair of ``hn-oar-labels`` (7 scans, 145 non-empty pairs); with MONAI: 1e-6 for Dice and 1e-5
for its float32 surface Dice.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import ConfigError, GeometryError, InputError
from medseg.evaluation import COLUMN_NAMES, evaluate_folder
from medseg.geometry import Geometry
from medseg.io import nifti
from medseg.metrics import (
    SegmentationMetrics,
    compute_label_metrics,
    compute_metrics,
)
from medseg.volume import SourceInfo, Volume, VolumeKind
from tests.conftest import require_module
from tests.referees.hn_pairs import inter_observer_pairs

#: Surface Dice tolerances for the real organs (mm): the common 2 mm, and one that is not a
#: multiple of these grids' voxel steps.
_TAUS_MM = (2.0, 3.3)

#: The 7 validation scans of the DeepMind H&N dataset, each contoured by both annotators.
_ALL_SCANS = (
    "0522c0014", "0522c0519", "0522c0576", "0522c0727a", "0522c0727b", "TCGA-CV-5977",
    "TCGA-CV-5978",
)  # fmt: skip
#: Two scans with different pixel sizes (1.01 and 0.977 mm), both with 2.5 mm slices, for
#: the slower MONAI referee.
_MONAI_SCANS = ("0522c0014", "TCGA-CV-5977")


def _labels(array: np.ndarray, spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Volume:
    g = Geometry(shape=array.shape, spacing_mm=spacing_mm, origin_mm=(0.0, 0.0, 0.0))  # type: ignore[arg-type]
    return Volume(array.astype(np.uint8), g, VolumeKind.LABELS)


def _crop_union(a: np.ndarray, b: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their union's bounding box + margin, so the references run fast."""
    where = np.argwhere(a | b)
    lo = np.maximum(where.min(axis=0) - margin, 0)
    hi = np.minimum(where.max(axis=0) + 1 + margin, a.shape)
    window = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi, strict=True))
    return a[window], b[window]


def _deepmind_at(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], taus: tuple[float, ...]
) -> dict[float, dict[str, float]]:
    """surface-distance's HD, HD95, ASSD and surface Dice at each tolerance (the distances are
    computed once)."""
    surface_distance = require_module("surface_distance")
    with warnings.catch_warnings():  # it uses scipy's deprecated ndimage.filters namespace
        warnings.simplefilter("ignore", DeprecationWarning)
        d = surface_distance.compute_surface_distances(ref, pred, spacing)
    ref_to_pred, pred_to_ref = surface_distance.compute_average_surface_distance(d)
    distances = {
        "hausdorff_mm": float(surface_distance.compute_robust_hausdorff(d, 100)),
        "hausdorff95_mm": float(surface_distance.compute_robust_hausdorff(d, 95)),
        "assd_mm": float((ref_to_pred + pred_to_ref) / 2),
    }
    return {
        tau: distances
        | {"surface_dice": float(surface_distance.compute_surface_dice_at_tolerance(d, tau))}
        for tau in taus
    }


def _deepmind(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], tau: float
) -> dict[str, float]:
    return _deepmind_at(pred, ref, spacing, (tau,))[tau]


def _monai(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], tau: float
) -> dict[str, float]:
    torch = require_module("torch")
    monai_metrics = require_module("monai.metrics")

    def one_hot(mask: np.ndarray) -> object:
        m = torch.from_numpy(mask.astype(np.float32))[None, None]
        return torch.cat([1 - m, m], dim=1)

    p, r = one_hot(pred), one_hot(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": float(monai_metrics.DiceMetric(include_background=False)(p, r).item()),
            "hausdorff_mm": float(
                monai_metrics.HausdorffDistanceMetric(include_background=False)(
                    p, r, spacing=spacing
                ).item()
            ),
            "hausdorff95_mm": float(
                monai_metrics.HausdorffDistanceMetric(include_background=False, percentile=95)(
                    p, r, spacing=spacing
                ).item()
            ),
            "assd_mm": float(
                monai_metrics.SurfaceDistanceMetric(include_background=False, symmetric=True)(
                    p, r, spacing=spacing
                ).item()
            ),
            "surface_dice": float(
                monai_metrics.SurfaceDiceMetric(
                    [tau], include_background=False, use_subvoxels=True
                )(p, r, spacing=spacing).item()
            ),
        }


# ---------------------------------------------------------------------------------------------
# real inter-observer pairs


def _pair(scan: str, organ: str) -> tuple[Volume, Volume]:
    """(radiographer, oncologist) masks of one organ on one scan, as 0/1 label volumes cropped
    around the two (:mod:`tests.referees.hn_pairs`, read once per test process)."""
    pair = next(p for p in inter_observer_pairs(scan) if p.organ == organ)
    assert pair.reference.geometry.spacing_mm[0] == pytest.approx(2.5)
    return pair.prediction, pair.reference


@pytest.mark.parametrize("scan", _ALL_SCANS)
def test_every_inter_observer_pair_equals_surface_distance(scan: str) -> None:
    """All 21 organs of the scan, radiographer as prediction, oncologist as reference."""
    organs = 0
    for pair in inter_observer_pairs(scan):
        pred, ref = pair.prediction, pair.reference
        if not pair.both_present:
            # an organ absent from a scan (e.g. a resected gland): the reference has no value
            both_empty = not (ref.array.any() or pred.array.any())
            m = compute_metrics(pred, ref, tolerance_mm=2.0)
            assert m.dice == (1.0 if both_empty else 0.0)
            assert m.hausdorff95_mm == (0.0 if both_empty else math.inf)
            continue
        organs += 1
        deepmind = _deepmind_at(
            pred.array.astype(bool), ref.array.astype(bool), ref.geometry.spacing_mm, _TAUS_MM
        )
        for tau in _TAUS_MM:
            ours = compute_metrics(pred, ref, tolerance_mm=tau)
            for name, value in deepmind[tau].items():
                assert abs(getattr(ours, name) - value) <= 1e-6, (pair.organ, tau, name)
    assert organs >= 15


@pytest.mark.parametrize("scan", _MONAI_SCANS)
def test_dice_and_surface_dice_equal_monai(scan: str) -> None:
    for pair in inter_observer_pairs(scan):
        pred, ref, organ = pair.prediction, pair.reference, pair.organ
        if not pair.both_present:
            continue
        ours = compute_metrics(pred, ref, tolerance_mm=2.0)
        p, r = _crop_union(pred.array.astype(bool), ref.array.astype(bool))
        monai = _monai(p, r, ref.geometry.spacing_mm, 2.0)
        assert abs(ours.dice - monai["dice"]) < 1e-6, organ
        assert abs(ours.surface_dice - monai["surface_dice"]) < 1e-5, organ


# ---------------------------------------------------------------------------------------------
# analytic shapes


def _sphere(
    shape: tuple[int, int, int], spacing_mm: tuple[float, float, float], radius_mm: float
) -> np.ndarray:
    idx = np.indices(shape, dtype=float).transpose(1, 2, 3, 0)
    centre = (np.asarray(shape) - 1) / 2
    return np.linalg.norm((idx - centre) * np.asarray(spacing_mm), axis=-1) <= radius_mm


@pytest.mark.parametrize(
    ("spacing_mm", "radii_mm"),
    [
        ((1.0, 1.0, 1.0), (10.0, 14.0)),
        ((2.5, 0.8, 0.8), (12.0, 17.0)),
        ((1.5, 1.0, 0.7), (8.0, 9.5)),
    ],
    ids=["isotropic", "ct-like-anisotropic", "thin-shell"],
)
def test_concentric_spheres_have_the_radius_difference_as_distances(
    spacing_mm: tuple[float, float, float], radii_mm: tuple[float, float]
) -> None:
    inner_mm, outer_mm = radii_mm
    shape = tuple(int(2 * outer_mm / s) + 7 for s in spacing_mm)
    pred = _labels(_sphere(shape, spacing_mm, outer_mm), spacing_mm)  # type: ignore[arg-type]
    ref = _labels(_sphere(shape, spacing_mm, inner_mm), spacing_mm)  # type: ignore[arg-type]
    gap_mm = outer_mm - inner_mm
    diagonal_mm = math.dist(spacing_mm, (0.0, 0.0, 0.0))
    m = compute_metrics(pred, ref, tolerance_mm=gap_mm + diagonal_mm)
    for value in (m.hausdorff_mm, m.hausdorff95_mm, m.assd_mm):
        assert abs(value - gap_mm) <= diagonal_mm
    assert m.surface_dice == 1.0
    assert (
        compute_metrics(pred, ref, tolerance_mm=max(gap_mm - diagonal_mm, 0.0) / 2).surface_dice
        < 0.5
    )
    # inner sphere inside the outer: Dice = 2 V_in / (V_in + V_out), up to voxelisation
    assert m.dice == pytest.approx(2 * inner_mm**3 / (inner_mm**3 + outer_mm**3), abs=0.03)
    assert m.iou == pytest.approx(m.dice / (2 - m.dice), rel=1e-12)
    analytic_in_ml, analytic_out_ml = (4 / 3 * math.pi * r**3 / 1000 for r in (inner_mm, outer_mm))
    assert m.volume_reference_ml == pytest.approx(analytic_in_ml, rel=0.03)
    assert m.relative_volume_error == pytest.approx(
        (m.volume_prediction_ml - m.volume_reference_ml) / m.volume_reference_ml, rel=1e-12
    )
    assert m.relative_volume_error == pytest.approx(analytic_out_ml / analytic_in_ml - 1, abs=0.06)
    # and the references agree on the same arrays
    p, r = pred.array.astype(bool), ref.array.astype(bool)
    monai = _monai(p, r, spacing_mm, 0.5)
    deepmind = _deepmind(p, r, spacing_mm, 0.5)
    assert abs(m.dice - monai["dice"]) < 1e-6
    half = compute_metrics(pred, ref, tolerance_mm=0.5)
    for name, value in deepmind.items():
        assert abs(getattr(half, name) - value) <= 1e-6, name


@pytest.mark.parametrize(
    ("axis", "spacing_mm", "expected_mm"),
    [(0, (2.5, 0.8, 0.9), 2.5), (1, (2.5, 0.8, 0.9), 0.8), (2, (2.5, 0.8, 0.9), 0.9)],
    ids=["slice-shift-2.5mm", "row-shift-0.8mm", "column-shift-0.9mm"],
)
def test_one_voxel_shift_is_one_spacing(
    axis: int, spacing_mm: tuple[float, float, float], expected_mm: float
) -> None:
    array = np.zeros((12, 12, 12), dtype=np.uint8)
    array[3:8, 3:8, 3:8] = 1
    shifted = np.roll(array, 1, axis=axis)
    m = compute_metrics(_labels(shifted, spacing_mm), _labels(array, spacing_mm), tolerance_mm=0.1)
    assert m.hausdorff_mm == pytest.approx(expected_mm)
    assert m.dice == pytest.approx(2 * 100 / 250)
    assert m.absolute_volume_error_ml == 0.0


# ---------------------------------------------------------------------------------------------
# empty masks and refusals


@pytest.mark.parametrize(
    ("pred_full", "ref_full", "expected"),
    [
        (False, False, {"dice": 1.0, "iou": 1.0, "hausdorff_mm": 0.0, "hausdorff95_mm": 0.0,
                        "assd_mm": 0.0, "surface_dice": 1.0, "relative_volume_error": 0.0}),
        (True, False, {"dice": 0.0, "iou": 0.0, "hausdorff_mm": math.inf, "hausdorff95_mm": math.inf,
                       "assd_mm": math.inf, "surface_dice": 0.0, "relative_volume_error": math.inf}),
        (False, True, {"dice": 0.0, "iou": 0.0, "hausdorff_mm": math.inf, "hausdorff95_mm": math.inf,
                       "assd_mm": math.inf, "surface_dice": 0.0, "relative_volume_error": -1.0}),
    ],
    ids=["both-empty", "reference-empty", "prediction-empty"],
)  # fmt: skip
def test_empty_masks_have_documented_values(
    pred_full: bool, ref_full: bool, expected: dict[str, float]
) -> None:
    def volume(full: bool) -> Volume:
        array = np.zeros((4, 5, 6), dtype=np.uint8)
        if full:
            array[1:3, 1:3, 1:3] = 1
        return _labels(array, (2.0, 1.0, 1.0))

    m = compute_metrics(volume(pred_full), volume(ref_full), tolerance_mm=1.0)
    assert {k: getattr(m, k) for k in expected} == expected
    assert m.absolute_volume_error_ml == pytest.approx(8 * 2e-3 if pred_full != ref_full else 0.0)


def test_different_grids_are_refused() -> None:
    a = _labels(np.ones((3, 3, 3), dtype=np.uint8), (1.0, 1.0, 1.0))
    b = _labels(np.ones((3, 3, 3), dtype=np.uint8), (2.5, 1.0, 1.0))
    with pytest.raises(GeometryError, match="different geometry"):
        compute_metrics(a, b, tolerance_mm=1.0)


def test_different_frames_of_reference_are_refused() -> None:
    a = _labels(np.ones((3, 3, 3), dtype=np.uint8))
    b = Volume(a.array, a.geometry, VolumeKind.LABELS, SourceInfo(frame_of_reference_uid="1.2.3"))
    c = Volume(a.array, a.geometry, VolumeKind.LABELS, SourceInfo(frame_of_reference_uid="1.2.4"))
    with pytest.raises(GeometryError, match="frames of reference"):
        compute_metrics(b, c, tolerance_mm=1.0)


def test_image_volume_and_bad_tolerance_are_refused() -> None:
    labels = _labels(np.ones((3, 3, 3), dtype=np.uint8))
    image = Volume(np.ones((3, 3, 3), dtype=np.int16), labels.geometry, VolumeKind.IMAGE)
    with pytest.raises(InputError, match="labels volume"):
        compute_metrics(image, labels, tolerance_mm=1.0)
    with pytest.raises(ConfigError, match="tolerance_mm"):
        compute_metrics(labels, labels, tolerance_mm=-1.0)


def test_label_metrics_per_name() -> None:
    array = np.zeros((6, 6, 6), dtype=np.uint8)
    array[0:2, 0:2, 0:2] = 1
    array[3:6, 3:6, 3:6] = 2
    per_label = compute_label_metrics(
        _labels(array), _labels(array), {1: "a", 2: "b", 3: "absent"}, tolerance_mm=1
    )
    assert set(per_label) == {"a", "b", "absent"}
    assert all(isinstance(m, SegmentationMetrics) and m.dice == 1.0 for m in per_label.values())


# ---------------------------------------------------------------------------------------------
# evaluate_folder


def _write_case(
    folder: Path, name: str, array: np.ndarray, spacing_mm: tuple[float, float, float]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    nifti.save(_labels(array, spacing_mm), folder / name)


def test_evaluate_folder_writes_per_case_and_summary(tmp_path: Path) -> None:
    spacing = (2.5, 1.0, 1.0)
    base = np.zeros((10, 20, 20), dtype=np.uint8)
    base[2:6, 5:15, 5:15] = 1
    base[7:9, 2:4, 2:4] = 2
    pred_dir, ref_dir, out_dir = tmp_path / "pred", tmp_path / "ref", tmp_path / "out"
    for i, shift in enumerate((0, 1, 2)):
        pred = np.roll(base, shift, axis=2)
        if i == 2:
            pred[pred == 2] = 0  # the node is missed: its distances are inf
        _write_case(ref_dir, f"case{i}.nii.gz", base, spacing)
        _write_case(pred_dir, f"case{i}.nrrd", pred, spacing)
    _write_case(ref_dir, "only-ref.nii.gz", base, spacing)
    _write_case(pred_dir, "wrong-grid.nii.gz", base, (3.0, 1.0, 1.0))
    _write_case(ref_dir, "wrong-grid.nii.gz", base, spacing)

    summary = evaluate_folder(
        pred_dir, ref_dir, out_dir, labels={1: "GTV", 2: "node"}, tolerance_mm=0.5
    )

    assert summary.cases == ("case0", "case1", "case2")
    assert not summary.ok
    reasons = {f.case: f.reason for f in summary.failures}
    assert set(reasons) == {"only-ref", "wrong-grid"}
    assert "no prediction" in reasons["only-ref"] and "different geometry" in reasons["wrong-grid"]
    with summary.per_case_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    dice_gtv = [float(r["dice"]) for r in rows if r["name"] == "GTV"]
    expected = [1.0, 2 * 360 / 800, 2 * 320 / 800]  # 400-voxel box shifted by 0, 1, 2 columns
    assert dice_gtv == pytest.approx(expected)
    stats = summary.statistics["GTV"]["dice"]
    assert stats["median"] == pytest.approx(np.median(expected))
    assert stats["iqr"] == pytest.approx(np.subtract(*np.percentile(expected, [75, 25])))
    node_hd = summary.statistics["node"]["hausdorff_mm"]
    assert node_hd["n"] == 3 and node_hd["n_not_finite"] == 1
    assert node_hd["median"] == pytest.approx(0.5)  # finite values 0 and 1 mm
    document = json.loads(summary.summary_json.read_text())
    assert document["cases"] == ["case0", "case1", "case2"]
    with summary.summary_csv.open(newline="") as fh:
        summary_rows = list(csv.DictReader(fh))
    assert len(summary_rows) == 2 * len(COLUMN_NAMES)


def test_hd95_weights_the_surface_by_area_not_by_voxel_count() -> None:
    """A known, explained difference: the radiographer's cord runs 13 slices (32 mm) further.

    About 7 % of the predicted surface is then 0-33 mm from the reference, so the 95th
    percentile falls on a steep ramp. surface-distance and medseg weight corner surfels by area
    (HD95 16.0 mm); MONAI's ``HausdorffDistanceMetric`` counts surface voxels (22.6 mm), which
    moves the quantile along the ramp by more than a voxel diagonal (medseg did so before
    issue 21). HD still agrees within one diagonal.
    """
    pred, ref = _pair("0522c0727b", "Spinal-Cord")
    ours = compute_metrics(pred, ref, tolerance_mm=2.0)
    spacing = ref.geometry.spacing_mm
    diagonal_mm = math.dist(spacing, (0.0, 0.0, 0.0))
    p, r = _crop_union(pred.array > 0, ref.array > 0)
    monai = _monai(p, r, spacing, 2.0)
    deepmind = _deepmind(p, r, spacing, 2.0)
    assert abs(ours.hausdorff95_mm - deepmind["hausdorff95_mm"]) < 1e-6
    assert abs(ours.hausdorff_mm - monai["hausdorff_mm"]) <= diagonal_mm
    assert 1 < abs(ours.hausdorff95_mm - monai["hausdorff95_mm"]) / diagonal_mm < 3


def test_dice_score_matches_compute_metrics_and_handles_empty_masks() -> None:
    from medseg.metrics import dice_score

    a = np.zeros((6, 8, 8), np.uint8)
    b = np.zeros((6, 8, 8), np.uint8)
    a[1:4, 2:6, 2:6] = 1
    b[2:5, 2:6, 3:7] = 1
    pred, ref = _labels(a, (2.5, 0.8, 0.8)), _labels(b, (2.5, 0.8, 0.8))
    full = compute_metrics(pred, ref, label=1, tolerance_mm=1.0)
    assert dice_score(pred, ref, 1) == pytest.approx(full.dice, abs=1e-12)
    empty = _labels(np.zeros((6, 8, 8), np.uint8), (2.5, 0.8, 0.8))
    assert dice_score(empty, empty, 1) == 1.0
    assert dice_score(pred, empty, 1) == 0.0
    with pytest.raises(GeometryError):
        dice_score(pred, _labels(b, (2.0, 0.8, 0.8)), 1)


# ---------------------------------------------------------------------------------------------
# evaluate_folder --spacing-from

#: The true grid of the references; the predictions were saved with unit spacing at 0.
_TRUE_GRID = Geometry((8, 12, 14), (2.5, 0.9, 0.8), (10.0, -5.0, 3.0))


def _box(shift_columns: int = 0) -> np.ndarray:
    array = np.zeros(_TRUE_GRID.shape, dtype=np.uint8)
    array[2:6, 3:9, 4 + shift_columns : 10 + shift_columns] = 1
    return array


def _spacing_from_folders(tmp_path: Path) -> tuple[Path, Path]:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    for case in ("a", "b"):
        _write_case(pred_dir, f"{case}.nii.gz", _box(1), (1.0, 1.0, 1.0))  # wrong spacing
        ref_dir.mkdir(exist_ok=True)
        nifti.save(Volume(_box(), _TRUE_GRID, VolumeKind.LABELS), ref_dir / f"{case}.nrrd")
    return pred_dir, ref_dir


def test_spacing_from_gives_predictions_the_true_grid(tmp_path: Path) -> None:
    pred_dir, ref_dir = _spacing_from_folders(tmp_path)
    without = evaluate_folder(pred_dir, ref_dir, tmp_path / "o1", labels={1: "GTV"}, tolerance_mm=1)
    assert without.cases == () and all("different geometry" in f.reason for f in without.failures)

    for source in (ref_dir, ref_dir / "a.nrrd"):  # a folder of cases, or one image for all
        summary = evaluate_folder(
            pred_dir, ref_dir, tmp_path / "o2", labels={1: "GTV"}, tolerance_mm=1.0,
            spacing_from=source,
        )  # fmt: skip
        assert summary.ok and summary.cases == ("a", "b")
        # a 4 x 6 x 6 box shifted by one column: 5 of 6 columns overlap; every distance is
        # one column of the *true* spacing (0.8 mm), and volumes use the true voxel volume
        stats = summary.statistics["GTV"]
        assert stats["dice"]["median"] == pytest.approx(5 / 6)
        assert stats["hausdorff_mm"]["median"] == pytest.approx(0.8)
        assert stats["volume_reference_ml"]["median"] == pytest.approx(144 * 2.5 * 0.9 * 0.8 / 1000)
        assert json.loads(summary.summary_json.read_text())["spacing_from"] == str(source)


def test_spacing_from_refuses_other_shapes_and_missing_cases(tmp_path: Path) -> None:
    pred_dir, ref_dir = _spacing_from_folders(tmp_path)
    grids = tmp_path / "grids"
    grids.mkdir()
    other = Geometry((8, 12, 15), _TRUE_GRID.spacing_mm, _TRUE_GRID.origin_mm)  # one more column
    nifti.save(Volume(np.zeros(other.shape, np.int16), other), grids / "a.nii.gz")

    summary = evaluate_folder(
        pred_dir, ref_dir, tmp_path / "out", labels={1: "GTV"}, tolerance_mm=1.0,
        spacing_from=grids,
    )  # fmt: skip

    reasons = {f.case: f.reason for f in summary.failures}
    assert "shapes must be equal" in reasons["a"] and "(8, 12, 15)" in reasons["a"]
    assert "no image for case 'b'" in reasons["b"]
    with pytest.raises(InputError, match="neither an image file nor a folder"):
        evaluate_folder(
            pred_dir, ref_dir, tmp_path / "out", labels=None, tolerance_mm=1.0,
            spacing_from=tmp_path / "nothing-here",
        )  # fmt: skip


def test_evaluate_command_takes_spacing_from(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medseg.cli import app

    pred_dir, ref_dir = _spacing_from_folders(tmp_path)
    args = ["evaluate", str(pred_dir), str(ref_dir), "--out", str(tmp_path / "out")]
    assert CliRunner().invoke(app, args).exit_code == 1  # wrong spacing: every case fails
    result = CliRunner().invoke(app, [*args, "--spacing-from", str(ref_dir)])
    assert result.exit_code == 0, result.output
    assert "2 cases evaluated, 0 failed" in result.output
    with (tmp_path / "out" / "metrics_per_case.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["hausdorff_mm"]) for r in rows] == pytest.approx([0.8, 0.8])


# ---------------------------------------------------------------------------------------------
# editing effort (added path length), against hand-computed contour lengths


def _square_case(
    spacing_mm: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Reference: a 10 x 10 pixel square on slice 1; prediction: its left half (5 columns)."""
    ref = np.zeros((3, 16, 16), np.uint8)
    ref[1, 3:13, 3:13] = 1
    pred = np.zeros_like(ref)
    pred[1, 3:13, 3:8] = 1
    return pred, ref


@pytest.mark.parametrize("spacing_mm", [(2.0, 1.0, 1.0), (2.0, 0.8, 1.2)], ids=["square", "aniso"])
def test_added_path_length_is_the_reference_contour_left_to_draw(
    spacing_mm: tuple[float, float, float],
) -> None:
    """By hand: a contour piece of ``surface-distance``'s 2-D mesh is a pixel edge (row step
    ``a`` or column step ``b`` mm) or, at a convex corner, a diagonal cut of half the pixel
    diagonal ``d``. A 10 x 10 square has 4 x 9 edge pieces per side pair and 4 corners:
    ``18 a + 18 b + 4 d``. Its right half is missing from the prediction: the top and bottom
    edges right of the prediction's border (4 + 4 column steps), the right side (9 row
    steps) and its 2 corners had to be drawn: ``8 b + 9 a + 2 d``."""
    from medseg.metrics import editing_effort

    a, b = spacing_mm[1], spacing_mm[2]
    d = 0.5 * math.hypot(a, b)
    pred, ref = _square_case(spacing_mm)
    half = editing_effort(_labels(pred, spacing_mm), _labels(ref, spacing_mm), tolerance_mm=0.5)
    assert half.added_path_length_mm == pytest.approx(8 * b + 9 * a + 2 * d, abs=1e-9)
    assert dict(half.per_slice_mm) == {1: pytest.approx(half.added_path_length_mm)}
    assert (half.slices_with_structure, half.slices_without_edit) == (1, 0)
    nothing = editing_effort(
        _labels(np.zeros_like(ref), spacing_mm), _labels(ref, spacing_mm), tolerance_mm=0.5
    )
    assert nothing.added_path_length_mm == pytest.approx(18 * a + 18 * b + 4 * d, abs=1e-9)
    same = editing_effort(_labels(ref, spacing_mm), _labels(ref, spacing_mm), tolerance_mm=0.0)
    assert same.added_path_length_mm == 0.0 and same.fraction_without_edit == 1.0


def test_editing_tolerance_and_slices_to_delete() -> None:
    """A one-column shift is no edit within one pixel and a full side beyond it; a predicted
    contour on a slice without reference adds no path but that slice needs an edit."""
    from medseg.metrics import editing_effort

    spacing = (2.5, 1.0, 1.0)
    ref = np.zeros((4, 16, 16), np.uint8)
    ref[1:3, 3:13, 3:13] = 1
    shifted = np.roll(ref, 1, axis=2)
    within = editing_effort(_labels(shifted, spacing), _labels(ref, spacing), tolerance_mm=1.0)
    assert within.added_path_length_mm == 0.0
    assert (within.slices_with_structure, within.slices_without_edit) == (2, 2)
    beyond = editing_effort(_labels(shifted, spacing), _labels(ref, spacing), tolerance_mm=0.5)
    # per slice the left side (9 row steps and its 2 corner cuts) is 1 mm from the shifted
    # square's, and the right side (9 row steps) lies 1 mm inside it; the right corners lie on
    # the shifted top and bottom edges
    assert beyond.added_path_length_mm == pytest.approx(2 * (9 + 9 + 2 * 0.5 * math.sqrt(2)))
    assert beyond.slices_without_edit == 0
    extra = ref.copy()
    extra[3, 5:8, 5:8] = 1
    spill = editing_effort(_labels(extra, spacing), _labels(ref, spacing), tolerance_mm=0.0)
    assert spill.added_path_length_mm == 0.0
    assert (spill.slices_with_structure, spill.slices_without_edit) == (3, 2)
    assert spill.fraction_without_edit == pytest.approx(2 / 3)
