"""The radiographer-vs-oncologist organ pairs of ``hn-oar-labels``, read once per test process.

Reading the 294 label maps (7 scans x 21 organs x 2 annotators, 437 x 512 x 512 voxels each,
gzip NRRD) takes about 40 s, and three tests need the same pairs (the metrics against
``surface-distance`` and MONAI, and the derived tolerance table), so each scan is read once and
kept cropped: every pair is cut to the bounding box of its two masks plus a margin of
:data:`MARGIN` voxels, which changes no metric (all voxels outside are background on both
sides, and the margin keeps the border surfels whole), with the crop's geometry
(:func:`medseg.geometry.crop_geometry`), so the distances are the same in mm.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from medseg import geometry as geo
from medseg.io import nifti
from medseg.volume import Volume, VolumeKind
from tests.conftest import require_data

#: Background voxels kept around each pair's union box.
MARGIN = 2


@dataclass(frozen=True)
class Pair:
    """One organ of one scan: the radiographer's contour as the prediction, the oncologist's
    as the reference, both 0/1 label volumes on the same cropped grid."""

    scan: str
    organ: str
    prediction: Volume
    reference: Volume

    @property
    def both_present(self) -> bool:
        return bool(self.prediction.array.any() and self.reference.array.any())


@functools.cache
def inter_observer_pairs(scan: str) -> tuple[Pair, ...]:
    """Every organ both annotators have a file for on ``scan``, in file-name order."""
    root = require_data("hn-oar-labels")
    pairs = []
    for ref_path in sorted((root / "oncologist" / scan / "segmentations").glob("*.nrrd")):
        pred_path = root / "radiographer" / scan / "segmentations" / ref_path.name
        if not pred_path.is_file():
            continue
        ref = nifti.load(ref_path, VolumeKind.LABELS)
        pred = nifti.load(pred_path, VolumeKind.LABELS)
        assert geo.geometries_equal(ref.geometry, pred.geometry)  # one scan, one grid
        r, p = np.asarray(ref.array) > 0, np.asarray(pred.array) > 0
        where = np.argwhere(r | p)
        shape = np.asarray(r.shape)
        if len(where):
            lo = np.maximum(where.min(axis=0) - MARGIN, 0)
            hi = np.minimum(where.max(axis=0) + 1 + MARGIN, shape)
        else:  # both empty: any small box shows it
            lo, hi = np.zeros(3, dtype=int), np.minimum(4, shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        grid = geo.crop_geometry(ref.geometry, lo, hi)
        pairs.append(
            Pair(
                scan,
                ref_path.stem,
                Volume(p[box].astype(np.uint8), grid, VolumeKind.LABELS),
                Volume(r[box].astype(np.uint8), grid, VolumeKind.LABELS),
            )
        )
    return tuple(pairs)
