"""Load a real CT series with medseg and with SimpleITK, side by side, and print the ratio.

Usage: .venv/bin/python benchmarks/load_series.py [SERIES_DIR ...]
Default series: hn-ct/pt_1 and lung-gtv-ct/pat_1 under MEDSEG_TEST_DATA (../shared/data).
Both readers run in this one process, alternating, page cache warm; the median of 5 runs is
reported, and the arrays and geometry are checked to agree before any time is printed.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg import geometry as geo
from medseg.io.dicom import load_series

REPEATS = 5


def _sitk_load(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    files = [f for f in reader.GetGDCMSeriesFileNames(str(folder))]
    reader.SetFileNames(files)
    return reader.Execute()


def _time(fn, *args) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main(folders: list[Path]) -> None:
    print(f"{'series':28} {'shape':>16} {'medseg s':>9} {'SimpleITK s':>12} {'ratio':>6}")
    for folder in folders:
        ours = load_series(folder)
        theirs = _sitk_load(folder)
        g = geo.from_sitk(theirs.GetSize(), theirs.GetSpacing(), theirs.GetOrigin(), theirs.GetDirection())
        assert geo.geometries_equal(ours.geometry, g), folder
        assert np.array_equal(ours.array, sitk.GetArrayFromImage(theirs)), folder
        t_ours, t_theirs = [], []
        for _ in range(REPEATS):
            t_ours.append(_time(load_series, folder))
            t_theirs.append(_time(_sitk_load, folder))
        a, b = statistics.median(t_ours), statistics.median(t_theirs)
        name = "/".join(folder.parts[-2:])
        print(f"{name:28} {ours.geometry.shape!s:>16} {a:9.3f} {b:12.3f} {a / b:6.2f}")


if __name__ == "__main__":
    root = Path(os.environ.get("MEDSEG_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = [Path(a) for a in sys.argv[1:]] or [root / "hn-ct" / "pt_1", root / "lung-gtv-ct" / "pat_1"]
    main(args)
