"""Tests of medseg.synthetic.phantom: determinism, ground truth, and the written DICOM/NIfTI files."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg import geometry as geo
from medseg.errors import ConfigError, ExportError
from medseg.io import nifti
from medseg.synthetic import phantom
from medseg.volume import VolumeKind
from tests.conftest import require_tool


def _rotation(axis: tuple[float, float, float], angle_deg: float) -> np.ndarray:
    """Rodrigues' rotation matrix about a (normalised here) axis."""
    u = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    a = math.radians(angle_deg)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)


_AXIAL = np.asarray(geo.AXIAL_DIRECTION).reshape(3, 3)
#: A scan tilted 17 degrees about an axis mixing all patient axes: every DICOM
#: orientation cosine is non-trivial.
OBLIQUE_DIRECTION = tuple((_rotation((0.4, -0.3, 0.85), 17.0) @ _AXIAL).ravel())

GEOMETRIES = {
    "axial": {},
    "oblique": {"direction": OBLIQUE_DIRECTION, "origin_mm": (-80.0, -65.5, 112.25)},
    "anisotropic": {
        "shape": (30, 80, 112),
        "spacing_mm": (3.0, 1.25, 1.1),
        "origin_mm": (-61.6, -49.4, -400.0),
    },
}


def _distance_mm(case: phantom.PhantomCase, tumour: phantom.Tumour) -> np.ndarray:
    g = case.image.geometry
    world = geo.index_to_world(g, np.indices(g.shape, dtype=float).transpose(1, 2, 3, 0))
    return np.linalg.norm(world - np.asarray(tumour.centre_mm), axis=-1)


# ---------------------------------------------------------------------------------------------
# determinism and speed


@pytest.mark.parametrize("options", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_same_seed_gives_identical_case(options: dict) -> None:
    a = phantom.make_case(11, **options)
    b = phantom.make_case(11, **options)
    np.testing.assert_array_equal(a.image.array, b.image.array)
    np.testing.assert_array_equal(a.labels.array, b.labels.array)
    assert a.tumours == b.tumours
    assert a.image.geometry == b.image.geometry == a.labels.geometry


def test_different_seeds_give_different_cases() -> None:
    a, b = phantom.make_case(1), phantom.make_case(2)
    assert not np.array_equal(a.image.array, b.image.array)
    assert not np.array_equal(a.labels.array, b.labels.array)
    assert a.tumours != b.tumours


def test_case_types_and_ranges() -> None:
    case = phantom.make_case(0)
    assert case.image.kind is VolumeKind.IMAGE and case.labels.kind is VolumeKind.LABELS
    assert case.image.array.dtype == np.int16 and case.labels.array.dtype == np.uint8
    assert case.image.geometry.shape == (48, 96, 96)
    assert case.image.geometry.spacing_mm == (2.5, 1.5, 1.5)
    assert set(np.unique(case.labels.array)) == {0, phantom.TUMOUR_LABEL}
    hu = case.image.array
    assert hu[0, 0, 0] == phantom.AIR_HU  # corner of the field of view is air
    assert (hu <= -700).mean() > 0.2  # air and lungs
    assert (hu >= 500).any()  # bone


def test_case_is_fast() -> None:
    phantom.make_case(0)  # warm imports and caches
    start = time.perf_counter()
    phantom.make_case(123)
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------------
# ground truth


@pytest.mark.parametrize("options", GEOMETRIES.values(), ids=GEOMETRIES.keys())
@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_tumour_volumes_are_voxel_counts(seed: int, options: dict) -> None:
    case = phantom.make_case(seed, n_tumours=3, **options)
    voxel_ml = geo.voxel_volume_ml(case.labels.geometry)
    assert len(case.tumours) == 3
    for tumour in case.tumours:
        inside = _distance_mm(case, tumour) <= tumour.radius_mm
        assert int(inside.sum()) == tumour.voxel_count
        assert np.all(case.labels.array[inside] == phantom.TUMOUR_LABEL)
        assert tumour.volume_ml == pytest.approx(tumour.voxel_count * voxel_ml, rel=1e-12)
        assert tumour.analytic_volume_ml == pytest.approx(
            4 / 3 * math.pi * tumour.radius_mm**3 / 1000, rel=1e-12
        )
        assert 6.0 <= tumour.radius_mm <= 15.0
    # tumours do not overlap: the label map is exactly their union
    assert int(case.labels.array.sum()) == sum(t.voxel_count for t in case.tumours)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_large_tumour_volume_close_to_sphere(seed: int) -> None:
    case = phantom.make_case(seed, radius_range_mm=(8.0, 15.0))
    for tumour in case.tumours:
        assert tumour.volume_ml == pytest.approx(tumour.analytic_volume_ml, rel=0.04)


@pytest.mark.parametrize("options", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_tumours_lie_in_soft_tissue_with_specified_contrast(options: dict) -> None:
    case = phantom.make_case(4, noise_sd_hu=0.0, **options)
    # the anatomy does not depend on the random draws: the same grid without tumours
    anatomy = phantom.make_case(4, n_tumours=0, noise_sd_hu=0.0, **options).image.array
    labelled = case.labels.array == phantom.TUMOUR_LABEL
    assert labelled.any()
    np.testing.assert_allclose(anatomy[labelled], phantom.TISSUE_HU, atol=1)
    for tumour in case.tumours:
        assert 60.0 <= tumour.contrast_hu <= 120.0
        core = _distance_mm(case, tumour) <= tumour.radius_mm - 3 * phantom.EDGE_SIGMA_MM
        measured = float(case.image.array[core].mean()) - phantom.TISSUE_HU
        assert measured == pytest.approx(tumour.contrast_hu, abs=1.5)


def test_noise_has_specified_sd_inside_body_only() -> None:
    noisy = phantom.make_case(9, noise_sd_hu=20.0).image.array.astype(float)
    clean = phantom.make_case(9, noise_sd_hu=0.0).image.array.astype(float)
    noise = noisy - clean
    body = clean > -950
    assert float(noise[body].std()) == pytest.approx(20.0, rel=0.05)
    assert np.all(noise[clean == phantom.AIR_HU] == 0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_tumours": 40}, "no room for tumour"),
        ({"radius_range_mm": (40.0, 50.0)}, "no room for tumour 1"),
        ({"radius_range_mm": (10.0, 5.0)}, "radius_range_mm"),
        ({"contrast_range_hu": (100.0, 50.0)}, "contrast_range_hu"),
        ({"n_tumours": -1}, "n_tumours"),
        ({"noise_sd_hu": -5.0}, "noise_sd_hu"),
    ],
    ids=[
        "too-many",
        "too-large",
        "radius-order",
        "contrast-order",
        "negative-count",
        "negative-noise",
    ],
)
def test_impossible_requests_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        phantom.make_case(0, **options)


# ---------------------------------------------------------------------------------------------
# written files


@pytest.mark.parametrize(
    "options", [GEOMETRIES["axial"], GEOMETRIES["oblique"]], ids=["axial", "oblique"]
)
def test_written_series_passes_dciodvfy(tmp_path: Path, options: dict) -> None:
    dciodvfy = require_tool("dciodvfy")
    case = phantom.make_case(3, shape=(10, 64, 64), n_tumours=1, **options)
    paths = phantom.write_case(case, tmp_path / "case", patient_id="PHANTOM-003")
    files = sorted(paths.ct_dir.glob("*.dcm"))
    assert len(files) == 10
    errors = []
    for path in files:
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        output = result.stdout + result.stderr
        errors += [
            f"{path.name}: {line}" for line in output.splitlines() if line.startswith("Error")
        ]
    assert errors == []


@pytest.mark.parametrize("options", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_simpleitk_reads_back_the_phantom(tmp_path: Path, options: dict) -> None:
    case = phantom.make_case(8, **options)
    paths = phantom.write_case(case, tmp_path / "case", patient_id="PHANTOM-008")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(paths.ct_dir)))
    image = reader.Execute()
    read = geo.from_sitk(
        image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    )
    expected = case.image.geometry
    assert read.shape == expected.shape
    np.testing.assert_allclose(read.spacing_mm, expected.spacing_mm, atol=1e-4)
    np.testing.assert_allclose(read.origin_mm, expected.origin_mm, atol=1e-4)
    np.testing.assert_allclose(read.direction, expected.direction, atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), case.image.array)

    labels = nifti.load(paths.labels_path, VolumeKind.LABELS)
    np.testing.assert_array_equal(labels.array, case.labels.array)
    assert geo.geometries_equal(labels.geometry, expected)

    table = json.loads(paths.tumours_path.read_text(encoding="utf-8"))
    assert table["seed"] == 8
    assert [t["voxel_count"] for t in table["tumours"]] == [t.voxel_count for t in case.tumours]
    np.testing.assert_allclose(
        [t["centre_mm"] for t in table["tumours"]], [t.centre_mm for t in case.tumours]
    )


