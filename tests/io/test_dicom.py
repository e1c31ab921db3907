"""DICOM series reading against SimpleITK on real data; CT writing checked by dciodvfy."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.datadict import dictionary_VR
from pydicom.valuerep import validate_value
from scipy.spatial.transform import Rotation

from medseg import geometry as geo
from medseg.config import IngestConfig, SeriesSelection
from medseg.errors import (
    DuplicateSliceError,
    ExportError,
    GantryTiltError,
    GeometryError,
    InputError,
    MissingSliceError,
    MixedOrientationError,
    MixedPixelSpacingError,
    OutputError,
    UnevenSpacingError,
    UnreadableScanError,
)
from medseg.geometry import AXIAL_DIRECTION, Geometry
from medseg.io.dicom import TEXT_VR_MAX_CHARACTERS, fit_text, format_ds, load_series, write_series
from medseg.volume import Volume
from tests.conftest import require_data, require_module, require_tool

REAL_SERIES = [
    pytest.param("lung-gtv-ct/pat_1", id="lung-pat1"),
    pytest.param("lung-gtv-ct/pat_2", id="lung-pat2"),
    pytest.param("lung-gtv-ct/pat_3", id="lung-pat3"),
    pytest.param("hn-ct/pt_1", id="hn-511x511"),
    pytest.param("totalseg-example/example_ct_dicom", id="totalseg-ct"),
    pytest.param("dicom-quirks/torchio-dicom", id="torchio-mr"),
    pytest.param("dicom-quirks/rtutils-oriented", id="oriented-no-slicelocation"),
    pytest.param("dicom-quirks/dcmqi-ct-3slice", id="dcmqi-3slice"),
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
    header = volume.source.dicom_header
    padding = None if header is None else header.get("PixelPaddingValue")
    if padding is not None:
        # SimpleITK keeps padding voxels (e.g. -2000 -> -3024 HU); medseg sets them to the
        # smallest real value, so they compare there and everywhere else must be equal
        padded = array == float(padding) * float(header.get("RescaleSlope", 1)) + float(
            header.get("RescaleIntercept", 0)
        )
        assert np.all(volume.array[padded] == volume.array[~padded].min())
        array = np.where(padded, volume.array, array)
    np.testing.assert_allclose(volume.array.astype(np.float64), array, atol=1e-3)


@pytest.mark.parametrize("relative", REAL_SERIES)
def test_real_series_match_simpleitk(relative: str, tmp_path: Path) -> None:
    folder = require_data(relative)
    image_only = folder
    volume = load_series(folder)
    if any(p.name.startswith("DCM_RS") for p in folder.iterdir()):
        # SimpleITK's GDCM series reader must not see the RT-STRUCT: give it the images only
        image_only = tmp_path
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
        by_uid[ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID] = np.array(
            [float(v) for v in ds.ImagePositionPatient]
        )
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
def test_written_series_reads_back_and_matches_simpleitk(
    tmp_path: Path, geometry: Geometry
) -> None:
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
        errors = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if line.startswith("Error")
        ]
        assert errors == [], f"{path.name}: {errors}"


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    g = Geometry((2, 3, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    (tmp_path / "ct").mkdir()
    (tmp_path / "ct" / "keep.txt").write_text("precious")
    with pytest.raises(
        OutputError, match=rf"^{re.escape(str(tmp_path / 'ct'))}: exists; refusing to overwrite"
    ):
        write_series(Volume(np.zeros(g.shape, np.int16), g), tmp_path / "ct")
    assert (tmp_path / "ct" / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(v, id=repr(v))
        for v in (-26.399997413158417, 1e-12, 123456789.123456, -0.0001234, 0.5)
    ],
)
def test_format_ds_fits_16_characters(value: float) -> None:
    text = format_ds(value)
    assert len(text) <= 16
    assert float(text) == pytest.approx(value, rel=1e-9, abs=1e-10)


# --- over-long text: one policy (fit_text) ---------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "value", "problem"),
    [
        pytest.param("StudyDescription", "d" * 65, "65 characters, more than DICOM allows for "
                     "LO (64)", id="LO"),
        pytest.param("StudyID", "s" * 17, "17 characters, more than DICOM allows for SH (16)",
                     id="SH"),
        pytest.param("ReferringPhysicianName", "DOE^" + "J" * 61, "65 characters, more than "
                     "DICOM allows for PN (64 per component group)", id="PN-alphabetic-group"),
        pytest.param("SoftwareVersions", ["1.0", "v" * 65], "65 characters, more than DICOM "
                     "allows for LO (64 per value)", id="LO-second-of-two-values"),
        pytest.param("StructureSetDescription", "x" * 1025, "1025 characters, more than DICOM "
                     "allows for ST (1024)", id="ST"),
    ],
)  # fmt: skip
def test_fit_text_refuses_a_composed_value_and_cuts_a_copied_one(
    keyword: str, value: object, problem: str
) -> None:
    """Composed: ExportError naming attribute, VR, limit and length. Copied: cut, one warning
    naming the attribute. Neither message holds the value (it may be a patient's name)."""
    with pytest.raises(ExportError) as refused:
        fit_text(keyword, value, copied=False, where="out.dcm")
    assert str(refused.value) == f"out.dcm: {keyword} is {problem}"
    with pytest.warns(UserWarning) as w:
        cut = fit_text(keyword, value, copied=True, where="out.dcm")
    assert len(w) == 1
    assert str(w[0].message).startswith(
        f"out.dcm: {keyword} copied from the reference image is {problem}; written cut to "
    )
    for message in (str(refused.value), str(w[0].message)):
        assert "J" * 10 not in message and "v" * 10 not in message and "x" * 10 not in message
    values = cut if isinstance(cut, list) else [cut]
    vr = dictionary_VR(keyword)
    limit = TEXT_VR_MAX_CHARACTERS[vr]
    original = value if isinstance(value, list) else [value]
    assert [v.startswith(o[:limit]) and len(v) == min(len(o), limit) for v, o in
            zip(values, original, strict=True)] == [True] * len(original)  # fmt: skip
    for v in values:  # pydicom's own check agrees (it raises in RAISE mode)
        validate_value(vr, v, pydicom.config.RAISE)


def test_fit_text_keeps_values_that_fit_and_splits_at_backslashes_as_pydicom() -> None:
    name = pydicom.valuerep.PersonName("A" * 64 + "=" + "B" * 64)  # two groups of 64: fits
    assert fit_text("PatientName", name, copied=False, where="x") is name
    assert fit_text("SoftwareVersions", "a" * 64 + "\\" + "b" * 64, copied=False, where="x")
    assert fit_text("StructureSetDescription", "a\\b" * 300, copied=False, where="x")  # ST: 1 text
    assert fit_text("StudyID", None, copied=False, where="x") is None
    assert fit_text("Rows", 512, copied=False, where="x") == 512  # not a text VR
    with pytest.raises(ExportError, match=r"^x: ROIName \(ROI 3\) holds a backslash"):
        fit_text("ROIName", "GTV\\CTV", copied=False, where="x", what="ROI 3")
    with pytest.warns(UserWarning, match="OtherPatientIDs copied") as w:
        cut = fit_text("OtherPatientIDs", "a" * 70 + "\\" + "b" * 3, copied=True, where="x")
    assert cut == ["a" * 64, "bbb"] and len(w) == 1


@pytest.mark.parametrize(
    ("option", "keyword"),
    [
        pytest.param("series_description", "SeriesDescription", id="series-description"),
        pytest.param("patient_name", "PatientName", id="patient-name"),
        pytest.param("patient_id", "PatientID", id="patient-id"),
    ],
)
def test_write_series_refuses_an_over_long_option_without_naming_it(
    option: str, keyword: str, tmp_path: Path
) -> None:
    g = Geometry((2, 3, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    value = "DOE^" + "J" * 70
    with pytest.raises(ExportError, match=rf"{keyword} is 74 characters") as refused:
        write_series(Volume(np.zeros(g.shape, np.int16), g), tmp_path / "ct", **{option: value})
    assert "DOE" not in str(refused.value)
    assert not (tmp_path / "ct").exists()


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


def test_two_image_series_are_refused_and_listed(tmp_path: Path) -> None:
    g = Geometry((2, 3, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    a = write_series(Volume(np.zeros(g.shape, np.int16), g), tmp_path / "a")
    b = write_series(Volume(np.zeros(g.shape, np.int16), g), tmp_path / "b", series_number=2)
    with pytest.raises(InputError, match="2 series match the selection rules") as info:
        load_series(tmp_path)
    for written in (a, b):
        number = 1 if written is a else 2
        assert f"{written.source.series_instance_uid} (CT, series {number}, 2 slices)" in str(
            info.value
        )


# --- mutations of a real series: each gives exactly one named outcome --------------------------

Slices = list[tuple[str, pydicom.Dataset]]


def _real_slices(relative: str = "lung-gtv-ct/pat_1", n: int = 6) -> Slices:
    """``n`` consecutive slices (by position) of a real CT series, as (file name, dataset)."""
    folder = require_data(relative)
    slices = []
    for p in sorted(folder.iterdir()):
        if p.suffix == ".dcm" and not p.name.startswith("DCM_RS"):
            ds = pydicom.dcmread(p)
            if ds.Modality == "CT":
                slices.append((p.name, ds))
    slices.sort(key=lambda s: float(s[1].ImagePositionPatient[2]))
    middle = len(slices) // 2 - n // 2
    return slices[middle : middle + n]


def _save(slices: Slices, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, ds in slices:
        ds.save_as(folder / name)
    return folder


def _drop_slice(s: Slices) -> Slices:
    return s[:3] + s[4:]


def _duplicate_slice(s: Slices) -> Slices:
    copy = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(s[2][1])))
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    return [*s, ("again.dcm", copy)]


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _shift_one_slice(s: Slices) -> Slices:
    pos = [float(v) for v in s[3][1].ImagePositionPatient]
    s[3][1].ImagePositionPatient = [pos[0], pos[1], pos[2] + 1.0]
    return s


def _rotate_one_orientation(s: Slices) -> Slices:
    rot = Rotation.from_euler("z", 10, degrees=True).as_matrix()
    iop = np.array([float(v) for v in s[2][1].ImageOrientationPatient]).reshape(2, 3)
    s[2][1].ImageOrientationPatient = [format_ds(v) for v in (iop @ rot.T).ravel()]
    return s


def _stretch_one_pixel_spacing(s: Slices) -> Slices:
    s[2][1].PixelSpacing = [format_ds(float(v) * 1.1) for v in s[2][1].PixelSpacing]
    return s


def _tilt(s: Slices) -> Slices:
    z0 = float(s[0][1].ImagePositionPatient[2])
    for _, ds in s:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [
            format_ds(v) for v in (x, y + (z - z0) * np.tan(np.radians(15)), z)
        ]
    return s


@pytest.mark.parametrize(
    ("mutate", "error", "names"),
    [
        pytest.param(_drop_slice, MissingSliceError, (2, 4), id="missing-slice"),
        pytest.param(_duplicate_slice, DuplicateSliceError, (2,), id="duplicate-position"),
        pytest.param(_shift_one_slice, UnevenSpacingError, (3,), id="uneven-spacing"),
        pytest.param(_rotate_one_orientation, MixedOrientationError, (2,), id="mixed-orientation"),
        pytest.param(
            _stretch_one_pixel_spacing, MixedPixelSpacingError, (2,), id="mixed-pixel-spacing"
        ),
        pytest.param(_tilt, GantryTiltError, (0, 5), id="gantry-tilt"),
    ],
)
def test_geometry_defects_are_distinct_named_errors(tmp_path: Path, mutate, error, names) -> None:  # type: ignore[no-untyped-def]
    slices = _real_slices()
    file_names = [name for name, _ in slices]
    folder = _save(mutate(slices), tmp_path / "series")
    with pytest.raises(error) as info:
        load_series(folder)
    message = str(info.value)
    assert message.startswith(f"{folder}: ")
    for i in names:
        assert file_names[i] in message
    if error is GantryTiltError:
        assert "15.00 degrees" in message


def test_oblique_copy_keeps_its_direction_and_every_slice_position(tmp_path: Path) -> None:
    slices = _real_slices(n=5)
    rot = Rotation.from_euler("xyz", [20.0, -10.0, 35.0], degrees=True).as_matrix()
    centre = np.array([float(v) for v in slices[2][1].ImagePositionPatient])
    for _, ds in slices:
        iop = np.array([float(v) for v in ds.ImageOrientationPatient]).reshape(2, 3)
        pos = np.array([float(v) for v in ds.ImagePositionPatient])
        ds.ImageOrientationPatient = [format_ds(v) for v in (iop @ rot.T).ravel()]
        ds.ImagePositionPatient = [format_ds(v) for v in rot @ (pos - centre) + centre]
    folder = _save(slices, tmp_path / "oblique")
    volume = load_series(folder)
    by_uid = {ds.SOPInstanceUID: [float(v) for v in ds.ImagePositionPatient] for _, ds in slices}
    expected = np.array([by_uid[u] for u in volume.source.sop_instance_uids])
    np.testing.assert_allclose(geo.slice_positions_mm(volume.geometry), expected, atol=1e-3)
    np.testing.assert_allclose(
        volume.geometry.direction_matrix, rot @ np.asarray(AXIAL_DIRECTION).reshape(3, 3), atol=1e-5
    )
    _assert_same_as_sitk(volume, folder)


def test_non_dicom_file_named_dcm_inside_a_series_is_named(tmp_path: Path) -> None:
    folder = _save(_real_slices(n=3), tmp_path / "series")
    (folder / "IMG_0099.dcm").write_text("this is a note, not a slice")
    with pytest.raises(
        UnreadableScanError, match=r"IMG_0099\.dcm: named \.dcm but is not a DICOM file"
    ):
        load_series(folder)


# --- several series: selection, and only the selected series' pixels are read ---------------


def _two_series_and_a_localizer(tmp_path: Path) -> tuple[Path, str, str]:
    lung = _real_slices("lung-gtv-ct/pat_1", n=6)
    head = _real_slices("hn-ct/pt_1", n=4)
    for description, series in (("CHEST 3 mm", lung), ("HEAD 3 mm", head)):
        for _, ds in series:
            ds.SeriesDescription = description
    scout = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(head[0][1])))
    scout.SeriesInstanceUID = pydicom.uid.generate_uid()
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    _save(lung, tmp_path / "patient" / "study1" / "lung")
    _save(head, tmp_path / "patient" / "study2" / "head")
    _save([("scout.dcm", scout)], tmp_path / "patient" / "scout")
    # the head series' pixel data is cut short: only reading its pixels would fail
    victim = tmp_path / "patient" / "study2" / "head" / head[1][0]
    victim.write_bytes(victim.read_bytes()[:-1000])
    return (
        tmp_path / "patient",
        str(lung[0][1].SeriesInstanceUID),
        str(head[0][1].SeriesInstanceUID),
    )


def test_several_series_need_a_selection_and_the_error_lists_them(tmp_path: Path) -> None:
    folder, lung_uid, head_uid = _two_series_and_a_localizer(tmp_path)
    with pytest.raises(InputError, match="2 series match") as info:
        load_series(folder)
    assert f"{lung_uid} (CT, 6 slices)" in str(info.value)
    assert f"{head_uid} (CT, 4 slices)" in str(info.value)
    assert "CHEST" not in str(info.value)
    assert "localizer" not in str(info.value)


def test_selection_picks_one_series_and_reads_only_its_pixels(tmp_path: Path) -> None:
    folder, lung_uid, _ = _two_series_and_a_localizer(tmp_path)
    volume = load_series(folder, SeriesSelection(prefer="most_slices"))
    assert volume.source.series_instance_uid == lung_uid
    assert volume.geometry.shape[0] == 6


def test_truncated_pixel_data_of_the_selected_series_is_named(tmp_path: Path) -> None:
    folder, _, _ = _two_series_and_a_localizer(tmp_path)
    with pytest.raises(
        UnreadableScanError,
        match=r"head/IMG_\d+\.dcm: truncated DICOM file: element \(7FE0,0010\) declares 522242 bytes, the file holds 521242",
    ):
        load_series(folder, SeriesSelection(include_description="(?i)head"))


# --- pixel decoding: compressed, big-endian, padding, enhanced multi-frame -------------------


def _pydicom_file(name: str) -> str:
    """A pydicom test file; the larger ones come with the pydicom-data package (skip without it,
    fail under CI=true, as ``require_data`` does)."""
    path = pydicom.data.get_testdata_file(name)
    if path is None:
        message = f"pydicom test file {name} missing: install pydicom-data"
        if __import__("os").environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return str(path)


def _as_ct_slice(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Give a single-frame greyscale test file the attributes of a CT slice (pixels untouched)."""
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    ds.Modality = "CT"
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    for keyword in ("NumberOfFrames", "FrameIncrementPointer"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def _stored(volume: Volume) -> np.ndarray:
    return np.asarray(volume.array, dtype=np.int64)


@pytest.mark.parametrize(
    "syntax",
    [
        pytest.param(pydicom.uid.RLELossless, id="rle"),
        pytest.param(pydicom.uid.JPEGLSLossless, id="jpeg-ls"),
        pytest.param(pydicom.uid.JPEG2000Lossless, id="jpeg2000"),
        pytest.param(pydicom.uid.DeflatedExplicitVRLittleEndian, id="deflate"),
    ],
)
def test_real_series_reencoded_loads_identically(tmp_path: Path, syntax: str) -> None:
    slices = _real_slices(n=4)
    reference = load_series(_save(slices, tmp_path / "plain"))
    for _, ds in slices:
        if syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax)
    folder = tmp_path / "encoded"
    folder.mkdir()
    for name, ds in slices:
        ds.save_as(folder / name, implicit_vr=False, little_endian=True, enforce_file_format=True)
    assert {str(pydicom.dcmread(p).file_meta.TransferSyntaxUID) for p in folder.iterdir()} == {
        syntax
    }
    again = load_series(folder)
    assert geo.geometries_equal(again.geometry, reference.geometry)
    np.testing.assert_array_equal(again.array, reference.array)


def test_real_series_reencoded_as_jpeg_lossless_loads_identically(tmp_path: Path) -> None:
    gdcm = require_module("gdcm")  # python-gdcm: the only JPEG lossless encoder at hand
    slices = _real_slices(n=3)
    plain = _save(slices, tmp_path / "plain")
    (tmp_path / "jpeg").mkdir()
    for name, _ in slices:
        reader = gdcm.ImageReader()
        reader.SetFileName(str(plain / name))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(tmp_path / "jpeg" / name))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()
    assert (
        pydicom.dcmread(tmp_path / "jpeg" / slices[0][0]).file_meta.TransferSyntaxUID
        == pydicom.uid.JPEGLosslessSV1
    )
    np.testing.assert_array_equal(load_series(tmp_path / "jpeg").array, load_series(plain).array)


def test_jpeg_baseline_decodes_like_pillow_and_simpleitk(tmp_path: Path) -> None:
    """An 8-bit greyscale JPEG baseline stream (encoded by Pillow) inside a CT slice."""
    from PIL import Image

    _, ds = _real_slices(n=1)[0]
    grey = np.clip((ds.pixel_array.astype(np.int64) - 800) // 4, 0, 255).astype(np.uint8)
    buffer = __import__("io").BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=90)
    ds.PixelData = pydicom.encaps.encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    (tmp_path / "s").mkdir()
    ds.save_as(
        tmp_path / "s" / "x.dcm", implicit_vr=False, little_endian=True, enforce_file_format=True
    )
    volume = load_series(tmp_path / "s")
    pillow = np.asarray(Image.open(buffer))
    assert np.abs(_stored(volume)[0] - pillow).max() <= 1  # two libjpeg builds: IDCT rounding
    assert np.abs(_stored(volume)[0] - grey).max() <= 40  # lossy, but the same image
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "s" / "x.dcm")))
    assert np.abs(_stored(volume) - theirs).max() <= 1


def test_jpeg_lossless_test_file_decodes_like_gdcm(tmp_path: Path) -> None:
    ds = _as_ct_slice(pydicom.dcmread(_pydicom_file("JPEG-LL.dcm")))
    (tmp_path / "s").mkdir()
    ds.save_as(tmp_path / "s" / "x.dcm", enforce_file_format=True)
    volume = load_series(tmp_path / "s")
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "s" / "x.dcm")))
    np.testing.assert_array_equal(volume.array, theirs)


def test_undecodable_jpeg_is_a_named_error(tmp_path: Path) -> None:
    """12-bit JPEG extended: neither pylibjpeg nor pydicom's GDCM plugin decodes it."""
    ds = _as_ct_slice(pydicom.dcmread(_pydicom_file("JPEG-lossy.dcm")))
    (tmp_path / "s").mkdir()
    ds.save_as(tmp_path / "s" / "lossy.dcm", enforce_file_format=True)
    with pytest.raises(UnreadableScanError, match=r"lossy\.dcm: pixel data cannot be decoded"):
        load_series(tmp_path / "s")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, id=n.removeprefix("MR_small_").removesuffix(".dcm"))
        for n in (
            "MR_small_bigendian.dcm",
            "MR_small_expb.dcm",
            "MR_small_implicit.dcm",
            "MR_small_RLE.dcm",
            "MR_small_jp2klossless.dcm",
            "MR_small_jpeg_ls_lossless.dcm",
        )
    ],
)
def test_pydicom_mr_variants_equal_the_plain_file(tmp_path: Path, name: str) -> None:
    for folder, file in (("plain", "MR_small.dcm"), ("variant", name)):
        (tmp_path / folder).mkdir()
        shutil.copy(_pydicom_file(file), tmp_path / folder / file)
    plain, variant = load_series(tmp_path / "plain"), load_series(tmp_path / "variant")
    assert geo.geometries_equal(variant.geometry, plain.geometry)
    np.testing.assert_array_equal(variant.array, plain.array)
    np.testing.assert_array_equal(
        plain.array[0], pydicom.dcmread(tmp_path / "plain" / "MR_small.dcm").pixel_array
    )


