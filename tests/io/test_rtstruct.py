"""RT-STRUCT export and import, checked by plastimatch (independent rasteriser) and dciodvfy.

Synthetic masks live on small grids (40 x 96 x 96 at 2.5 x 1 x 1 mm); each test module writes
its referenced CT series once. Real clinical structures come from ``lung-gtv-ct``.
"""

from __future__ import annotations

import dataclasses
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from scipy.spatial.transform import Rotation

from medseg import geometry as geo
from medseg.errors import ConfigError, ExportError, GeometryError, UnreadableScanError
from medseg.geometry import Geometry
from medseg.io import nifti, rtstruct
from medseg.io.dicom import format_ds, load_series
from medseg.io.rois import export_rtstruct, load_roi_specs
from medseg.io.rtstruct import RoiSpec
from medseg.structures import PALETTE
from medseg.volume import Volume, VolumeKind
from tests.conftest import require_data, require_tool
from tests.rt_helpers import (
    dciodvfy_errors,
    dice,
    plastimatch_masks,
    require_geometry_match,
    require_over_long_header_cut,
    write_over_long_reference,
    write_reference_series,
)

AXIAL = Geometry((40, 96, 96), (2.5, 1.0, 1.0), (-47.5, -47.5, -50.0))
OBLIQUE = Geometry(
    (40, 96, 96),
    (2.5, 1.0, 1.0),
    (-47.5, -47.5, -50.0),
    tuple(
        (
            Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix()
            @ np.asarray(geo.AXIAL_DIRECTION).reshape(3, 3)
        ).ravel()
    ),
)


@pytest.fixture(scope="module")
def axial_ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, Path]:
    folder = tmp_path_factory.mktemp("axial") / "ct"
    return write_reference_series(AXIAL, folder), folder


@pytest.fixture(scope="module")
def oblique_ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, Path]:
    folder = tmp_path_factory.mktemp("oblique") / "ct"
    return write_reference_series(OBLIQUE, folder), folder


# ---------------------------------------------------------------------------------------------
# synthetic masks, defined in mm on the reference grid


def _ball_mm(
    g: Geometry, centre_index: tuple[float, float, float], volume_ml: float
) -> NDArray[np.bool_]:
    radius_mm = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    k, j, i = np.indices(g.shape, dtype=float)
    spacing = np.asarray(g.spacing_mm)
    d2 = sum(
        ((axis - c) * s) ** 2 for axis, c, s in zip((k, j, i), centre_index, spacing, strict=True)
    )
    return d2 <= radius_mm**2


def _sphere_65ml(g: Geometry) -> NDArray[np.bool_]:
    return _ball_mm(g, (19.5, 47.3, 48.1), 65.0)


def _lesion_1ml(g: Geometry) -> NDArray[np.bool_]:
    return _ball_mm(g, (12.2, 30.4, 60.7), 1.0)


def _lesion_0_2ml(g: Geometry) -> NDArray[np.bool_]:
    return _ball_mm(g, (25.0, 70.0, 22.0), 0.2)


def _donut(g: Geometry) -> NDArray[np.bool_]:
    _, j, i = np.indices(g.shape, dtype=float)
    r2 = (j - 50.0) ** 2 + (i - 44.0) ** 2
    mask = (r2 <= 18.0**2) & (r2 > 7.0**2)
    mask[:14] = False
    mask[22:] = False
    return mask


def _two_lesions_one_slice(g: Geometry) -> NDArray[np.bool_]:
    a = _ball_mm(g, (20.0, 30.0, 30.0), 0.5)
    b = _ball_mm(g, (20.0, 62.0, 66.0), 0.5)
    return a | b


def _touching_border(g: Geometry) -> NDArray[np.bool_]:
    mask = np.zeros(g.shape, dtype=bool)
    mask[0:6, 0:15, 0:20] = True
    mask[30:, 80:, 90:] = True
    return mask


def _single_voxel(g: Geometry) -> NDArray[np.bool_]:
    mask = np.zeros(g.shape, dtype=bool)
    mask[17, 41, 52] = True
    return mask


CASES: dict[str, Callable[[Geometry], NDArray[np.bool_]]] = {
    "sphere-65ml": _sphere_65ml,
    "lesion-1ml": _lesion_1ml,
    "lesion-0.2ml": _lesion_0_2ml,
    "donut": _donut,
    "two-lesions-one-slice": _two_lesions_one_slice,
    "touching-border": _touching_border,
    "single-voxel": _single_voxel,
}
OBLIQUE_CASES = ["sphere-65ml", "donut", "lesion-0.2ml"]


def _labels(mask: NDArray[np.bool_], reference: Volume, label: int = 1) -> Volume:
    return Volume(mask.astype(np.uint8) * label, reference.geometry, VolumeKind.LABELS)


def _check_against_plastimatch(
    case: str, reference: Volume, ct_dir: Path, tmp_path: Path
) -> tuple[float, float]:
    mask = CASES[case](reference.geometry)
    assert mask.any()
    out = rtstruct.write(
        _labels(mask, reference), reference, [RoiSpec(case, 1)], tmp_path / "rs.dcm"
    )
    # our reader gives the mask back exactly
    ours = rtstruct.read(out, reference)[case]
    assert np.array_equal(ours.array, mask.astype(np.uint8))
    theirs = plastimatch_masks(out, ct_dir, tmp_path / "plastimatch")[case]
    require_geometry_match(theirs.geometry, reference.geometry)
    d = dice(theirs.array, mask)
    ratio = float(theirs.array.sum()) / float(mask.sum())
    assert d >= 0.999, f"{case}: plastimatch Dice {d:.5f}"
    assert abs(ratio - 1.0) <= 0.005, f"{case}: plastimatch volume ratio {ratio:.5f}"
    return d, ratio


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_plastimatch_reproduces_axial_masks(
    case: str, axial_ct: tuple[Volume, Path], tmp_path: Path
) -> None:
    reference, ct_dir = axial_ct
    _check_against_plastimatch(case, reference, ct_dir, tmp_path)


