"""Test helpers for RT-STRUCT checks: a referenced CT series on any grid, and plastimatch.

The CT is written by ``medseg.io.dicom.write_series`` and read back with ``load_series`` so
the reference volume looks exactly like one read from a hospital folder (source UIDs,
SOP Instance UIDs in array order, header). plastimatch is the independent rasteriser.
"""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from numpy.typing import NDArray

from medseg import geometry as geo
from medseg.geometry import Geometry
from medseg.io.dicom import load_series, write_series
from medseg.volume import Volume, VolumeKind
from tests.conftest import require_module, require_tool

#: plastimatch writes NIfTI affines in float32; 0.01 mm covers that rounding on a 50 cm grid.
NIFTI_POSITION_TOLERANCE_MM = 0.01


def write_reference_series(
    geometry: Geometry, folder: Path, *, uid_seed: str | None = None
) -> Volume:
    """Write a blank CT series on ``geometry`` into ``folder`` and load it back."""
    image = Volume(np.full(geometry.shape, -1000, dtype=np.int16), geometry, VolumeKind.IMAGE)
    write_series(image, folder, uid_seed=uid_seed)
    return load_series(folder)


#: Patient and study values longer than their VR allows (LO 64, SH 16, PN 64 per group), as a
#: non-conformant scanner or anonymiser writes them; a derived object must still be written.
OVER_LONG_HEADER = {
    "StudyDescription": "CT THORAX WITH CONTRAST " + "D" * 46,  # LO, 70 characters
    "StudyID": "STUDY-" + "4" * 14,  # SH, 20
    "AccessionNumber": "ACC" + "7" * 15,  # SH, 18
    "ReferringPhysicianName": "DOE^" + "J" * 66,  # PN, 70 in the alphabetic group
}