def test_pixel_padding_becomes_the_smallest_real_value(tmp_path: Path) -> None:
    """CT_small declares PixelPaddingValue -2000; padding voxels must not read as -3024 HU."""
    ds = pydicom.dcmread(_pydicom_file("CT_small.dcm"))
    stored = ds.pixel_array.copy()
    stored[:10, :] = -2000  # a padded border, as outside a reconstruction circle
    ds.PixelData = stored.tobytes()
    (tmp_path / "s").mkdir()
    ds.save_as(tmp_path / "s" / "ct.dcm")
    volume = load_series(tmp_path / "s")
    real = stored[10:].astype(np.int64) + int(ds.RescaleIntercept)
    assert int(ds.PixelPaddingValue) == -2000
    np.testing.assert_array_equal(volume.array[0, 10:], real)
    assert np.all(volume.array[0, :10] == real.min())


def test_enhanced_ct_frames_take_their_per_frame_positions(tmp_path: Path) -> None:
    path = Path(_pydicom_file("eCT_Supplemental.dcm"))
    folder = tmp_path
    shutil.copy(path, folder / path.name)
    volume = load_series(folder)
    ds = pydicom.dcmread(path)
    frames = ds.PerFrameFunctionalGroupsSequence
    positions = [
        [float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] for f in frames
    ]
    assert volume.geometry.shape == (2, 512, 512)
    assert volume.geometry.spacing_mm == pytest.approx((10.0, 0.388672, 0.388672))
    # sorted along the normal (row x column cosine = -z here), as for single-frame series
    order = np.argsort([-p[2] for p in positions])
    np.testing.assert_allclose(
        geo.slice_positions_mm(volume.geometry), np.array(positions)[order], atol=1e-3
    )
    shared = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    expected = ds.pixel_array[order].astype(np.int64) * int(float(shared.RescaleSlope)) + int(
        float(shared.RescaleIntercept)
    )
    np.testing.assert_array_equal(volume.array, expected)
    # SimpleITK keeps frame order; the same world position holds the same pixels
    image = sitk.ReadImage(str(folder / path.name))
    theirs = sitk.GetArrayFromImage(image)
    for k in range(2):
        origin = image.TransformIndexToPhysicalPoint((0, 0, k))
        ours = int(
            np.argmin(np.linalg.norm(geo.slice_positions_mm(volume.geometry) - origin, axis=1))
        )
        np.testing.assert_array_equal(volume.array[ours], theirs[k])


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, id=n)
        for n in (
            "emri_small.dcm",
            "emri_small_big_endian.dcm",
            "emri_small_RLE.dcm",
            "emri_small_jpeg_ls_lossless.dcm",
            "emri_small_jpeg_2k_lossless.dcm",
        )
    ],
)
def test_enhanced_mr_without_frame_geometry_is_refused(tmp_path: Path, name: str) -> None:
    """pydicom's emri_small files carry no functional groups: SimpleITK reads them with origin
    0 and spacing 1 (silently wrong); medseg names the missing geometry instead."""
    shutil.copy(_pydicom_file(name), tmp_path / name)
    with pytest.raises(
        GeometryError, match=rf"{name}: 10 frames but no PerFrameFunctionalGroupsSequence"
    ):
        load_series(tmp_path)