def test_rewriting_a_case_gives_the_same_uids(tmp_path: Path) -> None:
    case = phantom.make_case(2, shape=(4, 32, 32), n_tumours=0)
    a = phantom.write_case(case, tmp_path / "a", patient_id="PHANTOM-002")
    b = phantom.write_case(case, tmp_path / "b", patient_id="PHANTOM-002")
    c = phantom.write_case(case, tmp_path / "c", patient_id="PHANTOM-099")
    assert a.series_instance_uid == b.series_instance_uid != c.series_instance_uid


def test_dataset_json_is_decathlon_style(tmp_path: Path) -> None:
    small: dict[str, Any] = {"shape": (12, 64, 64), "n_tumours": 1, "radius_range_mm": (4.0, 6.0)}
    dataset_json = phantom.make_dataset(tmp_path / "ds", n_cases=2, seed=40, **small)
    dataset = json.loads(dataset_json.read_text(encoding="utf-8"))
    assert dataset["numTraining"] == 2
    assert dataset["training"] == [
        {"image": "case_000/ct", "label": "case_000/labels.nii.gz"},
        {"image": "case_001/ct", "label": "case_001/labels.nii.gz"},
    ]
    for number, entry in enumerate(dataset["training"], start=1):
        ct_dir = dataset_json.parent / entry["image"]
        assert (dataset_json.parent / entry["label"]).is_file()
        first = pydicom.dcmread(min(ct_dir.glob("*.dcm")), stop_before_pixels=True)
        assert str(first.PatientName) == f"PHANTOM^{number:03d}"
        assert first.PatientID == f"PHANTOM-{number:03d}"
    # case i is make_case(seed + i)
    expected = phantom.make_case(41, **small)
    second = nifti.load(dataset_json.parent / "case_001/labels.nii.gz", VolumeKind.LABELS)
    np.testing.assert_array_equal(second.array, expected.labels.array)
    with pytest.raises(ExportError, match="exists"):
        phantom.make_dataset(tmp_path / "ds", n_cases=1, seed=0, **small)
