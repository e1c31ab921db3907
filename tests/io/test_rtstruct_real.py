"""RT-STRUCT export of real structures, checked by plastimatch (rasteriser) and dciodvfy.

* ``hn-oar-labels``: expert head-and-neck organs (0.04 mL cochleae to 1.5 L brains). All 21
  organs of each of the 7 scans, as drawn by each of the two annotators (oncologist and
  radiographer: the same organs drawn twice, so different real shapes), go into one RT-STRUCT
  per scan and annotator. The label maps carry the CT grid; each test writes a blank CT series
  on the sub-grid that holds every organ (plus a margin), which keeps every world position and
  halves the run time (plastimatch and the CT writer scale with voxels).
* ``totalseg-example``: TotalSegmentator's multi-organ output exported onto its own DICOM
  series, through :func:`medseg.io.export_rtstruct`, as users run it.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from medseg import geometry as geo
from medseg.errors import ExportError
from medseg.io import nifti, rtstruct
from medseg.io.dicom import load_series
from medseg.io.rois import export_rtstruct
from medseg.io.rtstruct import RoiSpec
from medseg.nomenclature import propose_standard_name
from medseg.volume import Volume, VolumeKind
from tests.conftest import require_data
from tests.rt_helpers import (
    dciodvfy_errors,
    dice,
    plastimatch_structure_masks,
    require_geometry_match,
    rt_utils_masks,
    write_reference_series,
)

HN_SCANS = [
    "0522c0014",
    "0522c0519",
    "0522c0576",
    "0522c0727a",
    "0522c0727b",
    "TCGA-CV-5977",
    "TCGA-CV-5978",
]
#: The largest scans (30-50 s a case on 2 cores): marked slow, so --quick skips them.
SLOW_HN_SCANS = {"0522c0576", "0522c0727a", "0522c0727b"}

#: Voxels kept around the union of all organs when cropping the CT grid (in-plane, slices).
CROP_MARGIN_VOXELS = (2, 8, 8)

MIN_DICE = 0.999
MAX_VOLUME_ERROR = 0.005

TOTALSEG_LABELS = "totalseg-example/example_seg_dicom.nii.gz"
TOTALSEG_CT = "totalseg-example/example_ct_dicom"


def _crop_box(masks: list[Volume]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(start, stop) of the smallest box holding every organ, plus the margin."""
    union = np.zeros(masks[0].geometry.shape, dtype=bool)
    for mask in masks:
        union |= np.asarray(mask.array) > 0
    shape = union.shape
    start, stop = [], []
    for axis in range(3):
        occupied = np.nonzero(union.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        margin = CROP_MARGIN_VOXELS[axis]
        start.append(max(int(occupied.min()) - margin, 0))
        stop.append(min(int(occupied.max()) + 1 + margin, shape[axis]))
    # square slices: rt-utils 1.2.7 reads only those whole (see rt_helpers.rt_utils_masks)
    side = max(stop[1] - start[1], stop[2] - start[2])
    for axis in (1, 2):
        grow = side - (stop[axis] - start[axis])
        start[axis] = max(min(start[axis] - grow // 2, shape[axis] - side), 0)
        stop[axis] = start[axis] + side
    return tuple(start), tuple(stop)


def _compare(
    ours: dict[str, Volume],
    theirs: dict[str, Volume] | dict[str, np.ndarray],
    reference: Volume,
    reader: str = "plastimatch",
) -> list[str]:
    """Failure lines (empty when every ROI meets the Dice and volume criteria)."""
    failures = []
    for name, mask in ours.items():
        source = np.asarray(mask.array) > 0
        if name not in theirs:
            if source.any():
                failures.append(f"{name}: missing from {reader} output")
            continue
        found = theirs[name]
        if isinstance(found, Volume):
            require_geometry_match(found.geometry, reference.geometry)
            found = found.array
        raster = np.asarray(found) > 0
        if not source.any():
            if raster.any():
                failures.append(f"{name}: empty source, {reader} has {raster.sum()} voxels")
            continue
        d = dice(raster, source)
        ratio = float(raster.sum()) / float(source.sum())
        if d < MIN_DICE or abs(ratio - 1.0) > MAX_VOLUME_ERROR:
            failures.append(
                f"{name} ({source.sum()} voxels): Dice {d:.5f}, volume ratio {ratio:.5f}"
            )
    return failures


@pytest.mark.parametrize("annotator", ["oncologist", "radiographer"])
@pytest.mark.parametrize(
    "scan",
    [pytest.param(s, marks=pytest.mark.slow) if s in SLOW_HN_SCANS else s for s in HN_SCANS],
    ids=HN_SCANS,
)
def test_hn_oar_organs_survive_plastimatch(scan: str, annotator: str, tmp_path: Path) -> None:
    folder = require_data(f"hn-oar-labels/{annotator}/{scan}/segmentations")
    paths = sorted(folder.glob("*.nrrd"))
    # gzip decoding of 21 full-size maps dominates otherwise; zlib releases the GIL
    with ThreadPoolExecutor(max_workers=2) as pool:
        loaded = list(pool.map(lambda p: nifti.load(p, VolumeKind.LABELS), paths))
    organs = {path.name.removesuffix(".nrrd"): v for path, v in zip(paths, loaded, strict=True)}
    assert len(organs) == 21
    grid = next(iter(organs.values())).geometry
    for name, organ in organs.items():
        assert geo.geometries_equal(organ.geometry, grid), f"{scan}/{name}: another grid"
        assert int(organ.array.max()) <= 1, f"{scan}/{name}: not binary"  # uint8: min >= 0
    start, stop = _crop_box(list(organs.values()))
    cropped = geo.crop_geometry(grid, start, stop)
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    reference = write_reference_series(cropped, tmp_path / "ct")
    masks = {
        name: Volume(
            np.ascontiguousarray(organ.array[box]).astype(np.uint8),
            cropped,
            VolumeKind.LABELS,
        )
        for name, organ in organs.items()
    }
    for name, organ in organs.items():  # the crop loses no voxel
        assert int(masks[name].array.sum()) == int((organ.array > 0).sum()), name
    standard = {name: propose_standard_name(name) for name in masks}
    assert None not in standard.values(), standard  # every DeepMind organ name has one
    rois = [(RoiSpec(name, 1, standard_name=standard[name]), m) for name, m in masks.items()]
    empty = [name for name, m in masks.items() if not m.array.any()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = rtstruct.write_masks(rois, reference, tmp_path / "rs.dcm")
    warned = [str(w.message) for w in caught]
    assert all(any(f"'{name}'" in message for message in warned) for name in empty), warned

    assert dciodvfy_errors(out) == []
    ds = pydicom.dcmread(out)
    written = [name for name in masks if name not in empty]  # empty organs are omitted
    assert [r.ROIName for r in ds.StructureSetROISequence] == written
    assert [r.ROIDescription for r in ds.StructureSetROISequence] == [
        standard[name] for name in written
    ]
    if empty:
        assert all(name in ds.StructureSetDescription for name in empty)
    theirs = plastimatch_structure_masks(out, tmp_path / "ct", tmp_path / "plastimatch")
    failures = _compare(masks, theirs, reference)
    # rt-utils rounds every point to a voxel and fills the outline too: exact only because
    # medseg moves its points 0.02 voxel inwards (before, median +15 %, cochleae +56 %)
    failures += _compare(masks, rt_utils_masks(out, tmp_path / "ct", reference), reference,
                         "rt-utils")  # fmt: skip
    assert failures == [], f"{annotator}/{scan}:\n" + "\n".join(failures)


#: Organs that never overlap each other (one label map can hold them), for sub-voxel export.
DISJOINT_ORGANS = ("Brainstem", "Cochlea-Lt", "Lens-Rt", "Mandible", "Parotid-Lt", "Parotid-Rt",
                   "Submandibular-Lt")  # fmt: skip


@pytest.mark.parametrize("scan", ["0522c0014", "TCGA-CV-5977"])
def test_hn_oar_subvoxel_contours_read_alike_by_plastimatch_and_rt_utils(
    scan: str, tmp_path: Path
) -> None:
    """Sub-voxel contours (``export.contours: subvoxel``) of real organs, from probabilities
    made by smoothing each expert mask: the centre-testing reader (plastimatch) and the
    rounding one (rt-utils) read the same voxels, because no contour point lies more than
    half-way from its inside voxel towards an outside one."""
    folder = require_data(f"hn-oar-labels/oncologist/{scan}/segmentations")
    organs = {n: nifti.load(folder / f"{n}.nrrd", VolumeKind.LABELS) for n in DISJOINT_ORGANS}
    start, stop = _crop_box(list(organs.values()))
    grid = next(iter(organs.values())).geometry
    cropped = geo.crop_geometry(grid, start, stop)
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    reference = write_reference_series(cropped, tmp_path / "ct")
    labels = np.zeros(cropped.shape, dtype=np.uint8)
    probabilities = np.zeros((len(organs) + 1, *cropped.shape), dtype=np.float32)
    for value, organ in enumerate(organs.values(), start=1):
        mask = np.asarray(organ.array[box]) > 0
        assert not (labels[mask] > 0).any()  # disjoint
        labels[mask] = value
        probabilities[value] = ndimage.gaussian_filter(mask.astype(np.float32), (0.0, 0.8, 0.8))
    rois = [RoiSpec(name, value) for value, name in enumerate(organs, start=1)]
    out = rtstruct.write(
        reference.with_array(labels, VolumeKind.LABELS), reference, rois, tmp_path / "rs.dcm",
        probabilities=reference.with_array(probabilities, VolumeKind.PROBABILITIES),
    )  # fmt: skip
    assert dciodvfy_errors(out) == []
    centre_read = plastimatch_structure_masks(out, tmp_path / "ct", tmp_path / "pm")
    as_volumes = {name: reference.with_array(m.array, VolumeKind.LABELS)
                  for name, m in centre_read.items()}  # fmt: skip
    failures = _compare(as_volumes, rt_utils_masks(out, tmp_path / "ct", reference), reference,
                        "rt-utils")  # fmt: skip
    assert failures == [], f"{scan} (rt-utils vs plastimatch):\n" + "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# TotalSegmentator's NIfTI output on its own DICOM series


def test_totalseg_label_map_is_the_dicom_grid_with_rows_flipped() -> None:
    """Why the grids differ: the NIfTI (from dcm2niix) stores the rows bottom-up.

    Same voxels, same spacing, same slices: only the row axis runs the other way (direction
    column 1 is -y instead of +y), so its origin is the centre of the CT's last row.
    export_rtstruct reorders such a map onto the CT grid without interpolation.
    """
    labels = nifti.load(require_data(TOTALSEG_LABELS), VolumeKind.LABELS)
    with pytest.warns(UserWarning, match="SOPInstanceUID"):
        ct = load_series(require_data(TOTALSEG_CT))
    a, b = labels.geometry, ct.geometry
    assert not geo.geometries_equal(a, b)
    assert a.shape == b.shape and a.spacing_mm == pytest.approx(b.spacing_mm)
    flipped_rows = np.diag([1.0, -1.0, 1.0])
    assert np.allclose(a.direction_matrix, b.direction_matrix @ flipped_rows)
    last_row_centre = geo.index_to_world(b, [0.0, b.shape[1] - 1.0, 0.0])
    assert np.allclose(a.origin_mm, last_row_centre, atol=1e-3)


def test_totalseg_refuses_empty_study_and_series_uids(tmp_path: Path) -> None:
    ct_dir = require_data(TOTALSEG_CT)
    out = tmp_path / "rs.dcm"
    with (
        pytest.warns(UserWarning, match="SOPInstanceUID"),
        pytest.raises(ExportError, match=r"StudyInstanceUID \(0020,000D\)") as info,
    ):
        export_rtstruct(ct_dir, require_data(TOTALSEG_LABELS), None, out)
    assert str(ct_dir) in str(info.value)
    assert not out.exists()


def test_totalseg_export_with_generated_uids(tmp_path: Path) -> None:
    ct_dir = require_data(TOTALSEG_CT)
    labels_path = require_data(TOTALSEG_LABELS)
    files_before = {p: p.stat().st_mtime_ns for p in ct_dir.iterdir()}
    out = tmp_path / "rs.dcm"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_rtstruct(ct_dir, labels_path, None, out, missing_uids="generate")
    messages = [str(w.message) for w in caught]
    for tag in ("StudyInstanceUID (0020,000D)", "SeriesInstanceUID (0020,000E)"):
        assert any(tag in m and "generated" in m for m in messages), messages
    assert {p: p.stat().st_mtime_ns for p in ct_dir.iterdir()} == files_before  # untouched

    assert dciodvfy_errors(out) == []
    with pytest.warns(UserWarning, match="SOPInstanceUID"):
        reference = load_series(ct_dir)
    ds = pydicom.dcmread(out)
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    study = frame.RTReferencedStudySequence[0]
    series = study.RTReferencedSeriesSequence[0]
    assert ds.StudyInstanceUID and ds.StudyInstanceUID == study.ReferencedSOPInstanceUID
    assert series.SeriesInstanceUID and series.SeriesInstanceUID != ds.SeriesInstanceUID
    assert frame.FrameOfReferenceUID == reference.source.frame_of_reference_uid
    # contours reference the SOP Instance UIDs from the file meta
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == list(
        reference.source.sop_instance_uids
    )
    first = ds.ROIContourSequence[0].ContourSequence[0].ContourImageSequence[0]
    assert first.ReferencedSOPInstanceUID in reference.source.sop_instance_uids
    assert first.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"

    # the label map on the CT grid, in the CT's axis order (rows flipped back)
    loaded = nifti.load(labels_path, VolumeKind.LABELS)
    flipped = np.ascontiguousarray(np.flip(np.asarray(loaded.array), axis=1))
    present = [int(v) for v in np.unique(flipped) if v > 0]
    masks = {
        f"label_{n}": Volume((flipped == n).astype(np.uint8), reference.geometry, VolumeKind.LABELS)
        for n in present
    }
    assert [r.ROIName for r in ds.StructureSetROISequence] == list(masks)
    # plastimatch 1.9.4 cannot read this JPEG 2000 series with empty UIDs ("could not load
    # input as any known type") and would rasterise onto a grid of its own, so it gets the
    # CT grid as an image file instead of the DICOM folder
    grid_file = nifti.save(reference, tmp_path / "ct-grid.nrrd")
    theirs = plastimatch_structure_masks(out, ct_dir, tmp_path / "plastimatch", fixed=grid_file)
    failures = _compare(masks, theirs, reference)
    assert failures == [], "\n".join(failures)
    ours = rtstruct.read(out, reference)
    for name, mask in masks.items():
        assert dice(ours[name].array, mask.array) >= 0.99, name


def test_totalseg_organs_read_exactly_by_plastimatch_and_rt_utils(tmp_path: Path) -> None:
    """TotalSegmentator's real multi-organ map, exported as users run it, on a CT series both
    readers can load (the example series has empty UIDs that rt-utils cannot match)."""
    with pytest.warns(UserWarning, match="SOPInstanceUID"):
        original = load_series(require_data(TOTALSEG_CT))
    reference = write_reference_series(original.geometry, tmp_path / "ct")
    labels_path = require_data(TOTALSEG_LABELS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the label map's row axis runs the other way
        out = export_rtstruct(tmp_path / "ct", labels_path, None, tmp_path / "rs.dcm")
    assert dciodvfy_errors(out) == []
    loaded = nifti.load(labels_path, VolumeKind.LABELS)
    on_grid = geo.reorder_to_grid(loaded.array, loaded.geometry, reference.geometry)
    masks = {
        f"label_{n}": Volume((on_grid == n).astype(np.uint8), reference.geometry, VolumeKind.LABELS)
        for n in np.unique(on_grid) if n > 0
    }  # fmt: skip
    assert len(masks) >= 5
    failures = _compare(masks, plastimatch_structure_masks(out, tmp_path / "ct", tmp_path / "pm"),
                        reference)  # fmt: skip
    failures += _compare(masks, rt_utils_masks(out, tmp_path / "ct", reference), reference,
                         "rt-utils")  # fmt: skip
    assert failures == [], "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# read side: RT-STRUCTs whose images are partly or wholly missing (dicom-quirks)


def test_dicompyler_structures_with_one_ct_slice_list_the_missing_images() -> None:
    from medseg.errors import MissingReferenceError

    folder = require_data("dicom-quirks/dicompyler-example")
    reference = load_series(folder)
    ds = pydicom.dcmread(folder / "rtss.dcm")
    present = set(reference.source.sop_instance_uids)
    referenced = {
        image.ReferencedSOPInstanceUID
        for roi in ds.ROIContourSequence
        for contour in roi.get("ContourSequence", [])
        for image in contour.ContourImageSequence
    }
    with pytest.raises(MissingReferenceError) as info:
        rtstruct.read(folder / "rtss.dcm", reference)
    message = str(info.value)
    assert f"reference {len(referenced - present)} image(s) the reference series lacks" in message
    assert "'BODY':" in message and "'Lt Lung':" in message
    with pytest.warns(UserWarning, match="skipped \\(partial import\\)"):
        masks = rtstruct.read(folder / "rtss.dcm", reference, unplaced="skip")
    on_slice = {
        roi.ReferencedROINumber
        for roi in ds.ROIContourSequence
        for contour in roi.get("ContourSequence", [])
        if contour.ContourImageSequence[0].ReferencedSOPInstanceUID in present
    }
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    assert {name for name, m in masks.items() if m.array.any()} == {names[n] for n in on_slice}


@pytest.mark.parametrize(
    "name",
    ["invalid_reference_rt.dcm", "non_existent_reference_rt.dcm"],
    ids=["invalid", "non-existent"],
)
def test_rtutils_missing_references_are_named_or_skipped(name: str, tmp_path: Path) -> None:
    from medseg.errors import MissingReferenceError

    folder = require_data("dicom-quirks/rtutils-mock")
    reference = load_series(folder)
    missing_uid = "2.16.840.1.114362.1.11940992.23790159890.563423471.995.90"
    assert missing_uid not in reference.source.sop_instance_uids
    with pytest.raises(MissingReferenceError, match=missing_uid) as info:
        rtstruct.read(folder / name, reference)
    assert "'ROI-1': 1" in str(info.value)
    with pytest.warns(UserWarning, match=missing_uid):
        partial = rtstruct.read(folder / name, reference, unplaced="skip")
    # the partial import is the full import of the file without the unplaceable contours
    ds = pydicom.dcmread(folder / name)
    for roi in ds.ROIContourSequence:
        roi.ContourSequence = [
            c
            for c in roi.ContourSequence
            if c.ContourImageSequence[0].ReferencedSOPInstanceUID != missing_uid
        ]
    ds.save_as(tmp_path / "placeable.dcm")
    complete = rtstruct.read(tmp_path / "placeable.dcm", reference)
    assert list(partial) == list(complete) == ["ROI-1", "ROI-2", "ROI-3", "ROI-4"]
    for roi_name, mask in partial.items():
        assert mask.array[:2].any(axis=(1, 2)).all(), roi_name
        np.testing.assert_array_equal(mask.array, complete[roi_name].array)


def test_rtstruct_of_another_series_is_a_named_error(tmp_path: Path) -> None:
    from medseg.errors import MissingReferenceError

    folder = require_data("lung-gtv-ct/pat_1")
    (rs_path,) = sorted(folder.glob("DCM_RS_*.dcm"))
    reference = load_series(folder)
    ds = pydicom.dcmread(rs_path)
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    study = pydicom.Dataset()
    series = pydicom.Dataset()
    series.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    study.RTReferencedSeriesSequence = [series]
    frame.RTReferencedStudySequence = [study]
    ds.save_as(tmp_path / "rs.dcm")
    with pytest.raises(
        MissingReferenceError, match=r"series 1\.2\.826\.0\.1\.3680043\.8\.498\.1, which is missing"
    ):
        rtstruct.read(tmp_path / "rs.dcm", reference)


def test_nested_contours_on_one_slice_make_a_hole(tmp_path: Path) -> None:
    """Outer and inner ring as two contours of one ROI on one slice: even-odd keeps the hole
    (plastimatch 1.9.4 fills it, so skimage's polygon fill of each ring is the referee)."""
    from skimage.draw import polygon as fill

    folder = require_data("lung-gtv-ct/pat_2")
    (rs_path,) = sorted(folder.glob("DCM_RS_*.dcm"))
    reference = load_series(folder)
    ds = pydicom.dcmread(rs_path)
    roi = ds.ROIContourSequence[0]
    k = reference.geometry.shape[0] // 2
    centre = reference.geometry.shape[1] // 2
    rings = []
    for half_mm in (25.0, 10.0):
        corners = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]], float) * half_mm
        index = np.column_stack(
            [np.full(4, float(k)), centre + corners / reference.geometry.spacing_mm[1]]
        )
        rings.append(index)
    contours = []
    for ring in rings:
        contour = pydicom.Dataset()
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = len(ring)
        contour.ContourData = [
            f"{v:.6f}" for v in geo.index_to_world(reference.geometry, ring).ravel()
        ]
        contours.append(contour)
    roi.ContourSequence = contours
    ds.save_as(tmp_path / "rs.dcm")
    (mask,) = rtstruct.read(tmp_path / "rs.dcm", reference).values()
    expected = np.zeros(reference.geometry.shape[1:], bool)
    for ring, value in zip(rings, (True, False), strict=True):
        rr, cc = fill(ring[:, 1], ring[:, 2], shape=expected.shape)
        expected[rr, cc] = value
    assert expected.sum() > 0 and not expected[centre, centre]
    np.testing.assert_array_equal(mask.array[k], expected)
    assert int(mask.array.sum()) == int(expected.sum())