def test_real_subset_with_a_gap_is_a_missing_slice_error() -> None:
    """monai-ct-dicom holds 4 slices of a longer series: 202.5 mm between two of them."""
    folder = require_data("dicom-quirks/monai-ct-dicom")
    with pytest.raises(MissingSliceError, match=r"161 missing between 7106 and 7136"):
        load_series(folder)


# --- irregular stacks resampled where the ingest config allows it -----------------------------


def _resample(**kwargs: object) -> IngestConfig:
    return IngestConfig(**kwargs)  # type: ignore[arg-type]


def test_missing_slice_is_interpolated_when_config_allows(tmp_path: Path) -> None:
    slices = _real_slices(n=6)
    names = [name for name, _ in slices]
    original = load_series(_save(slices, tmp_path / "all")).array.astype(np.float64)
    folder = _save(_drop_slice(slices), tmp_path / "gap")
    with pytest.raises(MissingSliceError):
        load_series(folder)
    with pytest.warns(UserWarning, match="resampled 5 slices onto .* 6 slices") as record:
        volume = load_series(folder, ingest=_resample(irregular_slices="resample"))
    message = str(record[0].message)
    assert names[2] in message and names[4] in message
    assert "Interpolated target slices (on no acquired slice): 3." in message
    assert volume.geometry.shape[0] == 6 and volume.source.sop_instance_uids == ()
    for k in (0, 1, 2, 4, 5):  # acquired slices keep their values
        np.testing.assert_array_equal(volume.array[k], original[k])
    np.testing.assert_allclose(volume.array[3], (original[2] + original[4]) / 2, atol=1e-3)
    reference = load_series(tmp_path / "all")
    assert geo.geometries_equal(volume.geometry, reference.geometry)