def write_over_long_reference(geometry: Geometry, folder: Path) -> Volume:
    """Like :func:`write_reference_series`, with :data:`OVER_LONG_HEADER` in every slice."""
    write_reference_series(geometry, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the lengths: they are the point
        for path in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(path)
            for keyword, value in OVER_LONG_HEADER.items():
                setattr(ds, keyword, value)
            ds.save_as(path)
        return load_series(folder)


def require_over_long_header_cut(out: Path, caught: list[warnings.WarningMessage]) -> None:
    """Each :data:`OVER_LONG_HEADER` attribute of ``out`` is cut to its limit, named by one
    of medseg's warnings (which hold no value), and ``out`` passes dciodvfy."""
    from medseg.io.dicom import TEXT_VR_MAX_CHARACTERS

    ds = pydicom.dcmread(out)
    messages = [str(w.message) for w in caught]
    for keyword, value in OVER_LONG_HEADER.items():
        limit = TEXT_VR_MAX_CHARACTERS[pydicom.datadict.dictionary_VR(keyword)]
        assert str(ds[keyword].value) == value[:limit], keyword
        ours = [m for m in messages if m.startswith(f"{out}: {keyword} copied from")]
        assert len(ours) == 1, (keyword, messages)
    assert not [m for m in messages if "DOE" in m or "THORAX" in m or "4444" in m], messages
    assert dciodvfy_errors(out) == []


def plastimatch_masks(
    rtstruct: Path, ct_dir: Path, out_dir: Path, *, fixed: Path | None = None
) -> dict[str, Volume]:
    """Rasterise every ROI of ``rtstruct`` with plastimatch; name -> LABELS volume.

    The geometry comes from the NIfTI affine plastimatch wrote, so a caller can check it
    against the reference before comparing voxels. ROIs without contours are not written by
    plastimatch and are therefore missing from the result.

    ``fixed`` (an image file on the reference grid, e.g. written by ``io.nifti.save``) replaces
    ``--referenced-ct ct_dir`` by ``--fixed``: plastimatch 1.9.4 cannot read some series
    (JPEG 2000 with empty UIDs, as TotalSegmentator's example) and then silently rasterises
    onto a grid of its own making.
    """
    exe = require_tool("plastimatch")
    grid = ["--fixed", str(fixed)] if fixed is not None else ["--referenced-ct", str(ct_dir)]
    result = subprocess.run(
        [
            exe,
            "convert",
            "--input",
            str(rtstruct),
            *grid,
            "--output-prefix",
            str(out_dir),
            "--prefix-format",
            "nii.gz",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"plastimatch failed:\n{result.stdout}\n{result.stderr}"
    masks: dict[str, Volume] = {}
    for path in sorted(out_dir.glob("*.nii.gz")):
        image = nib.load(path)
        array = geo.nifti_array_to_array_order(np.asarray(image.dataobj))
        geometry = geo.from_nifti_affine(image.affine, image.shape, what=str(path))
        masks[path.name.removesuffix(".nii.gz")] = Volume(
            (array > 0).astype(np.uint8), geometry, VolumeKind.LABELS
        )
    return masks


def plastimatch_structure_masks(
    rtstruct: Path, ct_dir: Path, out_dir: Path, *, fixed: Path | None = None
) -> dict[str, Volume]:
    """Like :func:`plastimatch_masks`, but through one bit-packed structure-set image.

    ``--output-ss-img`` writes every ROI as one bit of a single vector image (bit ``i`` of
    byte ``i // 8`` is line ``i`` of ``--output-ss-list``), which is 5-8x faster than one
    compressed NIfTI per ROI on 512 x 512 grids; used where a scan has many organs.
    """
    exe = require_tool("plastimatch")
    grid = ["--fixed", str(fixed)] if fixed is not None else ["--referenced-ct", str(ct_dir)]
    out_dir.mkdir(parents=True, exist_ok=True)
    image_path, list_path = out_dir / "ss.nrrd", out_dir / "ss.txt"
    result = subprocess.run(
        [exe, "convert", "--input", str(rtstruct), *grid, "--output-ss-img", str(image_path),
         "--output-ss-list", str(list_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"plastimatch failed:\n{result.stdout}\n{result.stderr}"
    image = sitk.ReadImage(str(image_path))
    geometry = geo.from_sitk(
        image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    )
    packed = sitk.GetArrayFromImage(image)  # (slice, row, column[, byte])
    if packed.ndim == 3:
        packed = packed[..., None]
    masks: dict[str, Volume] = {}
    for line in list_path.read_text().splitlines():
        if not line.strip():
            continue
        bit_text, _color, name = line.split("|", 2)
        bit = int(bit_text)
        plane = packed[..., bit // 8]
        masks[name] = Volume(
            ((plane >> (bit % 8)) & 1).astype(np.uint8), geometry, VolumeKind.LABELS
        )
    return masks


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy (dicom3tools) prints for one DICOM file."""
    exe = require_tool("dciodvfy")
    result = subprocess.run(
        [exe, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    return [
        line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")
    ]


def dice(a: NDArray[np.generic], b: NDArray[np.generic]) -> float:
    """Dice overlap of two binary arrays (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def require_geometry_match(theirs: Geometry, ours: Geometry) -> None:
    """Assert plastimatch's output grid is the reference grid (before comparing voxels)."""
    assert geo.geometries_equal(theirs, ours, position_tolerance_mm=NIFTI_POSITION_TOLERANCE_MM), (
        f"plastimatch grid {theirs} differs from reference grid {ours}"
    )


def rt_utils_masks(rtstruct: Path, ct_dir: Path, reference: Volume) -> dict[str, NDArray[np.bool_]]:
    """Rasterise every ROI of ``rtstruct`` with rt-utils (the reader most Python users call).

    ``RTStructBuilder.create_from(...).get_roi_mask_by_name`` returns a ``(Columns, Rows,
    slices)`` array in its own slice order (ascending position along the slice normal); its
    fill writes pixel ``[row, column]`` into that array, so only square slices come back
    whole (a quirk of rt-utils 1.2.7; callers pass square grids). Slices are mapped back to
    the reference's array order by SOP Instance UID. Returns name -> ``(slice, row, column)``.
    """
    rt_utils = require_module("rt_utils")
    rows, columns = reference.geometry.shape[1:]
    assert rows == columns, f"rt-utils 1.2.7 reads square slices only, got {rows} x {columns}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom deprecation notes from rt-utils
        structure_set = rt_utils.RTStructBuilder.create_from(str(ct_dir), str(rtstruct))
        order = [str(ds.SOPInstanceUID) for ds in structure_set.series_data]
        index = {uid: k for k, uid in enumerate(reference.source.sop_instance_uids)}
        masks = {}
        for name in structure_set.get_roi_names():
            theirs = np.asarray(structure_set.get_roi_mask_by_name(name), dtype=bool)
            ours = np.zeros(reference.geometry.shape, dtype=bool)
            for j, uid in enumerate(order):
                ours[index[uid]] = theirs[:, :, j]
            masks[name] = ours
    return masks