@pytest.mark.parametrize("case", OBLIQUE_CASES, ids=OBLIQUE_CASES)
def test_plastimatch_reproduces_oblique_masks(
    case: str, oblique_ct: tuple[Volume, Path], tmp_path: Path
) -> None:
    reference, ct_dir = oblique_ct
    assert abs(reference.geometry.direction_matrix[2, 0]) < 0.99  # really oblique
    _check_against_plastimatch(case, reference, ct_dir, tmp_path)


def test_contours_lie_in_their_slice_planes(
    oblique_ct: tuple[Volume, Path], tmp_path: Path
) -> None:
    """Every point is exactly (to DS precision) in the plane of the slice it references."""
    reference, _ = oblique_ct
    g = reference.geometry
    out = rtstruct.write(
        _labels(_sphere_65ml(g), reference), reference, [RoiSpec("sphere", 1)], tmp_path / "rs.dcm"
    )
    ds = pydicom.dcmread(out)
    uid_to_k = {uid: k for k, uid in enumerate(reference.source.sop_instance_uids)}
    for contour in ds.ROIContourSequence[0].ContourSequence:
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        assert contour.NumberOfContourPoints >= 3
        k = uid_to_k[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        index = geo.world_to_index(g, points)
        assert np.abs(index[:, 0] - k).max() * g.spacing_mm[0] < 1e-4


# ---------------------------------------------------------------------------------------------
# DICOM conformance


def test_dciodvfy_reports_no_errors(axial_ct: tuple[Volume, Path], tmp_path: Path) -> None:
    exe = require_tool("dciodvfy")
    reference, _ = axial_ct
    g = reference.geometry
    labels = np.zeros(g.shape, dtype=np.uint8)
    labels[_sphere_65ml(g)] = 1
    labels[_donut(g)] = 2
    labels[_single_voxel(g)] = 3
    rois = [
        RoiSpec("Sphere", 1, (255, 0, 0), "GTV"),
        RoiSpec("Donut", 2, (0, 255, 0), "OAR"),
        RoiSpec("Voxel", 3, (0, 0, 255)),
        RoiSpec("Absent", 4),
    ]
    with pytest.warns(UserWarning, match="'Absent'"):
        out = rtstruct.write(
            Volume(labels, g, VolumeKind.LABELS),
            reference,
            rois,
            tmp_path / "rs.dcm",
            model_id="unet-test-1",
            empty="keep",  # a ROI without contours is valid DICOM too
        )
    result = subprocess.run(
        [exe, str(out)], capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert errors == [], output
    ds = pydicom.dcmread(out)
    assert ds.StudyInstanceUID == reference.source.study_instance_uid
    assert ds.SeriesInstanceUID != reference.source.series_instance_uid
    assert ds.FrameOfReferenceUID == reference.source.frame_of_reference_uid
    for keyword in ("AccessionNumber", "ReferringPhysicianName", "OperatorsName", "StudyID"):
        assert keyword in ds
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    images = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].ContourImageSequence
    assert [i.ReferencedSOPInstanceUID for i in images] == list(reference.source.sop_instance_uids)
    roi = ds.StructureSetROISequence[0]
    assert roi.ROIGenerationAlgorithm == "AUTOMATIC"
    assert (
        "medseg" in roi.ROIGenerationDescription and "unet-test-1" in roi.ROIGenerationDescription
    )
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == [
        "GTV",
        "OAR",
        "ORGAN",
        "ORGAN",
    ]
    assert "ContourSequence" not in ds.ROIContourSequence[3]
    back = rtstruct.read(out, reference)
    assert list(back) == ["Sphere", "Donut", "Voxel", "Absent"]
    for name, label in (("Sphere", 1), ("Donut", 2), ("Voxel", 3), ("Absent", 4)):
        assert np.array_equal(back[name].array, (labels == label).astype(np.uint8)), name
    for value in (v for c in ds.ROIContourSequence[0].ContourSequence for v in c.ContourData):
        assert len(str(value)) <= 16


@pytest.mark.parametrize("scale", [1e4, 1e2, 1.0, 1e-3], ids=["1e4", "1e2", "1", "1e-3"])
def test_ds_values_fit_16_characters(scale: float) -> None:
    rng = np.random.default_rng(3)
    for value in rng.uniform(-scale, scale, 2000):
        text = format_ds(float(value))
        assert len(text) <= 16, text
        assert abs(float(text) - value) <= 1e-4


def test_long_contours_are_split_below_64kB(tmp_path: Path) -> None:
    """A comb whose outline needs > 64 kB is split into pieces that fill the same voxels."""
    # irregular spacing and origin make every DS value long (up to 16 characters)
    g = Geometry(
        (3, 400, 400), (2.5, 0.7777777, 0.7777777), (-155.5555551, -150.1234567, -2.3456789)
    )
    reference = write_reference_series(g, tmp_path / "ct")
    mask = np.zeros(g.shape, dtype=bool)
    mask[1, 20:380, 10:390] = True
    mask[1, 10:20, 10:390:2] = True  # teeth on top ...
    mask[1, 380:391, 11:390:2] = True  # ... and bottom, 1 voxel wide
    mask[1, 30:370:2, 390:393] = True  # and on the right
    out = rtstruct.write(
        _labels(mask, reference), reference, [RoiSpec("comb", 1)], tmp_path / "rs.dcm"
    )
    raw = pydicom.dcmread(out, defer_size=None)
    sequence = raw.ROIContourSequence[0].ContourSequence
    lengths = [len("\\".join(str(v) for v in c.ContourData)) for c in sequence]
    assert len(sequence) > 1, "the comb outline fits one contour; make it longer"
    assert max(lengths) <= rtstruct.MAX_CONTOUR_DATA_BYTES
    assert sum(lengths) > rtstruct.MAX_CONTOUR_DATA_BYTES
    assert np.array_equal(rtstruct.read(out, reference)["comb"].array, mask.astype(np.uint8))
    theirs = plastimatch_masks(out, tmp_path / "ct", tmp_path / "plastimatch")["comb"]
    require_geometry_match(theirs.geometry, g)
    assert dice(theirs.array, mask) == 1.0


def test_split_contours_with_small_limit(
    axial_ct: tuple[Volume, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, ct_dir = axial_ct
    from medseg.io.rtstruct import _write  # the writer reads its own module global

    monkeypatch.setattr(_write, "MAX_CONTOUR_DATA_BYTES", 1500)
    mask = _sphere_65ml(reference.geometry) & ~_donut(reference.geometry)
    out = rtstruct.write(
        _labels(mask, reference), reference, [RoiSpec("s", 1)], tmp_path / "rs.dcm"
    )
    sequence = pydicom.dcmread(out).ROIContourSequence[0].ContourSequence
    assert max(len("\\".join(str(v) for v in c.ContourData)) for c in sequence) <= 1500
    assert np.array_equal(rtstruct.read(out, reference)["s"].array, mask.astype(np.uint8))
    theirs = plastimatch_masks(out, ct_dir, tmp_path / "plastimatch")["s"]
    assert dice(theirs.array, mask) >= 0.999


# ---------------------------------------------------------------------------------------------
# invalid input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"name": "", "label": 1}, "non-empty", id="empty-name"),
        pytest.param({"name": "x" * 65, "label": 1}, "64", id="long-name"),
        pytest.param({"name": "a", "label": 0}, "label", id="label-0"),
        pytest.param({"name": "a", "label": 1.5}, "label", id="label-float"),
        pytest.param({"name": "a", "label": 1, "color": (0, 0, 256)}, "color", id="color"),
        pytest.param(
            {"name": "a", "label": 1, "interpreted_type": "TUMOUR"}, "Interpreted", id="type"
        ),
    ],
)
def test_roi_spec_refuses_invalid_fields(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ExportError, match=match):
        RoiSpec(**kwargs)  # type: ignore[arg-type]


def test_write_refuses_invalid_input(axial_ct: tuple[Volume, Path], tmp_path: Path) -> None:
    reference, _ = axial_ct
    g = reference.geometry
    labels = _labels(_lesion_1ml(g), reference)
    out = tmp_path / "rs.dcm"
    with pytest.raises(ExportError, match="LABELS"):
        rtstruct.write(
            labels.with_array(labels.array, VolumeKind.IMAGE), reference, [RoiSpec("a", 1)], out
        )
    with pytest.raises(ExportError, match="duplicate ROI names"):
        rtstruct.write(labels, reference, [RoiSpec("a", 1), RoiSpec("a", 2)], out)
    with pytest.raises(ExportError, match="no ROIs"):
        rtstruct.write(labels, reference, [], out)
    with pytest.raises(ExportError, match="model_id"):
        rtstruct.write(labels, reference, [RoiSpec("a", 1)], out, model_id="m" * 80)
    bare = Volume(np.zeros(g.shape, np.int16), g)
    with pytest.raises(ExportError, match="not read from DICOM"):
        rtstruct.write(labels, bare, [RoiSpec("a", 1)], out)
    shifted = Geometry(g.shape, g.spacing_mm, (g.origin_mm[0] + 1.0, *g.origin_mm[1:]), g.direction)
    with pytest.raises(GeometryError):
        rtstruct.write(
            Volume(labels.array, shifted, VolumeKind.LABELS), reference, [RoiSpec("a", 1)], out
        )
    assert not out.exists()


@pytest.mark.parametrize("empty", ["keep", "omit"], ids=["keep", "omit"])
def test_empty_roi_is_warned_about(
    axial_ct: tuple[Volume, Path], tmp_path: Path, empty: str
) -> None:
    reference, _ = axial_ct
    labels = _labels(_lesion_1ml(reference.geometry), reference)
    with pytest.warns(UserWarning, match="'Nothing'"):
        out = rtstruct.write(
            labels,
            reference,
            [RoiSpec("Lesion", 1), RoiSpec("Nothing", 7)],
            tmp_path / "rs.dcm",
            empty=empty,  # type: ignore[arg-type]
        )
    names = list(rtstruct.read(out, reference))
    assert names == (["Lesion", "Nothing"] if empty == "keep" else ["Lesion"])


# ---------------------------------------------------------------------------------------------
# over-long text: refused when composed, cut when copied from the reference (io.dicom.fit_text)

SMALL = Geometry((6, 16, 16), (2.5, 1.0, 1.0), (0.0, 0.0, 0.0))


def _small_labels(reference: Volume) -> Volume:
    labels = np.zeros(reference.geometry.shape, dtype=np.uint8)
    labels[2:4, 4:9, 5:11] = 1
    return Volume(labels, reference.geometry, VolumeKind.LABELS)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"algorithm_version": "v" * 70}, "SoftwareVersions is 70 characters, more "
                     "than DICOM allows for LO (64)", id="version"),
        pytest.param({"algorithm_name": "n" * 60}, "ROIGenerationDescription (algorithm name, "
                     "version and model_id) is 66 characters, more than DICOM allows for LO "
                     "(64)", id="name"),
    ],
)  # fmt: skip
def test_an_over_long_option_is_refused_naming_the_attribute(
    options: dict[str, str], message: str, tmp_path: Path
) -> None:
    reference = write_reference_series(SMALL, tmp_path / "ct")
    out = tmp_path / "rs.dcm"
    with pytest.raises(ExportError) as refused:
        rtstruct.write(
            _small_labels(reference), reference, [RoiSpec("GTV", 1)], out,
            **{"algorithm_version": "0.1.0", **options},
        )  # fmt: skip
    assert str(refused.value) == f"{out}: {message}"
    assert not out.exists()