def test_uneven_slice_is_interpolated_when_config_allows(tmp_path: Path) -> None:
    slices = _real_slices(n=6)
    original = load_series(_save(slices, tmp_path / "all")).array.astype(np.float64)
    folder = _save(_shift_one_slice(slices), tmp_path / "uneven")  # slice 3 moved +1 of 3 mm
    with pytest.warns(UserWarning, match="uneven slice spacing"):
        volume = load_series(folder, ingest=_resample(irregular_slices="resample"))
    # target slice 3 is 3 mm above slice 2 and 1 mm below the moved slice: weight 3/4
    np.testing.assert_allclose(volume.array[3], 0.25 * original[2] + 0.75 * original[3], atol=1e-2)
    np.testing.assert_array_equal(volume.array[4], original[4])


def test_gap_wider_than_allowed_stays_an_error(tmp_path: Path) -> None:
    slices = _real_slices(n=8)
    folder = _save(slices[:2] + slices[5:], tmp_path / "wide")  # 3 slices missing
    with pytest.raises(MissingSliceError, match="wider than 2 missing slice"):
        load_series(folder, ingest=_resample(irregular_slices="resample"))


def test_gantry_tilt_is_resampled_onto_an_orthogonal_grid_when_asked(tmp_path: Path) -> None:
    """A tilted copy whose pixels move with its positions holds the same anatomy: slice k is
    shifted by k rows (about 18 degrees at 0.98 mm pixels and 3 mm slices)."""
    slices = _real_slices(n=6)
    reference = load_series(_save(slices, tmp_path / "straight"))
    row_mm = float(slices[0][1].PixelSpacing[0])
    for k, (_, ds) in enumerate(slices):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [format_ds(x), format_ds(y + k * row_mm), format_ds(z)]
        ds.PixelData = np.ascontiguousarray(np.roll(ds.pixel_array, -k, axis=0)).tobytes()
    folder = _save(slices, tmp_path / "tilted")
    with pytest.raises(GantryTiltError, match="degrees"):
        load_series(folder)
    with pytest.raises(GantryTiltError):  # irregular_slices does not cover tilt
        load_series(folder, ingest=_resample(irregular_slices="resample"))
    with pytest.warns(UserWarning, match="gantry tilt or sheared stack of 18.0"):
        volume = load_series(folder, ingest=_resample(gantry_tilt="resample"))
    assert geo.geometries_equal(volume.geometry, reference.geometry)
    np.testing.assert_allclose(volume.array[:, 6:], reference.array[:, 6:], atol=1e-3)


