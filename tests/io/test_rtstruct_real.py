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

from medseg import geometry as geo
from medseg.errors import ExportError
from medseg.io import nifti, rtstruct
from medseg.io.dicom import load_series
from medseg.io.rois import export_rtstruct
from medseg.io.rtstruct import RoiSpec
from medseg.volume import Volume, VolumeKind
from tests.conftest import require_data
from tests.rt_helpers import (
    dciodvfy_errors,
    dice,
    plastimatch_structure_masks,
    require_geometry_match,
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
    return tuple(start), tuple(stop)


def _compare(
    ours: dict[str, Volume], theirs: dict[str, Volume], reference: Volume
) -> list[str]:
    """Failure lines (empty when every ROI meets the Dice and volume criteria)."""
    failures = []
    for name, mask in ours.items():
        source = np.asarray(mask.array) > 0
        if name not in theirs:
            if source.any():
                failures.append(f"{name}: missing from plastimatch output")
            continue
        require_geometry_match(theirs[name].geometry, reference.geometry)
        raster = np.asarray(theirs[name].array) > 0
        if not source.any():
            if raster.any():
                failures.append(f"{name}: empty source, plastimatch has {raster.sum()} voxels")
            continue
        d = dice(raster, source)
        ratio = float(raster.sum()) / float(source.sum())
        if d < MIN_DICE or abs(ratio - 1.0) > MAX_VOLUME_ERROR:
            failures.append(
                f"{name} ({source.sum()} voxels): Dice {d:.5f}, volume ratio {ratio:.5f}"
            )
    return failures


@pytest.mark.parametrize("annotator", ["oncologist", "radiographer"])
@pytest.mark.parametrize("scan", HN_SCANS, ids=HN_SCANS)
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
    rois = [(RoiSpec(name, 1, standard_name=name.replace("-", "_")), m) for name, m in masks.items()]
    empty = [name for name, m in masks.items() if not m.array.any()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = rtstruct.write_masks(rois, reference, tmp_path / "rs.dcm")
    warned = [str(w.message) for w in caught]
    assert all(any(f"'{name}'" in message for message in warned) for name in empty), warned

    assert dciodvfy_errors(out) == []
    ds = pydicom.dcmread(out)
    assert [r.ROIName for r in ds.StructureSetROISequence] == list(masks)
    assert [r.ROIDescription for r in ds.StructureSetROISequence] == [
        name.replace("-", "_") for name in masks
    ]
    theirs = plastimatch_structure_masks(out, tmp_path / "ct", tmp_path / "plastimatch")
    failures = _compare(masks, theirs, reference)
    assert failures == [], f"{annotator}/{scan}:\n" + "\n".join(failures)


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
