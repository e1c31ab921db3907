"""``medseg convert``: DICOM (+ RT-STRUCT) -> NIfTI, checked against SimpleITK and nibabel."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from medseg.cli import app
from medseg.config import IngestConfig
from medseg.errors import ExportError, MissingReferenceError
from medseg.io.convert import convert_dicom
from tests.conftest import require_data


def _sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_convert_lung_case_matches_simpleitk_and_plastimatch_volume(tmp_path: Path) -> None:
    folder = require_data("lung-gtv-ct/pat_2")
    images = tmp_path / "images"
    images.mkdir()
    for p in folder.glob("DCM_IMG_*"):
        shutil.copy(p, images / p.name)
    (rs_path,) = sorted(folder.glob("DCM_RS_*.dcm"))
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    result = convert_dicom(folder, tmp_path / "out", rtstruct=rs_path)
    assert result.image == tmp_path / "out" / "image.nii.gz"
    ours = sitk.ReadImage(str(result.image))
    theirs = _sitk_series(images)
    np.testing.assert_allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ours.GetSpacing(), theirs.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    (mask_path,) = result.masks.values()
    mask = nib.load(str(mask_path))
    assert mask.shape == nib.load(str(result.image)).shape
    np.testing.assert_allclose(mask.affine, nib.load(str(result.image)).affine, atol=1e-4)
    voxel_ml = float(np.prod(mask.header.get_zooms())) / 1000.0
    # plastimatch 1.9.4 rasterises this GTV to 6.46 mL (FINDINGS.md)
    assert float(np.asarray(mask.dataobj).sum()) * voxel_ml == pytest.approx(6.46, rel=0.01)
    with pytest.raises(ExportError, match="refusing to overwrite"):
        convert_dicom(folder, tmp_path / "out")
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_cli_convert_partial_import_and_refusal(tmp_path: Path) -> None:
    folder = require_data("dicom-quirks/rtutils-mock")
    runner = CliRunner()
    rs = str(folder / "invalid_reference_rt.dcm")
    refused = runner.invoke(app, ["convert", str(folder), str(tmp_path / "a"), "--rtstruct", rs])
    assert refused.exit_code == 2
    assert "cannot be placed" in refused.output and not (tmp_path / "a").exists()
    ok = runner.invoke(
        app, ["convert", str(folder), str(tmp_path / "b"), "--rtstruct", rs, "--partial"]
    )
    assert ok.exit_code == 0, ok.output
    names = sorted(p.name for p in (tmp_path / "b" / "masks").iterdir())
    assert names == [f"ROI-{i}.nii.gz" for i in range(1, 5)]
    image = sitk.ReadImage(str(tmp_path / "b" / "image.nii.gz"))
    mask = sitk.ReadImage(str(tmp_path / "b" / "masks" / "ROI-1.nii.gz"))
    assert mask.GetSize() == image.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert sitk.GetArrayFromImage(mask).any()


def test_convert_refuses_missing_references_unless_partial(tmp_path: Path) -> None:
    folder = require_data("dicom-quirks/dicompyler-example")
    with pytest.raises(MissingReferenceError, match="the reference series lacks"):
        convert_dicom(folder, tmp_path / "out", rtstruct=folder / "rtss.dcm")
    assert not (tmp_path / "out").exists()
    with pytest.warns(UserWarning, match="partial import"):
        result = convert_dicom(
            folder,
            tmp_path / "out",
            rtstruct=folder / "rtss.dcm",
            ingest=IngestConfig(unplaced_contours="skip"),
        )
    ds = pydicom.dcmread(folder / "rtss.dcm")
    assert list(result.masks) == [str(r.ROIName) for r in ds.StructureSetROISequence]
    assert result.masks["Lt Lung"].name == "Lt_Lung.nii.gz"
    filled = {
        name for name, path in result.masks.items() if np.asarray(nib.load(str(path)).dataobj).any()
    }
    assert filled == {"BODY"}  # the only ROI with a contour on the one CT slice present