def test_over_long_reference_attributes_are_cut_with_a_warning(tmp_path: Path) -> None:
    """A 70-character StudyDescription, a 20-character StudyID etc. on the CT: the structure
    set is written, each value cut to its limit and warned about once, and dciodvfy agrees."""
    reference = write_over_long_reference(SMALL, tmp_path / "ct")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = rtstruct.write(
            _small_labels(reference), reference, [RoiSpec("GTV", 1)], tmp_path / "rs.dcm"
        )
    require_over_long_header_cut(out, caught)


def test_long_names_have_no_cut_observation_label(tmp_path: Path) -> None:
    """ROIObservationLabel is SH (16): a longer ROI name is left out of it, not cut (two cut
    names could be the same label); the ROIName keeps the whole name."""
    reference = write_reference_series(SMALL, tmp_path / "ct")
    array = np.array(_small_labels(reference).array)
    array[2:4, 10:14, 2:6] = 2
    labels = Volume(array, reference.geometry, VolumeKind.LABELS)
    long_name = "Parotid_L_PRV03mm"  # 17 characters
    out = rtstruct.write(
        labels, reference, [RoiSpec("GTV", 1), RoiSpec(long_name, 2)], tmp_path / "rs.dcm"
    )
    ds = pydicom.dcmread(out)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["GTV", long_name]
    observations = ds.RTROIObservationsSequence
    assert observations[0].ROIObservationLabel == "GTV"
    assert "ROIObservationLabel" not in observations[1]
    assert dciodvfy_errors(out) == []


