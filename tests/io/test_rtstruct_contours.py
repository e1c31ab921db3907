"""RT-STRUCT contours read as polygons in index space (``rtstruct.read_contours``).

The polygons are checked against the file itself (pydicom's ContourData, mapped back to LPS
mm), against the hand-made masks they were exported from, and against plastimatch's GTV
volumes of the real ``lung-gtv-ct`` structure sets (FINDINGS.md: 6.46 mL for pat_2).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray

from medseg import contours
from medseg import geometry as geo
from medseg.errors import GeometryError, UnreadableScanError
from medseg.geometry import Geometry
from medseg.io import rtstruct
from medseg.io.dicom import load_series
from medseg.io.rtstruct import RoiSpec, StructureSetContours, read_contours
from medseg.volume import SourceInfo, Volume, VolumeKind
from tests.conftest import require_data
from tests.rt_helpers import write_reference_series

GRID = Geometry((12, 40, 48), (2.5, 1.0, 0.8), (-20.0, -15.0, 30.0))

#: plastimatch 1.9.4's volume of pat_2's GTV (shared/FINDINGS.md), mL.
PLASTIMATCH_PAT2_GTV_ML = 6.46


def _masks(shape: tuple[int, int, int]) -> dict[str, NDArray[np.bool_]]:
    k, j, i = np.indices(shape)
    ring = (np.hypot(j - 20, i - 24) <= 12) & (np.hypot(j - 20, i - 24) > 5) & (k >= 2) & (k <= 8)
    box = (k >= 4) & (k <= 6) & (j >= 2) & (j <= 6) & (i >= 3) & (i <= 40)
    return {"Ring": ring, "Bar": box}


def _rasterise(contours_: StructureSetContours, name: str, shape: tuple[int, ...]) -> np.ndarray:
    roi = contours_.by_name()[name]
    out = np.zeros(shape, dtype=bool)
    for k, polygons in roi.polygons.items():
        out[k] = contours.polygons_to_mask(list(polygons), shape[1:])
    return out


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Volume, Path, dict[str, NDArray[np.bool_]]]:
    reference = write_reference_series(GRID, tmp_path / "ct")
    masks = _masks(GRID.shape)
    labels = np.zeros(GRID.shape, dtype=np.uint8)
    labels[masks["Ring"]] = 1
    labels[masks["Bar"]] = 2
    rois = [RoiSpec("Ring", 1, (10, 200, 30)), RoiSpec("Bar", 2), RoiSpec("Empty", 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the empty ROI is warned about
        path = rtstruct.write(
            reference.with_array(labels, VolumeKind.LABELS), reference, rois,
            tmp_path / "rs.dcm", model_id="m-7", empty="keep",
        )  # fmt: skip
    return reference, path, masks


def test_polygons_rasterise_to_the_exported_masks_and_to_read(
    exported: tuple[Volume, Path, dict[str, NDArray[np.bool_]]],
) -> None:
    reference, path, masks = exported
    found = read_contours(path, reference)
    by_read = rtstruct.read(path, reference)
    assert [r.name for r in found.rois] == ["Ring", "Bar", "Empty"]
    for name, mask in masks.items():
        raster = _rasterise(found, name, GRID.shape)
        np.testing.assert_array_equal(raster, mask)  # the hole of the ring included
        np.testing.assert_array_equal(raster, by_read[name].array.astype(bool))
        np.testing.assert_array_equal(found.masks(reference)[name].array, by_read[name].array)
    ring = found.by_name()["Ring"]
    assert sorted(ring.polygons) == list(range(2, 9))
    assert ring.colour_rgb == (10, 200, 30)
    assert ring.generation_description is not None and "m-7" in ring.generation_description
    assert found.by_name()["Empty"].polygons == {}
    assert found.referenced_series_uids == (reference.source.series_instance_uid,)
    assert found.image_series_description == "medseg"  # write_series' default


def test_polygons_are_the_files_contour_points_in_index_space(
    exported: tuple[Volume, Path, dict[str, NDArray[np.bool_]]],
) -> None:
    reference, path, _ = exported
    ds = pydicom.dcmread(path)
    uid_to_slice = {u: k for k, u in enumerate(reference.source.sop_instance_uids)}
    found = read_contours(path, reference).by_name()
    for roi_item, roi_contour in zip(
        ds.StructureSetROISequence, ds.ROIContourSequence, strict=True
    ):
        in_file: dict[int, list[np.ndarray]] = {}
        for contour in roi_contour.get("ContourSequence", []):
            k = uid_to_slice[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            in_file.setdefault(k, []).append(np.asarray(contour.ContourData, float).reshape(-1, 3))
        ours = found[roi_item.ROIName].polygons
        assert sorted(ours) == sorted(in_file)
        for k, polygons in ours.items():
            assert len(polygons) == len(in_file[k])
            for polygon, points in zip(polygons, in_file[k], strict=True):
                index = np.column_stack([np.full(len(polygon), k), polygon])
                np.testing.assert_allclose(geo.index_to_world(GRID, index), points, atol=1e-4)


def test_other_frame_and_non_rtstruct_are_refused(
    exported: tuple[Volume, Path, dict[str, NDArray[np.bool_]]], tmp_path: Path
) -> None:
    reference, path, _ = exported
    other = Volume(
        np.asarray(reference.array),
        reference.geometry,
        VolumeKind.IMAGE,
        SourceInfo(
            frame_of_reference_uid="1.2.3.4", sop_instance_uids=reference.source.sop_instance_uids
        ),
    )
    with pytest.raises(GeometryError, match="frame of reference"):
        read_contours(path, other)
    ct_file = min((tmp_path / "ct").iterdir())
    with pytest.raises(UnreadableScanError, match="not an RT Structure Set"):
        read_contours(ct_file, reference)


def test_lung_gtv_without_contour_image_sequence_matches_plastimatch_volume() -> None:
    folder = require_data("lung-gtv-ct/pat_2")
    reference = load_series(folder)
    (path,) = sorted(folder.glob("DCM_RS_*.dcm"))
    found = read_contours(path, reference)
    masks = rtstruct.read(path, reference)
    gtv = [r.name for r in found.rois if "gtv" in r.name.lower()]
    assert len(gtv) == 1
    for roi in found.rois:
        raster = _rasterise(found, roi.name, reference.geometry.shape)
        np.testing.assert_array_equal(raster, masks[roi.name].array.astype(bool))
    volume_ml = _rasterise(found, gtv[0], reference.geometry.shape).sum() * geo.voxel_volume_ml(
        reference.geometry
    )
    assert volume_ml == pytest.approx(PLASTIMATCH_PAT2_GTV_ML, rel=0.02)
