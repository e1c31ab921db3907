"""DICOM SEG export (highdicom) and import: exact round trips, codes, dciodvfy."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from scipy.spatial.transform import Rotation

from medseg import geometry as geo
from medseg.errors import ExportError, GeometryError
from medseg.geometry import Geometry
from medseg.io import rtstruct, seg
from medseg.io.rtstruct import RoiSpec
from medseg.volume import Volume, VolumeKind
from tests.rt_helpers import (
    OVER_LONG_HEADER,
    dciodvfy_errors,
    require_over_long_header_cut,
    write_over_long_reference,
    write_reference_series,
)

AXIAL = Geometry((14, 40, 46), (2.5, 0.9, 0.9), (-20.0, -18.0, 12.5))
OBLIQUE = Geometry(
    (14, 40, 46),
    (2.5, 0.9, 0.9),
    (-20.0, -18.0, 12.5),
    tuple(
        (
            Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix()
            @ np.asarray(geo.AXIAL_DIRECTION).reshape(3, 3)
        ).ravel()
    ),
)
GRIDS = {"axial": AXIAL, "oblique": OBLIQUE}
SMALL = Geometry((6, 16, 16), (2.5, 1.0, 1.0), (0.0, 0.0, 0.0))

ROIS = [
    RoiSpec("GTV", 1, (255, 0, 0), "GTV", standard_name="GTVp"),
    RoiSpec("Parotid L", 2, (0, 255, 0), "ORGAN", standard_name="Parotid_L"),
    RoiSpec("Voxel", 5, (0, 0, 255), "AVOIDANCE"),
    RoiSpec("PTV", 7, (255, 255, 0), "PTV"),
]


def _small_labels(reference: Volume) -> Volume:
    labels = np.zeros(reference.geometry.shape, dtype=np.uint8)
    labels[2:4, 4:9, 5:11] = 1
    return Volume(labels, reference.geometry, VolumeKind.LABELS)


def _labels(g: Geometry) -> NDArray[np.uint8]:
    """A ball, a donut, a single voxel and a border-touching block, with distinct labels."""
    k, j, i = np.indices(g.shape, dtype=float)
    labels = np.zeros(g.shape, dtype=np.uint8)
    labels[(k - 6) ** 2 * 6 + (j - 14) ** 2 + (i - 15) ** 2 <= 64] = 1
    ring = (j - 27) ** 2 + (i - 30) ** 2
    labels[(ring <= 64) & (ring > 9) & (k >= 3) & (k < 9)] = 2
    labels[10, 33, 8] = 5
    labels[12:, :4, 40:] = 7
    return labels


@pytest.fixture(scope="module", params=list(GRIDS), ids=list(GRIDS))
def reference(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Volume:
    folder = tmp_path_factory.mktemp(request.param) / "ct"
    return write_reference_series(GRIDS[request.param], folder)


def test_round_trip_is_exact(reference: Volume, tmp_path: Path) -> None:
    g = reference.geometry
    labels = _labels(g)
    out = seg.write_seg(Volume(labels, g, VolumeKind.LABELS), reference, ROIS, tmp_path / "seg.dcm")
    back = seg.read_seg(out, reference)
    assert list(back) == [r.name for r in ROIS]
    for roi in ROIS:
        assert back[roi.name].kind is VolumeKind.LABELS
        assert np.array_equal(back[roi.name].array, (labels == roi.label).astype(np.uint8)), (
            roi.name
        )


def test_dciodvfy_reports_no_errors(reference: Volume, tmp_path: Path) -> None:
    g = reference.geometry
    out = seg.write_seg(
        Volume(_labels(g), g, VolumeKind.LABELS), reference, ROIS, tmp_path / "seg.dcm"
    )
    assert dciodvfy_errors(out) == []


def test_segment_descriptions_and_references(reference: Volume, tmp_path: Path) -> None:
    g = reference.geometry
    out = seg.write_seg(
        Volume(_labels(g), g, VolumeKind.LABELS), reference, ROIS, tmp_path / "seg.dcm"
    )
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == reference.source.study_instance_uid
    assert ds.FrameOfReferenceUID == reference.source.frame_of_reference_uid
    assert ds.SeriesInstanceUID != reference.source.series_instance_uid
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == reference.source.series_instance_uid
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} <= set(
        reference.source.sop_instance_uids
    )
    items = ds.SegmentSequence
    assert [s.SegmentLabel for s in items] == [r.name for r in ROIS]
    assert [s.SegmentDescription for s in items] == ["GTVp", "Parotid_L", "Voxel", "PTV"]
    assert all(s.SegmentAlgorithmType == "AUTOMATIC" for s in items)
    algorithm = items[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "medseg" and algorithm.AlgorithmVersion
    meanings = [
        (s.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning,
         s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning)
        for s in items
    ]  # fmt: skip
    assert meanings[0] == ("Morphologically Abnormal Structure", "Neoplasm")
    assert meanings[1] == ("Anatomical Structure", "Parotid gland")  # a parotid, not "Organ"
    modifier = (
        items[1].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
    )
    assert [(m.CodeValue, m.CodeMeaning) for m in modifier] == [("7771000", "Left")]
    assert meanings[3][1].startswith("Planning target volume")
    assert all(
        s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT" for s in items
    )


def test_write_refuses_invalid_input(tmp_path: Path) -> None:
    reference = write_reference_series(AXIAL, tmp_path / "ct")
    g = reference.geometry
    labels = Volume(_labels(g), g, VolumeKind.LABELS)
    out = tmp_path / "seg.dcm"
    with pytest.raises(ExportError, match="LABELS"):
        seg.write_seg(labels.with_array(labels.array, VolumeKind.IMAGE), reference, ROIS, out)
    with pytest.raises(ExportError, match="no voxels"):
        seg.write_seg(labels, reference, [*ROIS, RoiSpec("Absent", 9)], out)
    with pytest.raises(ExportError, match="duplicate segment labels"):
        seg.write_seg(labels, reference, [ROIS[0], RoiSpec("Again", 1)], out)
    with pytest.raises(ExportError, match="no segments"):
        seg.write_seg(labels, reference, [], out)
    bare = Volume(np.zeros(g.shape, np.int16), g)
    with pytest.raises(ExportError, match="not read from DICOM"):
        seg.write_seg(labels, bare, ROIS, out)
    no_series = dataclasses.replace(
        reference, source=dataclasses.replace(reference.source, series_instance_uid=None)
    )
    with pytest.raises(ExportError, match=r"SeriesInstanceUID \(0020,000E\)"):
        seg.write_seg(labels, no_series, ROIS, out)
    shifted = Geometry(g.shape, g.spacing_mm, (g.origin_mm[0] + 1.0, *g.origin_mm[1:]), g.direction)
    with pytest.raises(GeometryError):
        seg.write_seg(Volume(labels.array, shifted, VolumeKind.LABELS), reference, ROIS, out)
    assert not out.exists()


_LO_66 = "is 66 characters, more than DICOM allows for LO (64)"


@pytest.mark.parametrize(
    ("options", "seg_message", "rtstruct_message"),
    [
        pytest.param({"algorithm_version": "v" * 70},
                     "SoftwareVersions is 70 characters, more than DICOM allows for LO (64)",
                     "SoftwareVersions is 70 characters, more than DICOM allows for LO (64)",
                     id="version"),
        pytest.param({"algorithm_name": "n" * 60},
                     f"ContentDescription (algorithm name, version and model_id) {_LO_66}",
                     f"ROIGenerationDescription (algorithm name, version and model_id) {_LO_66}",
                     id="name"),
    ],
)  # fmt: skip
def test_an_over_long_option_is_refused_as_by_the_rtstruct_writer(
    options: dict[str, str], seg_message: str, rtstruct_message: str, tmp_path: Path
) -> None:
    """The SEG writer refuses what the RT-STRUCT writer refuses, in the same words (it used
    to cut ContentDescription to 64 characters silently)."""
    reference = write_reference_series(SMALL, tmp_path / "ct")
    labels = _small_labels(reference)
    for write, message in ((seg.write_seg, seg_message), (rtstruct.write, rtstruct_message)):
        out = tmp_path / "out.dcm"
        with pytest.raises(ExportError) as refused:
            write(labels, reference, [RoiSpec("GTV", 1)], out,
                  **{"algorithm_version": "0.1.0", **options})  # fmt: skip
        assert str(refused.value) == f"{out}: {message}"
        assert not out.exists()


def test_over_long_reference_attributes_are_cut_with_a_warning(tmp_path: Path) -> None:
    """A 70-character StudyDescription, a 20-character StudyID etc. on the CT: highdicom
    copies them, medseg cuts each to its limit with one warning, and dciodvfy agrees."""
    reference = write_over_long_reference(SMALL, tmp_path / "ct")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = seg.write_seg(
            _small_labels(reference), reference, [RoiSpec("GTV", 1)], tmp_path / "seg.dcm"
        )
    require_over_long_header_cut(out, caught)
    assert reference.source.dicom_header.StudyID == OVER_LONG_HEADER["StudyID"]  # not changed


def test_read_refuses_another_grid(tmp_path: Path) -> None:
    reference = write_reference_series(AXIAL, tmp_path / "ct")
    g = reference.geometry
    out = seg.write_seg(
        Volume(_labels(g), g, VolumeKind.LABELS), reference, ROIS, tmp_path / "s.dcm"
    )
    other_frame = dataclasses.replace(
        reference, source=dataclasses.replace(reference.source, frame_of_reference_uid="1.2.3")
    )
    with pytest.raises(GeometryError, match="frame of reference"):
        seg.read_seg(out, other_frame)
    half_slice = Geometry(
        g.shape, g.spacing_mm, (g.origin_mm[0], g.origin_mm[1], g.origin_mm[2] + 1.25), g.direction
    )
    with pytest.raises(GeometryError, match="not on a slice"):
        seg.read_seg(out, Volume(np.zeros(g.shape, np.int16), half_slice))


def test_single_segment_round_trip_reads_shared_functional_groups(tmp_path: Path) -> None:
    """With one segment, highdicom puts SegmentIdentificationSequence in the shared groups."""
    g = Geometry((6, 20, 24), (2.5, 1.0, 1.0), (-12.0, -10.0, 30.0))
    reference = write_reference_series(g, tmp_path / "ct")
    mask = np.zeros(g.shape, np.uint8)
    mask[2:4, 5:9, 6:12] = 1
    labels = Volume(mask, g, VolumeKind.LABELS, reference.source)
    out = seg.write_seg(
        labels, reference, [RoiSpec("tumour", 1, interpreted_type="GTV")], tmp_path / "seg.dcm"
    )
    back = seg.read_seg(out, reference)
    np.testing.assert_array_equal(back["tumour"].array, mask)
