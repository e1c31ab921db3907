"""NIfTI / NRRD against SimpleITK, round trips, and bad headers."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings

from medseg import geometry as geo
from medseg.errors import GeometryError, InputError, UnreadableScanError
from medseg.geometry import Geometry
from medseg.io import nifti
from medseg.volume import Volume, VolumeKind
from tests.conftest import require_data
from tests.strategies import geometries

REAL_FILES = [
    pytest.param("totalseg-example/example_ct.nii.gz", VolumeKind.IMAGE, id="totalseg-ct"),
    pytest.param("totalseg-example/example_ct_sm.nii.gz", VolumeKind.IMAGE, id="totalseg-ct-sm"),
    pytest.param("totalseg-example/example_seg.nii.gz", VolumeKind.LABELS, id="totalseg-seg"),
    pytest.param("totalseg-example/example_mr_sm.nii.gz", VolumeKind.IMAGE, id="totalseg-mr"),
    pytest.param("mr-tumour/brain1_image.nrrd", VolumeKind.IMAGE, id="brain-mr"),
    pytest.param("mr-tumour/brain1_label.nrrd", VolumeKind.LABELS, id="brain-label"),
    pytest.param("mr-tumour/breast1_image.nrrd", VolumeKind.IMAGE, id="breast-mr"),
]


@pytest.mark.parametrize(("relative", "kind"), REAL_FILES)
def test_real_files_match_simpleitk(relative: str, kind: VolumeKind) -> None:
    path = require_data(relative)
    volume = nifti.load(path, kind)
    image = sitk.ReadImage(str(path))
    g = geo.from_sitk(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    np.testing.assert_allclose(volume.geometry.spacing_mm, g.spacing_mm, atol=1e-4)
    np.testing.assert_allclose(volume.geometry.origin_mm, g.origin_mm, atol=1e-4)
    np.testing.assert_allclose(volume.geometry.direction, g.direction, atol=1e-4)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image))


@pytest.mark.parametrize("suffix", [pytest.param(s, id=s) for s in (".nii.gz", ".nii", ".nrrd")])
@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(g=geometries())
def test_write_read_keeps_geometry(tmp_path: Path, suffix: str, g: Geometry) -> None:
    small = Geometry((3, 4, 5), g.spacing_mm, g.origin_mm, g.direction)
    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    path = tmp_path / f"v{suffix}"
    nifti.save(Volume(array, small), path)
    again = nifti.load(path)
    assert geo.geometries_equal(again.geometry, small, position_tolerance_mm=1e-2)
    np.testing.assert_array_equal(again.array, array)
    image = sitk.ReadImage(str(path))
    theirs = geo.from_sitk(
        image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    )
    assert geo.geometries_equal(theirs, small, position_tolerance_mm=1e-2)


def test_zero_spacing_nifti_names_file_and_problem(tmp_path: Path) -> None:
    path = tmp_path / "zero.nii"
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    image.set_qform(None, code=0)
    image.set_sform(None, code=0)
    nib.save(image, str(path))
    raw = bytearray(path.read_bytes())
    raw[84:88] = np.float32(0.0).tobytes()  # pixdim[2]: the header bytes a broken writer leaves
    path.write_bytes(bytes(raw))
    with pytest.raises(GeometryError, match=rf"{path}.*spacing"):
        nifti.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UnreadableScanError, match="no such file"):
        nifti.load(tmp_path / "nope.nii.gz")


def test_not_a_nifti(tmp_path: Path) -> None:
    path = tmp_path / "fake.nii.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(UnreadableScanError, match=str(path)):
        nifti.load(path)


def test_fractional_labels_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), 0.5, np.float32), np.eye(4)), str(path))
    with pytest.raises(InputError, match="integer values"):
        nifti.load(path, VolumeKind.LABELS)


def test_save_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    g = Geometry((2, 2, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    nifti.save(Volume(np.zeros(g.shape, np.uint8), g, VolumeKind.LABELS), tmp_path / "l.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["l.nii.gz"]


def _conflicting(tmp_path: Path, qcode: int, scode: int) -> Path:

    qform = np.diag([1.0, 1.0, 2.0, 1.0])
    qform[:3, 3] = [10.0, 20.0, 30.0]
    sform = np.diag([1.0, 1.0, 2.0, 1.0])
    sform[:3, 3] = [-5.0, 7.0, 1.0]
    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), None)
    image.set_qform(qform, code=qcode)
    image.set_sform(sform, code=scode)
    path = tmp_path / f"q{qcode}s{scode}.nii.gz"
    nib.save(image, str(path))
    return path


def test_conflicting_qform_sform_warns_naming_both_and_matches_simpleitk(tmp_path: Path) -> None:
    path = _conflicting(tmp_path, qcode=1, scode=1)
    with pytest.warns(UserWarning, match=r"qform \(code 1\).*sform \(code 1\)") as record:
        volume = nifti.load(path)
    assert "(-10.0, -20.0, 30.0)" in str(record[0].message)  # the qform's origin, in LPS
    image = sitk.ReadImage(str(path))
    theirs = geo.from_sitk(
        image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    )
    assert geo.geometries_equal(volume.geometry, theirs)
    assert volume.geometry.origin_mm == pytest.approx((5.0, -7.0, 1.0))


def test_qform_sform_conflict_that_readers_resolve_differently_is_refused(tmp_path: Path) -> None:
    path = _conflicting(tmp_path, qcode=1, scode=2)
    image = sitk.ReadImage(str(path))
    assert image.GetOrigin() == pytest.approx((-10.0, -20.0, 30.0))  # ITK takes the qform here
    with pytest.raises(GeometryError, match=r"conflicting qform and sform.*code 2"):
        nifti.load(path)
