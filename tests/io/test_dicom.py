"""DICOM series reading against SimpleITK on real data; CT writing checked by dciodvfy."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from medseg import geometry as geo
from medseg.errors import GeometryError, InputError, UnreadableScanError
from medseg.geometry import AXIAL_DIRECTION, Geometry
from medseg.io.dicom import format_ds, load_series, write_series
from medseg.volume import Volume
from tests.conftest import require_data, require_tool

REAL_SERIES = [
    pytest.param("lung-gtv-ct/pat_1", id="lung-pat1"),
    pytest.param("lung-gtv-ct/pat_2", id="lung-pat2"),
    pytest.param("lung-gtv-ct/pat_3", id="lung-pat3"),
    pytest.param("hn-ct/pt_1", id="hn-511x511"),
    pytest.param("totalseg-example/example_ct_dicom", id="totalseg-ct"),
    pytest.param("dicom-quirks/torchio-dicom", id="torchio-mr"),
    pytest.param("dicom-quirks/rtutils-oriented", id="oriented-no-slicelocation"),
]


def _sitk_series(folder: Path) -> tuple[Geometry, np.ndarray]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    g = geo.from_sitk(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return g, sitk.GetArrayFromImage(image)


def _assert_same_as_sitk(volume: Volume, folder: Path) -> None:
    g, array = _sitk_series(folder)
    assert volume.geometry.shape == g.shape
    np.testing.assert_allclose(volume.geometry.spacing_mm, g.spacing_mm, atol=1e-4)
    np.testing.assert_allclose(volume.geometry.origin_mm, g.origin_mm, atol=1e-4)
    np.testing.assert_allclose(volume.geometry.direction, g.direction, atol=1e-4)
    np.testing.assert_allclose(volume.array.astype(np.float64), array, atol=1e-3)


@pytest.mark.parametrize("relative", REAL_SERIES)
def test_real_series_match_simpleitk(relative: str) -> None:
    folder = require_data(relative)
    image_only = folder
    volume = load_series(folder)
    if any(p.name.startswith("DCM_RS") for p in folder.iterdir()):
        # SimpleITK's GDCM series reader must not see the RT-STRUCT: give it the images only
        image_only = Path(pytest.importorskip("tempfile").mkdtemp())
        for p in folder.iterdir():
            if p.name.startswith("DCM_IMG"):
                shutil.copy(p, image_only / p.name)
    _assert_same_as_sitk(volume, image_only)
    assert len(set(volume.source.sop_instance_uids)) == volume.geometry.shape[0]


def test_odd_sized_slices_keep_their_shape() -> None:
    volume = load_series(require_data("hn-ct/pt_1"))
    assert volume.geometry.shape[1:] == (511, 511)


def test_file_order_and_names_do_not_matter(tmp_path: Path) -> None:
    folder = require_data("lung-gtv-ct/pat_2")
    files = sorted(p for p in folder.iterdir() if p.name.startswith("DCM_IMG"))
    shuffled = files[:]
    random.Random(3).shuffle(shuffled)
    nested = tmp_path / "deep" / "er"
    nested.mkdir(parents=True)
    for i, p in enumerate(shuffled):
        target = (nested if i % 2 else tmp_path) / f"{i:03d}_{p.stem[::-1]}"
        shutil.copy(p, target)
    (tmp_path / "notes.txt").write_text("not dicom")
    reference = load_series(folder)
    again = load_series(tmp_path)
    assert geo.geometries_equal(again.geometry, reference.geometry)
    np.testing.assert_array_equal(again.array, reference.array)
    assert again.source.sop_instance_uids == reference.source.sop_instance_uids


def test_slice_order_follows_positions_not_instance_numbers(tmp_path: Path) -> None:
    """InstanceNumbers written in reverse must not reverse the volume."""
    folder = require_data("lung-gtv-ct/pat_3")
    files = sorted(p for p in folder.iterdir() if p.name.startswith("DCM_IMG"))
    for i, p in enumerate(files):
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = len(files) - i
        ds.save_as(tmp_path / f"x{i}.dcm")
    np.testing.assert_array_equal(load_series(tmp_path).array, load_series(folder).array)


def test_each_slice_position_matches_its_own_header() -> None:
    folder = require_data("totalseg-example/example_ct_dicom")
    with pytest.warns(UserWarning, match=r"SOPInstanceUID \(0008,0018\) is empty"):
        volume = load_series(folder)
    by_uid = {}
    for p in folder.iterdir():
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        by_uid[ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID] = np.array([float(v) for v in ds.ImagePositionPatient])
    expected = np.stack([by_uid[u] for u in volume.source.sop_instance_uids])
    np.testing.assert_allclose(geo.slice_positions_mm(volume.geometry), expected, atol=1e-3)


def _oblique(shape: tuple[int, int, int]) -> Geometry:
    rotation = Rotation.from_euler("xyz", [12.0, -25.0, 40.0], degrees=True).as_matrix()
    direction = rotation @ np.asarray(AXIAL_DIRECTION).reshape(3, 3)
    return Geometry(shape, (2.5, 0.9, 1.1), (-81.25, 33.5, -240.0), tuple(direction.ravel()))


@pytest.mark.parametrize(
    "geometry",
    [
        pytest.param(Geometry((6, 9, 11), (3.0, 0.8, 0.8), (-100.0, -120.5, 40.0)), id="axial"),
        pytest.param(_oblique((5, 8, 7)), id="oblique"),
    ],
)
def test_written_series_reads_back_and_matches_simpleitk(tmp_path: Path, geometry: Geometry) -> None:
    array = np.random.default_rng(1).integers(-1024, 3000, geometry.shape).astype(np.int16)
    written = write_series(Volume(array, geometry), tmp_path / "ct", uid_seed="test")
    again = load_series(tmp_path / "ct")
    assert geo.geometries_equal(again.geometry, geometry)
    np.testing.assert_array_equal(again.array, array)
    assert again.source.sop_instance_uids == written.source.sop_instance_uids
    _assert_same_as_sitk(again, tmp_path / "ct")


def test_written_series_passes_dciodvfy(tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy")
    g = _oblique((3, 6, 5))
    write_series(Volume(np.zeros(g.shape, np.int16), g), tmp_path / "ct")
    for path in sorted((tmp_path / "ct").iterdir()):
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    g = Geometry((2, 3, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    (tmp_path / "ct").mkdir()
    (tmp_path / "ct" / "keep.txt").write_text("precious")
    with pytest.raises(Exception, match="refusing to overwrite"):
        write_series(Volume(np.zeros(g.shape, np.int16), g), tmp_path / "ct")
    assert (tmp_path / "ct" / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    "value",
    [pytest.param(v, id=repr(v)) for v in (-26.399997413158417, 1e-12, 123456789.123456, -0.0001234, 0.5)],
)
def test_format_ds_fits_16_characters(value: float) -> None:
    text = format_ds(value)
    assert len(text) <= 16
    assert float(text) == pytest.approx(value, rel=1e-9, abs=1e-10)


# --- bad input -----------------------------------------------------------------------------


def test_empty_folder_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(UnreadableScanError, match=rf"{tmp_path}: no DICOM .* empty"):
        load_series(tmp_path)


def test_folder_without_dicom_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(UnreadableScanError, match=rf"{tmp_path}: no DICOM .* 2 files"):
        load_series(tmp_path)


def test_truncated_dicom_names_the_file(tmp_path: Path) -> None:
    folder = require_data("lung-gtv-ct/pat_1")
    files = sorted(folder.glob("DCM_IMG_*"))[:3]
    for p in files:
        shutil.copy(p, tmp_path / p.name)
    broken = tmp_path / files[1].name
    broken.write_bytes(broken.read_bytes()[:4000])
    with pytest.raises(UnreadableScanError, match=files[1].name):
        load_series(tmp_path)


def test_missing_slice_is_a_named_geometry_error(tmp_path: Path) -> None:
    folder = require_data("lung-gtv-ct/pat_1")
    files = sorted(folder.glob("DCM_IMG_*"))[:6]
    for i, p in enumerate(files):
        if i != 3:
            shutil.copy(p, tmp_path / p.name)
    with pytest.raises(GeometryError, match="uneven slice spacing"):
        load_series(tmp_path)


def test_two_series_in_one_folder_are_refused(tmp_path: Path) -> None:
    g = Geometry((2, 3, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    write_series(Volume(np.zeros(g.shape, np.int16), g), tmp_path / "a")
    write_series(Volume(np.zeros(g.shape, np.int16), g), tmp_path / "b", series_number=2)
    with pytest.raises(InputError, match="2 image series found"):
        load_series(tmp_path)