def test_many_omitted_structures_are_counted_within_the_description_limit(
    tmp_path: Path,
) -> None:
    """StructureSetDescription (ST, 1024) names as many omitted ROIs as fit, then counts."""
    reference = write_reference_series(SMALL, tmp_path / "ct")
    absent = [RoiSpec(f"{k:02d}_" + "x" * 57, k) for k in range(2, 40)]  # 60 characters each
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per omitted ROI
        out = rtstruct.write(
            _small_labels(reference), reference, [RoiSpec("GTV", 1), *absent],
            tmp_path / "rs.dcm",
        )  # fmt: skip
    description = str(pydicom.dcmread(out).StructureSetDescription)
    assert len(description) <= 1024
    shown = [r.name for r in absent if r.name in description]
    assert shown == [r.name for r in absent[: len(shown)]] and 0 < len(shown) < len(absent)
    assert description.endswith(f", {len(absent) - len(shown)} more")
    assert dciodvfy_errors(out) == []


# ---------------------------------------------------------------------------------------------
# reading


def _written(reference: Volume, tmp_path: Path) -> tuple[Path, NDArray[np.bool_]]:
    mask = _lesion_1ml(reference.geometry) | _donut(reference.geometry)
    out = rtstruct.write(
        _labels(mask, reference), reference, [RoiSpec("Target", 1)], tmp_path / "rs.dcm"
    )
    return out, mask


def test_read_matches_by_position_without_contour_image_sequence(
    oblique_ct: tuple[Volume, Path], tmp_path: Path
) -> None:
    reference, _ = oblique_ct
    out, mask = _written(reference, tmp_path)
    ds = pydicom.dcmread(out)
    for contour in ds.ROIContourSequence[0].ContourSequence:
        del contour.ContourImageSequence
    ds.save_as(tmp_path / "no-refs.dcm")
    back = rtstruct.read(tmp_path / "no-refs.dcm", reference)["Target"]
    assert np.array_equal(back.array, mask.astype(np.uint8))
    assert back.kind is VolumeKind.LABELS and back.array.dtype == np.uint8


@pytest.mark.parametrize("keep_references", [True, False], ids=["with-uid", "by-position"])
def test_read_refuses_contours_off_the_slice_planes(
    axial_ct: tuple[Volume, Path], tmp_path: Path, keep_references: bool
) -> None:
    reference, _ = axial_ct
    out, _ = _written(reference, tmp_path)
    ds = pydicom.dcmread(out)
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    if not keep_references:
        for c in ds.ROIContourSequence[0].ContourSequence:
            del c.ContourImageSequence
    points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
    normal = reference.geometry.direction_matrix[:, 0]
    # tilt the contour: its points drift up to 0.8 slices off its plane
    drift = np.linspace(0.0, 0.8, len(points))[:, None] * reference.geometry.spacing_mm[0] * normal
    contour.ContourData = [format_ds(float(v)) for v in (points + drift).ravel()]
    ds.save_as(tmp_path / "off.dcm")
    with pytest.raises(GeometryError, match="'Target'"):
        rtstruct.read(tmp_path / "off.dcm", reference)


