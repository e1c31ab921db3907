"""Test helpers for RT-STRUCT checks: a referenced CT series on any grid, and plastimatch.

The CT is written by ``medseg.io.dicom.write_series`` and read back with ``load_series`` so
the reference volume looks exactly like one read from a hospital folder (source UIDs,
SOP Instance UIDs in array order, header). plastimatch is the independent rasteriser.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from medseg import geometry as geo
from medseg.geometry import Geometry
from medseg.io.dicom import load_series, write_series
from medseg.volume import Volume, VolumeKind
from tests.conftest import require_tool

#: plastimatch writes NIfTI affines in float32; 0.01 mm covers that rounding on a 50 cm grid.
NIFTI_POSITION_TOLERANCE_MM = 0.01


def write_reference_series(
    geometry: Geometry, folder: Path, *, uid_seed: str | None = None
) -> Volume:
    """Write a blank CT series on ``geometry`` into ``folder`` and load it back."""
    image = Volume(np.full(geometry.shape, -1000, dtype=np.int16), geometry, VolumeKind.IMAGE)
    write_series(image, folder, uid_seed=uid_seed)
    return load_series(folder)


def plastimatch_masks(rtstruct: Path, ct_dir: Path, out_dir: Path) -> dict[str, Volume]:
    """Rasterise every ROI of ``rtstruct`` with plastimatch; name -> LABELS volume.

    The geometry comes from the NIfTI affine plastimatch wrote, so a caller can check it
    against the reference before comparing voxels. ROIs without contours are not written by
    plastimatch and are therefore missing from the result.
    """
    exe = require_tool("plastimatch")
    result = subprocess.run(
        [
            exe,
            "convert",
            "--input",
            str(rtstruct),
            "--referenced-ct",
            str(ct_dir),
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
