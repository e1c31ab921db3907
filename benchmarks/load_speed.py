"""medseg ``load_series`` vs SimpleITK ``ImageSeriesReader`` on a 200-slice 512x512 CT series.

Usage: .venv/bin/python benchmarks/load_speed.py [--dir DIR] [--repeats N]

The series is written once by ``medseg.io.dicom.write_series`` (int16, uncompressed explicit
VR little endian) into DIR (default: a folder under the system temp dir) and reused after.
Both readers run in this one process, alternating, page cache warm; the median of the runs
is printed side by side with the ratio. medseg runs with all its validation (discovery of
every file, slice sorting along the normal, spacing/orientation/tilt/duplicate checks,
rescale and padding). SimpleITK is timed two ways: with ``GetGDCMSeriesFileNames`` (it
discovers and sorts the files, as medseg does) and with the file list given. Before timing,
the arrays and geometry are checked to agree.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg import geometry as geo
from medseg.geometry import Geometry
from medseg.io.dicom import load_series, write_series
from medseg.volume import Volume

SHAPE = (200, 512, 512)


def _series(folder: Path) -> Path:
    if folder.is_dir() and len(list(folder.glob("*.dcm"))) == SHAPE[0]:
        return folder
    g = Geometry(SHAPE, (2.0, 0.8, 0.8), (-204.4, -204.4, -300.0))
    rng = np.random.default_rng(0)
    array = rng.integers(-1024, 2000, SHAPE, dtype=np.int16)
    write_series(Volume(array, g), folder, uid_seed="load-speed", overwrite=True)
    return folder


def _sitk_discover(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _sitk_listed(files: list[str]) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def _median_s(fn: Callable[[], object], times: list[float]) -> None:
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=Path(tempfile.gettempdir()) / "medseg-load-speed"
    )
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    folder = _series(args.dir)
    files = sorted(str(p) for p in folder.glob("*.dcm"))

    ours = load_series(folder)
    theirs = _sitk_discover(folder)
    g = geo.from_sitk(
        theirs.GetSize(), theirs.GetSpacing(), theirs.GetOrigin(), theirs.GetDirection()
    )
    assert geo.geometries_equal(ours.geometry, g), "geometry differs from SimpleITK"
    assert np.array_equal(ours.array, sitk.GetArrayFromImage(theirs)), (
        "pixels differ from SimpleITK"
    )

    t_ours: list[float] = []
    t_discover: list[float] = []
    t_listed: list[float] = []
    for _ in range(args.repeats):
        _median_s(lambda: load_series(folder), t_ours)
        _median_s(lambda: _sitk_discover(folder), t_discover)
        _median_s(lambda: _sitk_listed(files), t_listed)
    a, b, c = (statistics.median(t) for t in (t_ours, t_discover, t_listed))
    print(f"series: {folder} {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} int16, median of {args.repeats} runs")
    print(f"{'reader':48} {'seconds':>8} {'ratio medseg/this':>18}")
    print(f"{'medseg load_series (all validation on)':48} {a:8.3f} {1.0:18.2f}")
    print(f"{'SimpleITK ImageSeriesReader + GDCM file names':48} {b:8.3f} {a / b:18.2f}")
    print(f"{'SimpleITK ImageSeriesReader, files given':48} {c:8.3f} {a / c:18.2f}")


if __name__ == "__main__":
    main()