def test_read_refuses_another_frame_of_reference(
    axial_ct: tuple[Volume, Path], tmp_path: Path
) -> None:
    reference, _ = axial_ct
    out, _ = _written(reference, tmp_path)
    other = dataclasses.replace(
        reference, source=dataclasses.replace(reference.source, frame_of_reference_uid="1.2.3.4")
    )
    with pytest.raises(GeometryError, match="frame of reference"):
        rtstruct.read(out, other)


def test_read_refuses_a_ct_slice(axial_ct: tuple[Volume, Path]) -> None:
    reference, ct_dir = axial_ct
    with pytest.raises(UnreadableScanError, match="not an RT Structure Set"):
        rtstruct.read(next(ct_dir.iterdir()), reference)


# ---------------------------------------------------------------------------------------------
# real clinical structures

#: GTV volumes plastimatch 1.9.4 computes for lung-gtv-ct pat_1..3 (FINDINGS.md), mL.
LUNG_GTV_ML = {"pat_1": 358.68, "pat_2": 6.46, "pat_3": 11.59}


@pytest.mark.parametrize("patient", list(LUNG_GTV_ML), ids=list(LUNG_GTV_ML))
def test_real_lung_gtv_matches_plastimatch(patient: str, tmp_path: Path) -> None:
    folder = require_data(f"lung-gtv-ct/{patient}")
    reference = load_series(folder)
    (rs_path,) = sorted(folder.glob("DCM_RS_*.dcm"))
    ours = rtstruct.read(rs_path, reference)
    theirs = plastimatch_masks(rs_path, folder, tmp_path / "plastimatch")
    assert len(ours) == 1 and set(ours) == set(theirs)
    (name,) = ours
    require_geometry_match(theirs[name].geometry, reference.geometry)
    ours_ml = float(ours[name].array.sum()) * reference.voxel_volume_ml
    theirs_ml = float(theirs[name].array.sum()) * reference.voxel_volume_ml
    assert dice(ours[name].array, theirs[name].array) >= 0.99
    assert theirs_ml == pytest.approx(LUNG_GTV_ML[patient], rel=0.01)
    assert ours_ml == pytest.approx(LUNG_GTV_ML[patient], rel=0.01)

    # round trip: our RT-STRUCT of that mask, rasterised by plastimatch
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = rtstruct.write(
            ours[name], reference, [RoiSpec(name, 1, interpreted_type="GTV")], tmp_path / "ours.dcm"
        )
    again = plastimatch_masks(out, folder, tmp_path / "plastimatch-ours")[name]
    assert dice(again.array, ours[name].array) >= 0.999


# ---------------------------------------------------------------------------------------------
# overlapping ROIs, standard names


def test_write_masks_keeps_overlapping_rois(axial_ct: tuple[Volume, Path], tmp_path: Path) -> None:
    """A ROI inside another (cord in canal) needs one volume per ROI; both come back exact."""
    reference, ct_dir = axial_ct
    g = reference.geometry
    canal = _sphere_65ml(g)
    cord = _lesion_1ml(g) | (_sphere_65ml(g) & _donut(g))
    assert (canal & cord).any()
    rois = [
        (RoiSpec("Canal", 1, standard_name="SpinalCanal"), _labels(canal, reference)),
        (RoiSpec("Cord", 1, (0, 0, 255), standard_name="SpinalCord"), _labels(cord, reference)),
    ]
    out = rtstruct.write_masks(rois, reference, tmp_path / "rs.dcm")
    ds = pydicom.dcmread(out)
    assert [r.ROIDescription for r in ds.StructureSetROISequence] == ["SpinalCanal", "SpinalCord"]
    back = rtstruct.read(out, reference)
    theirs = plastimatch_masks(out, ct_dir, tmp_path / "plastimatch")
    for name, mask in (("Canal", canal), ("Cord", cord)):
        assert np.array_equal(back[name].array, mask.astype(np.uint8)), name
        assert dice(theirs[name].array, mask) >= 0.999, name


def test_standard_name_is_validated() -> None:
    with pytest.raises(ExportError, match="standard_name"):
        RoiSpec("a", 1, standard_name="x" * 65)
    with pytest.raises(ExportError, match="standard_name"):
        RoiSpec("a", 1, standard_name="a\\b")


# ---------------------------------------------------------------------------------------------
# rois.yaml and export_rtstruct


def test_load_roi_specs(tmp_path: Path) -> None:
    path = tmp_path / "rois.yaml"
    path.write_text(
        "rois:\n"
        "  - {label: 1, name: GTV, color: [255, 0, 0], type: GTV, standard_name: GTVp}\n"
        "  - {label: 3, name: Parotid L}\n"
    )
    gtv, parotid = load_roi_specs(path)
    assert gtv == RoiSpec("GTV", 1, (255, 0, 0), "GTV", "GTVp")
    # type decided from the name, colour the first palette colour not taken
    assert (parotid.name, parotid.label, parotid.interpreted_type.value) == (
        "Parotid L",
        3,
        "ORGAN",
    )
    assert parotid.display_color == PALETTE[0]