# --- decoding corner cases ----------------------------------------------------------------------


def test_jpeg_extended_12_bit_decodes_like_simpleitk(tmp_path: Path) -> None:
    ds = _as_ct_slice(pydicom.dcmread(_pydicom_file("JPGExtended.dcm")))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGExtended12Bit and ds.BitsStored == 12
    (tmp_path / "s").mkdir()
    ds.save_as(tmp_path / "s" / "x.dcm", enforce_file_format=True)
    volume = load_series(tmp_path / "s")
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "s" / "x.dcm")))
    assert volume.geometry.shape == (1, 1024, 256)
    assert np.abs(_stored(volume) - theirs).max() <= 1  # two libjpeg builds: IDCT rounding
    assert int(theirs.max()) > 200


def test_pixel_data_shorter_than_rows_times_columns_is_named(tmp_path: Path) -> None:
    slices = _real_slices(n=3)
    short = slices[1][1]
    short.PixelData = short.PixelData[: len(short.PixelData) // 2]  # a consistent, short file
    folder = _save(slices, tmp_path / "s")
    with pytest.raises(
        UnreadableScanError, match=rf"{slices[1][0]}: pixel data has \d+ bytes, expected"
    ):
        load_series(folder)


def test_enhanced_ct_keeps_frame_numbers_for_references(tmp_path: Path) -> None:
    path = Path(_pydicom_file("eCT_Supplemental.dcm"))
    folder = tmp_path
    shutil.copy(path, folder / path.name)
    volume = load_series(folder)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert volume.source.sop_instance_uids == (ds.SOPInstanceUID,) * 2
    # sorted along the normal (-z): frame 2 comes first; its position is its own header's
    assert sorted(volume.source.frame_numbers) == [1, 2]
    for k, number in enumerate(volume.source.frame_numbers):
        assert number is not None
        item = ds.PerFrameFunctionalGroupsSequence[number - 1]
        own = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(geo.slice_positions_mm(volume.geometry)[k], own, atol=1e-3)
    single = load_series(require_data("lung-gtv-ct/pat_2"))
    assert single.source.frame_numbers == ()
