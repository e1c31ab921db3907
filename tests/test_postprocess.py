"""Tests of medseg.postprocess: volumes, lesions and the volumes report."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medseg import geometry as geo
from medseg import postprocess
from medseg.config import LabelPostprocessConfig, PostprocessConfig, load_config, parse_config
from medseg.errors import ConfigError, InputError
from medseg.geometry import Geometry
from medseg.postprocess import (
    Lesion,
    StructureVolume,
    VolumesReport,
    apply_postprocess,
    find_lesions,
    label_volumes_ml,
    volumes_report,
)
from medseg.report import LESION_CSV_COLUMNS, write_lesions_csv, write_volumes_json
from medseg.synthetic import phantom
from medseg.volume import SourceInfo, Volume, VolumeKind
from tests.conftest import require_data

# An oblique, anisotropic grid: 20 degrees about an axis that mixes all three patient axes.
_AXIS = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])


def _rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rodrigues' rotation matrix."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(angle_deg)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)


_OBLIQUE = tuple((_rotation(_AXIS, 20.0) @ np.asarray(geo.AXIAL_DIRECTION).reshape(3, 3)).ravel())


def _labels(array: np.ndarray, geometry: Geometry | None = None, **geometry_args: object) -> Volume:
    if geometry is None:
        geometry = Geometry(
            shape=array.shape,  # type: ignore[arg-type]
            spacing_mm=geometry_args.get("spacing_mm", (1.0, 1.0, 1.0)),  # type: ignore[arg-type]
            origin_mm=geometry_args.get("origin_mm", (0.0, 0.0, 0.0)),  # type: ignore[arg-type]
            direction=geometry_args.get("direction", geo.AXIAL_DIRECTION),  # type: ignore[arg-type]
        )
    return Volume(array, geometry, VolumeKind.LABELS)


# ---------------------------------------------------------------------------------------------
# label_volumes_ml


@pytest.mark.parametrize(
    "spacing_mm",
    [(1.0, 1.0, 1.0), (3.0, 0.7, 1.2), (0.5, 2.0, 0.25)],
    ids=["isotropic", "thick-slices", "thin-slices"],
)
def test_box_volumes_are_voxel_count_times_voxel_volume(spacing_mm: tuple[float, ...]) -> None:
    array = np.zeros((10, 20, 30), dtype=np.uint8)
    array[1:5, 2:12, 3:8] = 1  # 4 x 10 x 5 = 200 voxels
    array[6:9, 15:18, 20:30] = 2  # 3 x 3 x 10 = 90 voxels
    volumes = label_volumes_ml(
        _labels(array, spacing_mm=spacing_mm), {1: "GTV", 2: "node", 3: "absent"}
    )
    voxel_mm3 = spacing_mm[0] * spacing_mm[1] * spacing_mm[2]
    assert volumes == {
        "GTV": pytest.approx(200 * voxel_mm3 / 1000, rel=1e-12),
        "node": pytest.approx(90 * voxel_mm3 / 1000, rel=1e-12),
        "absent": 0.0,
    }


@pytest.mark.parametrize(
    ("spacing_mm", "semi_axes_mm"),
    [
        ((2.5, 0.8, 0.8), (20.0, 15.0, 25.0)),
        ((1.0, 1.5, 0.6), (12.0, 18.0, 9.0)),
        ((3.0, 3.0, 3.0), (30.0, 30.0, 30.0)),
    ],
    ids=["ct-like", "mixed", "coarse-sphere"],
)
def test_ellipsoid_volume_close_to_analytic(
    spacing_mm: tuple[float, float, float], semi_axes_mm: tuple[float, float, float]
) -> None:
    shape = tuple(int(2 * a / s) + 5 for a, s in zip(semi_axes_mm, spacing_mm, strict=True))
    g = Geometry(shape=shape, spacing_mm=spacing_mm, origin_mm=(0.0, 0.0, 0.0))  # type: ignore[arg-type]
    idx = np.indices(shape, dtype=float).transpose(1, 2, 3, 0)
    centre = (np.asarray(shape) - 1) / 2 * np.asarray(spacing_mm)
    rel = idx * np.asarray(spacing_mm) - centre
    inside = ((rel / np.asarray(semi_axes_mm)) ** 2).sum(axis=-1) <= 1.0
    analytic_ml = 4 / 3 * math.pi * np.prod(semi_axes_mm) / 1000
    volumes = label_volumes_ml(_labels(inside.astype(np.uint8), g), {1: "ellipsoid"})
    assert volumes["ellipsoid"] == pytest.approx(analytic_ml, rel=0.02)


def test_bool_mask_is_accepted() -> None:
    array = np.zeros((3, 4, 5), dtype=bool)
    array[1, 1:3, 1:4] = True
    volumes = label_volumes_ml(_labels(array, spacing_mm=(2.0, 1.0, 0.5)), {1: "mask", 0: "bg"})
    assert volumes == {"mask": pytest.approx(6 * 1e-3), "bg": pytest.approx(54 * 1e-3)}


# ---------------------------------------------------------------------------------------------
# find_lesions


def test_two_separated_blobs_are_two_lesions_largest_first() -> None:
    array = np.zeros((12, 12, 12), dtype=np.uint8)
    array[1:3, 1:3, 1:3] = 1  # 8 voxels
    array[6:10, 6:10, 6:10] = 1  # 64 voxels
    array[0, 11, 11] = 2  # another label is ignored
    g = Geometry(shape=(12, 12, 12), spacing_mm=(2.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0))
    lesions = find_lesions(_labels(array, g), 1)
    assert [(les.id, les.label, les.voxel_count) for les in lesions] == [(1, 1, 64), (2, 1, 8)]
    assert lesions[0].volume_ml == pytest.approx(64 * 2e-3)
    assert lesions[1].volume_ml == pytest.approx(8 * 2e-3)


def test_absent_label_gives_no_lesions() -> None:
    assert find_lesions(_labels(np.zeros((2, 3, 4), dtype=np.uint8)), 1) == []


@pytest.mark.parametrize(
    ("second_voxel", "connectivity", "n_expected"),
    [
        ((1, 1, 1), 26, 1),
        ((1, 1, 1), 18, 2),
        ((1, 1, 1), 6, 2),
        ((0, 1, 1), 26, 1),
        ((0, 1, 1), 18, 1),
        ((0, 1, 1), 6, 2),
        ((0, 0, 1), 6, 1),
    ],
    ids=[
        "corner-26",
        "corner-18",
        "corner-6",
        "edge-26",
        "edge-18",
        "edge-6",
        "face-6",
    ],
)
def test_connectivity_of_diagonal_neighbours(
    second_voxel: tuple[int, int, int], connectivity: int, n_expected: int
) -> None:
    array = np.zeros((4, 4, 4), dtype=np.uint8)
    array[1, 1, 1] = 1
    array[tuple(np.add((1, 1, 1), second_voxel))] = 1
    lesions = find_lesions(_labels(array), 1, connectivity=connectivity)  # type: ignore[arg-type]
    assert len(lesions) == n_expected
    assert sum(les.voxel_count for les in lesions) == 2


def test_centroid_in_mm_on_oblique_geometry() -> None:
    spacing = (2.0, 0.5, 0.8)
    origin = (10.0, -20.0, 30.0)
    g = Geometry(shape=(6, 7, 8), spacing_mm=spacing, origin_mm=origin, direction=_OBLIQUE)
    array = np.zeros(g.shape, dtype=np.uint8)
    array[1, 2, 3] = 1
    array[3, 2, 3] = 1
    array[2, 2, 3] = 1
    array[2, 3, 4] = 1  # mean index (2, 2.25, 3.25)
    (lesion,) = find_lesions(_labels(array, g), 1, connectivity=26)
    d = np.asarray(_OBLIQUE).reshape(3, 3)
    # by hand: origin + sum over axes of (index * spacing) along that axis' direction column
    expected = (
        np.asarray(origin)
        + 2.0 * spacing[0] * d[:, 0]
        + 2.25 * spacing[1] * d[:, 1]
        + 3.25 * spacing[2] * d[:, 2]
    )
    assert lesion.voxel_count == 4
    np.testing.assert_allclose(lesion.centroid_mm, expected, atol=1e-9)


def test_lesions_match_phantom_tumours() -> None:
    case = phantom.make_case(5, n_tumours=3, radius_range_mm=(6.0, 10.0))
    lesions = find_lesions(case.labels, phantom.TUMOUR_LABEL)
    assert len(lesions) == len(case.tumours)
    for tumour in case.tumours:
        (match,) = [les for les in lesions if les.voxel_count == tumour.voxel_count]
        assert match.volume_ml == pytest.approx(tumour.volume_ml)
        # voxel-centre sampling of a sphere: the centroid is within a fraction of a voxel
        assert np.linalg.norm(np.subtract(match.centroid_mm, tumour.centre_mm)) < 0.5


# ---------------------------------------------------------------------------------------------
# volumes_report


def test_volumes_report_is_json_and_consistent() -> None:
    array = np.zeros((8, 9, 10), dtype=np.int16)
    array[0:2, 0:2, 0:2] = 1
    array[5:8, 5:8, 5:8] = 1
    array[4, 0, 0] = 2
    g = Geometry(shape=(8, 9, 10), spacing_mm=(3.0, 0.9, 0.9), origin_mm=(1.0, 2.0, 3.0))
    labels = Volume(array, g, VolumeKind.LABELS, SourceInfo(modality="CT"))
    report = volumes_report(labels, {1: "GTV", 2: "dot", 7: "absent"})
    document = report.to_dict()
    assert json.loads(json.dumps(document)) == document
    assert json.loads(report.to_json()) == document
    voxel_ml = 3.0 * 0.9 * 0.9 / 1000
    assert report.voxel_volume_ml == document["voxel_volume_ml"] == pytest.approx(voxel_ml)
    assert document["spacing_mm"] == [3.0, 0.9, 0.9]
    assert document["axis_order"] == ["slice", "row", "column"]
    gtv = document["labels"]["GTV"]
    assert (gtv["voxel_count"], gtv["n_lesions"]) == (35, 2)
    assert gtv["volume_ml"] == pytest.approx(35 * voxel_ml)
    assert [les["voxel_count"] for les in gtv["lesions"]] == [27, 8]
    assert sum(les["volume_ml"] for les in gtv["lesions"]) == pytest.approx(gtv["volume_ml"])
    assert document["labels"]["dot"]["n_lesions"] == 1
    assert document["labels"]["absent"] == {
        "label": 7,
        "voxel_count": 0,
        "volume_ml": 0.0,
        "n_lesions": 0,
        "lesions": [],
    }


# ---------------------------------------------------------------------------------------------
# refusals


def test_image_volume_is_refused() -> None:
    image = Volume(np.zeros((2, 2, 2), dtype=np.int16), Geometry((2, 2, 2), (1, 1, 1), (0, 0, 0)))
    with pytest.raises(InputError, match="labels volume"):
        label_volumes_ml(image, {1: "x"})
    with pytest.raises(InputError, match="labels volume"):
        find_lesions(image, 1)


def test_negative_labels_are_refused() -> None:
    array = np.zeros((2, 2, 2), dtype=np.int8)
    array[0, 0, 0] = -1
    with pytest.raises(InputError, match=">= 0"):
        label_volumes_ml(_labels(array), {1: "x"})


@pytest.mark.parametrize("connectivity", [4, 8, 0], ids=["4", "8", "0"])
def test_invalid_connectivity_is_refused(connectivity: int) -> None:
    labels = _labels(np.ones((2, 2, 2), dtype=np.uint8))
    with pytest.raises(ConfigError, match="connectivity"):
        find_lesions(labels, 1, connectivity=connectivity)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="connectivity"):
        volumes_report(labels, {1: "x"}, connectivity=connectivity)  # type: ignore[arg-type]


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="'x'"):
        label_volumes_ml(_labels(np.ones((2, 2, 2), dtype=np.uint8)), {1: "x", 2: "x"})


# ---------------------------------------------------------------------------------------------
# real organ label maps against SimpleITK


_ORGANS = ("Brainstem", "Parotid-Lt", "Cochlea-Rt", "Spinal-Cord", "Lens-Lt")


def _combined_label_map(folder: str) -> tuple[sitk.Image, dict[int, str]]:
    """A SimpleITK label image with value i+1 for organ i of _ORGANS (later organs win).

    The image is cropped (by SimpleITK, which moves the origin itself) to the organs' bounding
    box plus a margin, to keep the test fast.
    """
    segmentations = require_data(f"hn-oar-labels/{folder}/segmentations")
    names = dict(enumerate(_ORGANS, start=1))
    reference: sitk.Image | None = None
    combined: np.ndarray | None = None
    for value, organ in names.items():
        mask = sitk.ReadImage(str(segmentations / f"{organ}.nrrd"))
        array = sitk.GetArrayViewFromImage(mask)
        if combined is None:
            reference, combined = mask, np.zeros(array.shape, dtype=np.uint8)
        combined[array > 0] = value
    assert reference is not None and combined is not None
    full = sitk.GetImageFromArray(combined)
    full.CopyInformation(reference)
    margin = 2
    start, size = [], []
    for axis in (2, 1, 0):  # SimpleITK index order (x, y, z) is array axes (2, 1, 0)
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(combined.any(axis=other))
        lo = max(int(present[0]) - margin, 0)
        hi = min(int(present[-1]) + 1 + margin, combined.shape[axis])
        start.append(lo)
        size.append(hi - lo)
    return sitk.RegionOfInterest(full, size, start), names


def _volume_from_sitk(image: sitk.Image) -> Volume:
    g = geo.from_sitk(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return Volume(sitk.GetArrayFromImage(image), g, VolumeKind.LABELS)


@pytest.mark.parametrize(
    "folder",
    ["oncologist/0522c0014", "radiographer/TCGA-CV-5977"],
    ids=["0522c0014-oncologist", "TCGA-CV-5977-radiographer"],
)
def test_real_organ_volumes_match_simpleitk(folder: str) -> None:
    image, names = _combined_label_map(folder)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(image)
    volumes = label_volumes_ml(_volume_from_sitk(image), names)
    for value, organ in names.items():
        assert stats.HasLabel(value), organ
        assert volumes[organ] == pytest.approx(stats.GetPhysicalSize(value) / 1000, rel=1e-9), organ
    # the cochlea is tiny (tens of voxels), the brainstem tens of mL
    assert volumes["Cochlea-Rt"] < 0.2
    assert volumes["Brainstem"] > 10


@pytest.mark.parametrize(
    ("connectivity", "fully_connected"),
    [(26, True), (6, False)],
    ids=["26-vs-fully-connected", "6-vs-face-connected"],
)
def test_real_organ_lesions_match_simpleitk_components(
    connectivity: int, fully_connected: bool
) -> None:
    image, names = _combined_label_map("oncologist/0522c0014")
    labels = _volume_from_sitk(image)
    for value, organ in names.items():
        components = sitk.RelabelComponent(
            sitk.ConnectedComponent(image == value, fully_connected), sortByObjectSize=True
        )
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(components)
        lesions = find_lesions(labels, value, connectivity=connectivity)  # type: ignore[arg-type]
        assert len(lesions) == stats.GetNumberOfLabels(), organ
        assert isinstance(lesions[0], Lesion)
        assert lesions[0].voxel_count == stats.GetNumberOfPixels(1), organ
        np.testing.assert_allclose(lesions[0].centroid_mm, stats.GetCentroid(1), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# lesion table: bounding box, diameter, slices


def _ball(
    shape: tuple[int, int, int], spacing_mm: tuple[float, ...], radius_mm: float
) -> np.ndarray:
    idx = np.indices(shape, dtype=float).transpose(1, 2, 3, 0)
    centre = (np.asarray(shape) - 1) / 2 + 0.23  # off the grid, so no symmetry hides errors
    return np.linalg.norm((idx - centre) * np.asarray(spacing_mm), axis=-1) <= radius_mm


@pytest.mark.parametrize(
    ("h", "w", "spacing_mm"),
    [
        (1, 1, (2.5, 0.8, 0.6)),
        (3, 5, (2.5, 0.8, 0.6)),
        (6, 2, (1.0, 1.2, 0.7)),
        (1, 9, (3.0, 1.0, 1.0)),
    ],
    ids=["one-pixel", "3x5", "6x2", "line-1x9"],
)
def test_box_lesion_table_is_hand_computed(
    h: int, w: int, spacing_mm: tuple[float, float, float]
) -> None:
    array = np.zeros((6, 12, 12), dtype=np.uint8)
    array[2:5, 3 : 3 + h, 1 : 1 + w] = 1
    origin = (-10.0, 20.0, 5.0)
    g = Geometry(shape=array.shape, spacing_mm=spacing_mm, origin_mm=origin)  # type: ignore[arg-type]
    (lesion,) = find_lesions(_labels(array, g), 1)
    s, r, c = spacing_mm
    # outline = midpoints of the boundary pixel edges: the farthest pair spans the box minus
    # half a pixel at each end along one axis
    expected = max(math.hypot(h * r, (w - 1) * c), math.hypot((h - 1) * r, w * c))
    assert lesion.longest_axial_diameter_mm == pytest.approx(expected, rel=1e-12)
    assert (lesion.first_slice, lesion.last_slice, lesion.n_slices) == (2, 4, 3)
    # axial direction: column -> x, row -> y, slice -> z; voxel extents are centre +- spacing/2
    assert lesion.bbox_min_mm == pytest.approx(
        (origin[0] + (1 - 0.5) * c, origin[1] + (3 - 0.5) * r, origin[2] + 1.5 * s)
    )
    assert lesion.bbox_max_mm == pytest.approx(
        (origin[0] + (w + 0.5) * c, origin[1] + (3 + h - 0.5) * r, origin[2] + 4.5 * s)
    )


def test_bounding_box_of_one_voxel_on_oblique_grid() -> None:
    spacing = (2.0, 0.5, 0.8)
    g = Geometry(shape=(5, 5, 5), spacing_mm=spacing, origin_mm=(1.0, 2.0, 3.0), direction=_OBLIQUE)
    array = np.zeros(g.shape, dtype=np.uint8)
    array[2, 1, 3] = 1
    (lesion,) = find_lesions(_labels(array, g), 1)
    d = np.asarray(_OBLIQUE).reshape(3, 3)
    half_extent = np.abs(d) @ (np.asarray(spacing) / 2)  # a rotated box's axis-aligned half size
    centre = geo.index_to_world(g, [2.0, 1.0, 3.0])
    np.testing.assert_allclose(lesion.bbox_min_mm, centre - half_extent, atol=1e-9)
    np.testing.assert_allclose(lesion.bbox_max_mm, centre + half_extent, atol=1e-9)
    assert lesion.longest_axial_diameter_mm == pytest.approx(0.8)


@pytest.mark.parametrize(
    "spacing_mm",
    [(2.0, 2.0, 2.0), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), (2.5, 0.8, 0.8)],
    ids=["2mm", "1mm", "0.5mm", "ct-2.5x0.8mm"],
)
def test_sphere_lesion_close_to_analytic_and_better_with_resolution(
    spacing_mm: tuple[float, float, float],
) -> None:
    radius_mm = 10.0
    shape = tuple(int(2 * radius_mm / sp) + 6 for sp in spacing_mm)
    ball = _ball(shape, spacing_mm, radius_mm)  # type: ignore[arg-type]
    g = Geometry(shape=shape, spacing_mm=spacing_mm, origin_mm=(0.0, 0.0, 0.0))  # type: ignore[arg-type]
    (lesion,) = find_lesions(_labels(ball.astype(np.uint8), g), 1)
    analytic_ml = 4 / 3 * math.pi * radius_mm**3 / 1000
    # voxelisation error lives in a surface shell about one voxel thick: it shrinks with spacing
    coarsest = max(spacing_mm)
    assert abs(lesion.volume_ml - analytic_ml) / analytic_ml < 1.5 * coarsest / radius_mm
    pixel = max(spacing_mm[1:])
    assert abs(lesion.longest_axial_diameter_mm - 2 * radius_mm) <= pixel
    assert lesion.n_slices == pytest.approx(2 * radius_mm / spacing_mm[0], abs=1.0)
    extent = np.subtract(lesion.bbox_max_mm, lesion.bbox_min_mm)
    for axis_extent, sp in zip(extent, (spacing_mm[2], spacing_mm[1], spacing_mm[0]), strict=True):
        assert abs(axis_extent - 2 * radius_mm) <= sp  # x is columns, y rows, z slices


def test_sphere_volume_in_lesions_csv_converges_to_analytic(tmp_path: Path) -> None:
    """Acceptance: the written lesion table's volume of a 10 mm sphere approaches 4/3 pi r^3
    as the grid is refined (the error is a surface shell about one voxel thick)."""
    radius_mm = 10.0
    analytic_ml = 4 / 3 * math.pi * radius_mm**3 / 1000
    errors = []
    for spacing in (2.0, 1.0, 0.5):
        spacing_mm = (spacing, spacing, spacing)
        shape = tuple(int(2 * radius_mm / spacing) + 6 for _ in range(3))
        ball = _ball(shape, spacing_mm, radius_mm)  # type: ignore[arg-type]
        g = Geometry(shape=shape, spacing_mm=spacing_mm, origin_mm=(-3.0, 7.0, 11.0))  # type: ignore[arg-type]
        report = volumes_report(_labels(ball.astype(np.uint8), g), {1: "GTV"})
        path = write_lesions_csv(report, tmp_path / f"{spacing}" / "lesions.csv")
        with path.open(newline="") as fh:
            (row,) = list(csv.DictReader(fh))
        assert int(row["voxel_count"]) == int(ball.sum())
        errors.append(abs(float(row["volume_ml"]) - analytic_ml) / analytic_ml)
        assert errors[-1] < 1.5 * spacing / radius_mm
    assert errors[0] > errors[1] > errors[2]


def test_volumes_report_total_burden_and_writers(tmp_path: Path) -> None:
    array = np.zeros((8, 9, 10), dtype=np.uint8)
    array[0:2, 0:2, 0:2] = 1
    array[5:8, 5:8, 5:8] = 1
    array[4, 0, 0] = 2
    g = Geometry(shape=(8, 9, 10), spacing_mm=(3.0, 0.9, 0.9), origin_mm=(1.0, 2.0, 3.0))
    report = volumes_report(_labels(array, g), {1: "GTV", 2: "node", 3: "absent"})
    voxel_ml = 3.0 * 0.9 * 0.9 / 1000
    assert report.total_burden_ml == pytest.approx(36 * voxel_ml)
    assert report.n_lesions_total == 3
    json_path = write_volumes_json(report, tmp_path / "out" / "volumes.json")
    csv_path = write_lesions_csv(report, tmp_path / "out" / "lesions.csv")
    assert json.loads(json_path.read_text()) == report.to_dict()
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == LESION_CSV_COLUMNS
    assert [(r["name"], r["lesion_id"], r["voxel_count"]) for r in rows] == [
        ("GTV", "1", "27"),
        ("GTV", "2", "8"),
        ("node", "1", "1"),
    ]
    assert float(rows[0]["centroid_z_mm"]) == pytest.approx(
        report.by_name()["GTV"].lesions[0].centroid_mm[2]
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lesions.csv", "volumes.json"]


def _report_case() -> Volume:
    """Two GTV lesions, a one-voxel dot and a node on an anisotropic grid off the origin."""
    array = np.zeros((8, 9, 10), dtype=np.int16)
    array[0:2, 0:2, 0:2] = 1
    array[5:8, 5:8, 5:8] = 1
    array[4, 0, 0] = 2
    array[3:5, 6:9, 0:3] = 3
    g = Geometry(shape=(8, 9, 10), spacing_mm=(2.5, 0.75, 0.5), origin_mm=(-10.0, 20.0, 30.0))
    return Volume(array, g, VolumeKind.LABELS, SourceInfo(path=Path("case-1/ct")))


_REPORT_NAMES = {1: "GTV", 2: "dot", 3: "node", 7: "absent"}


def _lesion(
    id: int,
    label: int,
    voxel_count: int,
    volume_ml: float,
    centroid_mm: list[float],
    bbox_min_mm: list[float],
    bbox_max_mm: list[float],
    diameter_mm: float,
    slices: tuple[int, int, int],
) -> dict[str, object]:
    return {
        "id": id, "label": label, "voxel_count": voxel_count, "volume_ml": volume_ml,
        "centroid_mm": centroid_mm, "bbox_min_mm": bbox_min_mm, "bbox_max_mm": bbox_max_mm,
        "longest_axial_diameter_mm": diameter_mm,
        "first_slice": slices[0], "last_slice": slices[1], "n_slices": slices[2],
    }  # fmt: skip


#: The volumes.json document of :func:`_report_case` as medseg wrote it when
#: ``volumes_report`` still returned a dict (the schema users parse; key order included).
_VOLUMES_DOCUMENT = {
    "source": "case-1/ct",
    "axis_order": ["slice", "row", "column"],
    "coordinates": "DICOM patient LPS, mm",
    "shape": [8, 9, 10],
    "spacing_mm": [2.5, 0.75, 0.5],
    "voxel_volume_ml": 0.0009375,
    "connectivity": 26,
    "total_burden_ml": 0.050625,
    "n_lesions_total": 4,
    "labels": {
        "GTV": {
            "label": 1, "voxel_count": 35, "volume_ml": 0.0328125, "n_lesions": 2,
            "lesions": [
                _lesion(1, 1, 27, 0.025312499999999998, [-7.0, 24.5, 45.0],
                        [-7.75, 23.375, 41.25], [-6.25, 25.625, 48.75],
                        2.462214450449026, (5, 7, 3)),
                _lesion(2, 1, 8, 0.0075, [-9.75, 20.375, 31.25], [-10.25, 19.625, 28.75],
                        [-9.25, 21.125, 33.75], 1.5811388300841898, (0, 1, 2)),
            ],
        },
        "dot": {
            "label": 2, "voxel_count": 1, "volume_ml": 0.0009375, "n_lesions": 1,
            "lesions": [
                _lesion(1, 2, 1, 0.0009375, [-10.0, 20.0, 40.0], [-10.25, 19.625, 38.75],
                        [-9.75, 20.375, 41.25], 0.75, (4, 4, 1)),
            ],
        },
        "node": {
            "label": 3, "voxel_count": 18, "volume_ml": 0.016875, "n_lesions": 1,
            "lesions": [
                _lesion(1, 3, 18, 0.016875, [-9.5, 25.25, 38.75], [-10.25, 24.125, 36.25],
                        [-8.75, 26.375, 41.25], 2.462214450449026, (3, 4, 2)),
            ],
        },
        "absent": {"label": 7, "voxel_count": 0, "volume_ml": 0.0, "n_lesions": 0, "lesions": []},
    },
}  # fmt: skip

#: lesions.csv of :func:`_report_case` as written by the dict-based writer (csv's CRLF rows).
_LESIONS_CSV = (
    "name,label,lesion_id,volume_ml,voxel_count,centroid_x_mm,centroid_y_mm,centroid_z_mm,"
    "bbox_min_x_mm,bbox_min_y_mm,bbox_min_z_mm,bbox_max_x_mm,bbox_max_y_mm,bbox_max_z_mm,"
    "longest_axial_diameter_mm,first_slice,last_slice,n_slices\r\n"
    "GTV,1,1,0.025312499999999998,27,-7.0,24.5,45.0,-7.75,23.375,41.25,-6.25,25.625,48.75,"
    "2.462214450449026,5,7,3\r\n"
    "GTV,1,2,0.0075,8,-9.75,20.375,31.25,-10.25,19.625,28.75,-9.25,21.125,33.75,"
    "1.5811388300841898,0,1,2\r\n"
    "dot,2,1,0.0009375,1,-10.0,20.0,40.0,-10.25,19.625,38.75,-9.75,20.375,41.25,0.75,4,4,1\r\n"
    "node,3,1,0.016875,18,-9.5,25.25,38.75,-10.25,24.125,36.25,-8.75,26.375,41.25,"
    "2.462214450449026,3,4,2\r\n"
)


def test_volumes_json_and_lesions_csv_are_byte_compatible(tmp_path: Path) -> None:
    """volumes.json and lesions.csv are user-facing formats: the typed report writes exactly
    what the dict-based report wrote."""
    report = volumes_report(_report_case(), _REPORT_NAMES)
    assert report.to_dict() == _VOLUMES_DOCUMENT
    json_path = write_volumes_json(report, tmp_path / "volumes.json")
    expected = json.dumps(_VOLUMES_DOCUMENT, indent=2, allow_nan=False) + "\n"
    assert json_path.read_bytes() == expected.encode("utf-8")
    assert report.to_json() == expected
    csv_path = write_lesions_csv(report, tmp_path / "lesions.csv")
    assert csv_path.read_bytes() == _LESIONS_CSV.encode("utf-8")


def test_volumes_report_is_a_frozen_typed_object() -> None:
    labels = _report_case()
    report = volumes_report(labels, _REPORT_NAMES)
    assert isinstance(report, VolumesReport)
    assert report.geometry == labels.geometry and report.source == "case-1/ct"
    assert [s.name for s in report.structures] == ["GTV", "dot", "node", "absent"]
    assert all(isinstance(s, StructureVolume) for s in report.structures)
    gtv = report.by_name()["GTV"]
    assert (gtv.label, gtv.voxel_count, gtv.n_lesions) == (1, 35, 2)
    assert gtv.lesions == tuple(find_lesions(labels, 1))  # the Lesion records themselves
    assert report.by_label()[7].lesions == ()
    assert report.volumes_ml == {"GTV": 0.0328125, "dot": 0.0009375, "node": 0.016875,
                                 "absent": 0.0}  # fmt: skip
    assert report.total_burden_ml == pytest.approx(sum(report.volumes_ml.values()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.connectivity = 6  # type: ignore[misc]
    with pytest.raises(ConfigError, match="'GTV'"):
        VolumesReport(report.source, report.geometry, 26, (gtv, dataclasses.replace(gtv, label=9)))


def test_volumes_report_labels_each_structure_once() -> None:
    """One connected-component labelling per label present (none for an absent label)."""
    calls: list[int] = []
    labelling = postprocess.cc3d.connected_components

    def counting(mask: np.ndarray, **kwargs: object) -> object:
        calls.append(int(mask.sum()))
        return labelling(mask, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(postprocess.cc3d, "connected_components", counting)
        volumes_report(_report_case(), _REPORT_NAMES)
    assert sorted(calls) == [1, 18, 35]


def test_old_report_api_works_with_a_warning(tmp_path: Path) -> None:
    """The writers moved to medseg.report.tables, and the report is no longer a dict: both old
    uses keep working, with a DeprecationWarning, until 0.2."""
    from medseg.report import tables

    for name in ("write_volumes_json", "write_lesions_csv", "LESION_CSV_COLUMNS"):
        with pytest.warns(DeprecationWarning, match=f"postprocess.{name} is now"):
            assert getattr(postprocess, name) is getattr(tables, name)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = postprocess.nothing  # type: ignore[attr-defined]
    report = volumes_report(_report_case(), _REPORT_NAMES)
    with pytest.warns(DeprecationWarning, match=r"to_dict\(\)"):
        assert report["labels"] == _VOLUMES_DOCUMENT["labels"]  # type: ignore[index]


# ---------------------------------------------------------------------------------------------
# apply_postprocess


def _rules(**label_rules: object) -> PostprocessConfig:
    return PostprocessConfig.model_validate(label_rules)


@pytest.mark.parametrize(
    ("spacing_mm", "kept"),
    [((1.0, 1.0, 1.0), False), ((2.5, 2.0, 2.0), True)],
    ids=["8-voxels-is-0.008ml-removed", "8-voxels-is-0.08ml-kept"],
)
def test_min_component_volume_is_in_ml_from_geometry(
    spacing_mm: tuple[float, ...], kept: bool
) -> None:
    array = np.zeros((10, 10, 10), dtype=np.uint8)
    array[1:3, 1:3, 1:3] = 1  # 8 voxels
    array[5:9, 5:9, 5:9] = 1  # 64 voxels
    config = _rules(default={"min_component_volume_ml": 0.05})
    out = apply_postprocess(_labels(array, spacing_mm=spacing_mm), config)
    assert bool(out.array[1, 1, 1]) is kept
    assert out.array[5:9, 5:9, 5:9].all()
    assert out.geometry == _labels(array, spacing_mm=spacing_mm).geometry


@pytest.mark.parametrize(
    ("connectivity", "n_left"),
    [(26, 3), (6, 2)],
    ids=["26-joins-corner-voxel", "6-drops-corner-voxel"],
)
def test_keep_largest_component_respects_connectivity(connectivity: int, n_left: int) -> None:
    array = np.zeros((5, 5, 5), dtype=np.uint8)
    array[1, 1, 1] = 1
    array[1, 1, 2] = 1  # the largest: two face-neighbours
    array[2, 2, 3] = 1  # touches it only at a corner
    array[4, 4, 4] = 2  # another label, no rule: untouched
    config = _rules(connectivity=connectivity, labels={1: {"keep_largest_component": True}})
    out = apply_postprocess(_labels(array), config)
    assert int((out.array == 1).sum()) == n_left
    assert out.array[1, 1, 2] == 1
    assert out.array[4, 4, 4] == 2


def test_fill_holes_3d_and_per_slice() -> None:
    array = np.zeros((9, 9, 9), dtype=np.uint8)
    array[1:8, 1:8, 1:8] = 1
    array[3:6, 3:6, 3:6] = 0  # a closed cavity
    array[2:7, 4, 4] = 0  # ... joined to a tunnel that runs through slices 2-6 only
    array[3, 3, 3] = 2  # another structure inside the cavity
    tube = np.zeros((9, 9, 9), dtype=np.uint8)
    tube[:, 2:7, 2:7] = 1
    tube[:, 4, 4] = 0  # open at both ends of the slice axis: not a 3D hole
    original = _labels(array)
    filled_3d = apply_postprocess(original, _rules(default={"fill_holes": "3d"}))
    assert (filled_3d.array[3:6, 3:6, 3:6] != 0).all()
    assert filled_3d.array[3, 3, 3] == 2  # never overwritten
    tube_3d = apply_postprocess(_labels(tube), _rules(default={"fill_holes": "3d"}))
    tube_slices = apply_postprocess(_labels(tube), _rules(default={"fill_holes": "slice"}))
    assert tube_3d.array[4, 4, 4] == 0
    assert (tube_slices.array[:, 4, 4] == 1).all()


def test_rules_per_label_and_default_and_noop() -> None:
    array = np.zeros((10, 10, 10), dtype=np.uint8)
    array[0:3, 0:3, 0:3] = 1
    array[5, 5, 5] = 1
    array[0:3, 6:9, 6:9] = 2
    array[8, 8, 8] = 2
    labels = _labels(array)
    out = apply_postprocess(
        labels, _rules(default={"keep_largest_component": True}, labels={2: {}})
    )
    assert out.array[5, 5, 5] == 0 and out.array[8, 8, 8] == 2
    unchanged = apply_postprocess(labels, PostprocessConfig())
    np.testing.assert_array_equal(unchanged.array, array)
    assert unchanged.array.dtype == array.dtype
    assert not labels.array.flags.writeable  # the input is never written


def test_postprocess_config_refuses_bad_values_in_yaml() -> None:
    text = (Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text()
    ok = parse_config(
        text
        + "\npostprocess:\n  labels: {1: {keep_largest_component: true, min_component_volume_ml: 1}}\n"
    )
    assert ok.postprocess.rule_for(1).min_component_volume_ml == 1.0
    assert ok.postprocess.rule_for(2) == LabelPostprocessConfig()
    assert (
        load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml").postprocess
        == PostprocessConfig()
    )
    with pytest.raises(ConfigError, match="postprocess.labels.1.keep_largest"):
        parse_config(text + "\npostprocess:\n  labels: {1: {keep_largest: true}}\n")
    with pytest.raises(ConfigError, match="postprocess.default.min_component_volume_ml"):
        parse_config(text + "\npostprocess:\n  default: {min_component_volume_ml: -1.0}\n")
    with pytest.raises(ConfigError, match="postprocess.connectivity"):
        parse_config(text + "\npostprocess:\n  connectivity: 8\n")
    with pytest.raises(ConfigError, match="0 is background"):
        parse_config(text + "\npostprocess:\n  labels: {0: {fill_holes: 3d}}\n")


def test_rules_by_interpreted_type_keep_one_organ_and_every_lesion() -> None:
    """``postprocess.types``: a rule for every structure of a type (organs are one piece,
    targets may be several lesions); a label's own rule still wins."""
    from medseg.postprocess import apply_postprocess
    from medseg.structures import structure_set

    array = np.zeros((6, 20, 20), dtype=np.uint8)
    for value, column in ((1, 2), (2, 8), (3, 14)):
        array[1:3, 2:5, column : column + 2] = value  # a large component
        array[4, 15:17, column] = value  # and a small one
    structures = structure_set({1: "Parotid L", 2: "GTV", 3: "Spinal Cord"})
    rules = PostprocessConfig(
        types={"ORGAN": LabelPostprocessConfig(keep_largest_component=True)},
        labels={3: LabelPostprocessConfig()},
    )
    out = np.asarray(apply_postprocess(_labels(array), rules, structures).array)
    assert (out == 1).sum() == 12  # organ: the small piece removed
    assert (out == 2).sum() == (array == 2).sum()  # target: both lesions kept
    assert (out == 3).sum() == (array == 3).sum()  # its own rule (none) wins over ORGAN's
    # without structures the type rules cannot apply
    assert np.array_equal(np.asarray(apply_postprocess(_labels(array), rules).array), array)