def test_rois_yaml_is_the_model_labels_schema(tmp_path: Path) -> None:
    """rois.yaml takes the map of model.labels too, and bare lists; both give Structures."""
    from medseg.config import ModelConfig

    short, bare = tmp_path / "short.yaml", tmp_path / "bare.yaml"
    short.write_text("rois: {1: CTV_High, 2: Tumor, 3: Spinal Cord}\n")
    bare.write_text("- {label: 1, name: CTV_High}\n- {label: 2, name: Tumor}\n"
                    "- {label: 3, name: Spinal Cord}\n")  # fmt: skip
    from_map, from_list = load_roi_specs(short), load_roi_specs(bare)
    assert from_map == from_list
    assert [s.interpreted_type.value for s in from_map] == ["CTV", "GTV", "ORGAN"]
    assert len({s.display_color for s in from_map}) == 3
    model = ModelConfig(channels=(4, 8), strides=(2,), labels={1: "CTV_High", 2: "Tumor",
                                                               3: "Spinal Cord"})  # fmt: skip
    assert model.labels == from_map


def test_rois_yaml_refuses_a_standard_name_outside_tg263(tmp_path: Path) -> None:
    path = tmp_path / "rois.yaml"
    path.write_text("rois:\n  - {label: 1, name: Parotid L, standard_name: Parotid_Lt}\n")
    with pytest.raises(
        ConfigError, match=r"rois\.0\.standard_name: .*not a TG-263 name.*Parotid_L"
    ):
        load_roi_specs(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("rois:\n  - {label: 1, name: A, colour: [1, 2, 3]}\n", r"rois\.0\.colour: unknown key", id="unknown-key"),
        pytest.param("roi:\n  - {label: 1, name: A}\n", "roi: unknown key", id="unknown-top-key"),
        pytest.param("rois:\n  - {name: A}\n", r"rois\.0\.label", id="missing-label"),
        pytest.param("rois:\n  - {label: 1, name: A, type: TUMOUR}\n", "Interpreted", id="bad-type"),
        pytest.param("rois:\n  - {label: 1, name: A}\n  - {label: 1, name: B}\n", "duplicate label", id="duplicate-label"),
        pytest.param("rois: [\n", "not valid YAML", id="bad-yaml"),
        pytest.param("rois: []\n", "rois", id="empty"),
    ],
)  # fmt: skip
def test_load_roi_specs_refuses_invalid_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "rois.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_roi_specs(path)
    assert str(path) in str(info.value)


def test_export_rtstruct_from_nifti(axial_ct: tuple[Volume, Path], tmp_path: Path) -> None:
    reference, ct_dir = axial_ct
    g = reference.geometry
    labels = np.zeros(g.shape, dtype=np.uint8)
    labels[_sphere_65ml(g)] = 2
    labels[_lesion_1ml(g)] = 4
    labels_path = nifti.save(Volume(labels, g, VolumeKind.LABELS), tmp_path / "labels.nii.gz")

    out = export_rtstruct(ct_dir, labels_path, None, tmp_path / "default.dcm")
    assert dciodvfy_errors(out) == []
    back = rtstruct.read(out, reference)
    assert list(back) == ["label_2", "label_4"]
    assert np.array_equal(back["label_4"].array, (labels == 4).astype(np.uint8))

    rois = tmp_path / "rois.yaml"
    rois.write_text("rois:\n  - {label: 4, name: GTV, type: GTV, standard_name: GTVp}\n")
    with pytest.warns(UserWarning, match=r"label value\(s\) \[2\]"):
        out = export_rtstruct(ct_dir, labels_path, rois, tmp_path / "named.dcm")
    ds = pydicom.dcmread(out)
    assert [(r.ROIName, r.ROIDescription) for r in ds.StructureSetROISequence] == [("GTV", "GTVp")]
    assert ds.RTROIObservationsSequence[0].RTROIInterpretedType == "GTV"


def test_export_rtstruct_reorders_flipped_axes_without_interpolation(
    axial_ct: tuple[Volume, Path], tmp_path: Path
) -> None:
    """The same voxels stored with the row axis reversed (as dcm2niix writes) are accepted."""
    reference, ct_dir = axial_ct
    g = reference.geometry
    labels = _labels(_lesion_1ml(g) | _donut(g), reference)
    last_row = geo.index_to_world(g, [0.0, g.shape[1] - 1.0, 0.0])
    flipped_geometry = Geometry(
        g.shape,
        g.spacing_mm,
        tuple(float(v) for v in last_row),  # type: ignore[arg-type]
        tuple((g.direction_matrix @ np.diag([1.0, -1.0, 1.0])).ravel()),
    )
    stored = np.ascontiguousarray(np.flip(np.asarray(labels.array), axis=1))
    path = nifti.save(Volume(stored, flipped_geometry, VolumeKind.LABELS), tmp_path / "l.nii.gz")
    out = export_rtstruct(ct_dir, path, None, tmp_path / "rs.dcm")
    assert np.array_equal(rtstruct.read(out, reference)["label_1"].array, labels.array)


@pytest.mark.parametrize(
    "change",
    ["shift-half-voxel", "spacing", "shape"],
    ids=["shift-half-voxel", "spacing", "shape"],
)
def test_export_rtstruct_refuses_labels_off_the_ct_grid(
    axial_ct: tuple[Volume, Path], tmp_path: Path, change: str
) -> None:
    _, ct_dir = axial_ct
    g = AXIAL
    if change == "shift-half-voxel":
        other = Geometry(g.shape, g.spacing_mm, (g.origin_mm[0] + 0.5, *g.origin_mm[1:]))
    elif change == "spacing":
        other = Geometry(g.shape, (2.5, 1.0, 1.1), g.origin_mm)
    else:
        other = Geometry((g.shape[0] - 1, *g.shape[1:]), g.spacing_mm, g.origin_mm)
    labels = np.zeros(other.shape, dtype=np.uint8)
    labels[5, 10:20, 10:20] = 1
    path = nifti.save(Volume(labels, other, VolumeKind.LABELS), tmp_path / "labels.nii.gz")
    out = tmp_path / "rs.dcm"
    with pytest.raises(GeometryError, match="not on the grid") as info:
        export_rtstruct(ct_dir, path, None, out)
    assert str(path) in str(info.value) and str(ct_dir) in str(info.value)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# missing UIDs in the reference


@pytest.mark.parametrize(
    ("field", "tag"),
    [("study_instance_uid", "StudyInstanceUID (0020,000D)"),
     ("series_instance_uid", "SeriesInstanceUID (0020,000E)")],
    ids=["study", "series"],
)  # fmt: skip
def test_missing_reference_uids(
    axial_ct: tuple[Volume, Path], tmp_path: Path, field: str, tag: str
) -> None:
    reference, _ = axial_ct
    blank = dataclasses.replace(
        reference, source=dataclasses.replace(reference.source, **{field: None})
    )
    labels = _labels(_lesion_1ml(reference.geometry), reference)
    out = tmp_path / "rs.dcm"
    with pytest.raises(ExportError, match=tag.replace("(", r"\(").replace(")", r"\)")) as info:
        rtstruct.write(labels, blank, [RoiSpec("a", 1)], out)
    assert str(reference.source.path) in str(info.value) and not out.exists()

    with pytest.warns(UserWarning, match="generated"):
        rtstruct.write(labels, blank, [RoiSpec("a", 1)], out, missing_uids="generate")
    with pytest.warns(UserWarning, match="generated"):
        rtstruct.write(
            labels, blank, [RoiSpec("a", 1)], tmp_path / "again.dcm", missing_uids="generate"
        )
    assert dciodvfy_errors(out) == []
    first, second = pydicom.dcmread(out), pydicom.dcmread(tmp_path / "again.dcm")
    study = first.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    series = study.RTReferencedSeriesSequence[0]
    generated = (
        study.ReferencedSOPInstanceUID
        if field == "study_instance_uid"
        else series.SeriesInstanceUID
    )
    assert generated and generated != getattr(reference.source, field)
    # the same series always gets the same generated UID
    study2 = second.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert study2.ReferencedSOPInstanceUID == study.ReferencedSOPInstanceUID
    assert study2.RTReferencedSeriesSequence[0].SeriesInstanceUID == series.SeriesInstanceUID


def test_missing_frame_of_reference_is_always_an_error(
    axial_ct: tuple[Volume, Path], tmp_path: Path
) -> None:
    reference, _ = axial_ct
    blank = dataclasses.replace(
        reference, source=dataclasses.replace(reference.source, frame_of_reference_uid=None)
    )
    labels = _labels(_lesion_1ml(reference.geometry), reference)
    with pytest.raises(ExportError, match="FrameOfReferenceUID"):
        rtstruct.write(
            labels, blank, [RoiSpec("a", 1)], tmp_path / "rs.dcm", missing_uids="generate"
        )


# ---------------------------------------------------------------------------------------------
# sub-voxel contours from probabilities


def _smooth_ball(
    g: Geometry, centre_index: tuple[float, float, float], volume_ml: float, width_mm: float
) -> NDArray[np.float64]:
    """Foreground probability falling smoothly (logistic, ``width_mm``) across a sphere."""
    radius_mm = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    k, j, i = np.indices(g.shape, dtype=float)
    distance = np.sqrt(
        sum(
            ((a - c) * s) ** 2
            for a, c, s in zip((k, j, i), centre_index, g.spacing_mm, strict=True)
        )
    )
    return 1.0 / (1.0 + np.exp((distance - radius_mm) / width_mm))


@pytest.mark.parametrize(
    ("case", "volume_ml"), [("sphere-65ml", 65.0), ("lesion-1ml", 1.0), ("lesion-0.5ml", 0.5)],
    ids=["sphere-65ml", "lesion-1ml", "lesion-0.5ml"],
)  # fmt: skip
@pytest.mark.parametrize("grid", ["axial", "oblique"], ids=["axial", "oblique"])
def test_probability_contours_match_plastimatch(
    case: str,
    volume_ml: float,
    grid: str,
    axial_ct: tuple[Volume, Path],
    oblique_ct: tuple[Volume, Path],
    tmp_path: Path,
) -> None:
    reference, ct_dir = axial_ct if grid == "axial" else oblique_ct
    g = reference.geometry
    foreground = _smooth_ball(g, (19.3, 47.6, 48.2), volume_ml, width_mm=1.5)
    mask = foreground > 0.5
    probabilities = Volume(np.stack([1.0 - foreground, foreground]), g, VolumeKind.PROBABILITIES)
    out = rtstruct.write(
        _labels(mask, reference), reference, [RoiSpec(case, 1)], tmp_path / "rs.dcm",
        probabilities=probabilities,
    )  # fmt: skip
    assert dciodvfy_errors(out) == []
    contour = pydicom.dcmread(out).ROIContourSequence[0].ContourSequence[0]
    index = geo.world_to_index(g, np.asarray(contour.ContourData, dtype=float).reshape(-1, 3))
    off_edges = np.abs(index[:, 1:] - np.round(index[:, 1:] - 0.5) - 0.5)
    assert off_edges.max() > 0.05  # really sub-voxel, not on voxel edges
    theirs = plastimatch_masks(out, ct_dir, tmp_path / "plastimatch")[case]
    d = dice(theirs.array, mask)
    ratio = float(theirs.array.sum()) / float(mask.sum())
    assert d >= 0.95, f"{case}: Dice {d:.4f}"
    assert abs(ratio - 1.0) <= 0.03, f"{case}: volume ratio {ratio:.4f}"


def test_probabilities_are_checked(axial_ct: tuple[Volume, Path], tmp_path: Path) -> None:
    reference, _ = axial_ct
    g = reference.geometry
    labels = _labels(_lesion_1ml(g), reference, label=2)
    two = Volume(np.zeros((2, *g.shape)), g, VolumeKind.PROBABILITIES)
    with pytest.raises(ExportError, match=r"label\(s\) \[2\]"):
        rtstruct.write(labels, reference, [RoiSpec("a", 2)], tmp_path / "rs.dcm", probabilities=two)
    bad = Volume(np.full((3, *g.shape), 1.5), g, VolumeKind.PROBABILITIES)
    with pytest.raises(ExportError, match=r"\[0, 1\]"):
        rtstruct.write(labels, reference, [RoiSpec("a", 2)], tmp_path / "rs.dcm", probabilities=bad)


def test_multiframe_reference_names_each_contours_frame(tmp_path: Path) -> None:
    """Enhanced CT (one file, several frames): every contour references its image AND frame;
    the series-level list names the image once with all its frames; dciodvfy accepts it and
    medseg's reader places every contour back on its own slice."""
    import shutil

    from pydicom.data import get_testdata_file

    from medseg.io.dicom import load_series
    from tests.rt_helpers import dciodvfy_errors

    source = Path(str(get_testdata_file("eCT_Supplemental.dcm")))
    (tmp_path / "ct").mkdir()
    shutil.copy(source, tmp_path / "ct" / source.name)
    reference = load_series(tmp_path / "ct")
    frames = reference.source.frame_numbers
    assert sorted(frames) == [1, 2]  # type: ignore[type-var]
    labels = np.zeros(reference.geometry.shape, dtype=np.uint8)
    rows, cols = reference.geometry.shape[1:]
    labels[0, rows // 4 : rows // 2, cols // 4 : cols // 2] = 1
    labels[1, rows // 2 : 3 * rows // 4, cols // 2 : 3 * cols // 4] = 1
    volume = Volume(labels, reference.geometry, VolumeKind.LABELS)
    out = rtstruct.write(volume, reference, [RoiSpec("box", 1)], tmp_path / "rs.dcm")

    ds = pydicom.dcmread(out)
    listed = (
        ds.ReferencedFrameOfReferenceSequence[0]
        .RTReferencedStudySequence[0]
        .RTReferencedSeriesSequence[0]
        .ContourImageSequence
    )
    assert len(listed) == 1
    assert listed[0].ReferencedSOPInstanceUID == reference.source.sop_instance_uids[0]
    assert [int(v) for v in listed[0].ReferencedFrameNumber] == [1, 2]
    pairs = set()
    for contour in ds.ROIContourSequence[0].ContourSequence:
        image = contour.ContourImageSequence[0]
        z = float(contour.ContourData[2])
        k = int(np.argmin(np.abs(geo.slice_positions_mm(reference.geometry)[:, 2] - z)))
        assert int(image.ReferencedFrameNumber) == frames[k]
        pairs.add((k, int(image.ReferencedFrameNumber)))
    assert len(pairs) == 2
    assert dciodvfy_errors(out) == []
    back = rtstruct.read(out, reference)["box"]
    np.testing.assert_array_equal(np.asarray(back.array), labels)


def test_export_rtstruct_cli_proposes_tg263_names(tmp_path: Path) -> None:
    """``medseg export-rtstruct --tg263``: standard names proposed for common label names,
    written as ROIDescription; the names it cannot map are said."""
    from typer.testing import CliRunner

    from medseg.cli import app
    from medseg.synthetic import phantom

    paths = phantom.write_case(
        phantom.make_case(seed=2, n_tumours=2), tmp_path / "case", patient_id="TG-1"
    )
    labels = nifti.load(paths.labels_path, VolumeKind.LABELS)
    array = np.asarray(labels.array).copy()
    array[array.shape[0] // 2, :4, :4] = 2  # a second structure
    two = nifti.save(labels.with_array(array, VolumeKind.LABELS), tmp_path / "labels.nii.gz")
    rois = tmp_path / "rois.yaml"
    rois.write_text("rois: {1: Left Parotid, 2: label_2}\n")
    out = tmp_path / "rs.dcm"
    result = CliRunner().invoke(app, ["export-rtstruct", "--ct", str(paths.ct_dir), "--labels",
                                      str(two), "--rois", str(rois), "--out", str(out), "--tg263"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "TG-263: Left Parotid -> Parotid_L" in result.output
    assert "TG-263: no standard name for label_2" in result.output
    ds = pydicom.dcmread(out)
    assert [r.get("ROIDescription") for r in ds.StructureSetROISequence] == ["Parotid_L", None]
